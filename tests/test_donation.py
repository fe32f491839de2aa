"""config.donate_state: donated per platform unless set (docs/recipe_differences.md)."""

import jax
import ml_collections
import pytest

from animesion_jax import config_schema
from animesion_jax.training import config_validation
from animesion_jax.training import loop


def _config(**fields):
  config = config_schema.vit_config("vit_tiny", "moeimouto")
  config.update(fields)
  return config


def test_unset_donates_on_accelerators_only():
  config = _config()
  assert config.donate_state is None
  config_validation.validate(config, num_devices=1, num_processes=1)
  assert loop.donates_state(config) == (jax.default_backend() != "cpu")
  assert jax.default_backend() == "cpu"  # This test machine: the CPU default, not donated.
  assert not loop.donates_state(config)


@pytest.mark.parametrize("value", [True, False])
def test_set_is_obeyed_on_every_platform(value):
  config = _config(donate_state=value)
  config_validation.validate(config, num_devices=1, num_processes=1)
  assert loop.donates_state(config) is value


def test_a_value_other_than_true_false_or_none_is_refused():
  # The schema's field takes only booleans; a config read from a file (a run's) takes anything.
  with pytest.raises(TypeError):
    _config().donate_state = "auto"
  config = ml_collections.ConfigDict({**_config().to_dict(), "donate_state": "auto"})
  with pytest.raises(config_validation.ConfigError, match="config.donate_state='auto'"):
    config_validation.validate(config, num_devices=1, num_processes=1)
