"""Colour jitter against torchvision's ColorJitter on the same images (host and device paths)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest
import torch
from torchvision import transforms
from torchvision.transforms import functional as tvf

from animesion_jax.data import color_jitter

_TV_OPS = (tvf.adjust_brightness, tvf.adjust_contrast, tvf.adjust_saturation, tvf.adjust_hue)


def _images(count: int, size: int = 24, seed: int = 0) -> np.ndarray:
  """Smooth, saturated colour fields (face-crop-like), uint8 (count, size, size, 3)."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(count):
    coarse = Image.fromarray(rng.integers(0, 256, (4, 4, 3), np.uint8))
    out.append(np.asarray(coarse.resize((size, size), Image.BICUBIC)))
  return np.stack(out)


def _torchvision_pil(pixels: np.ndarray, factors, order) -> np.ndarray:
  image = Image.fromarray(pixels)
  for op in order:
    image = _TV_OPS[op](image, float(factors[op]))
  return np.asarray(image)


def _torchvision_tensor(pixels: np.ndarray, factors, order) -> np.ndarray:
  image = torch.from_numpy(pixels).permute(2, 0, 1).float() / 255.0
  for op in order:
    image = _TV_OPS[op](image, float(factors[op]))
  return image.permute(1, 2, 0).numpy()


@pytest.mark.parametrize(
  "op, factor", [(0, 0.9), (0, 1.1), (1, 0.9), (1, 1.1), (2, 0.9), (2, 1.1), (3, -0.1), (3, 0.07)]
)
def test_each_host_adjustment_is_torchvisions_on_pil_images(op, factor):
  factors = np.asarray([1.0, 1.0, 1.0, 0.0], np.float32)
  factors[op] = factor
  for pixels in _images(8, seed=op):
    got = color_jitter.jitter_uint8(pixels, factors, np.asarray([op])).astype(np.int32)
    want = _torchvision_pil(pixels, factors, [op]).astype(np.int32)
    # Blends: rounding (PIL truncates), at most one level. Hue: PIL's and OpenCV's 8-bit HSV
    # quantise differently (PIL's own round trip with no shift moves pixels by ~1 level on
    # average, up to ~12 on saturated colours).
    assert np.abs(got - want).max() <= (12 if op == 3 else 1), (op, np.abs(got - want).max())
    assert np.abs(got - want).mean() < (1.2 if op == 3 else 0.6)


def test_device_jitter_is_torchvisions_tensor_jitter_in_any_order():
  images = _images(24, seed=5)
  rng = np.random.default_rng(0)
  factors, order = color_jitter.draw_parameters(rng, len(images), 0.1)
  order[:4] = [[3, 0, 1, 2], [0, 1, 2, 3], [2, 3, 0, 1], [1, 2, 3, 0]]  # Hue first..last.
  got = np.asarray(
    jax.jit(color_jitter.jitter_float)(jnp.asarray(images, jnp.float32) / 255.0, factors, order)
  )
  for index, pixels in enumerate(images):
    want = _torchvision_tensor(pixels, factors[index], order[index])
    np.testing.assert_allclose(got[index], want, atol=2e-5)


def test_host_jitter_in_any_order_is_torchvisions_on_pil_images():
  images = _images(48, seed=7)
  factors, order = color_jitter.draw_parameters(np.random.default_rng(1), len(images), 0.1)
  diffs, changes = [], []
  for pixels, f, o in zip(images, factors, order):
    got = color_jitter.jitter_uint8(pixels, f, o).astype(np.int32)
    want = _torchvision_pil(pixels, f, o).astype(np.int32)
    diffs.append(np.abs(got - want))
    changes.append(np.abs(want - pixels))
  # Per pixel the two agree to ~2 levels (the hue's 8-bit HSV quantisation), far below what
  # the jitter itself changes.
  assert np.mean(diffs) < 2.5 and np.mean(diffs) < 0.25 * np.mean(changes)


def test_parameters_have_torchvisions_distribution():
  count = 24_000
  factors, order = color_jitter.draw_parameters(np.random.default_rng(2), count, 0.1)
  device_factors, device_order = jax.device_get(
    color_jitter.draw_parameters_jax(jax.random.PRNGKey(2), count, 0.1)
  )
  for f, o in ((factors, order), (device_factors, device_order)):
    np.testing.assert_array_less(np.abs(f - [1, 1, 1, 0]), 0.1 + 1e-6)
    # Uniform on [-0.1, 0.1] around the identity: mean 0, std 0.1 / sqrt(3).
    np.testing.assert_allclose(np.mean(f - [1, 1, 1, 0], axis=0), 0.0, atol=0.002)
    np.testing.assert_allclose(np.std(f, axis=0), 0.1 / np.sqrt(3), rtol=0.03)
    # All 24 orders equally likely (torch.randperm(4)): each ~1000 +- 31.
    counts = {p: 0 for p in itertools.permutations(range(4))}
    for row in o:
      counts[tuple(row)] += 1
    assert len(counts) == 24 and min(counts.values()) > 850 and max(counts.values()) < 1150


def _summary(before: np.ndarray, after: np.ndarray) -> np.ndarray:
  """Per image: change of the mean of each channel, and of the per-image std (contrast)."""
  before, after = before.astype(np.float64), after.astype(np.float64)
  return np.concatenate(
    [
      after.mean(axis=(1, 2)) - before.mean(axis=(1, 2)),
      (after.std(axis=(1, 2, 3)) - before.std(axis=(1, 2, 3)))[:, None],
    ],
    axis=1,
  )


def test_random_jitter_statistics_match_torchvision_color_jitter():
  base = _images(40, seed=11)
  repeats = 10
  images = np.repeat(base, repeats, axis=0)  # 400 draws: 10 per image.
  torch.manual_seed(0)
  reference = transforms.ColorJitter(0.1, 0.1, 0.1, 0.1)
  want = np.stack([np.asarray(reference(Image.fromarray(p))) for p in images])
  factors, order = color_jitter.draw_parameters(np.random.default_rng(3), len(images), 0.1)
  host = np.stack([color_jitter.jitter_uint8(p, f, o) for p, f, o in zip(images, factors, order)])
  device_factors, device_order = color_jitter.draw_parameters_jax(
    jax.random.PRNGKey(3), len(images), 0.1
  )
  device = np.asarray(
    jax.jit(color_jitter.jitter_uint8_batch_jax)(jnp.asarray(images), device_factors, device_order)
  )
  assert device.dtype == np.uint8
  reference_summary = _summary(images, want)
  spread = reference_summary.std(axis=0)
  assert np.all(spread > 1.0)  # The jitter moves these statistics by several grey levels.
  for got in (host, device):
    summary = _summary(images, got)
    # Same centre (within 4 standard errors) and the same spread (within 15%).
    np.testing.assert_array_less(
      np.abs(summary.mean(axis=0) - reference_summary.mean(axis=0)),
      4 * spread / np.sqrt(len(images)) * np.sqrt(2),
    )
    np.testing.assert_allclose(summary.std(axis=0), spread, rtol=0.15)
    # The hue moves: mean absolute pixel change is that of torchvision's.
    change = np.abs(got.astype(np.int32) - images).mean()
    np.testing.assert_allclose(change, np.abs(want.astype(np.int32) - images).mean(), rtol=0.1)


def test_strength_is_checked():
  with pytest.raises(ValueError, match="color_jitter=0.6"):
    color_jitter.draw_parameters(np.random.default_rng(0), 1, 0.6)
  with pytest.raises(ValueError, match="color_jitter=-0.1"):
    color_jitter.check_strength(-0.1)
  color_jitter.check_strength(0.0)
