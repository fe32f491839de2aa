"""Model table: every architecture by name, built with `create_model`.

Each model is a Flax Linen module called as `model(images, train=...)` on NHWC
float images and returning float32 logits [N, num_classes]. Dropout draws from
the 'dropout' rng collection; BatchNorm statistics live in 'batch_stats'.
"""

import functools
import math
from typing import Any, Callable

import flax.linen as nn
import jax

from animesion_jax.models.resnet import ResNet
from animesion_jax.models.shallow import ShallowNet
from animesion_jax.models.vit import VisionTransformer


def _vit(patch: int, hidden: int, mlp: int, heads: int,
         layers: int) -> Callable[..., nn.Module]:
  return functools.partial(VisionTransformer, patch_size=patch,
                           hidden_size=hidden, mlp_dim=mlp, num_heads=heads,
                           num_layers=layers)


def _resnet(block: str,
            stage_sizes: tuple[int, ...]) -> Callable[..., nn.Module]:
  return functools.partial(ResNet, block=block, stage_sizes=stage_sizes)


MODELS: dict[str, Callable[..., nn.Module]] = {
    # ViT variants of the original paper (patch, hidden, mlp, heads, layers).
    'vit_ti16': _vit(16, 192, 768, 3, 12),
    'vit_s16': _vit(16, 384, 1536, 6, 12),
    'vit_b16': _vit(16, 768, 3072, 12, 12),
    'vit_b32': _vit(32, 768, 3072, 12, 12),
    'vit_l16': _vit(16, 1024, 4096, 16, 24),
    'vit_l32': _vit(32, 1024, 4096, 16, 24),
    'vit_h14': _vit(14, 1280, 5120, 16, 32),
    # A few-thousand-parameter ViT for tests and smoke runs.
    'vit_tiny': _vit(4, 32, 64, 2, 2),
    'resnet18': _resnet('basic', (2, 2, 2, 2)),
    'resnet34': _resnet('basic', (3, 4, 6, 3)),
    'resnet50': _resnet('bottleneck', (3, 4, 6, 3)),
    'resnet101': _resnet('bottleneck', (3, 4, 23, 3)),
    'resnet152': _resnet('bottleneck', (3, 8, 36, 3)),
    'shallow': ShallowNet,
}


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
  if name not in MODELS:
    raise ValueError(
        f'Unknown model {name!r}; valid names: {", ".join(sorted(MODELS))}.')
  constructor = MODELS[name]
  try:
    return constructor(num_classes=num_classes, **overrides)
  except TypeError as e:
    raise ValueError(
        f'Cannot build model {name!r} with overrides {sorted(overrides)}: {e}'
    ) from e


def count_params(params: Any) -> int:
  """Number of scalars in a parameter tree (arrays or jax.ShapeDtypeStruct)."""
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params))
