"""A tiny trained run shared by the evaluation and prediction tests (trained once per session)."""

import functools
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
