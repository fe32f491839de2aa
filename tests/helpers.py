"""Shared test set-up: a tiny built synthetic dataset and a tiny training config."""

import functools
import os
import tempfile

import ml_collections

from configs import quickstart

# One build per test session, shared by every test that trains.
_DATA_DIR = os.path.join(tempfile.gettempdir(), "animesion_jax_test_data")


@functools.cache
def synthetic_data_dir() -> str:
  """Builds the 'small' synthetic dataset (560/112/224 images) once per session."""
  from animesion_jax.data import datasets  # pylint: disable=g-import-not-at-top
  datasets.open_dataset("synthetic_characters", _DATA_DIR, "small", build_if_missing=True)
  return _DATA_DIR


def tiny_config(**overrides) -> ml_collections.ConfigDict:
  """A seconds-long run: a 2-layer ViT on 16 px synthetic images."""
  config = quickstart.get_config()
  config.data_dir = synthetic_data_dir()
  config.dataset_config = "small"
  config.image_size = 16
  config.resize_margin = 4
  config.model.patch_size = 4
  config.model.hidden_size = 32
  config.model.mlp_dim = 64
  config.model.num_heads = 2
  config.model.num_layers = 2
  config.batch_size = 32
  config.eval_batch_size = 64
  config.num_train_steps = 4
  config.learning_rate = 0.05
  config.warmup_epochs = 0.0
  config.log_every_steps = 2
  config.checkpoint_every_steps = 2
  config.eval_every_epochs = 100
  for key, value in overrides.items():
    config[key] = value
  return config
