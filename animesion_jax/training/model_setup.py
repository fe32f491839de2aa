"""Builds the model, optimizer and (sharded) train state a config asks for: the one builder.

Training starts from `create` (fresh, or from config.init_from); inference restores a run's model
with `restore_run`; both shape the train state with `abstract_train_state`, which checkpointing
receives to store and restore.
"""

import dataclasses
import os
from typing import Any

from absl import logging
from etils import epath
import flax
from flax import linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from animesion_jax import config_schema
from animesion_jax import models
from animesion_jax import run_dir as run_dir_lib
from animesion_jax import sharding
from animesion_jax.data import datasets
from animesion_jax.training import checkpointing
from animesion_jax.training import optim
from animesion_jax.training import steps

# Numeric settings a converted checkpoint dictates (they are how its weights were trained). Not
# the GELU flavour: config.model.gelu_approximate decides it (the original Animesion fine-tuned
# the tanh-GELU .npz weights with exact GELU).
_CHECKPOINT_NUMERICS = ("layer_norm_epsilon",)
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass
class Setup:
  model: nn.Module
  tx: optax.GradientTransformation
  state: steps.TrainState
  abstract_state: Any  # jax.ShapeDtypeStruct tree with shardings, for restoring checkpoints.
  state_sharding: Any
  config: ml_collections.ConfigDict  # The run's config, with the init_from checkpoint's numerics.


def build_model(config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
  """The model named by config.model.name with the config's overrides."""
  overrides = models.overrides_of(config.model.name, config.model.to_dict())
  return models.create_model(
    config.model.name, num_classes=num_classes, dtype=_DTYPES[config.dtype], **overrides
  )


def abstract_train_state(
  config: ml_collections.ConfigDict,
  model: nn.Module,
  mesh: jax.sharding.Mesh,
  tx: optax.GradientTransformation | None = None,
) -> Any:
  """Shapes, dtypes and shardings of a run's TrainState, without allocating it.

  `tx` is the run's optimizer; by default one is made from the config (the optimizer state's
  structure does not depend on the schedule's length).
  """
  dummy = jnp.zeros((1, config.image_size, config.image_size, 3), jnp.float32)
  rng = jax.random.PRNGKey(0)
  abstract_variables = jax.eval_shape(
    lambda: model.init({"params": rng, "dropout": rng}, dummy, train=False)
  )
  if tx is None:
    tx = optim.create_optimizer(
      config, steps_per_epoch=1, total_steps=1, params=abstract_variables["params"]
    )
  abstract = jax.eval_shape(
    lambda variables: steps.create_train_state(dict(variables), tx, rng), abstract_variables
  )
  shardings = sharding.state_shardings(abstract, mesh)
  return jax.tree.map(
    lambda leaf, shard: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=shard),
    abstract,
    shardings,
  )


@dataclasses.dataclass
class RestoredRun:
  """A training run's model and variables, restored from one of its checkpoints."""

  run: run_dir_lib.RunDir
  config: ml_collections.ConfigDict  # The run's config, newer fields at their defaults.
  model: nn.Module
  variables: dict[str, Any]  # {'params': ..., ['batch_stats': ...]}, placed on the mesh.
  class_names: list[str]
  checkpoint: epath.Path  # The step directory restored.
  step: int


def with_defaults(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The run's config with fields added since it was written filled with their defaults."""
  merged = config_schema.get_base_config(config.get("dataset", "moeimouto")).to_dict()
  merged.update(config.to_dict())  # The run's own `model` block replaces the default wholesale.
  return ml_collections.ConfigDict(merged)


def class_names_of(run: run_dir_lib.RunDir, config: ml_collections.ConfigDict) -> list[str]:
  """Class names saved with the run, else read from the dataset it was trained on."""
  names = run.load_class_names()
  if names is not None:
    return names
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


def run_and_checkpoint(path: str | os.PathLike) -> tuple[run_dir_lib.RunDir, str]:
  """(run, checkpoint) of a run directory (its best checkpoint) or one of its step directories."""
  path = run_dir_lib.resolve(path)
  if run_dir_lib.RunDir(path).exists():
    return run_dir_lib.RunDir(path), "best"
  if path.name.isdigit() and run_dir_lib.RunDir(path.parent.parent).exists():
    return run_dir_lib.RunDir(path.parent.parent), os.fspath(path)
  raise FileNotFoundError(
    f"{path} is neither a training run directory (with config.json) nor "
    "one of its checkpoint step directories."
  )


def restore_run(
  run: run_dir_lib.RunDir, which: str = "best", mesh: jax.sharding.Mesh | None = None
) -> RestoredRun:
  """A run's model and variables from its checkpoint `which` ('best', 'latest' or a step dir).

  Raises:
    FileNotFoundError: no config, checkpoint or class names.
    checkpointing.IncompatibleCheckpoint: the checkpoint's parameter shapes differ from the
      config's model (the message lists each differing parameter).
    checkpointing.DamagedCheckpoint: the checkpoint's files are incomplete.
  """
  config = with_defaults(run.load_config())
  path = checkpointing.resolve(run, which)
  names = class_names_of(run, config)
  model = build_model(config, len(names))
  abstract = abstract_train_state(config, model, mesh or sharding.create_mesh())
  problems = checkpointing.saved_shape_mismatches(path, abstract)
  if problems:
    raise checkpointing.IncompatibleCheckpoint(
      f"{path} does not fit the model of {run.config_file} ({config.model.name}, "
      f"{len(names)} classes, image size {config.image_size}):\n  "
      + "\n  ".join(problems[:20])
      + (f"\n  ... {len(problems) - 20} more" if len(problems) > 20 else "")
    )
  state, _, step = checkpointing.restore(run, abstract, which=os.fspath(path))
  logging.info("Restored %s (step %d): %s, %d classes.", path, step, config.model.name, len(names))
  return RestoredRun(run, config, model, steps.model_variables(state), names, path, step)


def load_initial_variables(
  config: ml_collections.ConfigDict, model: nn.Module, num_classes: int, abstract_variables: Any
) -> tuple[nn.Module, Any, list[str]]:
  """Variables from config.init_from, checked against the config's model.

  Returns the model (with the checkpoint's numerics), the variables, and the parameter paths
  ('fc/kernel', ...) that must take the model's own initialisation instead (`_fresh_keys`).
  """
  if config.init_from.source == "run":
    return _from_run(config, model, abstract_variables)
  from animesion_jax import convert  # pylint: disable=g-import-not-at-top

  conversion = convert.load_with_summary(
    config.init_from.source,
    config.init_from.path,
    convert.Target(num_classes=num_classes, image_size=config.image_size),
  )
  loaded_model, variables = conversion.model, conversion.variables
  fresh_keys = []
  if getattr(model, "init_scheme", "") == "animesion":
    # The original gave a pretrained ResNet a new torch nn.Linear (torch's default init), where
    # the converters' shared recipe starts a new classifier at zero.
    fresh_keys = [item["key"] for item in conversion.summary["reinitialised"]]
  if (
    getattr(model, "head_type", "") == "intermediate_features"
    and getattr(loaded_model, "head_type", "") == "class_token"
  ):
    variables, fresh_keys = _backbone_only(variables, abstract_variables)
  if getattr(model, "head", "linear") == "cosine":
    # The converters' checkpoints end in a linear layer (or a new one at zero, which a cosine
    # head cannot start from): the cosine head starts at the model's own initialisation.
    variables, own = _without_output_layer(config, variables, abstract_variables, keep=False)
    fresh_keys = sorted(set(fresh_keys) | set(own))
  numerics = {
    name: getattr(loaded_model, name)
    for name in _CHECKPOINT_NUMERICS
    if hasattr(loaded_model, name) and hasattr(model, name)
  }
  trained_gelu = getattr(loaded_model, "gelu_approximate", None)
  if trained_gelu is not None and trained_gelu != model.gelu_approximate:
    logging.info(
      "The checkpoint was trained with %s GELU; this run uses %s GELU "
      "(config.model.gelu_approximate=%s).",
      *("tanh" if flag else "exact" for flag in (trained_gelu, model.gelu_approximate)),
      model.gelu_approximate,
    )
  return _fitted(config, model, numerics, variables, abstract_variables), variables, fresh_keys


def _fitted(
  config: ml_collections.ConfigDict,
  model: nn.Module,
  numerics: dict[str, Any],
  variables: Any,
  abstract_variables: Any,
) -> nn.Module:
  """`model` with the checkpoint's numerics (recorded in `config`), once the arrays fit it."""
  problems = checkpointing.shape_mismatches(dict(abstract_variables), dict(variables))
  if problems:
    raise ValueError(
      f"config.init_from.path={config.init_from.path!r} "
      f"({config.init_from.source}) does not fit config.model.name={config.model.name!r}:\n  "
      + "\n  ".join(problems)
    )
  if numerics:
    logging.info("Using the checkpoint's numerics: %s", numerics)
    # Recorded in the run's config, so evaluate/predict rebuild the model the run trained.
    with config.unlocked():
      config.model.update(numerics)
  return model.clone(**numerics)


def _from_run(
  config: ml_collections.ConfigDict, model: nn.Module, abstract_variables: Any
) -> tuple[nn.Module, Any, list[str]]:
  """Another run's trained variables (the original's DAF:re -> moeImouto transfer).

  The classifier starts afresh (the model's own initialisation) when the class count differs or
  config.init_from.reset_classifier asks for it; every other parameter must fit the config's model.
  """
  source = restore_run(*run_and_checkpoint(config.init_from.path))
  variables = jax.tree.map(np.asarray, source.variables)
  wanted = flax.traverse_util.flatten_dict(dict(abstract_variables["params"]), sep="/")
  have = flax.traverse_util.flatten_dict(dict(variables["params"]), sep="/")
  classifier = models.spec(config.model.name).family.classifier_params
  reset = config.init_from.get("reset_classifier", False)
  fresh = [
    key
    for key, leaf in wanted.items()
    if key.split("/")[0] in classifier
    and (reset or getattr(have.get(key), "shape", None) != leaf.shape)
  ]
  have.update({key: np.zeros(wanted[key].shape, wanted[key].dtype) for key in fresh})
  variables = {**variables, "params": flax.traverse_util.unflatten_dict(have, sep="/")}
  # A linear run's bias has no place in a cosine head (a missing bias is in `fresh` above).
  variables, _ = _without_output_layer(config, variables, abstract_variables, keep=True)
  if fresh:
    logging.info(
      "init_from run %s (%d classes): new classifier %s.",
      source.run,
      len(source.class_names),
      fresh,
    )
  numerics = {
    name: getattr(source.model, name)
    for name in _CHECKPOINT_NUMERICS
    if hasattr(source.model, name) and hasattr(model, name)
  }
  return _fitted(config, model, numerics, variables, abstract_variables), variables, fresh


def _without_output_layer(
  config: ml_collections.ConfigDict, variables: Any, abstract_variables: Any, keep: bool
) -> tuple[Any, list[str]]:
  """`variables` with the output layer's parameters the model does not have dropped (all of them
  unless `keep`), filled with zero placeholders; and the paths that need the model's own init."""
  head = models.spec(config.model.name).family.head + "/"
  flat = flax.traverse_util.flatten_dict(dict(variables["params"]), sep="/")
  wanted = flax.traverse_util.flatten_dict(dict(abstract_variables["params"]), sep="/")
  flat = {k: v for k, v in flat.items() if not k.startswith(head) or (keep and k in wanted)}
  fresh = [k for k in wanted if k.startswith(head) and k not in flat]
  flat.update({k: np.zeros(wanted[k].shape, wanted[k].dtype) for k in fresh})
  return {**variables, "params": flax.traverse_util.unflatten_dict(flat, sep="/")}, fresh


def _backbone_only(variables: Any, abstract_variables: Any) -> tuple[Any, list[str]]:
  """A class-token ViT checkpoint's backbone for an intermediate-features-head ViT.

  As the original (`load_fc_layer=False`): the final LayerNorm, pre-logits and head are dropped;
  the new head's parameters are placeholders, returned as the keys to initialise afresh.
  """
  heads = ("head/", "pre_logits/", "Transformer/encoder_norm/")
  flat = {
    k: v
    for k, v in flax.traverse_util.flatten_dict(dict(variables["params"]), sep="/").items()
    if not k.startswith(heads)
  }
  wanted = flax.traverse_util.flatten_dict(dict(abstract_variables["params"]), sep="/")
  fresh = [k for k in wanted if k.startswith(("head/", "interm_aggregate/", "interm_norm/"))]
  flat.update({k: np.zeros(wanted[k].shape, wanted[k].dtype) for k in fresh})
  logging.info("Intermediate-features head: backbone from the checkpoint, new head %s.", fresh)
  return {**variables, "params": flax.traverse_util.unflatten_dict(flat, sep="/")}, fresh


def _own_classifier_init(variables: Any, fresh_params: Any, keys: list[str]) -> Any:
  """`variables` with the parameters at `keys` ('fc/kernel', ...) taken from `fresh_params`."""
  flat = flax.traverse_util.flatten_dict(dict(variables["params"]), sep="/")
  fresh = flax.traverse_util.flatten_dict(dict(fresh_params), sep="/")
  flat.update({key: fresh[key] for key in keys})
  return {**variables, "params": flax.traverse_util.unflatten_dict(flat, sep="/")}


def create(
  config: ml_collections.ConfigDict,
  num_classes: int,
  mesh: jax.sharding.Mesh,
  steps_per_epoch: int,
  total_steps: int,
) -> Setup:
  """Model, optimizer and an initial state created directly with its shardings.

  The caller's config is not changed; `Setup.config` is a copy with the numerics an init_from
  checkpoint dictates (what the run records).
  """
  config = ml_collections.ConfigDict(config.to_dict())
  model = build_model(config, num_classes)
  init_rng, train_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  dummy = jnp.zeros((1, config.image_size, config.image_size, 3), jnp.float32)
  init_variables = lambda: model.init({"params": init_rng, "dropout": init_rng}, dummy, train=False)
  abstract_variables = jax.eval_shape(init_variables)
  tx = optim.create_optimizer(
    config, steps_per_epoch, total_steps, params=abstract_variables["params"]
  )
  abstract_state = abstract_train_state(config, model, mesh, tx)
  state_sharding = jax.tree.map(lambda leaf: leaf.sharding, abstract_state)
  make_state = lambda variables: steps.create_train_state(dict(variables), tx, train_rng)
  if config.init_from.source:
    model, loaded, fresh_keys = load_initial_variables(
      config, model, num_classes, abstract_variables
    )
    if fresh_keys:
      loaded = _own_classifier_init(loaded, jax.jit(init_variables)()["params"], fresh_keys)
    # Passed as an argument (not closed over) so large checkpoints are not baked into the program.
    state = jax.jit(make_state, out_shardings=state_sharding)(loaded)
  else:
    state = jax.jit(lambda: make_state(init_variables()), out_shardings=state_sharding)()
  logging.info(
    "Model %s: %s parameters.", config.model.name, f"{models.count_params(state.params):,}"
  )
  return Setup(
    model=model,
    tx=tx,
    state=state,
    abstract_state=abstract_state,
    state_sharding=state_sharding,
    config=config,
  )
