"""A tiny trained run shared by the evaluation and prediction tests (trained once per session)."""

import functools
import os
import shutil

from tests import helpers

TRAIN_STEPS = 4


@functools.cache
def tiny_trained_workdir() -> str:
  """A workdir of a 4-step 1-layer ViT run on the small synthetic set (do not modify it).

  It lives in this test session's own directory (see tests/helpers.py), never reused by a later
  session.
  """
  from animesion_jax import calibrate  # pylint: disable=g-import-not-at-top

  workdir = helpers.session_dir("trained_run")
  config = helpers.tiny_config(num_train_steps=TRAIN_STEPS)
  config.model.num_layers = 1  # Compiles faster; depth does not matter to these tests.
  calibrate.train_and_calibrate(config, workdir)
  return workdir


def copy_of_trained_workdir(destination) -> str:
  """A private copy of the trained run, for tests that change its files."""
  return shutil.copytree(tiny_trained_workdir(), destination)


def write_test_pictures(folder, count: int) -> list[str]:
  """The first `count` test-split images of the trained run's dataset as PNG files 00.png, ..."""
  from animesion_jax import run_dir  # pylint: disable=g-import-not-at-top
  from animesion_jax.data import datasets  # pylint: disable=g-import-not-at-top

  config = run_dir.RunDir(tiny_trained_workdir()).load_config()
  builder = datasets.open_dataset(config.dataset, config.data_dir, config.dataset_config)
  source = datasets.data_source(builder, "test")
  paths = [os.path.join(folder, f"{i:02d}.png") for i in range(count)]
  for i, path in enumerate(paths):
    with open(path, "wb") as f:
      f.write(source[i]["image"])
  return paths
