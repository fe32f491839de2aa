"""The short last batch of an epoch: padded and masked by the device cache, and averaged over
its real rows only by the train step (with and without gradient accumulation)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from animesion_jax import sharding
from animesion_jax.data import device_cache
from animesion_jax.training import steps
from tests import test_data_pipeline

_IndexSource = test_data_pipeline._CoordinateSource  # pylint: disable=protected-access


def _cache(source, **overrides):
  kwargs = dict(
    mesh=sharding.create_mesh(),
    global_batch_size=16,
    image_size=16,
    resize_margin=4,
    horizontal_flip=True,
    seed=0,
  )
  kwargs.update(overrides)
  return device_cache.DeviceCache(source, **kwargs)


def test_device_cache_epochs_have_a_short_masked_last_batch():
  assert jax.device_count() == 8
  cache = _cache(_IndexSource(count=70, size=20))
  assert cache.steps_per_epoch == 5 and cache.num_examples == 70  # ceil(70 / 16); none dropped.
  for epoch in range(2):
    real = []
    for position in range(5):
      batch = jax.device_get(cache.batch(epoch * 5 + position))
      np.testing.assert_array_equal(batch["image"][:, 0, 0, 2], batch["label"])
      mask = batch["mask"]
      assert mask.dtype == np.float32
      assert mask.sum() == (16 if position < 4 else 70 - 64)
      assert set(batch["label"][mask == 0]) <= set(range(70))
      real.extend(batch["label"][mask == 1].tolist())
    assert sorted(real) == list(range(70))


def test_device_cache_with_fewer_examples_than_devices():
  cache = _cache(_IndexSource(count=5, size=20))
  batch = jax.device_get(cache.batch(0))
  assert cache.steps_per_epoch == 1
  assert sorted(batch["label"][batch["mask"] == 1].tolist()) == list(range(5))


def test_device_cache_colour_jitter_changes_colours_not_crops():
  source = _IndexSource(count=32, size=20)
  plain = jax.device_get(_cache(source).batch(3))
  jittered = jax.device_get(_cache(source, color_jitter=0.1).batch(3))
  np.testing.assert_array_equal(plain["label"], jittered["label"])
  change = np.abs(plain["image"].astype(np.int32) - jittered["image"]).mean(axis=(1, 2, 3))
  assert np.all(change > 0.5) and np.all(change < 40), change
  with pytest.raises(ValueError, match="color_jitter"):
    _cache(source, color_jitter=1.0)


class _Linear(nn.Module):
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, images, train: bool = False):
    return nn.Dense(5)(images.reshape(images.shape[0], -1))


def _step(batch, accumulation_steps=1):
  model = _Linear()
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 4, 3)))
  tx = optax.inject_hyperparams(optax.sgd)(learning_rate=0.5)  # As optim.create does.
  state = steps.create_train_state(variables, tx, jax.random.PRNGKey(1))
  new_state, metrics = jax.jit(
    lambda s, b: steps.train_step(
      s, b, model=model, tx=tx, normalization="half", accumulation_steps=accumulation_steps
    )
  )(state, batch)
  return new_state.params, metrics.compute()


@pytest.mark.parametrize("accumulation_steps", [1, 2, 4])
def test_train_step_averages_over_real_rows_only(accumulation_steps):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (8, 4, 4, 3), np.uint8)
  labels = rng.integers(0, 5, (8,)).astype(np.int32)
  real = {"image": images[:5], "label": labels[:5]}
  # Padding rows at the end hold other images: they must change nothing.
  padded = {"image": images, "label": labels, "mask": (np.arange(8) < 5).astype(np.float32)}
  want_params, want_metrics = _step(real)
  got_params, got_metrics = _step(padded, accumulation_steps)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got_params, want_params
  )
  for name in ("loss", "top1", "learning_rate"):
    np.testing.assert_allclose(got_metrics[name], want_metrics[name], rtol=1e-5)
  # Without the mask the padding rows do count (the comparison above can fail).
  unmasked_params, _ = _step({"image": images, "label": labels})
  assert not np.allclose(unmasked_params["Dense_0"]["kernel"], want_params["Dense_0"]["kernel"])


def test_full_mask_is_the_plain_mean():
  rng = np.random.default_rng(1)
  batch = {
    "image": rng.integers(0, 256, (8, 4, 4, 3), np.uint8),
    "label": rng.integers(0, 5, (8,)).astype(np.int32),
  }
  plain_params, plain_metrics = _step(batch)
  masked_params, masked_metrics = _step({**batch, "mask": np.ones(8, np.float32)}, 2)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), plain_params, masked_params
  )
  np.testing.assert_allclose(plain_metrics["loss"], masked_metrics["loss"], rtol=1e-6)
