"""Calibration after training, the calibrate command, and answers that can say unknown."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from animesion_jax.open_set import answering
from animesion_jax.open_set import calibration
from animesion_jax.open_set import fitting
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
  assert second.describe() == f"unknown (closest: b {100 * p[1].max():.0f}%)"
  assert answering.Answer.from_json(second.to_json()) == second
  # --accept overrides the share of known pictures named: 0.5 -> threshold 0.6 (the median known
  # score), still unknown; 1.0 -> 0.3 (the lowest known score), named.
  half = dataclasses.replace(answerer, accept=0.5)
  assert half.threshold == pytest.approx(0.6)
  assert half.answer(logits, embeddings)[1].unknown
  every = dataclasses.replace(answerer, accept=1.0)
  assert every.answer(logits, embeddings)[1].character == "b"


def test_uncalibrated_answers_name_everything_and_say_so():
  answerer = answering.Answerer(["a", "b"], note=answering.UNCALIBRATED_NOTE)
  (answer,) = answerer.answer(np.array([[0.1, 0.0]]), np.ones((1, 3)) / np.sqrt(3))
  assert answer.character == "a" and not answer.unknown and not answer.calibrated
  assert answer.note == answering.UNCALIBRATED_NOTE and "calibrate" in answer.note


@pytest.mark.slow
def test_training_stores_a_calibration_that_names_most_known_validation_pictures():
  workdir = trained_run.tiny_trained_workdir()
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
  quantiles = np.asarray(record["quantiles"][record["score"]])
  assert np.all(np.diff(quantiles) >= 0)
  assert quantiles[0] <= record["threshold"] <= quantiles[12]  # ~5% of known pictures below.


@pytest.mark.slow
def test_calibrate_command_from_a_relative_workdir(tmp_path):
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
