"""ShallowNet: the paper's 5-layer LeNet-like baseline, in Flax Linen."""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

_KERNEL = 5
_POOL = 2


class ShallowNet(nn.Module):
  """conv-BN-ReLU-maxpool stages, then FC -> ReLU -> dropout -> FC.

  Convolutions are unpadded 5x5 as in LeNet, so each stage maps a side s to
  (s - 4) // 2 and images must be large enough to survive every stage.

  Attributes:
    num_classes: Number of output classes.
    channels: Output channels of each conv stage (LeNet: 6, 16).
    hidden: Width of the hidden fully connected layer.
    dropout_rate: Dropout before the classifier (train mode only).
    dtype: Compute dtype; parameters and batch statistics stay float32 and
      logits are float32.
  """

  num_classes: int
  channels: Sequence[int] = (6, 16)
  hidden: int = 512
  dropout_rate: float = 0.5
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
    """Returns float32 logits [N, num_classes] for NHWC `images`."""
    if images.ndim != 4:
      raise ValueError(
          f'Expected NHWC images of rank 4, got shape {images.shape}.')
    _check_image_size(images.shape[1], images.shape[2], len(self.channels))

    x = images.astype(self.dtype)
    for i, features in enumerate(self.channels):
      x = nn.Conv(features, (_KERNEL, _KERNEL), padding='VALID',
                  dtype=self.dtype, param_dtype=jnp.float32,
                  name=f'conv{i + 1}')(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                       epsilon=1e-5, dtype=self.dtype, param_dtype=jnp.float32,
                       name=f'bn{i + 1}')(x)
      x = nn.relu(x)
      x = nn.max_pool(x, (_POOL, _POOL), strides=(_POOL, _POOL))
    x = x.reshape(x.shape[0], -1)
    x = nn.Dense(self.hidden, dtype=self.dtype, param_dtype=jnp.float32,
                 name='fc1')(x)
    x = nn.relu(x)
    x = nn.Dropout(rate=self.dropout_rate)(x, deterministic=not train)
    x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32,
                 name='fc2')(x)
    return x.astype(jnp.float32)


def _check_image_size(height: int, width: int, num_stages: int) -> None:
  """Raises ValueError when a stage would shrink the feature map to nothing."""
  h, w = height, width
  for _ in range(num_stages):
    if min(h, w) < _KERNEL + _POOL - 1:
      raise ValueError(
          f'Image size {height}x{width} is too small for ShallowNet with '
          f'{num_stages} stages of unpadded {_KERNEL}x{_KERNEL} conv and '
          f'{_POOL}x{_POOL} max-pool; use a larger image.')
    h, w = (h - _KERNEL + 1) // _POOL, (w - _KERNEL + 1) // _POOL
