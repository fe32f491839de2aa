"""Training that starts from a converted checkpoint (config.init_from), incl. frozen backbones."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from animesion_jax import convert
from animesion_jax import models
from animesion_jax import run_dir
from animesion_jax import sharding
from animesion_jax.training import checkpointing
from animesion_jax.training import config_validation
from animesion_jax.training import loop
from animesion_jax.training import model_setup
from tests import helpers


def _export(tmp_path, model, image_size):
  variables = jax.jit(
    lambda: model.init(
      jax.random.PRNGKey(7), jnp.zeros((1, image_size, image_size, 3)), train=False
    )
  )()
  convert.save(str(tmp_path), model, variables, {"image_size": image_size, "source": "test"})
  return jax.tree.map(np.asarray, dict(variables))


def _trained_state(workdir, config):
  setup = model_setup.create(config, 28, sharding.create_mesh(), 17, config.num_train_steps)
  state, _, _ = checkpointing.restore(run_dir.RunDir(workdir), setup.abstract_state, "latest")
  return jax.tree.map(np.asarray, state.params), jax.tree.map(np.asarray, state.batch_stats)


@pytest.mark.slow
def test_pretrained_resnet_trains_only_the_classifier(tmp_path):
  model = models.create_model("resnet18", num_classes=28, base_width=8)
  start = _export(tmp_path / "pretrained", model, 16)
  config = helpers.tiny_config(num_train_steps=3, normalization="imagenet", freeze_backbone=True)
  config.model = {"name": "resnet18", "base_width": 8}
  config.init_from.source = "animesion"
  config.init_from.path = str(tmp_path / "pretrained")
  loop.train_and_evaluate(config, str(tmp_path / "run"))
  params, batch_stats = _trained_state(tmp_path / "run", config)
  flat_start = flax.traverse_util.flatten_dict(start["params"], sep="/")
  flat_end = flax.traverse_util.flatten_dict(params, sep="/")
  changed = sorted(k for k in flat_end if not np.array_equal(flat_end[k], flat_start[k]))
  assert changed == ["fc/bias", "fc/kernel"]
  # As in the original (torch .train() on a frozen net), BatchNorm statistics keep updating.
  assert not np.array_equal(batch_stats["bn1"]["mean"], start["batch_stats"]["bn1"]["mean"])


@pytest.mark.slow
def test_vit_fine_tunes_every_layer_from_checkpoint(tmp_path):
  config = helpers.tiny_config(num_train_steps=2)
  model = model_setup.build_model(config, 28)
  start = _export(tmp_path / "pretrained", model, 16)
  config.init_from.source = "animesion"
  config.init_from.path = str(tmp_path / "pretrained")
  loop.train_and_evaluate(config, str(tmp_path / "run"))
  params, _ = _trained_state(tmp_path / "run", config)
  flat_start = flax.traverse_util.flatten_dict(start["params"], sep="/")
  flat_end = flax.traverse_util.flatten_dict(params, sep="/")
  unchanged = [k for k in flat_end if np.array_equal(flat_end[k], flat_start[k])]
  assert not unchanged
  # Started from the checkpoint, not from a fresh init: still close to it after 2 small steps.
  drift = max(float(np.max(np.abs(flat_end[k] - flat_start[k]))) for k in flat_end)
  assert drift < 0.5


@pytest.mark.slow
def test_checkpoint_that_does_not_fit_the_config_names_shapes(tmp_path):
  config = helpers.tiny_config(num_train_steps=2)
  other = models.create_model(
    "vit_tiny", num_classes=28, patch_size=4, hidden_size=48, mlp_dim=64, num_heads=2, num_layers=2
  )
  _export(tmp_path / "pretrained", other, 16)
  config.init_from.source = "animesion"
  config.init_from.path = str(tmp_path / "pretrained")
  with pytest.raises(ValueError, match=r"cls: model \(1, 1, 32\), checkpoint \(1, 1, 48\)"):
    loop.train_and_evaluate(config, str(tmp_path / "run"))


def test_missing_init_from_file_fails_before_compiling(tmp_path):
  config = helpers.tiny_config()
  config.init_from.source = "pytorch_vit"
  config.init_from.path = str(tmp_path / "nope.pth")
  with pytest.raises(config_validation.ConfigError, match="does not exist"):
    loop.train_and_evaluate(config, str(tmp_path / "run"))


@pytest.mark.parametrize("num_classes", [28, 10])
def test_init_from_another_run(trained_workdir, num_classes):
  """The original's DAF:re -> moeImouto transfer: start from a run; a new class count gets a
  new classifier, everything else is the run's."""
  from tests import trained_run  # pylint: disable=g-import-not-at-top

  workdir = trained_workdir
  config = helpers.tiny_config(num_train_steps=trained_run.TRAIN_STEPS)
  config.model.num_layers = 1
  trained = checkpointing.restore(
    run_dir.RunDir(workdir),
    model_setup.create(config, 28, sharding.create_mesh(), 18, 4).abstract_state,
    "latest",
  )[0]
  config.init_from.source = "run"
  config.init_from.path = workdir
  config_validation.validate(config)
  setup = model_setup.create(config, num_classes, sharding.create_mesh(), 18, 4)
  flat = flax.traverse_util.flatten_dict(jax.device_get(setup.state.params), sep="/")
  want = flax.traverse_util.flatten_dict(jax.device_get(trained.params), sep="/")
  assert set(flat) == set(want)
  for key, value in flat.items():
    if key.startswith("head/") and num_classes != 28:
      assert value.shape[-1] == num_classes  # Fresh classifier for the new classes.
    else:
      np.testing.assert_array_equal(value, want[key], err_msg=key)
