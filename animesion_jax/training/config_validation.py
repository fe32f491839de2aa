"""Checks a config before anything is built or compiled; one clear message per problem."""

import jax
import ml_collections

from animesion_jax import config_schema as base_config
from animesion_jax import models
from animesion_jax import run_dir
from animesion_jax.data import color_jitter
from animesion_jax.data import datasets
from animesion_jax.data import preprocess
from animesion_jax.training import losses

# 'run': another training run's checkpoint (a run directory or one of its step directories).
_SOURCES = ("", "run") + models.checkpoint_sources()
_CHOICES = {
  "optimizer": ("sgd", "adamw"),
  "schedule": ("step", "warmup_cosine", "constant"),
  "dtype": ("float32", "bfloat16"),
  "momentum_dtype": ("float32", "bfloat16"),
  "transfer_guard": ("allow", "log", "disallow"),
  "normalization": tuple(preprocess.NORMALIZATIONS),
  "loss": losses.LOSSES,
  "task": ("classify", "detect"),
}


# Defined with the schema, so that data/ (held-out classes) raises it without importing training.
ConfigError = base_config.ConfigError


def _same_type(default, value) -> bool:
  if isinstance(default, float):
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if isinstance(default, (tuple, list)):
    return isinstance(value, (tuple, list))
  if default is None:
    return True
  return isinstance(value, type(default))


def patch_size_of(config: ml_collections.ConfigDict) -> int | None:
  """The ViT patch size the config asks for (None for models without patches)."""
  if "patch_size" in config.model:
    return int(config.model.patch_size)
  model = models.create_model(config.model.name, num_classes=1)
  return getattr(model, "patch_size", None)


def _validate_model(config: ml_collections.ConfigDict) -> None:
  """config.model's fields and the model-dependent options, against the model table."""
  name = config.model.name
  family = models.spec(name).family
  defaults = base_config.get_base_config().model
  for field in models.HEAD_OPTIONS:
    if field not in family.fields and config.model.get(field) != defaults[field]:
      raise ConfigError(
        f"config.model.{field}={config.model[field]!r}: model {name!r} has no classifier head "
        "(the head options apply to classifiers only); leave it at its default."
      )
  overrides = models.overrides_of(name, config.model.to_dict())
  for field in sorted(set(overrides) - family.fields):
    owners = sorted(f.module.__name__ for f in models.FAMILIES if field in f.fields)
    where = f"an option of {' and '.join(owners)} models only" if owners else "not a model option"
    raise ConfigError(
      f"config.model has a field that model {name!r} does not take: "
      f"config.model.{field} is {where} ({name!r} is a "
      f"{family.module.__name__}). Remove it; its fields: "
      f"{sorted(family.fields - {'num_classes', 'dtype'})}."
    )
  try:
    models.check_fields(models.create_model(name, num_classes=2, **overrides))
  except (TypeError, ValueError) as error:
    raise ConfigError(f"config.model ({name!r}): {error}") from None
  if config.freeze_backbone and not family.classifier_params:
    raise ConfigError(
      f"config.freeze_backbone=True, but model {name!r} names no classifier "
      "parameters in animesion_jax.models.MODELS, so nothing would train."
    )
  source = config.init_from.source
  if source in models.checkpoint_sources() and source not in family.checkpoint_sources:
    raise ConfigError(
      f"config.init_from.source={source!r} holds no {family.module.__name__} "
      f"(config.model.name={name!r}); sources for it: "
      f"{list(family.checkpoint_sources)}."
    )


def _validate_task(config: ml_collections.ConfigDict) -> None:
  """The model and dataset must be of the config's task (a detector on scenes, or a classifier)."""
  model_task = models.spec(config.model.name).family.task
  if model_task != config.task:
    raise ConfigError(
      f"config.model.name={config.model.name!r} is a {model_task!r} model, but "
      f"config.task={config.task!r}; detectors: "
      f"{sorted(n for n in models.MODELS if models.spec(n).family.task == 'detect')}."
    )
  scenes = config.dataset == "synthetic_scenes"
  if scenes != (config.task == "detect"):
    raise ConfigError(
      f"config.task={config.task!r} cannot train on config.dataset={config.dataset!r}: the "
      "detector trains on 'synthetic_scenes' (pictures with head boxes), the classifiers on crops."
    )
  if config.task == "detect":
    side = models.centernet.SIDE_MULTIPLE
    if config.image_size % side:
      raise ConfigError(
        f"config.image_size={config.image_size}: the detector's input side must be a multiple "
        f"of {side}."
      )
    if config.grad_accumulation_steps != 1 or config.data_on_device:
      raise ConfigError(
        "config.task='detect' trains without grad_accumulation_steps or data_on_device (set "
        "them to 1 and False)."
      )


def validate(
  config: ml_collections.ConfigDict,
  num_devices: int | None = None,
  num_processes: int | None = None,
) -> None:
  """Raises ConfigError naming the first field that is wrong."""
  num_devices = num_devices or jax.device_count()
  num_processes = num_processes or jax.process_count()
  known = base_config.get_base_config()
  unknown = sorted(set(config.keys()) - set(known.keys()))
  if unknown:
    raise ConfigError(
      f"Unknown config fields {['config.' + k for k in unknown]}; the fields are "
      "listed in animesion_jax/config_schema.py."
    )
  for key in known.keys():
    if key not in config:
      raise ConfigError(f"config.{key} is missing (animesion_jax/config_schema.py documents it).")
    if key != "model" and not _same_type(known[key], config[key]):
      raise ConfigError(
        f"config.{key}={config[key]!r} should be of type {type(known[key]).__name__}."
      )
  if config.donate_state not in (None, True, False):  # None (the default): per platform.
    raise ConfigError(
      f"config.donate_state={config.donate_state!r}: choose True, False or None (per platform)."
    )
  for field, choices in _CHOICES.items():
    if config[field] not in choices:
      raise ConfigError(f"config.{field}={config[field]!r}: choose one of {list(choices)}.")
  if config.model.name not in models.MODELS:
    raise ConfigError(
      f"config.model.name={config.model.name!r} is not a known model; "
      f"choose one of {sorted(models.MODELS)}."
    )
  if config.dataset not in datasets.DATASETS:
    raise ConfigError(
      f"config.dataset={config.dataset!r}: choose one of {sorted(datasets.DATASETS)}."
    )
  if config.image_size <= 0 or config.resize_margin < 0:
    raise ConfigError(
      f"config.image_size={config.image_size} must be > 0 and "
      f"config.resize_margin={config.resize_margin} >= 0."
    )
  _validate_model(config)
  _validate_task(config)
  patch = patch_size_of(config)
  if patch and config.image_size % patch:
    raise ConfigError(
      f"config.image_size={config.image_size} is not divisible by the patch size "
      f"{patch} of config.model.name={config.model.name!r}."
    )
  for field in ("batch_size", "eval_batch_size"):
    value = config[field]
    if value <= 0 or value % num_devices or value % num_processes:
      raise ConfigError(
        f"config.{field}={value} must be a positive multiple of the device count "
        f"({num_devices}) and process count ({num_processes})."
      )
  if config.fsdp_size < 1 or num_devices % config.fsdp_size:
    raise ConfigError(f"config.fsdp_size={config.fsdp_size} must divide the {num_devices} devices.")
  accumulation = config.grad_accumulation_steps
  if accumulation < 1 or config.batch_size % (accumulation * num_devices):
    raise ConfigError(
      f"config.batch_size={config.batch_size} must be divisible by "
      f"config.grad_accumulation_steps={accumulation} times the {num_devices} "
      "devices (each microbatch is split over all devices)."
    )
  try:  # Host jitter needs OpenCV; on the device it does not.
    if config.data_on_device:
      color_jitter.check_strength(config.color_jitter)
    else:
      color_jitter.check_host_path(config.color_jitter)
  except (ValueError, ImportError) as error:
    raise ConfigError(f"config.{error}") from None
  if config.num_train_steps <= 0 and config.num_epochs <= 0:
    raise ConfigError("Set config.num_epochs > 0 or config.num_train_steps > 0.")
  if config.learning_rate <= 0:
    raise ConfigError(f"config.learning_rate={config.learning_rate} must be > 0.")
  if config.init_from.source not in _SOURCES:
    raise ConfigError(
      f"config.init_from.source={config.init_from.source!r}: choose one of {list(_SOURCES)}."
    )
  if config.init_from.source and not (
    config.init_from.path and run_dir.resolve(config.init_from.path).exists()
  ):
    raise ConfigError(
      f"config.init_from.path={config.init_from.path!r} does not exist "
      f"(config.init_from.source={config.init_from.source!r})."
    )
  if config.logit_adjust_tau < 0 or config.tau_norm < 0:
    raise ConfigError(
      f"config.logit_adjust_tau={config.logit_adjust_tau} and config.tau_norm="
      f"{config.tau_norm} must be >= 0."
    )
  if config.model.get("head", "linear") == "cosine" and config.tau_norm:
    raise ConfigError(
      f"config.tau_norm={config.tau_norm} changes nothing with config.model.head='cosine' (its "
      "class weights are normalised already); set config.tau_norm=0."
    )
  if not 0 < config.few_shot_below <= config.many_shot_above + 1:
    raise ConfigError(
      f"Shot groups: config.few_shot_below={config.few_shot_below} must be > 0 and at most "
      f"config.many_shot_above + 1 = {config.many_shot_above + 1}."
    )
  if config.class_balanced_sampling and config.data_on_device:
    raise ConfigError(
      "config.class_balanced_sampling=True needs the grain pipeline; set "
      "config.data_on_device=False."
    )
  if config.init_from.get("reset_classifier", False) and config.init_from.source != "run":
    raise ConfigError(
      "config.init_from.reset_classifier=True applies to config.init_from.source='run' only."
    )
  if config.init_from.path and not config.init_from.source:
    raise ConfigError(
      "config.init_from.path is set but config.init_from.source is empty; "
      f"choose one of {list(_SOURCES[1:])}."
    )
