"""ResNet in Flax Linen with torchvision's layout, names and padding.

Module names mirror torchvision's state-dict keys (`layer2.0.downsample.0`
becomes `layer2_0/downsample_conv`) so a converter maps them one to one. All
paddings are explicit and symmetric: Flax's 'SAME' pads only on the bottom and
right for stride 2, which torch never does and which changes the logits of a
converted model.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from animesion_jax.models import batch_norm
from animesion_jax.models import embedding
from animesion_jax.models import heads
from animesion_jax.models import initializers

Dtype = Any

# Initialisation of a ResNet trained from scratch:
#  'torchvision': convolutions kaiming_normal_(mode='fan_out') as torchvision; classifier weight at
#    torch's Linear default, bias zero.
#  'animesion': the original Animesion code (ResNet.init_weights): xavier_uniform_ on every
#    convolution; its zero init then hit torchvision's 1000-way fc, which it replaced by a fresh
#    nn.Linear, so the classifier has torch's Linear default (weight and bias).
INIT_SCHEMES = ("torchvision", "animesion")
_CONV_INITS = {
  "torchvision": nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
  "animesion": nn.initializers.xavier_uniform(),
}

_BLOCK_KINDS = ("basic", "bottleneck")


def _pad(size: int) -> tuple[tuple[int, int], tuple[int, int]]:
  return ((size, size), (size, size))


def _conv(
  features: int, kernel: int, stride: int, dtype: Dtype, name: str, init_scheme: str = "torchvision"
) -> nn.Conv:
  """Bias-free square conv with torch's symmetric padding of kernel // 2."""
  return nn.Conv(
    features,
    (kernel, kernel),
    strides=(stride, stride),
    padding=_pad(kernel // 2),
    use_bias=False,
    dtype=dtype,
    param_dtype=jnp.float32,
    kernel_init=_CONV_INITS[init_scheme],
    name=name,
  )


def _shortcut(
  x: jax.Array, out_channels: int, stride: int, train: bool, dtype: Dtype, init_scheme: str
) -> jax.Array:
  """Identity, or 1x1 conv + BN when the stride or channel count changes."""
  if stride == 1 and x.shape[-1] == out_channels:
    return x
  x = _conv(out_channels, 1, stride, dtype, "downsample_conv", init_scheme)(x)
  return batch_norm.batch_norm(train, dtype, "downsample_bn")(x)


def _first_max(candidates: list[jax.Array]) -> jax.Array:
  """Elementwise maximum, the earliest candidate winning ties, NaN propagating (as torch)."""
  best = candidates[0]
  for candidate in candidates[1:]:
    best = jnp.where((candidate > best) | jnp.isnan(candidate), candidate, best)
  return best


def max_pool_3x3_stride_2(x: jax.Array) -> jax.Array:
  """torch's MaxPool2d(3, stride=2, padding=1) on NHWC `x` (padding -inf).

  The same values and gradient as `nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))`
  (the gradient goes to the first maximum of each window in row-major order, as torch's), but
  written as a chain of `where` over the 9 strided views: its gradient is a few selects and
  pads, where reduce_window's is select_and_scatter, which XLA's CPU backend ran ~5x slower
  (ResNet-18's stem pooling took 358 ms of the step against torch's 12 ms).
  """
  _, height, width, _ = x.shape
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
  out_h, out_w = (height - 1) // 2 + 1, (width - 1) // 2 + 1
  views = [
    padded[:, i : i + 2 * out_h - 1 : 2, j : j + 2 * out_w - 1 : 2, :]
    for i in range(3)
    for j in range(3)
  ]
  return _first_max(views)


class BasicBlock(nn.Module):
  """Two 3x3 convolutions with an identity or 1x1-conv shortcut."""

  planes: int
  stride: int = 1
  init_scheme: str = "torchvision"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    y = _conv(self.planes, 3, self.stride, self.dtype, "conv1", self.init_scheme)(x)
    y = nn.relu(batch_norm.batch_norm(train, self.dtype, "bn1")(y))
    y = _conv(self.planes, 3, 1, self.dtype, "conv2", self.init_scheme)(y)
    y = batch_norm.batch_norm(train, self.dtype, "bn2")(y)
    shortcut = _shortcut(x, self.planes, self.stride, train, self.dtype, self.init_scheme)
    return nn.relu(y + shortcut)


class Bottleneck(nn.Module):
  """1x1 -> 3x3 (strided, "v1.5") -> 1x1 convolutions, 4x expansion."""

  planes: int
  stride: int = 1
  init_scheme: str = "torchvision"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    y = _conv(self.planes, 1, 1, self.dtype, "conv1", self.init_scheme)(x)
    y = nn.relu(batch_norm.batch_norm(train, self.dtype, "bn1")(y))
    y = _conv(self.planes, 3, self.stride, self.dtype, "conv2", self.init_scheme)(y)
    y = nn.relu(batch_norm.batch_norm(train, self.dtype, "bn2")(y))
    y = _conv(self.planes * 4, 1, 1, self.dtype, "conv3", self.init_scheme)(y)
    y = batch_norm.batch_norm(train, self.dtype, "bn3")(y)
    shortcut = _shortcut(x, self.planes * 4, self.stride, train, self.dtype, self.init_scheme)
    return nn.relu(y + shortcut)


class ResNet(nn.Module):
  """torchvision-compatible ResNet classifier.

  Attributes:
    num_classes: Number of output classes.
    stage_sizes: Residual blocks per stage (torchvision has four stages).
    block: 'basic' (ResNet-18/34) or 'bottleneck' (ResNet-50/101/152).
    base_width: Channels of the stem and of the first stage (planes); doubled
      at every later stage. torchvision uses 64.
    init_scheme: One of INIT_SCHEMES: how a ResNet trained from scratch starts.
    dtype: Compute dtype; parameters and batch statistics stay float32 and
      logits are float32.
    head: One of models.heads.HEADS: 'linear' (the paper's) or 'cosine' (NormFace).
    cosine_scale: The cosine head's logit scale s.
    margin_type: One of models.heads.MARGIN_TYPES, on the target logit in training only.
    margin: The margin m ('additive': cosine units; 'angular': radians).
  """

  num_classes: int
  stage_sizes: Sequence[int]
  block: str = "basic"
  base_width: int = 64
  init_scheme: str = "torchvision"
  dtype: Dtype = jnp.float32
  head: str = "linear"
  cosine_scale: float = 16.0
  margin_type: str = "none"
  margin: float = 0.0

  def check_fields(self) -> None:
    """Raises ValueError for field values the model cannot be built with."""
    if self.block not in _BLOCK_KINDS:
      raise ValueError(f"Unknown ResNet block {self.block!r}; expected one of {_BLOCK_KINDS}.")
    if self.init_scheme not in INIT_SCHEMES:
      raise ValueError(
        f"Unknown ResNet init_scheme {self.init_scheme!r}; expected one of {INIT_SCHEMES}."
      )
    heads.check_fields(self)

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
    """Returns float32 logits [N, num_classes] for NHWC `images`."""
    self.check_fields()
    if images.ndim != 4:
      raise ValueError(f"Expected NHWC images of rank 4, got shape {images.shape}.")
    block_cls = BasicBlock if self.block == "basic" else Bottleneck

    x = images.astype(self.dtype)
    x = _conv(self.base_width, 7, 2, self.dtype, "conv1", self.init_scheme)(x)
    x = nn.relu(batch_norm.batch_norm(train, self.dtype, "bn1")(x))
    x = max_pool_3x3_stride_2(x)

    for s, num_blocks in enumerate(self.stage_sizes):
      planes = self.base_width * 2**s
      for j in range(num_blocks):
        stride = 2 if s > 0 and j == 0 else 1
        x = block_cls(
          planes=planes,
          stride=stride,
          init_scheme=self.init_scheme,
          dtype=self.dtype,
          name=f"layer{s + 1}_{j}",
        )(x, train=train)

    x = jnp.mean(x, axis=(1, 2))
    embedding.sow(self, x)
    bias_init = (
      initializers.torch_default_bias(x.shape[-1])
      if self.init_scheme == "animesion"
      else nn.initializers.zeros
    )
    return heads.output_layer(
      self, x, "fc", kernel_init=initializers.TORCH_DEFAULT_KERNEL, bias_init=bias_init
    )
