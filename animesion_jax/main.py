"""Command line entry point for training.

  python -m animesion_jax.main --config=configs/vit_b16.py:dafre --workdir=runs/b16 \\
      --config.batch_size=128
"""

import logging as py_logging

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from animesion_jax.cli import common

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, summaries, results.")
common.define_runtime_flags(distributed=True)
flags.adopt_module_key_flags(common)  # --help lists them with this program's own.
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries(py_logging.Filter):
  """Drops the INFO chatter of orbax, grain, tfds and gcsfs so the progress lines stay readable."""

  _NOISY = ("/orbax/", "/grain/", "/tensorflow_datasets/", "/etils/", "/clu/", "/gcsfs/")

  def filter(self, record):
    if "did not provide metrics" in record.getMessage():
      return False  # Orbax, at every periodic save: only evaluations carry the ranking metric.
    return record.levelno >= py_logging.WARNING or not any(
      part in record.pathname for part in self._NOISY
    )


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.get_absl_logger().addFilter(_QuietLibraries())
  common.start_jax(flags.FLAGS)
  if jax.process_index() > 0:
    logging.set_verbosity(logging.WARNING)  # Progress and summaries come from process 0.
  from animesion_jax import calibrate  # pylint: disable=g-import-not-at-top

  logging.info(
    "JAX process %d/%d, %d local / %d global devices (%s).",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
    jax.devices()[0].platform,
  )
  try:
    calibrate.train_and_calibrate(_CONFIG.value, _WORKDIR.value)
  except common.USER_ERRORS as error:  # The message says what is wrong; no traceback.
    common.exit_with_user_error("main", error)


if __name__ == "__main__":
  app.run(main)
