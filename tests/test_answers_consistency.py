"""Consistency and robustness of the answers (#26 item 4): empty inputs, the unknown wording,
tau-normalisation, checkpoint fingerprints, refining a known class, a server seeing enrolments."""

import dataclasses

import numpy as np

from animesion_jax import organize
from animesion_jax import predict
from animesion_jax.inference import crops as crops_lib
from animesion_jax.open_set import answering
from animesion_jax.open_set import calibration
from animesion_jax.open_set import gallery
from animesion_jax.open_set import grouping


def _calibration(classes=3, dim=6):
  return calibration.Calibration(
    temperature=2.0,
    cosine_scale=10.0,
    score="cosine",
    accept=0.95,
    threshold=0.6,
    quantiles={name: list(np.linspace(0.3, 0.9, 201)) for name in calibration.SCORES},
    metrics={},
    provenance={},
    prototypes=np.eye(classes, dim, dtype=np.float32),
  )


def test_no_picture_gets_no_answer_even_calibrated_with_a_gallery():
  characters = {"newbie": gallery.Character(1, np.eye(6)[3], ["n.png"])}
  answers = answering.decide(
    np.zeros((0, 3), np.float32),
    np.zeros((0, 0), np.float32),  # What Recognizer.embed returns for no picture.
    ["a", "b", "c"],
    _calibration(),
    gallery.Gallery({}, characters),
  )
  assert answers == []


class _NoPictureRun:
  """A run that must not be asked anything: there is no picture to embed."""

  config = type("Config", (), {"image_size": 8})()

  def embed(self, *_):
    raise AssertionError("embed called with no picture")


def test_organize_of_an_all_unreadable_folder_returns_no_group(tmp_path):
  bad = tmp_path / "broken.png"
  bad.write_bytes(b"not a picture")
  files = [crops_lib.image_files.ImageFile(str(bad), "broken.png")]
  groups, crops = organize.organize(_NoPictureRun(), files)
  assert groups == [] and crops.files == []
  assert [p["file"] for p in crops.problems] == [str(bad)]


def _clusters(count, per, dim=32, seed=0):
  rng = np.random.default_rng(seed)
  centres = np.linalg.qr(rng.normal(size=(dim, count)))[0].T  # Orthogonal: far apart.
  points = np.repeat(centres, per, axis=0) + 0.05 * rng.normal(size=(count * per, dim))
  return points / np.linalg.norm(points, axis=1, keepdims=True), np.repeat(np.arange(count), per)


def test_grouping_many_pictures_never_builds_their_n_by_n_distances(monkeypatch):
  embeddings, labels = _clusters(6, 150)  # 900 pictures, linkage on at most 200 at a time.
  largest = []
  pdist = grouping.scipy_distance.pdist

  def counted(x, *args):
    largest.append(len(x))
    return pdist(x, *args)

  monkeypatch.setattr(grouping.scipy_distance, "pdist", counted)
  ids = grouping.cluster(embeddings, 0.5, max_linkage=200)
  assert max(largest) <= 200
  assert grouping.adjusted_rand_index(ids, labels) == 1.0
  # Far from every cluster mean (cosine below 0.9): a cluster of its own, not the nearest's.
  lone = np.zeros((1, embeddings.shape[1]))
  lone[0, 0] = 1.0
  ids = grouping.cluster(np.concatenate([embeddings, lone]), 0.1, max_linkage=200)
  assert (ids[:-1] != ids[-1]).all()


def test_near_duplicates_in_blocks_find_the_first_earlier_copy():
  embeddings, _ = _clusters(3, 200)
  embeddings[450] = embeddings[7]
  embeddings[599] = embeddings[300]
  found = grouping.near_duplicates(embeddings)
  assert found[450] == 7 and found[599] == 300 and found[0] == -1
  assert sum(f >= 0 for f in found) == 2


def test_an_unknown_answer_is_worded_with_no_percentage_and_its_top_k_as_guesses():
  answer = answering.Answer(
    character=None,
    unknown=True,
    confidence=0.912,
    closest="kin_long",
    enrolled=False,
    calibrated=True,
    top_k=(answering.Ranked(1, 3, "kin_long", 0.912), answering.Ranked(2, 0, "asuka", 0.05)),
  )
  assert answer.describe() == "unknown (not sure enough to name; nearest: kin_long)"
  known = dataclasses.replace(answer, character="asuka", unknown=False, closest="asuka")
  rows = [{"file": f, "face": None} | a.to_json() for f, a in [("n.png", answer), ("a.png", known)]]
  table = predict.format_table(rows).splitlines()
  assert table[1].split()[2:5] == ["kin_long", "(91.2%)", "unknown"]
  assert table[3].split()[:4] == ["a.png", "1", "kin_long", "91.2%"]
  assert table[-1] == f"(Probabilities in parentheses: {answering.GUESSES_NOTE}.)"
  assert "(" not in predict.format_table(rows[1:])  # Named pictures: plain percentages.
