"""organize --from_batch's library (distributed/sorting.py) on synthetic batch outputs."""

import csv
import json

import numpy as np
import pytest

from animesion_jax.distributed import rows
from animesion_jax.distributed import sorting
from animesion_jax.open_set import answering
from animesion_jax.open_set import grouping


def _clusters(sizes, dim=16, spread=0.05, seed=0):
  """L2-normalised embeddings around len(sizes) random directions, and their true labels."""
  rng = np.random.default_rng(seed)
  centers = rng.normal(size=(len(sizes), dim))
  labels = np.repeat(np.arange(len(sizes)), sizes)
  points = centers[labels] / np.linalg.norm(centers[labels], axis=1, keepdims=True)
  points = points + spread * rng.normal(size=points.shape) / np.sqrt(dim)
  return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32), labels


def test_bounded_clustering_is_organizes_up_to_the_sample():
  embeddings, _ = _clusters([30, 20, 5, 1], spread=0.4)
  exact = grouping.cluster(embeddings, 0.5)
  np.testing.assert_array_equal(sorting.cluster_bounded(embeddings, 0.5, sample=56), exact)


def test_bounded_clustering_finds_the_clusters_beyond_the_sample():
  embeddings, labels = _clusters([400, 250, 120, 30, 3, 1])
  ids = sorting.cluster_bounded(embeddings, 0.3, sample=100, chunk=64)
  assert grouping.adjusted_rand_index(labels, ids) == 1.0
  # With no round left, every picture not yet placed stays alone.
  alone = sorting.cluster_bounded(embeddings, 0.3, sample=100, rounds=0)
  np.testing.assert_array_equal(np.sort(alone), np.arange(len(embeddings)))


def _answer(name, unknown, enrolled=False):
  top = (answering.Ranked(1, 0, name, 0.5),)
  return answering.Answer(None if unknown else name, unknown, 0.5, name, enrolled, True, top)


def _write_batch(folder, answers, embeddings, errors=(), chunk=7):
  out = rows.run_dir.resolve(folder)
  made = [
    rows.answer_row(f"/p/{i:03d}.png", f"p/{i:03d}.png", a, e)
    for i, (a, e) in enumerate(zip(answers, embeddings))
  ]
  made += [
    rows.error_row(f"/p/bad{i}.png", f"bad{i}.png", why, True) for i, why in enumerate(errors)
  ]
  for index, start in enumerate(range(0, len(made), chunk)):
    table = rows.to_table(made[start : start + chunk], embeddings=True)
    rows.write_part(table, rows.part_path(out, "a", index))
  return made


def test_organize_from_a_batch_output(tmp_path):
  unknown_embeddings, labels = _clusters([6, 3, 2], spread=0.05, seed=1)
  named = [_answer("Asuna", False)] * 5 + [_answer("Mikasa", False, enrolled=True)] * 2
  answers = named + [_answer("Asuna", True)] * len(labels)
  embeddings = np.concatenate([_clusters([7], seed=2)[0], unknown_embeddings])
  made = _write_batch(tmp_path / "batch", answers, embeddings, errors=["UnreadableImage: x"])
  # The same picture again in a later part (two runs into one folder): counted once.
  rows.write_part(
    rows.to_table(made[:2], True), rows.part_path(rows.run_dir.resolve(tmp_path / "batch"), "b", 0)
  )
  groups, errors = sorting.organize(tmp_path / "batch", tmp_path / "sorted", distance=0.3)
  assert [(g["name"], g["kind"], g["count"]) for g in groups] == [
    ("Asuna", "known", 5),
    ("Mikasa", "enrolled", 2),
    ("unknown-1", "unknown", 6),
    ("unknown-2", "unknown", 3),
    ("unknown-3", "unknown", 2),
  ]
  assert errors == 1
  assert groups[0]["examples"] == [f"p/{i:03d}.png" for i in range(5)]
  with open(tmp_path / "sorted" / "groups.csv", newline="") as f:
    table = list(csv.DictReader(f))
  assert len(table) == len(answers)
  assert [r["group"] for r in table][:7] == ["Asuna"] * 5 + ["Mikasa"] * 2
  # organize's own grouping of the same answers gives the same partition.
  exact = grouping.group_names(answers, embeddings, 0.3)
  by_file = {r["file"]: r["group"] for r in table}
  ours = [by_file[f"/p/{i:03d}.png"] for i in range(len(answers))]
  assert grouping.adjusted_rand_index(exact, ours) == 1.0
  record = json.loads((tmp_path / "sorted" / "groups.json").read_text())
  assert (record["pictures"], record["errors"][0]["file"]) == (len(answers), "/p/bad0.png")


def test_batch_outputs_that_cannot_be_sorted(tmp_path):
  with pytest.raises(rows.BatchOutputError, match="no batch output"):
    sorting.organize(tmp_path / "nothing", tmp_path / "sorted")
  out = rows.run_dir.resolve(tmp_path / "plain")
  table = rows.to_table([rows.answer_row("/a.png", "a.png", _answer("X", True), None)], False)
  rows.write_part(table, rows.part_path(out, "a", 0))
  with pytest.raises(rows.BatchOutputError, match="--embeddings"):
    sorting.organize(out, tmp_path / "sorted")
