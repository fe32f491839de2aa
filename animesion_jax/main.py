"""Command line entry point for training.

  python -m animesion_jax.main --config=configs/vit_b16.py:dafre --workdir=runs/b16 \\
      --config.batch_size=128
"""

import logging as py_logging
import os

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from animesion_jax import config_validation
from animesion_jax import xla_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, summaries, results.")
_DISTRIBUTED = flags.DEFINE_bool(
  "distributed",
  None,
  "Call jax.distributed.initialize() (multi-host). Default: on when the "
  "environment names a coordinator (TPU VM pods, SLURM, JAX_COORDINATOR_ADDRESS) or "
  "--coordinator_address is given.",
)
_COORDINATOR = flags.DEFINE_string(
  "coordinator_address",
  None,
  "host:port of process 0, for multi-process runs without a "
  "cluster environment (e.g. several GPU hosts, or several processes on one machine).",
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (0-based).")
_COMPILATION_CACHE = flags.DEFINE_string(
  "compilation_cache_dir",
  "~/.cache/animesion_jax/xla",
  "Persistent XLA compilation cache, so a resumed or repeated run does not compile again "
  "('' = off; the JAX_COMPILATION_CACHE_DIR environment variable wins).",
)
flags.mark_flags_as_required(["config", "workdir"])


def _wants_distributed() -> bool:
  if _DISTRIBUTED.value is not None:
    return _DISTRIBUTED.value
  return _COORDINATOR.value is not None or any(
    name in os.environ
    for name in ("JAX_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES", "SLURM_JOB_NUM_NODES")
  )


class _QuietLibraries(py_logging.Filter):
  """Drops the INFO chatter of orbax, grain, tfds and gcsfs so the progress lines stay readable."""

  _NOISY = ("/orbax/", "/grain/", "/tensorflow_datasets/", "/etils/", "/clu/", "/gcsfs/")

  def filter(self, record):
    if "did not provide metrics" in record.getMessage():
      return False  # Orbax, at every periodic save: only evaluations carry the ranking metric.
    return record.levelno >= py_logging.WARNING or not any(
      part in record.pathname for part in self._NOISY
    )


def _all_devices_reduce() -> None:
  """One all-device reduction while every process is at the same point.

  The CPU backend creates its gloo context for a device set at the first collective over it and
  allows 30 s between processes; the first train step's reduction (over all devices) comes after
  compilation, which a busy host may finish minutes after the others. Doing it here first means
  the step finds the context made.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  sharding = jax.sharding.NamedSharding(
    jax.sharding.Mesh(np.array(jax.devices()), ("all",)), jax.sharding.PartitionSpec("all")
  )
  ones = jax.make_array_from_callback(
    (jax.device_count(),), sharding, lambda index: np.ones((1,), np.float32)
  )
  total = jax.jit(
    lambda x: x.sum(),
    out_shardings=jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec()),
  )(ones)
  assert int(total) == jax.device_count()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.get_absl_logger().addFilter(_QuietLibraries())
  xla_flags.apply_default_flags()  # Before the backend starts.
  import jax  # pylint: disable=g-import-not-at-top

  if _COMPILATION_CACHE.value and not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(_COMPILATION_CACHE.value))
  if _wants_distributed():
    # Cross-process collectives of the CPU backend need gloo; GPUs and TPUs ignore this.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
      coordinator_address=_COORDINATOR.value,
      num_processes=_NUM_PROCESSES.value,
      process_id=_PROCESS_ID.value,
    )
    _all_devices_reduce()
  if jax.process_index() > 0:
    logging.set_verbosity(logging.WARNING)  # Progress and summaries come from process 0.
  from animesion_jax import train  # pylint: disable=g-import-not-at-top

  logging.info(
    "JAX process %d/%d, %d local / %d global devices (%s).",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
    jax.devices()[0].platform,
  )
  try:
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except config_validation.ConfigError as error:
    raise app.UsageError(str(error)) from None


if __name__ == "__main__":
  app.run(main)
