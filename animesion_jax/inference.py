"""A trained run, ready for inference: its config, model, restored state and class names.

Shared by `evaluate` and `predict`:

  run = inference.load_run("runs/b16_dafre", checkpoint="best")
  predict = inference.make_predict_fn(run, top_k=5)
  probabilities, class_ids = predict(run.variables, global_uint8_images)
"""

import dataclasses
import os
from typing import Any, Callable, Sequence

from absl import logging
from etils import epath
import flax
from flax import linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from animesion_jax import checkpointing
from animesion_jax import model_setup
from animesion_jax import optim
from animesion_jax import sharding
from animesion_jax import steps
from animesion_jax.data import datasets
from animesion_jax.data import preprocess
from configs import base as base_config


class CheckpointMismatch(ValueError):
  """The checkpoint's parameters do not have the shapes the run's config gives the model."""


@dataclasses.dataclass
class LoadedRun:
  """Everything needed to run a trained model."""
  workdir: str
  config: ml_collections.ConfigDict
  model: nn.Module
  state: steps.TrainState
  step: int  # Training step of the restored checkpoint.
  checkpoint: str  # Directory of the restored checkpoint.
  class_names: list[str]
  mesh: jax.sharding.Mesh

  @property
  def variables(self) -> dict[str, Any]:
    return steps.model_variables(self.state)

  @property
  def num_classes(self) -> int:
    return len(self.class_names)


def with_defaults(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The run's config with fields added since it was written filled with their defaults."""
  merged = base_config.get_base_config(config.get("dataset", "moeimouto")).to_dict()
  merged.update(config.to_dict())  # The run's own `model` block replaces the default wholesale.
  return ml_collections.ConfigDict(merged)


def class_names_of(workdir: str, config: ml_collections.ConfigDict,
                   builder: Any = None) -> list[str]:
  """Class names saved with the run, else read from the dataset it was trained on."""
  names = checkpointing.load_class_names(workdir)
  if names is not None:
    return names
  if builder is None:
    try:
      builder = datasets.open_dataset(config.dataset, config.data_dir, config.dataset_config)
    except FileNotFoundError as error:
      raise FileNotFoundError(
          f"The class names of {workdir} are unknown: it has no "
          f"{checkpointing.CLASS_NAMES_FILE} and the dataset it was trained on is not available "
          f"here.\n{error}\nEither build the dataset (same --data_dir as the run: "
          f"config.data_dir={config.data_dir!r}) or copy {checkpointing.CLASS_NAMES_FILE} into "
          "the workdir.") from None
  return list(builder.info.features["label"].names)


def _absolute(path: str | os.PathLike) -> epath.Path:
  path = os.fspath(path)
  return epath.Path(path if "://" in path else os.path.abspath(path))


def _step_dirs(directory: epath.Path) -> list[int]:
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit() and p.is_dir())


def resolve_checkpoint(workdir: str, which: str = "best") -> epath.Path:
  """The checkpoint directory `which` names: 'best' (falls back to 'latest'), 'latest' or a path.

  Local paths are made absolute (Orbax reads only absolute ones).
  """
  root = _absolute(workdir)
  if which in ("best", "latest"):
    subdirs = ([checkpointing.BEST_DIR] if which == "best" else []) + [checkpointing.LATEST_DIR]
    for sub in subdirs:
      found = _step_dirs(root / sub)
      if found:
        return root / sub / str(found[-1])
    raise FileNotFoundError(f"No checkpoint under {' or '.join(str(root / s) for s in subdirs)}: "
                            "has this run saved one yet?")
  path = _absolute(which)
  if not path.is_dir() or not path.name.isdigit():
    raise FileNotFoundError(
        f"--checkpoint={which!r}: expected 'best', 'latest' or a checkpoint step directory such "
        f"as {root / checkpointing.LATEST_DIR / '1000'}.")
  return path


def abstract_train_state(config: ml_collections.ConfigDict, model: nn.Module,
                         mesh: jax.sharding.Mesh) -> Any:
  """Shapes, dtypes and shardings of the run's TrainState, without allocating it."""
  dummy = jnp.zeros((1, config.image_size, config.image_size, 3), jnp.float32)
  rng = jax.random.PRNGKey(0)
  abstract_variables = jax.eval_shape(
      lambda: model.init({"params": rng, "dropout": rng}, dummy, train=False))
  # The optimizer state's structure does not depend on the schedule's length.
  tx = optim.create_optimizer(config, steps_per_epoch=1, total_steps=1,
                              params=abstract_variables["params"])
  abstract = jax.eval_shape(
      lambda variables: steps.create_train_state(dict(variables), tx, rng), abstract_variables)
  shardings = sharding.state_shardings(abstract, mesh)
  return jax.tree.map(lambda leaf, shard: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype,
                                                               sharding=shard),
                      abstract, shardings)


def _flat_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  flat = flax.traverse_util.flatten_dict(dict(tree), sep="/") if tree else {}
  return {key: tuple(getattr(value, "shape", ())) for key, value in flat.items()}


def checkpoint_mismatches(checkpoint: epath.Path, abstract_state: Any) -> list[str]:
  """'collection/path: model SHAPE, checkpoint SHAPE' for every parameter that differs."""
  saved = ocp.StandardCheckpointHandler().metadata(checkpoint / "state")
  problems = []
  for collection in ("params", "batch_stats"):
    want = _flat_shapes(getattr(abstract_state, collection))
    have = _flat_shapes(saved.get(collection) or {})
    for key in sorted(set(want) | set(have)):
      if want.get(key) != have.get(key):
        problems.append(f"{collection}/{key}: model {want.get(key)}, checkpoint {have.get(key)}")
  return problems


def load_run(workdir: str | os.PathLike, checkpoint: str = "best",
             devices: Sequence[jax.Device] | None = None) -> LoadedRun:
  """Restores a run's model and state from `workdir` for inference.

  Args:
    workdir: the training run's directory (it holds config.json and checkpoints).
    checkpoint: 'best', 'latest' or the path of a checkpoint step directory.
    devices: devices to place the state on (default: all).

  Raises:
    FileNotFoundError: no config, checkpoint or class names.
    CheckpointMismatch: the checkpoint's parameter shapes differ from the config's model
      (the message lists each differing parameter).
  """
  workdir = os.fspath(workdir)
  config = with_defaults(checkpointing.load_config(workdir))
  path = resolve_checkpoint(workdir, checkpoint)
  names = class_names_of(workdir, config)
  devices = list(jax.devices() if devices is None else devices)
  fsdp = config.fsdp_size if len(devices) % config.fsdp_size == 0 else 1
  mesh = sharding.create_mesh(devices, fsdp_size=fsdp)
  model = model_setup.build_model(config, len(names))
  abstract = abstract_train_state(config, model, mesh)
  problems = checkpoint_mismatches(path, abstract)
  if problems:
    raise CheckpointMismatch(
        f"{path} does not fit the model of {os.path.join(workdir, checkpointing.CONFIG_FILE)} "
        f"({config.model.name}, {len(names)} classes, image size {config.image_size}):\n  "
        + "\n  ".join(problems[:20]) + (f"\n  ... {len(problems) - 20} more" if len(problems) > 20
                                        else ""))
  state, _, step = checkpointing.restore_state(workdir, abstract, which=os.fspath(path))
  logging.info("Restored %s (step %d): %s, %d classes.", path, step, config.model.name, len(names))
  return LoadedRun(workdir=workdir, config=config, model=model, state=state, step=step,
                   checkpoint=os.fspath(path), class_names=names, mesh=mesh)


def make_predict_fn(run: LoadedRun, top_k: int) -> Callable[[Any, jax.Array],
                                                            tuple[jax.Array, jax.Array]]:
  """jit(variables, uint8 NHWC images) -> (top-k probabilities, top-k class ids), best first."""
  k = min(top_k, run.num_classes)
  model, normalization = run.model, run.config.normalization

  def predict(variables, images):
    logits = model.apply(variables, preprocess.normalize(images, normalization, model.dtype),
                         train=False)
    return jax.lax.top_k(jax.nn.softmax(logits.astype(jnp.float32)), k)

  return jax.jit(predict, out_shardings=sharding.batch_sharding(run.mesh))


def host_rows(array: jax.Array, mesh: jax.sharding.Mesh) -> np.ndarray:
  """This process's rows of a batch-sharded global array, in the order it fed them."""
  if jax.process_count() == 1:
    return np.asarray(array)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.global_array_to_host_local_array(
      array, mesh, jax.sharding.PartitionSpec(sharding.DATA_AXES)))


def wants_distributed(explicit: bool | None = None, coordinator: str | None = None) -> bool:
  """Whether to call jax.distributed.initialize(), decided as the training CLI does.

  As asked (`explicit`), else when a coordinator address is given or the environment names one
  (TPU VM pods, SLURM, JAX_COORDINATOR_ADDRESS).
  """
  if explicit is not None:
    return explicit
  return coordinator is not None or any(name in os.environ for name in (
      "JAX_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES", "SLURM_JOB_NUM_NODES"))


def round_up_batch(batch_size: int, num_devices: int) -> int:
  """The smallest multiple of the device count that is >= batch_size."""
  return max(num_devices, -(-batch_size // num_devices) * num_devices)
