"""Held-out classes (config.open_set): out of training, validation and the model's classes."""

import json
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from animesion_jax.data import holdout
from animesion_jax.training import config_validation
from animesion_jax.training import loop
from tests import helpers

_NAMES = [f"c{i}" for i in range(10)]
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(classes="", count=0, seed=0):
  return ml_collections.ConfigDict(
    {"seed": seed, "open_set": {"holdout_classes": classes, "holdout_count": count}}
  )


def test_names_and_count_are_held_out_and_known_ids_renumbered():
  held = holdout.from_config(_config("c3, c7", 2, seed=5), _NAMES)
  assert {"c3", "c7"} <= set(held.held_out) and len(held.held_out) == 4
  assert held.known_names == [n for n in _NAMES if n not in held.held_out]
  ids = held.new_ids
  assert sorted(ids[ids >= 0]) == list(range(6))
  assert [i for i, v in enumerate(ids) if v < 0] == held.held_out_ids
  # The seed decides which extra classes; the same seed the same ones.
  assert holdout.from_config(_config("", 3, seed=1), _NAMES) == holdout.from_config(
    _config("", 3, seed=1), _NAMES
  )
  assert holdout.from_config(_config(), _NAMES).held_out == ()


def test_bad_holdouts_are_clear_config_errors():
  with pytest.raises(config_validation.ConfigError, match="closest.*c1"):
    holdout.from_config(_config("c1x"), _NAMES)
  with pytest.raises(config_validation.ConfigError, match="at least 2"):
    holdout.from_config(_config("", 9), _NAMES)


def test_known_and_unknown_sources_split_records_and_relabel():
  held = holdout.Holdout(tuple(_NAMES), ("c1", "c4"))
  labels = np.array([0, 1, 4, 2, 1, 9])
  source = [{"image": f"img{i}", "label": int(label)} for i, label in enumerate(labels)]
  known = holdout.known_source(source, labels, held)
  assert [r["image"] for r in known.__getitems__(list(range(len(known))))] == [
    "img0",
    "img3",
    "img5",
  ]
  assert [known[i]["label"] for i in range(len(known))] == [0, 1, 7]
  unknown = holdout.unknown_source(source, labels, held)
  assert [(r["image"], r["label"]) for r in (unknown[i] for i in range(len(unknown)))] == [
    ("img1", 1),
    ("img2", 4),
    ("img4", 1),
  ]


def test_training_data_leaves_out_the_held_out_classes():
  config = helpers.tiny_config()
  config.open_set.holdout_count = 2
  data = loop.open_data(config)
  full = loop.open_data(helpers.tiny_config())
  assert len(data.class_names) == len(full.class_names) - 2
  assert set(data.class_names) < set(full.class_names)
  for source in [data.train_source, *data.eval_sources.values()]:
    labels = np.array([source[i]["label"] for i in range(len(source))])
    assert labels.min() >= 0 and labels.max() < len(data.class_names)
  # Every train record of a known class is kept (and only those).
  held = set(full.class_names) - set(data.class_names)
  full_train = [
    full.class_names[full.train_source[i]["label"]] for i in range(len(full.train_source))
  ]
  assert len(data.train_source) == sum(name not in held for name in full_train)
  assert [data.class_names[data.train_source[i]["label"]] for i in range(5)] == [
    n for n in full_train if n not in held
  ][:5]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_held_out_run_calibrates_evaluates_and_benchmarks(tmp_path):
  """Train with 2 held-out classes -> calibration.json -> evaluate -> the benchmark command."""
  from animesion_jax import calibrate  # pylint: disable=g-import-not-at-top
  from animesion_jax import evaluate  # pylint: disable=g-import-not-at-top

  config = helpers.tiny_config()
  config.open_set.holdout_count = 2
  config.model.num_layers = 1
  workdir = tmp_path / "run"
  calibrate.train_and_calibrate(config, workdir)
  names = json.loads((workdir / "class_names.json").read_text())
  assert len(names) == len(loop.open_data(helpers.tiny_config()).class_names) - 2
  record = json.loads((workdir / "calibration.json").read_text())
  assert record["provenance"]["num_classes"] == len(names)

  report = evaluate.evaluate(str(workdir), "test", output_dir=str(tmp_path / "eval"))
  assert report["num_classes"] == len(names)
  section = report["open_set"]
  assert len(section["held_out_classes"]) == 2 and section["held_out_pictures"] > 0
  assert set(section["scores"]) == {"max_softmax", "max_logit", "energy", "cosine"}
  # The held-out classes are exactly the dataset's classes the model lacks, and their test
  # pictures are the unknown set.
  full = loop.open_data(helpers.tiny_config())
  assert set(section["held_out_classes"]) == set(full.class_names) - set(names)
  test = full.eval_sources["test"]
  test_names = [full.class_names[test[i]["label"]] for i in range(len(test))]
  assert section["held_out_pictures"] == sum(n in section["held_out_classes"] for n in test_names)
  assert "Held out (" in evaluate.format_summary(report)

  env = helpers.subprocess_env()
  done = subprocess.run(
    [
      sys.executable,
      os.path.join(_REPO, "tools", "open_set_benchmark.py"),
      "--workdir=run",
      "--shots=1,2",
      "--no_character=30",
      "--draws=2",
      "--json=bench.json",
    ],
    cwd=tmp_path,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  assert "AUROC known vs held-out" in done.stdout and "2-shot: held-out named right" in done.stdout
  bench = json.loads((tmp_path / "bench.json").read_text())
  assert bench["held_out"] == section["held_out_classes"]
  assert bench["auroc"] == pytest.approx(section["scores"][bench["score"]]["auroc"], abs=1e-6)
  # The tool and evaluate answer the same pictures the same way.
  assert bench["held_out_test_pictures"] == section["held_out_pictures"]
  assert bench["held_out_unknown"] == pytest.approx(section["held_out_answered_unknown"])
  assert bench["known_rejected"] == pytest.approx(section["known_answered_unknown"])
  # A 2-shot accuracy is a share of the held-out pictures, averaged over the 2 draws.
  right = bench["shot2_accuracy"] * 2 * bench["held_out_test_pictures"]
  assert right == pytest.approx(round(right), abs=1e-6)


def _train_labels(source) -> np.ndarray:
  return np.array([source[i]["label"] for i in range(len(source))])


def test_long_tail_losses_see_the_known_classes_only():
  config = helpers.tiny_config(loss="balanced_softmax")
  config.open_set.holdout_count = 3
  data = loop.open_data(config)
  # One offset per model class (it was one per dataset class: a shape mismatch in the loss), the
  # log of that known class's training pictures.
  counts = np.bincount(_train_labels(data.train_source), minlength=len(data.class_names))
  np.testing.assert_allclose(data.logit_offsets, np.log(counts), rtol=1e-6)


def test_class_balanced_sampling_draws_known_records_only():
  config = helpers.tiny_config(class_balanced_sampling=True)
  config.open_set.holdout_count = 3
  data = loop.open_data(config)
  # One label per record of the known train source, its known class id (the dataset's labels of
  # every record made the sampler draw indices past the end: IndexError).
  np.testing.assert_array_equal(data.train_labels, _train_labels(data.train_source))
