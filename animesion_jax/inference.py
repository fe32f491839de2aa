"""A model ready for inference, from a training run or straight from a checkpoint file.

Shared by `evaluate`, `predict` and the web page:

  run = inference.load_run("runs/b16_dafre", checkpoint="best")
  run = inference.load_checkpoint("b16_dafre.pth", "pytorch_vit", "classid_classname.csv")
  logits = run.model.apply(run.variables, normalized_images, train=False)
"""

from collections.abc import Callable, Sequence
import dataclasses
import json
import os
import sys
from typing import Any, NoReturn

from absl import app
from absl import flags
from absl import logging
from etils import epath
from flax import linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from animesion_jax import checkpointing
from animesion_jax import config_schema as base_config
from animesion_jax import convert
from animesion_jax import model_setup
from animesion_jax import models
from animesion_jax import run_dir
from animesion_jax import sharding
from animesion_jax import steps
from animesion_jax.data import datasets
from animesion_jax.data import preprocess

RUN_SOURCE = "run"  # load_checkpoint's source for a training run (directory or step directory).


class LoadError(ValueError):
  """What was given to load a model does not work (the message says why and what to do)."""


class CheckpointMismatch(LoadError):
  """The checkpoint's parameters do not have the shapes the model needs."""


class ClassNamesError(LoadError):
  """A class-names file that cannot be read as class names."""


# Errors in what the user gave (paths, files, flags): the CLIs print the message, no traceback.
USER_ERRORS = (
  FileNotFoundError,
  LoadError,
  convert.ConversionError,
  checkpointing.DamagedCheckpoint,
  checkpointing.IncompatibleCheckpoint,
)


def exit_with_user_error(program: str, error: BaseException) -> NoReturn:
  """Prints '<program>: <message>' and exits 1 at once.

  Immediately (os._exit): after a failed restore, Orbax's background reads of the other arrays
  may still be scheduled, and an ordinary interpreter shutdown prints their 'Event loop is
  closed' tracebacks under the message. Nothing is being written at this point.
  """
  sys.stderr.write(f"{program}: {error}\n")
  sys.stderr.flush()
  sys.stdout.flush()
  os._exit(1)  # pylint: disable=protected-access


@dataclasses.dataclass
class LoadedRun:
  """Everything needed to run a trained model."""

  config: ml_collections.ConfigDict  # At least image_size, normalization and model.name.
  model: nn.Module
  variables: dict[str, Any]  # {'params': ..., ['batch_stats': ...]}, placed on `mesh`.
  class_names: list[str]
  mesh: jax.sharding.Mesh
  checkpoint: str  # The checkpoint restored: a run's step directory, a file or a directory.
  step: int | None = None  # Training step of a run's checkpoint; None for converted ones.
  workdir: run_dir.RunDir | None = None  # The training run; None for a checkpoint file.

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def description(self) -> str:
    """The run directory, or the checkpoint, the model came from."""
    return str(self.workdir) if self.workdir is not None else self.checkpoint


def with_defaults(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The run's config with fields added since it was written filled with their defaults."""
  merged = base_config.get_base_config(config.get("dataset", "moeimouto")).to_dict()
  merged.update(config.to_dict())  # The run's own `model` block replaces the default wholesale.
  return ml_collections.ConfigDict(merged)


def class_names_of(
  run: run_dir.RunDir, config: ml_collections.ConfigDict, builder: Any = None
) -> list[str]:
  """Class names saved with the run, else read from the dataset it was trained on."""
  names = run.load_class_names()
  if names is not None:
    return names
  if builder is None:
    try:
      builder = datasets.open_dataset(config.dataset, config.data_dir, config.dataset_config)
    except FileNotFoundError as error:
      raise FileNotFoundError(
        f"The class names of {run} are unknown: it has no {run.class_names_file.name} and the "
        f"dataset it was trained on is not available here.\n{error}\nEither build the dataset "
        f"(same --data_dir as the run: config.data_dir={config.data_dir!r}) or copy "
        f"{run.class_names_file.name} into the run directory."
      ) from None
  return list(builder.info.features["label"].names)


def read_class_names(path: str | os.PathLike) -> list[str]:
  """Class names (index = class id) from a JSON list or a `class_id,class_name` CSV file.

  The CSV is the original Animesion `classid_classname.csv` (with or without a header row).
  """
  from tfds_builders.common import label_csv  # pylint: disable=g-import-not-at-top

  path = run_dir.resolve(path)
  if not path.is_file():
    raise FileNotFoundError(f"Class-names file {path} does not exist.")
  if path.suffix.lower() != ".json":
    try:
      return label_csv.read_class_names(path)
    except (ValueError, UnicodeDecodeError) as error:
      raise ClassNamesError(
        f"{error}\nExpected the dataset's classid_classname.csv "
        "(class_id,class_name rows) or a JSON list of names."
      ) from None
  try:
    names = json.loads(path.read_text(encoding="utf-8"))
  except (ValueError, UnicodeDecodeError) as error:
    raise ClassNamesError(
      f"{path} is not valid JSON ({error}); expected a list of class names."
    ) from None
  if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
    raise ClassNamesError(
      f"{path} should hold a JSON list of class-name strings (index = class id)."
    )
  return names


def define_model_flags(class_names_help: str) -> None:
  """The flags that name the model a command loads: a training run, or a checkpoint file."""
  flags.DEFINE_string(
    "workdir", None, "Training run directory (or give --checkpoint and --source)."
  )
  flags.DEFINE_string(
    "checkpoint",
    None,
    "With --workdir: 'best' (default), 'latest' or a checkpoint step directory. "
    "With --source: the checkpoint file or directory.",
  )
  flags.DEFINE_string(
    "source",
    None,
    "Kind of --checkpoint without a training run: "
    + ", ".join(sorted([*convert.SOURCES, RUN_SOURCE]))
    + ".",
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


def load_from_flags(flag: Any) -> LoadedRun:
  """The model the flags of `define_model_flags` name, on this process's devices."""
  check_model_flags(flag)
  if flag.workdir is not None:
    return load_run(flag.workdir, flag.checkpoint or "best", devices=jax.local_devices())
  return load_checkpoint(
    flag.checkpoint,
    flag.source,
    flag.class_names,
    num_heads=flag.num_heads,
    image_size=flag.image_size,
    devices=jax.local_devices(),
  )


def create_mesh(devices: Sequence[jax.Device] | None, fsdp_size: int = 1) -> jax.sharding.Mesh:
  devices = list(jax.devices() if devices is None else devices)
  return sharding.create_mesh(devices, fsdp_size=fsdp_size if len(devices) % fsdp_size == 0 else 1)


def load_run(
  workdir: str | os.PathLike | run_dir.RunDir,
  checkpoint: str = "best",
  devices: Sequence[jax.Device] | None = None,
) -> LoadedRun:
  """Restores a run's model and variables for inference.

  Args:
    workdir: the training run's directory (it holds config.json and checkpoints).
    checkpoint: 'best', 'latest' or the path of a checkpoint step directory.
    devices: devices to place the variables on (default: all).

  Raises:
    FileNotFoundError: no config, checkpoint or class names.
    CheckpointMismatch: the checkpoint's parameter shapes differ from the config's model
      (the message lists each differing parameter).
    checkpointing.DamagedCheckpoint: the checkpoint's files are incomplete (the message names
      it and the run's other checkpoints).
  """
  run = workdir if isinstance(workdir, run_dir.RunDir) else run_dir.RunDir(workdir)
  config = with_defaults(run.load_config())
  path = checkpointing.resolve(run, checkpoint)
  names = class_names_of(run, config)
  mesh = create_mesh(devices, config.fsdp_size)
  model = model_setup.build_model(config, len(names))
  abstract = checkpointing.abstract_train_state(config, model, mesh)
  problems = checkpointing.saved_shape_mismatches(path, abstract)
  if problems:
    raise CheckpointMismatch(
      f"{path} does not fit the model of {run.config_file} ({config.model.name}, "
      f"{len(names)} classes, image size {config.image_size}):\n  "
      + "\n  ".join(problems[:20])
      + (f"\n  ... {len(problems) - 20} more" if len(problems) > 20 else "")
    )
  state, _, step = checkpointing.restore(run, abstract, which=os.fspath(path))
  logging.info("Restored %s (step %d): %s, %d classes.", path, step, config.model.name, len(names))
  return LoadedRun(
    config=config,
    model=model,
    variables=steps.model_variables(state),
    class_names=names,
    mesh=mesh,
    checkpoint=os.fspath(path),
    step=step,
    workdir=run,
  )


def _run_of(path: epath.Path) -> tuple[run_dir.RunDir, str]:
  """(run, checkpoint) for a run directory or one of its checkpoint step directories."""
  if run_dir.RunDir(path).exists():
    return run_dir.RunDir(path), "best"
  if path.name.isdigit() and run_dir.RunDir(path.parent.parent).exists():
    return run_dir.RunDir(path.parent.parent), os.fspath(path)
  raise FileNotFoundError(
    f"{path} is neither a training run directory (with config.json) nor "
    "one of its checkpoint step directories (source 'run')."
  )


def load_checkpoint(
  checkpoint: str | os.PathLike,
  source: str,
  class_names: str | os.PathLike | Sequence[str] | None,
  *,
  num_heads: int | None = None,
  image_size: int | None = None,
  devices: Sequence[jax.Device] | None = None,
) -> LoadedRun:
  """A model straight from a checkpoint and a class-names file, with no training run.

  Args:
    checkpoint: the checkpoint file (a directory for 'animesion'; a run directory or one of its
      checkpoint step directories for 'run').
    source: 'run' or a converter source (pytorch_vit, torchvision_resnet, animesion, vit_npz);
      the architecture is read from the checkpoint as `convert.load` does.
    class_names: the original `classid_classname.csv` (id,name rows, with or without a header)
      or a JSON list (or the names themselves); as many as the checkpoint has classes.
      Optional for 'run'.
    num_heads: ViT attention heads where the file does not store them (pytorch_vit).
    image_size: input size (default: the checkpoint's; a ViT's position embedding is resized).
    devices: devices to place the variables on (default: all).

  Raises:
    FileNotFoundError: a missing checkpoint or class-names file.
    LoadError: bad arguments, or class names that do not fit the checkpoint.
    convert.ConversionError: the checkpoint is not of that source.
  """
  path = run_dir.resolve(checkpoint)
  if not path.exists():
    raise FileNotFoundError(f"Checkpoint {path} does not exist.")
  if class_names is None or isinstance(class_names, (list, tuple)):
    names = None if class_names is None else list(class_names)
  else:
    names = read_class_names(class_names)
  if source == RUN_SOURCE:
    if num_heads is not None or image_size is not None:
      raise LoadError(
        "--num_heads and --image_size apply to converted checkpoints; a run uses its own settings."
      )
    run, which = _run_of(path)
    loaded = load_run(run, which, devices)
    if names is not None:
      _check_class_count(names, loaded.num_classes, class_names, path)
      loaded.class_names = names
    return loaded
  if source not in convert.SOURCES:
    raise LoadError(f"--source={source!r}: choose one of {sorted([*convert.SOURCES, RUN_SOURCE])}.")
  if names is None:
    raise LoadError(
      f"--source={source} needs --class_names (classid_classname.csv or a JSON list of names)."
    )
  conversion = convert.load_with_summary(
    source, path, convert.Target(image_size=image_size, num_heads=num_heads)
  )
  model = conversion.model
  _check_class_count(names, model.num_classes, class_names, path)
  model_class = type(model).__name__
  config = ml_collections.ConfigDict(
    {
      "image_size": int(conversion.summary["image_size"]),
      "normalization": conversion.summary.get("normalization")
      or models.family_of(model).normalization,
      "model": {"name": f"{model_class} ({source})"},
    }
  )
  mesh = create_mesh(devices)
  variables = jax.device_put(conversion.variables, sharding.replicated(mesh))
  logging.info(
    "Loaded %s (%s): %s, %d classes, image size %d.",
    path,
    source,
    model_class,
    len(names),
    config.image_size,
  )
  return LoadedRun(
    config=config,
    model=model,
    variables=variables,
    class_names=names,
    mesh=mesh,
    checkpoint=os.fspath(path),
  )


def _check_class_count(names: list[str], outputs: int, given: Any, checkpoint: Any) -> None:
  if len(names) != outputs:
    given = "The class names" if isinstance(given, (list, tuple)) else os.fspath(given)
    raise CheckpointMismatch(
      f"{given} lists {len(names)} class names, but the classifier of {checkpoint} "
      f"has {outputs} outputs: use the class-names file of the dataset it was trained on."
    )


def make_predict_fn(
  run: LoadedRun, top_k: int
) -> Callable[[Any, jax.Array], tuple[jax.Array, jax.Array]]:
  """jit(variables, uint8 NHWC images) -> (top-k probabilities, top-k class ids), best first."""
  k = min(top_k, run.num_classes)
  model, normalization = run.model, run.config.normalization

  def predict(variables, images):
    logits = model.apply(
      variables, preprocess.normalize(images, normalization, model.dtype), train=False
    )
    return jax.lax.top_k(jax.nn.softmax(logits.astype(jnp.float32)), k)

  return jax.jit(predict, out_shardings=sharding.batch_sharding(run.mesh))


def wants_distributed(explicit: bool | None = None, coordinator: str | None = None) -> bool:
  """Whether to call jax.distributed.initialize(), decided as the training CLI does.

  As asked (`explicit`), else when a coordinator address is given or the environment names one
  (TPU VM pods, SLURM, JAX_COORDINATOR_ADDRESS).
  """
  if explicit is not None:
    return explicit
  return coordinator is not None or any(
    name in os.environ
    for name in ("JAX_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES", "SLURM_JOB_NUM_NODES")
  )


def round_up_batch(batch_size: int, num_devices: int) -> int:
  """The smallest multiple of the device count that is >= batch_size."""
  return max(num_devices, -(-batch_size // num_devices) * num_devices)
