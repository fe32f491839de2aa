"""Internal: the model table: every architecture by name and every per-model fact, in one place.

Each model is a Flax Linen module called as `model(images, train=...)` on NHWC
float images and returning float32 logits [N, num_classes] (the detector, whose family's task is
'detect': float32 [N, H/4, W/4, num_classes + 4], see models/centernet.py). Dropout draws from
the 'dropout' rng collection; BatchNorm statistics live in 'batch_stats'.

`MODELS[name]` is a `ModelSpec`: how to build it, which top-level parameters
form its classifier (what `freeze_backbone` trains), the input normalisation
the original code used for it, the checkpoint sources (`animesion_jax.convert`)
that load into it, and the options only that family has.
"""

from collections.abc import Callable
import dataclasses
import functools
from typing import Any

from clu import parameter_overview
import flax.linen as nn
import jax
import jax.numpy as jnp

from animesion_jax.models import embedding
from animesion_jax.models import heads
from animesion_jax.models.centernet import CenterNet
from animesion_jax.models.resnet import ResNet
from animesion_jax.models.shallow import ShallowNet
from animesion_jax.models.vit import VisionTransformer


@dataclasses.dataclass(frozen=True)
class Family:
  """Facts shared by every model of one module class."""

  module: type[nn.Module]
  # Top-level parameter names of the classifier (all that trains with freeze_backbone), the output
  # layer first (the converters give it a new class count).
  classifier_params: tuple[str, ...]
  # Key of animesion_jax.data.preprocess.NORMALIZATIONS the original code used.
  normalization: str
  # animesion_jax.convert sources whose checkpoints load into this family.
  checkpoint_sources: tuple[str, ...]
  # 'classify': returns logits [N, classes]; 'detect': a heatmap and boxes per cell (a detector;
  # see models/centernet.py and config.task).
  task: str = "classify"

  @property
  def head(self) -> str:
    """The output layer's parameter name."""
    return self.classifier_params[0]

  @property
  def fields(self) -> frozenset[str]:
    """The constructor fields (what config.model may set, besides 'name')."""
    return frozenset(f.name for f in dataclasses.fields(self.module)) - {"parent", "name"}


VIT = Family(
  VisionTransformer,
  ("head", "interm_aggregate", "interm_norm"),
  "half",
  ("vit_npz", "pytorch_vit", "animesion"),
)
RESNET = Family(ResNet, ("fc",), "imagenet", ("torchvision_resnet", "animesion"))
SHALLOW = Family(ShallowNet, ("fc2",), "half", ("pytorch_shallownet", "animesion"))
CENTERNET = Family(CenterNet, ("heatmap_out", "box_out"), "half", (), task="detect")
FAMILIES = (VIT, RESNET, SHALLOW, CENTERNET)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """One entry of the table: a family with fixed architecture fields."""

  family: Family
  fields: tuple[tuple[str, Any], ...] = ()

  @property
  def constructor(self) -> Callable[..., nn.Module]:
    return functools.partial(self.family.module, **dict(self.fields))


def _vit(patch: int, hidden: int, mlp: int, heads: int, layers: int) -> ModelSpec:
  return ModelSpec(
    VIT,
    (
      ("patch_size", patch),
      ("hidden_size", hidden),
      ("mlp_dim", mlp),
      ("num_heads", heads),
      ("num_layers", layers),
    ),
  )


def _resnet(block: str, stage_sizes: tuple[int, ...]) -> ModelSpec:
  return ModelSpec(RESNET, (("block", block), ("stage_sizes", stage_sizes)))


MODELS: dict[str, ModelSpec] = {
  # ViT variants of the original paper (patch, hidden, mlp, heads, layers).
  "vit_ti16": _vit(16, 192, 768, 3, 12),
  "vit_s16": _vit(16, 384, 1536, 6, 12),
  "vit_b16": _vit(16, 768, 3072, 12, 12),
  "vit_b32": _vit(32, 768, 3072, 12, 12),
  "vit_l16": _vit(16, 1024, 4096, 16, 24),
  "vit_l32": _vit(32, 1024, 4096, 16, 24),
  "vit_h14": _vit(14, 1280, 5120, 16, 32),
  # A few-thousand-parameter ViT for tests and smoke runs.
  "vit_tiny": _vit(4, 32, 64, 2, 2),
  "resnet18": _resnet("basic", (2, 2, 2, 2)),
  "resnet34": _resnet("basic", (3, 4, 6, 3)),
  "resnet50": _resnet("bottleneck", (3, 4, 6, 3)),
  "resnet101": _resnet("bottleneck", (3, 4, 23, 3)),
  "resnet152": _resnet("bottleneck", (3, 8, 36, 3)),
  "shallow": ModelSpec(SHALLOW),
  # The head detector (config.task='detect'): CenterNet on a 4-stage BasicBlock backbone; its
  # fields (widths, blocks, head_width) size it.
  "centernet": ModelSpec(CENTERNET),
}


def spec(name: str) -> ModelSpec:
  """The table entry of model `name`; ValueError listing the valid names."""
  if name not in MODELS:
    raise ValueError(f"Unknown model {name!r}; valid names: {', '.join(sorted(MODELS))}.")
  return MODELS[name]


def family_of(model: nn.Module | str) -> Family:
  """The family of a model instance or a model name."""
  if isinstance(model, str):
    return spec(model).family
  for family in FAMILIES:
    if isinstance(model, family.module):
      return family
  raise ValueError(f"{type(model).__name__} is not a model of the table.")


def checkpoint_sources() -> tuple[str, ...]:
  """Every checkpoint source some model loads from, in table order."""
  return tuple(dict.fromkeys(s for f in FAMILIES for s in f.checkpoint_sources))


def check_fields(model: nn.Module) -> None:
  """Raises ValueError for field values `model` cannot be built with (without building it)."""
  check = getattr(model, "check_fields", None)
  if check is not None:
    check()


# The classifier head's options (models/heads.py), which every config carries (config_schema): a
# model without a classifier (the head detector) takes none of them.
HEAD_OPTIONS = ("head", "cosine_scale", "margin_type", "margin")


def overrides_of(name: str, model_config: dict[str, Any]) -> dict[str, Any]:
  """config.model's fields as `create_model` overrides of model `name`: without 'name', and
  without the classifier head's options where the model has no classifier."""
  overrides = {k: v for k, v in model_config.items() if k != "name"}
  if overrides.get("representation_size") == 0:
    overrides["representation_size"] = None
  fields = spec(name).family.fields
  return {k: v for k, v in overrides.items() if k in fields or k not in HEAD_OPTIONS}


def create_model(name: str, num_classes: int, **overrides: Any) -> nn.Module:
  """Builds model `name` with `num_classes` outputs.

  Args:
    name: A key of `MODELS`, e.g. 'vit_b16' or 'resnet18'.
    num_classes: Width of the classifier head.
    **overrides: Module fields to change, e.g. `dtype=jnp.bfloat16`,
      `dropout_rate=0.1` or `gelu_approximate=False`.

  Returns:
    The (unbound) Flax module.

  Raises:
    ValueError: If `name` is unknown or `overrides` names a field the model
      does not have.
  """
  constructor = spec(name).constructor
  try:
    return constructor(num_classes=num_classes, **overrides)
  except TypeError as e:
    raise ValueError(f"Cannot build model {name!r} with overrides {sorted(overrides)}: {e}") from e


def count_params(params: Any) -> int:
  """Number of scalars in a parameter tree (arrays or jax.ShapeDtypeStruct); the one count."""
  return int(parameter_overview.count_parameters(params))


def logits_and_embedding(
  model: nn.Module, variables: Any, images: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """(float32 logits [N, classes], L2-normalised float32 embedding [N, D]) in one eval forward.

  The embedding is what the model's output layer reads (see models/embedding.py), for every
  family, normalised as a cosine head normalises it (so with `head='cosine'` the logits are
  `cosine_scale` times its dot products with the normalised class weights); `images` are
  normalised as for `model.apply`.
  """
  logits, sown = model.apply(variables, images, train=False, mutable=[embedding.COLLECTION])
  features = sown[embedding.COLLECTION][embedding.NAME][-1]
  return logits.astype(jnp.float32), heads.l2_normalize(features)
