"""End-to-end training: one step, a short run that learns, multi-device equivalence, resume."""

import json
import os

import jax
import ml_collections
import numpy as np
import pytest

from animesion_jax import run_dir
from animesion_jax import sharding
from animesion_jax.data import datasets
from animesion_jax.data import pipeline
from animesion_jax.training import checkpointing
from animesion_jax.training import config_validation
from animesion_jax.training import loop
from animesion_jax.training import model_setup
from animesion_jax.training import steps
from tests import helpers


def _final_params(workdir, config):
  mesh = sharding.create_mesh()
  setup = model_setup.create(
    config, 28, mesh, steps_per_epoch=17, total_steps=config.num_train_steps
  )
  state, _, step = checkpointing.restore(run_dir.RunDir(workdir), setup.abstract_state, "latest")
  return step, jax.tree.map(np.asarray, state.params)


def test_one_step_end_to_end(tmp_path):
  config = helpers.tiny_config(num_train_steps=1)
  results = loop.train_and_evaluate(config, str(tmp_path))
  with open(tmp_path / "results.json") as f:
    written = json.load(f)
  assert written["steps"] == 1
  for split, size in (("validation", 112), ("test", 224)):
    assert written[split]["num_examples"] == size
    assert 0.0 <= written[split]["top1"] <= written[split]["top5"] <= 1.0
    assert np.isfinite(written[split]["loss"])
  assert results["test"]["top1"] == written["test"]["top1"]
  assert (tmp_path / "checkpoints" / "1").is_dir()
  assert (tmp_path / "config.json").is_file()
  assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path))


def test_short_run_learns(tmp_path):
  config = helpers.tiny_config(
    num_train_steps=120,
    learning_rate=0.1,
    log_every_steps=20,
    checkpoint_every_steps=1000,
    schedule="warmup_cosine",
    warmup_epochs=1.0,
  )
  results = loop.train_and_evaluate(config, str(tmp_path))
  with open(tmp_path / "metrics.jsonl") as f:
    train_losses = [r["loss"] for r in map(json.loads, f) if r["split"] == "train"]
  chance = 1 / 28
  assert train_losses[-1] < 0.75 * train_losses[0], train_losses
  assert results["test"]["top1"] > 5 * chance, results["test"]
  assert results["validation"]["top5"] > results["validation"]["top1"]


def test_one_device_and_eight_devices_agree():
  assert jax.device_count() == 8, "conftest should force 8 CPU devices"
  config = helpers.tiny_config()
  builder = datasets.open_dataset("synthetic_characters", config.data_dir, "small")
  source = datasets.data_source(builder, "train")
  loader = pipeline.train_loader(
    source, global_batch_size=32, image_size=16, resize_margin=4, horizontal_flip=True, seed=0
  )
  batches = [b for _, b in zip(range(2), iter(loader))]
  outcomes = []
  for devices in (jax.devices()[:1], jax.devices()):
    mesh = sharding.create_mesh(devices)
    setup = model_setup.create(config, 28, mesh, steps_per_epoch=17, total_steps=10)
    step_fn = jax.jit(
      lambda s, b, setup=setup: steps.train_step(
        s, b, model=setup.model, tx=setup.tx, normalization="half"
      )
    )
    state, losses = setup.state, []
    for batch in batches:
      state, metrics = step_fn(state, sharding.to_global_batch(batch, mesh))
      losses.append(float(metrics.compute()["loss"]))
    outcomes.append((losses, jax.tree.map(np.asarray, state.params)))
    assert len(state.params["head"]["kernel"].sharding.device_set) == len(devices)
  (losses_1, params_1), (losses_8, params_8) = outcomes
  np.testing.assert_allclose(losses_1, losses_8, rtol=1e-5)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, atol=2e-6, rtol=1e-5), params_1, params_8
  )


@pytest.mark.slow
def test_resume_matches_uninterrupted_run(tmp_path):
  config = helpers.tiny_config(num_train_steps=6, checkpoint_every_steps=100)
  loop.train_and_evaluate(config, str(tmp_path / "straight"))
  halted = helpers.tiny_config(num_train_steps=6, checkpoint_every_steps=100, halt_after_steps=3)
  first = loop.train_and_evaluate(halted, str(tmp_path / "resumed"))
  assert first["steps"] == 3 and not first["completed"]
  assert not (tmp_path / "resumed" / "results.json").exists()
  second = loop.train_and_evaluate(halted, str(tmp_path / "resumed"))
  assert second["steps"] == 6
  step_a, params_a = _final_params(str(tmp_path / "straight"), config)
  step_b, params_b = _final_params(str(tmp_path / "resumed"), config)
  assert step_a == step_b == 6
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), params_a, params_b)
  straight = json.loads((tmp_path / "straight" / "results.json").read_text())
  resumed = json.loads((tmp_path / "resumed" / "results.json").read_text())
  assert straight["test"] == pytest.approx(resumed["test"], abs=1e-6)


@pytest.mark.parametrize(
  "overrides, field",
  [
    ({"model.name": "vit_b17"}, "config.model.name"),
    ({"image_size": 18}, "config.image_size"),
    ({"batch_size": 36}, "config.batch_size"),
    ({"dataset": "imagenet"}, "config.dataset"),
    ({"optimizer": "lion"}, "config.optimizer"),
  ],
)
def test_bad_config_fails_before_compiling(tmp_path, overrides, field):
  config = helpers.tiny_config()
  for key, value in overrides.items():
    if key == "model.name":
      config.model.name = value
    else:
      config[key] = value
  with pytest.raises(config_validation.ConfigError, match=field.replace(".", r"\.")):
    loop.train_and_evaluate(config, str(tmp_path))
  assert not (tmp_path / "checkpoints").exists()


def _tiny_resnet_config(**overrides):
  config = helpers.tiny_config(**overrides)
  config.model = ml_collections.ConfigDict(
    {"name": "resnet18", "base_width": 4, "stage_sizes": (1,)}
  )
  config.normalization = "imagenet"
  return config


@pytest.mark.parametrize("original", [True, False])
def test_original_eval_mode_after_first_epoch_freezes_batchnorm(tmp_path, original):
  """The original code trained in eval mode after its first validation: BatchNorm frozen."""
  config = _tiny_resnet_config(
    num_train_steps=3,
    eval_every_epochs=1 / 18,
    checkpoint_every_steps=1,
    keep_checkpoints=5,
    original_eval_mode_after_first_epoch=original,
  )
  loop.train_and_evaluate(config, str(tmp_path))
  setup = model_setup.create(config, 28, sharding.create_mesh(), 18, 3)
  states = {
    step: checkpointing.restore(
      run_dir.RunDir(tmp_path), setup.abstract_state, str(tmp_path / "checkpoints" / str(step))
    )[0]
    for step in (1, 3)
  }
  stats_moved = any(
    not np.allclose(a, b)
    for a, b in zip(jax.tree.leaves(states[1].batch_stats), jax.tree.leaves(states[3].batch_stats))
  )
  params_moved = any(
    not np.allclose(a, b)
    for a, b in zip(jax.tree.leaves(states[1].params), jax.tree.leaves(states[3].params))
  )
  assert params_moved
  assert stats_moved == (not original)


class _NoValidationBuilder:
  """A dataset with train and test only (as moeImouto), records = their ids."""

  class info:  # pylint: disable=invalid-name
    splits = {"train": None, "test": None}

  def as_data_source(self, split, **unused_kwargs):
    return list(range(100)) if split == "train" else list(range(1000, 1020))


def test_validation_fraction_carves_a_disjoint_validation_split():
  builder = _NoValidationBuilder()
  carve = lambda split, fraction: datasets.split_source(builder, split, "moeimouto", fraction)
  validation, rest = carve("validation", 0.1), carve("train", 0.1)
  assert len(validation) == 10 and len(rest) == 90
  assert sorted(list(validation) + list(rest)) == list(range(100))
  assert list(carve("validation", 0.1)) == list(validation)  # Same carve every time.
  assert list(carve("test", 0.1)) == list(range(1000, 1020))
  assert list(carve("train", 0.0)) == list(range(100))
