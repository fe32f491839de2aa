"""ResNet's stem max-pool: the same values and gradients as reduce_window's, ties included."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from animesion_jax.models import resnet


def _reference(x):
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


@pytest.mark.parametrize("shape", [(2, 16, 16, 3), (1, 9, 14, 2), (1, 1, 1, 1)])
@pytest.mark.parametrize("ties", [False, True])
def test_values_and_gradient_match_reduce_window(shape, ties):
  rng = np.random.default_rng(0)
  x = rng.standard_normal(shape).astype(np.float32)
  if ties:  # Small integers after a ReLU: most windows hold their maximum several times.
    x = np.maximum(np.round(2 * x), 0)
  x = jnp.asarray(x)
  out, vjp = jax.vjp(resnet.max_pool_3x3_stride_2, x)
  want, want_vjp = jax.vjp(_reference, x)
  assert out.shape == want.shape
  np.testing.assert_array_equal(out, want)
  cotangent = jnp.asarray(rng.standard_normal(out.shape).astype(np.float32))
  # The first maximum of each window (row-major) takes the gradient, as reduce_window and torch.
  np.testing.assert_allclose(vjp(cotangent)[0], want_vjp(cotangent)[0], atol=1e-6)


def test_nan_propagates_and_bfloat16_keeps_its_dtype():
  x = jnp.zeros((1, 6, 6, 1)).at[0, 3, 4, 0].set(jnp.nan)
  out = resnet.max_pool_3x3_stride_2(x)
  assert np.isnan(np.asarray(out)).sum() == np.isnan(np.asarray(_reference(x))).sum() == 2
  y = jnp.ones((1, 8, 8, 2), jnp.bfloat16)
  assert resnet.max_pool_3x3_stride_2(y).dtype == jnp.bfloat16
