"""Gallery of enrolled characters, grouping numerics (fast), and two enrolments at once (slow)."""

import dataclasses
import itertools
import json
import multiprocessing
import os

import numpy as np
import pytest

from animesion_jax.open_set import answering
from animesion_jax.open_set import gallery
from animesion_jax.open_set import grouping

_PROVENANCE = {"model": "vit_tiny", "step": 4, "checkpoint": None, "num_classes": 3}


def _unit(rows, dim=4, seed=0):
  x = np.random.default_rng(seed).normal(size=(rows, dim))
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_enrol_refine_remove_and_refusals(tmp_path):
  emb = _unit(3)
  g = gallery.enroll(tmp_path, _PROVENANCE, " newbie ", emb, ["a", "b", "c"], ["x", "y"])
  assert g.names == ["newbie"] and g.characters["newbie"].count == 3
  expected = emb.sum(0) / np.linalg.norm(emb.sum(0))
  np.testing.assert_allclose(gallery.load(tmp_path, _PROVENANCE).prototypes()[0], expected, 1e-6)
  with pytest.raises(gallery.GalleryError, match="already enrolled"):
    gallery.enroll(tmp_path, _PROVENANCE, "newbie", emb, ["d"], ["x"])
  with pytest.raises(gallery.GalleryError, match="model's own classes.*--refine"):
    gallery.enroll(tmp_path, _PROVENANCE, "x", emb, ["d"], ["x"])
  g = gallery.enroll(tmp_path, _PROVENANCE, "newbie", emb[:1], ["d"], ["x"], refine=True)
  assert g.characters["newbie"].count == 4 and g.characters["newbie"].pictures[-1] == "d"
  before = (tmp_path / gallery.GALLERY_FILE).read_bytes()
  with pytest.raises(gallery.GalleryError, match="No usable picture"):
    gallery.enroll(tmp_path, _PROVENANCE, "empty", np.zeros((0, 4)), [], ["x"])
  with pytest.raises(gallery.GalleryError, match="not enrolled"):
    gallery.remove(tmp_path, _PROVENANCE, "nobody")
  assert (tmp_path / gallery.GALLERY_FILE).read_bytes() == before  # Failures change nothing.
  assert gallery.remove(tmp_path, _PROVENANCE, "newbie").names == []


def test_a_gallery_of_another_model_or_step_is_refused(tmp_path):
  gallery.enroll(tmp_path, _PROVENANCE, "newbie", _unit(2), ["a", "b"], [])
  with pytest.raises(gallery.GalleryMismatch, match="step: gallery 4, model 8"):
    gallery.load(tmp_path, {**_PROVENANCE, "step": 8})
  assert gallery.load(tmp_path / "none", _PROVENANCE) is None


def test_adjusted_rand_index_against_pair_counting():
  rng = np.random.default_rng(0)
  for _ in range(5):
    a, b = rng.integers(0, 3, 12), rng.integers(0, 4, 12)
    pairs = list(itertools.combinations(range(12), 2))
    together_a = [a[i] == a[j] for i, j in pairs]
    together_b = [b[i] == b[j] for i, j in pairs]
    index = sum(x and y for x, y in zip(together_a, together_b))
    expected = sum(together_a) * sum(together_b) / len(pairs)
    maximum = (sum(together_a) + sum(together_b)) / 2
    ari = (index - expected) / (maximum - expected)
    assert grouping.adjusted_rand_index(a, b) == pytest.approx(ari, abs=1e-12)
  assert grouping.adjusted_rand_index([0, 0, 1, 1], ["p", "p", "q", "q"]) == 1.0


def test_unknown_faces_cluster_by_likeness_and_duplicates_are_found():
  centres = _unit(3, dim=16, seed=1)
  rng = np.random.default_rng(2)
  labels = np.repeat([0, 1, 2], [5, 3, 2])
  emb = centres[labels] + 0.05 * rng.normal(size=(10, 16))
  emb /= np.linalg.norm(emb, axis=1, keepdims=True)
  unknown = answering.Answer(None, True, 0.2, "known", False, True, ())
  answers = [unknown] * len(labels)
  answers[0] = dataclasses.replace(unknown, character="known", unknown=False)
  names = grouping.group_names(answers, emb, distance=0.3)
  assert names[0] == "known"
  assert names[1:5] == ["unknown-1"] * 4  # The biggest cluster first.
  assert grouping.adjusted_rand_index(labels[1:], names[1:]) == 1.0
  assert grouping.fit_cluster_distance(emb, labels) < 0.9
  dup = np.concatenate([emb, emb[3:4]])
  assert grouping.near_duplicates(dup)[-1] == 3 and grouping.near_duplicates(dup)[:3] == [-1] * 3


_ENROLMENTS = 60


def _enrol_many(directory, worker, start):
  start.wait(120)  # Both processes enrol at the same moment (a barrier of two).
  for i in range(_ENROLMENTS):
    gallery.enroll(directory, _PROVENANCE, f"w{worker}-{i}", _unit(1, seed=i), [str(i)], [])


@pytest.mark.multiprocess
def test_two_enrolments_at_once_lose_nothing(tmp_path):
  context = multiprocessing.get_context("spawn")
  start = context.Barrier(2)
  workers = [context.Process(target=_enrol_many, args=(str(tmp_path), w, start)) for w in range(2)]
  for worker in workers:
    worker.start()
  for worker in workers:
    worker.join(120)
    assert worker.exitcode == 0
  record = json.loads((tmp_path / gallery.GALLERY_FILE).read_text())
  assert sorted(record["characters"]) == sorted(
    f"w{w}-{i}" for w in range(2) for i in range(_ENROLMENTS)
  )
  assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
