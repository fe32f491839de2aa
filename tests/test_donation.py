"""config.donate_state: what the train step updates in place, per platform unless set."""

import jax
import ml_collections
import numpy as np
import pytest

from animesion_jax import config_schema
from animesion_jax import sharding
from animesion_jax.training import config_validation
from animesion_jax.training import jit_step
from animesion_jax.training import model_setup


def _config(**fields):
  config = config_schema.vit_config("vit_tiny", "moeimouto")
  config.update(image_size=32, batch_size=8, **fields)
  return config


def test_unset_donates_the_state_on_accelerators_and_the_parameters_on_cpu():
  config = _config()
  assert config.donate_state is None
  config_validation.validate(config, num_devices=1, num_processes=1)
  assert jax.default_backend() == "cpu"  # This test machine.
  assert jit_step.donated(config) == "params"


@pytest.mark.parametrize(("value", "part"), [(True, "state"), (False, "")])
def test_set_is_obeyed_on_every_platform(value, part):
  config = _config(donate_state=value)
  config_validation.validate(config, num_devices=1, num_processes=1)
  assert jit_step.donated(config) == part


def test_a_value_other_than_true_false_or_none_is_refused():
  # The schema's field takes only booleans; a config read from a file (a run's) takes anything.
  with pytest.raises(TypeError):
    _config().donate_state = "auto"
  config = ml_collections.ConfigDict({**_config().to_dict(), "donate_state": "auto"})
  with pytest.raises(config_validation.ConfigError, match="config.donate_state='auto'"):
    config_validation.validate(config, num_devices=1, num_processes=1)


@pytest.mark.slow  # Compiles three train steps (~15 s on an idle machine, minutes under load).
def test_every_donation_takes_the_same_steps():
  """Two steps with the parameters donated alone (called, lowered and compiled with the state
  like the others), the whole state, or nothing: the same parameters and momentum."""
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (8, 32, 32, 3), np.uint8)
  mesh = sharding.create_mesh(fsdp_size=1)
  batch = sharding.to_global_batch({"image": images, "label": np.arange(8, dtype=np.int32)}, mesh)
  leaves = {}
  for value in (None, True, False):
    config = _config(donate_state=value)
    setup = model_setup.create(config, 10, mesh, steps_per_epoch=10, total_steps=100)
    step = jit_step.jit_train_step(setup, config, mesh)
    compiled = step.lower(setup.state, batch).compile()
    assert compiled.cost_analysis() is not None  # What tools/benchmark.py reads from it.
    state, _ = compiled(setup.state, batch)
    state, _ = step(state, batch)
    leaves[value] = jax.tree.leaves(jax.device_get((state.params, state.opt_state)))
    if value is None:  # The parameters went in place; the old state's momentum is still there.
      assert setup.state.params["head"]["bias"].is_deleted()
      assert not jax.tree.leaves(setup.state.opt_state)[-1].is_deleted()
  for value in (True, False):
    for apart, other in zip(leaves[None], leaves[value], strict=True):
      np.testing.assert_array_equal(apart, other)
