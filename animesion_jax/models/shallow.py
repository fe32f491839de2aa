"""ShallowNet: the paper's 5-layer LeNet-like baseline, in Flax Linen, as the original code.

The original `ShallowNet` (Animesion, classification/models/models.py): conv 3->16 5x5 (no
padding) + BatchNorm + ReLU + max-pool 2, conv 16->32 5x5 + BatchNorm + ReLU + max-pool 2,
flatten, Linear(53*53*32 -> 512) at 224 px, ReLU, dropout 0.2, Linear(512 -> classes), all at
PyTorch's default initialisation. Flax flattens NHWC (torch: NCHW); the converter permutes the
first linear's weight accordingly.
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

KERNEL = 5
POOL = 2


def feature_side(image_side: int, num_stages: int = 2) -> int:
  """Side of the last stage's feature map: each stage maps s to (s - 4) // 2 (224 -> 53)."""
  side = image_side
  for _ in range(num_stages):
    side = (side - KERNEL + 1) // POOL
  return side


class ShallowNet(nn.Module):
  """conv-BN-ReLU-maxpool stages, then FC -> ReLU -> dropout -> FC.

  Attributes:
    num_classes: Number of output classes.
    channels: Output channels of each conv stage (the original: 16, 32).
    hidden: Width of the hidden fully connected layer (the original: 512).
    dropout_rate: Dropout before the classifier, train mode only (the original: 0.2).
    dtype: Compute dtype; parameters and batch statistics stay float32 and
      logits are float32.
    head: One of models.heads.HEADS: 'linear' (the paper's) or 'cosine' (NormFace).
    cosine_scale: The cosine head's logit scale s.
    margin_type: One of models.heads.MARGIN_TYPES, on the target logit in training only.
    margin: The margin m ('additive': cosine units; 'angular': radians).
  """

  num_classes: int
  channels: Sequence[int] = (16, 32)
  hidden: int = 512
  dropout_rate: float = 0.2
  dtype: Dtype = jnp.float32
  head: str = "linear"
  cosine_scale: float = 16.0
  margin_type: str = "none"
  margin: float = 0.0

  def check_fields(self) -> None:
    """Raises ValueError for field values the model cannot be built with."""
    heads.check_fields(self)

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
    """Returns float32 logits [N, num_classes] for NHWC `images`."""
    if images.ndim != 4:
      raise ValueError(f"Expected NHWC images of rank 4, got shape {images.shape}.")
    _check_image_size(images.shape[1], images.shape[2], len(self.channels))
    self.check_fields()

    x = images.astype(self.dtype)
    for i, features in enumerate(self.channels):
      fan_in = x.shape[-1] * KERNEL * KERNEL
      x = nn.Conv(
        features,
        (KERNEL, KERNEL),
        padding="VALID",
        dtype=self.dtype,
        param_dtype=jnp.float32,
        kernel_init=initializers.TORCH_DEFAULT_KERNEL,
        bias_init=initializers.torch_default_bias(fan_in),
        name=f"conv{i + 1}",
      )(x)
      x = batch_norm.batch_norm(train, self.dtype, f"bn{i + 1}")(x)
      x = nn.relu(x)
      # window_shape by keyword: jax2onnx's stand-in for nn.max_pool takes it only so.
      x = nn.max_pool(x, window_shape=(POOL, POOL), strides=(POOL, POOL))
    x = x.reshape(x.shape[0], -1)
    x = nn.Dense(
      self.hidden,
      dtype=self.dtype,
      param_dtype=jnp.float32,
      kernel_init=initializers.TORCH_DEFAULT_KERNEL,
      bias_init=initializers.torch_default_bias(x.shape[-1]),
      name="fc1",
    )(x)
    x = nn.relu(x)
    embedding.sow(self, x)
    x = nn.Dropout(rate=self.dropout_rate)(x, deterministic=not train)
    return heads.output_layer(
      self,
      x,
      "fc2",
      kernel_init=initializers.TORCH_DEFAULT_KERNEL,
      bias_init=initializers.torch_default_bias(self.hidden),
    )


def _check_image_size(height: int, width: int, num_stages: int) -> None:
  """Raises ValueError when a stage would shrink the feature map to nothing."""
  h, w = height, width
  for _ in range(num_stages):
    if min(h, w) < KERNEL + POOL - 1:
      raise ValueError(
        f"Image size {height}x{width} is too small for ShallowNet with "
        f"{num_stages} stages of unpadded {KERNEL}x{KERNEL} conv and "
        f"{POOL}x{POOL} max-pool; use a larger image."
      )
    h, w = (h - KERNEL + 1) // POOL, (w - KERNEL + 1) // POOL
