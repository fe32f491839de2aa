"""What the command line programs share: model flags, user-error exits and JAX start-up.

For CLIs only (main, evaluate, predict, serve, tools/*): it defines absl flags when asked to, so
no library module imports it. A program that loads a model:

  def define_flags():
    cli_common.define_model_flags("With --source: classid_classname.csv ...")
    cli_common.define_runtime_flags(distributed=False)

  def main(argv):
    cli_common.start_jax(flags.FLAGS)
    try:
      model = cli_common.load_from_flags(flags.FLAGS)
    except cli_common.USER_ERRORS as error:
      cli_common.exit_with_user_error("predict", error)

Mistakes in the flags themselves raise app.UsageError (absl prints the usage); anything wrong
with what the flags point at (files, checkpoints, configs) ends in `exit_with_user_error`.
"""

import os
import sys
from typing import Any, NoReturn

from absl import app
from absl import flags
import jax
import numpy as np

from animesion_jax import convert
from animesion_jax import recognizer
from animesion_jax import run_dir
from animesion_jax.cli import xla_flags
from animesion_jax.data import datasets
from animesion_jax.inference import faces
from animesion_jax.inference import head_detector
from animesion_jax.open_set import answering
from animesion_jax.training import checkpointing
from animesion_jax.training import config_validation
from animesion_jax.training import orbax_workarounds

# Errors in what the user gave (paths, files, configs): the CLIs print the message, no traceback.
USER_ERRORS = (
  FileNotFoundError,
  recognizer.LoadError,
  convert.ConversionError,
  checkpointing.DamagedCheckpoint,
  checkpointing.IncompatibleCheckpoint,
  config_validation.ConfigError,
  datasets.MissingClassCounts,
  *answering.USER_ERRORS,
)


def exit_with_user_error(program: str, error: BaseException) -> NoReturn:
  """Prints '<program>: <message>' and exits 1 at once (orbax_workarounds.exit_now: after a
  failed restore, Orbax's late reads would print tracebacks at an ordinary shutdown)."""
  sys.stderr.write(f"{program}: {error}\n")
  orbax_workarounds.exit_now(1)


def define_model_flags(class_names_help: str) -> None:
  """The flags that name the model a command loads: a training run, or a checkpoint file."""
  flags.DEFINE_string(
    "workdir", None, "Training run directory (or give --checkpoint and --source)."
  )
  flags.DEFINE_string(
    "checkpoint",
    None,
    "With --workdir: 'best' (default), 'latest', a step number or a checkpoint step directory. "
    "With --source: the checkpoint file or directory.",
  )
  flags.DEFINE_string(
    "source",
    None,
    "Kind of --checkpoint without a training run: " + ", ".join(recognizer.SOURCES) + ".",
  )
  flags.DEFINE_string("class_names", None, class_names_help)
  flags.DEFINE_integer(
    "num_heads", None, "With --source=pytorch_vit: attention heads (default hidden size / 64)."
  )
  flags.DEFINE_integer("image_size", None, "With --source: input size (default the checkpoint's).")
  flags.DEFINE_float(
    "accept",
    None,
    "Share of known pictures to name; the rest are answered unknown (default: the "
    "calibration's, 0.95). Lower: fewer wrong names, more unknowns.",
  )
  flags.DEFINE_string(
    "gallery",
    None,
    "Directory of the model's calibration.json and gallery/ (enrolled characters); default "
    "the run directory (needed with --source).",
  )


def check_model_flags(flag: Any) -> None:
  """app.UsageError unless the flags of `define_model_flags` name exactly one model."""
  if flag.workdir is not None and flag.source is not None:
    raise app.UsageError(
      "Give either --workdir (a training run) or --checkpoint with --source, not both."
    )
  if flag.workdir is None and flag.source is None:
    raise app.UsageError(
      "Give --workdir=RUN (a training run directory), or "
      "--checkpoint=PATH --source=SOURCE --class_names=FILE."
    )
  if flag.source is not None and flag.checkpoint is None:
    raise app.UsageError("--source needs --checkpoint=PATH (the checkpoint file or directory).")


def load_from_flags(flag: Any, read_open_set: bool = True) -> recognizer.Recognizer:
  """The model the flags of `define_model_flags` name, on this process's devices, with its
  calibration and gallery (--accept, --gallery) unless `read_open_set` is False.

  The classifier is tau-normalised as the run's config says (recognizer.load_run), or as
  --tau_norm says where the command has that flag (predict, evaluate)."""
  check_model_flags(flag)
  tau_norm = flag.tau_norm if "tau_norm" in flag else None
  if flag.workdir is not None:
    return recognizer.load_run(
      flag.workdir,
      flag.checkpoint or "best",
      jax.local_devices(),
      accept=flag.accept,
      gallery=flag.gallery,
      read_open_set=read_open_set,
      tau_norm=tau_norm,
    )
  return recognizer.load_checkpoint(
    flag.checkpoint,
    flag.source,
    flag.class_names,
    num_heads=flag.num_heads,
    image_size=flag.image_size,
    devices=jax.local_devices(),
    accept=flag.accept,
    gallery=flag.gallery,
    read_open_set=read_open_set,
    tau_norm=tau_norm,
  )


def define_face_flags(detect_faces_help: str | None, cascade_default: str = "") -> None:
  """--cascade, --face_margin, --min_face and, unless `detect_faces_help` is None (the program
  always looks for faces), --detect_faces with that help; `cascade_default` ends --cascade's help
  (what happens without one)."""
  if detect_faces_help is not None:
    flags.DEFINE_bool("detect_faces", False, detect_faces_help)
  flags.DEFINE_string(
    "cascade",
    None,
    f"Face detector cascade file (default: the {faces.CASCADE_FILE} of an installed package"
    f"{cascade_default}).",
  )
  flags.DEFINE_float("face_margin", 0.25, "Grow each face box by this fraction per side.")
  flags.DEFINE_integer("min_face", 24, "Smallest face side to detect, in pixels.")
  flags.DEFINE_string(
    "detector",
    None,
    "A head detector run (trained with configs/detector_quickstart.py): find every head in each "
    "picture and answer each (docs/detector.md); instead of the face cascade.",
  )


def face_detector(flag: Any) -> faces.FaceDetector | head_detector.HeadDetector | None:
  """The detector the flags of `define_face_flags` ask for: the head detector run of --detector,
  the face cascade with --detect_faces, else None.

  Raises:
    app.UsageError: both --detector and --detect_faces.
    faces.CascadeNotFound: (a user error) the cascade or OpenCV is missing.
    FileNotFoundError, head_detector.NotADetector: (user errors) --detector is not a detector run.
  """
  if flag.detector:
    if flag.get_flag_value("detect_faces", False):
      raise app.UsageError("Give --detector or --detect_faces, not both.")
    return head_detector.HeadDetector(run_dir.resolve(flag.detector))
  if not flag.get_flag_value("detect_faces", False):
    return None
  return faces.create_detector(flag.cascade, margin=flag.face_margin, min_size=flag.min_face)


def define_runtime_flags(*, distributed: bool) -> None:
  """--compilation_cache_dir and, for programs that run over several processes, the flags of
  jax.distributed (see `start_jax`)."""
  flags.DEFINE_string(
    "compilation_cache_dir",
    "~/.cache/animesion_jax/xla",
    "Persistent XLA compilation cache, so a repeated command does not compile again "
    "('' = off; the JAX_COMPILATION_CACHE_DIR environment variable wins).",
  )
  if not distributed:
    return
  flags.DEFINE_bool(
    "distributed",
    None,
    "Call jax.distributed.initialize() (multi-host). Default: on when the "
    "environment names a coordinator (TPU VM pods, SLURM, JAX_COORDINATOR_ADDRESS) or "
    "--coordinator_address is given.",
  )
  flags.DEFINE_string(
    "coordinator_address",
    None,
    "host:port of process 0, for multi-process runs without a cluster environment "
    "(e.g. several GPU hosts, or several processes on one machine).",
  )
  flags.DEFINE_integer("num_processes", None, "Processes in a multi-process run.")
  flags.DEFINE_integer("process_id", None, "This process's index (0-based).")


def wants_distributed(explicit: bool | None = None, coordinator: str | None = None) -> bool:
  """Whether to call jax.distributed.initialize(): as asked (`explicit`), else when a
  coordinator address is given or the environment names one (TPU VM pods, SLURM,
  JAX_COORDINATOR_ADDRESS)."""
  if explicit is not None:
    return explicit
  return coordinator is not None or any(
    name in os.environ
    for name in ("JAX_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES", "SLURM_JOB_NUM_NODES")
  )


def start_jax(flag: Any) -> None:
  """Before any computation: the compilation cache, then (when wanted) jax.distributed.

  The flags are those of `define_runtime_flags`; without its distributed flags the program runs
  on its own process's devices. First of all, XLA's default flags (xla_flags: only where the
  installed jaxlib accepts them; the user's XLA_FLAGS win), before the backend starts.
  """
  xla_flags.prepare(flag.compilation_cache_dir)
  if "distributed" not in flag or not wants_distributed(flag.distributed, flag.coordinator_address):
    return
  # Cross-process collectives of the CPU backend need gloo; GPUs and TPUs ignore this.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
    coordinator_address=flag.coordinator_address,
    num_processes=flag.num_processes,
    process_id=flag.process_id,
  )
  _all_devices_reduce()


def _all_devices_reduce() -> None:
  """One all-device reduction while every process is at the same point.

  The CPU backend creates its gloo context for a device set at the first collective over it and
  allows 30 s between processes; the first real reduction over all devices comes after
  compilation, which a busy host may finish minutes after the others. Doing it here first means
  that step finds the context made.
  """
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
