"""CenterNet: a single-stage, anchor-free head detector on a small ResNet, in Flax Linen.

Zhou et al. 2019, "Objects as Points": each head is the peak of a per-class heatmap at stride 4,
where the network also predicts the box's size and the sub-cell offset of its centre. The
backbone is the project's ResNet BasicBlock (models/resnet.py) in four stages down to stride 16,
upsampled back to stride 4 with lateral connections (a small feature pyramid, top-down).

The output is one float32 array [N, H/4, W/4, num_classes + 4]: per cell, the heatmap logits of
each class, then log(width / 4) and log(height / 4) of the box centred there, then the offset
(x, y) of the centre from the cell's corner, in cells. animesion_jax/detection/ encodes targets,
computes the loss and decodes boxes from it.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from animesion_jax.models import batch_norm
from animesion_jax.models.resnet import BasicBlock

Dtype = Any

# Pixels per output cell.
STRIDE = 4
# The input side must be a multiple of this (the deepest stage's stride).
SIDE_MULTIPLE = 16
# Per-cell outputs after the class heatmaps: log width, log height, offset x, offset y.
BOX_CHANNELS = 4
# The heatmap's initial bias: every cell starts at probability 0.1 (the paper's prior), so the
# focal loss of the many background cells does not swamp the first steps.
_HEATMAP_PRIOR_BIAS = -2.19


def _conv_bn_relu(x: jax.Array, features: int, stride: int, train: bool, dtype, name: str):
  x = nn.Conv(
    features,
    (3, 3),
    strides=(stride, stride),
    padding=((1, 1), (1, 1)),
    use_bias=False,
    dtype=dtype,
    param_dtype=jnp.float32,
    name=f"{name}_conv",
  )(x)
  return nn.relu(batch_norm.batch_norm(train, dtype, f"{name}_bn")(x))


def _upsample2(x: jax.Array) -> jax.Array:
  """Nearest-neighbour 2x upsampling (repeat rows and columns)."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class CenterNet(nn.Module):
  """Heatmap + size + offset heads at stride 4 on a 4-stage BasicBlock backbone.

  Attributes:
    num_classes: heatmap classes (1: heads).
    widths: channels of the stride-2 stem and of the three BasicBlock stages (strides 4, 8, 16).
    blocks: BasicBlocks per stage (the first of each stage strides by 2).
    head_width: channels of the top-down path and of the heads' hidden layer.
    dtype: compute dtype; parameters stay float32 and the output is float32.
  """

  num_classes: int = 1
  widths: Sequence[int] = (16, 32, 64, 96)
  blocks: int = 1
  head_width: int = 32
  dtype: Dtype = jnp.float32

  def check_fields(self) -> None:
    if len(self.widths) != 4 or min(self.widths) < 1 or self.blocks < 1 or self.head_width < 1:
      raise ValueError(
        f"CenterNet needs 4 positive widths (stem and 3 stages), blocks >= 1 and head_width >= 1; "
        f"got widths={tuple(self.widths)}, blocks={self.blocks}, head_width={self.head_width}."
      )

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
    """float32 [N, H/4, W/4, num_classes + 4] for NHWC `images` (H, W multiples of 16)."""
    self.check_fields()
    if images.ndim != 4 or images.shape[1] % SIDE_MULTIPLE or images.shape[2] % SIDE_MULTIPLE:
      raise ValueError(
        f"CenterNet takes NHWC images with sides that are multiples of {SIDE_MULTIPLE}, got shape "
        f"{images.shape}."
      )
    x = _conv_bn_relu(images.astype(self.dtype), self.widths[0], 2, train, self.dtype, "stem")
    features = []
    for stage, width in enumerate(self.widths[1:]):
      for j in range(self.blocks):
        x = BasicBlock(width, 2 if j == 0 else 1, dtype=self.dtype, name=f"layer{stage + 1}_{j}")(
          x, train=train
        )
      features.append(x)  # Strides 4, 8, 16.
    lateral = lambda f, name: nn.Conv(
      self.head_width, (1, 1), dtype=self.dtype, param_dtype=jnp.float32, name=name
    )(f)
    x = lateral(features[2], "lateral16")
    for level, stride in ((1, 8), (0, 4)):
      x = _upsample2(x) + lateral(features[level], f"lateral{stride}")
      x = _conv_bn_relu(x, self.head_width, 1, train, self.dtype, f"up{stride}")

    def head(outputs: int, name: str, bias_init) -> jax.Array:
      y = nn.relu(
        nn.Conv(
          self.head_width, (3, 3), dtype=self.dtype, param_dtype=jnp.float32, name=f"{name}_hidden"
        )(x)
      )
      return nn.Conv(
        outputs,
        (1, 1),
        dtype=self.dtype,
        param_dtype=jnp.float32,
        bias_init=bias_init,
        name=f"{name}_out",
      )(y)

    heatmap = head(self.num_classes, "heatmap", nn.initializers.constant(_HEATMAP_PRIOR_BIAS))
    box = head(BOX_CHANNELS, "box", nn.initializers.zeros)
    return jnp.concatenate([heatmap, box], axis=-1).astype(jnp.float32)
