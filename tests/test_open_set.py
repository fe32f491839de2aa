"""Calibration after training, the calibrate command, and answers that can say unknown."""

import dataclasses
import json
import os
import subprocess
import sys

from etils import epath
import numpy as np
import pytest

from animesion_jax import recognizer
from animesion_jax import run_dir
from animesion_jax.data import datasets
from animesion_jax.open_set import answering
from animesion_jax.open_set import calibration
from animesion_jax.open_set import fitting
from animesion_jax.open_set import gallery
from tests import helpers
from tests import trained_run

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env():
  return helpers.subprocess_env()


def _answerer(threshold_score="max_softmax"):
  protos = np.eye(3, 4, dtype=np.float32)
  fitted = calibration.Calibration(
    temperature=2.0,
    cosine_scale=10.0,
    score=threshold_score,
    accept=0.95,
    threshold=0.6,
    quantiles={name: list(np.linspace(0.3, 0.9, 201)) for name in calibration.SCORES},
    metrics={},
    provenance={},
    prototypes=protos,
  )
  return answering.Answerer(["a", "b", "c"], fitted)


def test_answers_say_unknown_below_the_threshold_with_the_closest_name():
  answerer = _answerer()
  logits = np.array([[8.0, 0.0, 0.0], [1.0, 1.2, 0.9]])
  embeddings = np.eye(2, 4)
  first, second = answerer.answer(logits, embeddings, top_k=2)
  p = calibration.softmax(logits, 2.0)
  assert first.character == "a" and not first.unknown and first.calibrated
  assert first.confidence == pytest.approx(p[0].max())
  assert second.unknown and second.character is None and second.closest == "b"
  assert second.names == ["b", "a"] and second.probabilities == pytest.approx(
    sorted(p[1])[::-1][:2]
  )
  assert second.describe() == "unknown (not sure enough to name; nearest: b)"
  assert answering.Answer.from_json(second.to_json()) == second
  # --accept overrides the share of known pictures named: 0.5 -> threshold 0.6 (the median known
  # score), still unknown; 1.0 -> 0.3 (the lowest known score), named.
  half = dataclasses.replace(answerer, accept=0.5)
  assert half.threshold == pytest.approx(0.6)
  assert half.answer(logits, embeddings)[1].unknown
  every = dataclasses.replace(answerer, accept=1.0)
  assert every.answer(logits, embeddings)[1].character == "b"


def test_uncalibrated_answers_name_everything_and_say_so():
  answerer = answering.Answerer(["a", "b", "c"], note=answering.UNCALIBRATED_NOTE)
  # Confident, nearly flat and exactly flat rows, and embeddings far from anything: all named.
  logits = np.array([[9.0, 0.0, 0.0], [0.1, 0.0, 0.05], [0.0, 0.0, 0.0], [-3.0, 2.0, -1.0]])
  embeddings = np.random.default_rng(0).normal(size=(4, 3))
  answers = answerer.answer(logits, embeddings, top_k=3)
  assert [a.character for a in answers] == ["a", "a", "a", "b"]  # Ties: the first class.
  p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)  # Temperature 1.
  for answer, row in zip(answers, p):
    assert not answer.unknown and not answer.calibrated and not answer.enrolled
    assert answer.confidence == pytest.approx(row.max())
    assert answer.probabilities == pytest.approx(sorted(row)[::-1])
    assert answer.note == answering.UNCALIBRATED_NOTE and "calibrate" in answer.note
  assert answers[2].confidence == pytest.approx(1 / 3)


def _enrolled_setup():
  """Known classes a, b, c (prototypes e0, e1, e2 in 6-D); enrolled 'newbie' (5 pictures, e3)
  and 'rare' (1 picture, e4). A 5-picture character needs a cosine of 0.33 (the 5% quantile of
  0.3..0.9), a 1-picture one 0.9045 (that of 0.9..0.99)."""
  fitted = dataclasses.replace(
    _answerer().calibration,
    prototypes=np.eye(3, 6, dtype=np.float32),
    enrolled_quantiles={
      "1": list(np.linspace(0.9, 0.99, 201)),
      "5": list(np.linspace(0.3, 0.9, 201)),
    },
  )
  characters = {
    "newbie": gallery.Character(5, 5 * np.eye(6)[3], ["n.png"] * 5),
    "rare": gallery.Character(1, np.eye(6)[4], ["r.png"]),
  }
  return fitted, gallery.Gallery({}, characters)


def _towards(axis, cosine):
  """A unit vector at `cosine` to basis vector `axis` (the rest along e5)."""
  vector = np.zeros(6)
  vector[axis], vector[5] = cosine, np.sqrt(1 - cosine**2)
  return vector


def test_enrolled_names_pass_or_fail_the_threshold_of_their_picture_count():
  fitted, characters = _enrolled_setup()
  embeddings = np.stack(
    [
      _towards(3, 0.4),  # newbie at 0.4 >= 0.33: named.
      _towards(3, 0.3),  # newbie at 0.3 < 0.33: unknown, closest newbie.
      _towards(4, 0.6),  # rare at 0.6 < 0.9045 (one picture asks more): unknown.
      _towards(4, 0.95),  # rare at 0.95: named.
      _towards(0, 0.9),  # Nearest a known class: the classifier's rule decides.
    ]
  )
  logits = np.array([[8.0, 0.0, 0.0]] * 5)  # Known score high: only the enrolled rule differs.
  answers = answering.decide(logits, embeddings, ["a", "b", "c"], fitted, characters, top_k=2)
  assert [(a.character, a.closest, a.unknown, a.enrolled) for a in answers] == [
    ("newbie", "newbie", False, True),
    (None, "newbie", True, True),
    (None, "rare", True, True),
    ("rare", "rare", False, True),
    ("a", "a", False, False),
  ]
  # An enrolled answer's confidence: softmax over the cosines to every prototype (known, then
  # enrolled in name order) at the calibration's cosine scale (10).
  cosines = np.array([0.0, 0.0, 0.0, 0.4, 0.0])
  expected = np.exp(10 * cosines)[3] / np.exp(10 * cosines).sum()
  assert answers[0].confidence == pytest.approx(expected)
  assert answers[0].describe() == "newbie (enrolled)"
  assert answers[2].describe() == "unknown (not sure enough to name; nearest: rare)"
  # The classifier's top-k is still the known classes'.
  assert answers[0].names == ["a", "b"]
  # --accept lowers a character's bar too: at 0.5 the 5-picture one needs 0.6, so 0.4 fails.
  stricter = answering.decide(
    logits[:1], embeddings[:1], ["a", "b", "c"], fitted, characters, accept=0.5
  )
  assert stricter[0].unknown and stricter[0].closest == "newbie"


def test_enrolled_characters_need_a_calibration():
  _, characters = _enrolled_setup()
  (answer,) = answering.decide(
    np.array([[1.0, 3.0, 0.0]]), _towards(3, 0.99)[None], ["a", "b", "c"], None, characters
  )
  assert (answer.character, answer.enrolled, answer.calibrated) == ("b", False, False)


def test_calibration_of_another_checkpoint_is_not_used(tmp_path):
  fitted = dataclasses.replace(
    _answerer().calibration,
    provenance={"model": "vit_tiny", "step": 4, "checkpoint": None, "num_classes": 3},
    no_character=np.zeros((2, 4), np.float32),
  )
  answering.save_calibration(fitted, epath.Path(tmp_path))
  same = {"model": "vit_tiny", "step": 4, "checkpoint": None, "num_classes": 3}
  loaded, note = answering.load_calibration(epath.Path(tmp_path), same)
  assert note == "" and loaded.to_json() == fitted.to_json()
  np.testing.assert_array_equal(loaded.prototypes, fitted.prototypes)
  loaded, note = answering.load_calibration(epath.Path(tmp_path), {**same, "step": 2})
  assert loaded is None
  assert note == (
    f"uncalibrated: {tmp_path / 'calibration.json'} was fitted for step=4 but this model has "
    "step=2; calibrate this checkpoint (python -m animesion_jax.calibrate)"
  )
  # Answers then say so and name every picture.
  answerer = answering.Answerer(["a", "b", "c"], loaded, note=note)
  (answer,) = answerer.answer(np.array([[0.2, 0.1, 0.0]]), np.ones((1, 4)) / 2)
  assert answer.character == "a" and not answer.calibrated and "step=4" in answer.note
  # Nothing there at all: the plain uncalibrated note.
  assert answering.load_calibration(epath.Path(tmp_path / "none"), same) == (
    None,
    answering.UNCALIBRATED_NOTE,
  )


@pytest.mark.slow
def test_training_stores_a_calibration_that_names_most_known_validation_pictures(trained_workdir):
  workdir = trained_workdir
  record = json.loads(open(os.path.join(workdir, "calibration.json")).read())
  assert record["provenance"]["step"] == trained_run.TRAIN_STEPS
  assert record["score"] in calibration.SCORES
  assert record["accept"] == 0.95 and record["temperature"] > 0
  arrays = np.load(os.path.join(workdir, "calibration.npz"))
  assert arrays["prototypes"].shape[0] == record["provenance"]["num_classes"]
  assert arrays["no_character"].shape == (
    fitting.NO_CHARACTER_PICTURES,
    arrays["prototypes"].shape[1],
  )
  rule = record["metrics"]["no_character_rule"]
  assert rule["known_validation_rejected"] <= calibration.NO_CHARACTER_BUDGET
  assert record["no_character_kept"] == pytest.approx(1 - rule["known_validation_rejected"])
  # The run's answers name the share `accept` of its known validation pictures (the rest are
  # unknown), within the rounding of a quantile over the split's pictures.
  run = recognizer.load_run(workdir, "latest")
  assert run.answerer.calibration is not None and run.answerer.note == ""
  config = run_dir.RunDir(workdir).load_config()
  builder = datasets.open_dataset(config.dataset, config.data_dir, config.dataset_config)
  _, validation = fitting.calibration_sources(config, builder)
  logits, embeddings, _ = fitting.embed_source(run, validation)
  answers = run.answer(logits, embeddings)
  named = np.mean([not a.unknown for a in answers])
  assert abs(named - 0.95) <= 2 / len(answers), (named, len(answers))


@pytest.mark.slow
def test_calibrate_command_from_a_relative_workdir(trained_workdir, tmp_path):
  trained_run.copy_of_trained_workdir(tmp_path / "run")
  os.remove(tmp_path / "run" / "calibration.json")
  result = subprocess.run(
    [sys.executable, "-m", "animesion_jax.calibrate", "--workdir=run", "--accept=0.9"],
    cwd=tmp_path,
    env=_env(),
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert "AUROC" in result.stdout and "temperature" in result.stdout
  record = json.loads((tmp_path / "run" / "calibration.json").read_text())
  assert record["accept"] == 0.9
