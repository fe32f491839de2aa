"""Long-tail training end to end on `synthetic_characters/longtail_small` (slow: trains twice).

Stage 1 trains with balanced softmax; stage 2 re-trains a fresh classifier on the frozen stage-1
backbone with class-balanced sampling; evaluate reports the tau-normalised classifier; the two
runs compare in one table.
"""

import flax
import jax
import numpy as np
import pytest

from animesion_jax import evaluate
from animesion_jax import run_dir
from animesion_jax import sharding
from animesion_jax.training import checkpointing
from animesion_jax.training import loop
from animesion_jax.training import model_setup
from tests import helpers
from tools import compare_runs


def _config(data_dir, **overrides):
  config = helpers.tiny_config(
    data_dir=str(data_dir),
    dataset_config="longtail_small",
    build_dataset_if_missing=True,
    num_train_steps=3,
    many_shot_above=10,
    few_shot_below=5,
  )
  config.model.num_layers = 1
  for key, value in overrides.items():
    config[key] = value
  return config


def _params(workdir, config):
  setup = model_setup.create(config, 30, sharding.create_mesh(), 10, 3)
  state = checkpointing.restore(run_dir.RunDir(workdir), setup.abstract_state, "latest")[0]
  return flax.traverse_util.flatten_dict(jax.device_get(state.params), sep="/")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_stage_long_tail_training(tmp_path):
  data_dir = tmp_path / "tfds"
  first = str(tmp_path / "balanced")
  config = _config(data_dir, loss="balanced_softmax")
  results = loop.train_and_evaluate(config, first)
  assert results["completed"] and np.isfinite(results["test"]["loss"])

  second = str(tmp_path / "crt")
  crt = _config(data_dir, freeze_backbone=True, class_balanced_sampling=True)
  crt.init_from.source = "run"
  crt.init_from.path = first
  crt.init_from.reset_classifier = True
  loop.train_and_evaluate(crt, second)
  before, after = _params(first, config), _params(second, crt)
  for key, value in after.items():
    if key.startswith("head/"):
      assert not np.array_equal(value, before[key]), key  # Re-trained from a fresh start.
    else:
      np.testing.assert_array_equal(value, before[key], err_msg=key)  # Frozen backbone.

  report = evaluate.evaluate(second, "test", "latest", tau_norm=1.0)
  assert report["output_dir"].endswith("test_step3_tau1")
  assert report["tau_norm"] == 1.0
  assert report["shot_groups"] == {"many_above": 10, "few_below": 5}
  assert sum(g["classes"] for g in report["groups"].values()) == 30
  plain = evaluate.evaluate(second, "test", "latest")
  assert plain["output_dir"].endswith("test_step3") and plain["tau_norm"] == 0.0
  evaluate.evaluate(first, "test", "latest")
  table = compare_runs.compare(
    [first, second, report["output_dir"]], output=tmp_path / "compare.png"
  ).splitlines()
  assert [line.split(" | ")[0] for line in table[2:]] == ["| balanced", "| crt", "| crt tau=1"]
  assert table[2].split(" | ")[1] == "balanced_softmax"
  assert (tmp_path / "compare.png").exists()
