"""PyTorch's default initialisers, for layers the original code left at torch's defaults."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

# torch.nn.Linear / Conv2d default weight: kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(fan_in), +).
TORCH_DEFAULT_KERNEL = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_default_bias(fan_in: int) -> nn.initializers.Initializer:
  """torch.nn.Linear / Conv2d default bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init
