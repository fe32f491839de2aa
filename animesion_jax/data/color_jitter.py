"""Colour jitter as torchvision's ColorJitter(b, c, s, h) on the original's PIL images.

Each image draws a brightness, contrast and saturation factor uniformly from [1-s, 1+s] and a hue
shift from [-s, s] (s = strength), and applies the four adjustments in its own random order:
  brightness  x * f                         (a blend with black)
  contrast    f * x + (1 - f) * mean(gray)  (a blend with the image's mean grey level)
  saturation  f * x + (1 - f) * gray        (a blend with the greyscale image)
  hue         H + h (mod 1) in HSV space
each clipped to the valid range. The host path (`jitter_uint8`) works on uint8 pixels with
rounding between steps, as PIL does; the device path (`jitter_float`, jnp) works in float as
torchvision's tensor functions, and rounds once at the end. The host path needs OpenCV; without
it (a bare accelerator box) jitter on the device (`data_on_device`).
"""

import jax
import jax.numpy as jnp
import numpy as np

try:
  import cv2
except ImportError:  # Only the host path needs it (`check_host_path`).
  cv2 = None

BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)
_GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale (ITU-R 601-2).


def draw_parameters(
  rng: np.random.Generator, count: int, strength: float
) -> tuple[np.ndarray, np.ndarray]:
  """(count, 4) float32 factors (brightness, contrast, saturation, hue) and (count, 4) orders."""
  check_strength(strength, allow_zero=False)
  factors = rng.uniform(-strength, strength, (count, 4)).astype(np.float32)
  factors[:, :3] += 1.0
  order = np.argsort(rng.random((count, 4)), axis=1).astype(np.int32)
  return factors, order


def draw_parameters_jax(key: jax.Array, count: int, strength: float) -> tuple[jax.Array, jax.Array]:
  """The same distribution as `draw_parameters`, drawn on the device."""
  check_strength(strength, allow_zero=False)
  factor_key, order_key = jax.random.split(key)
  factors = jax.random.uniform(factor_key, (count, 4), minval=-strength, maxval=strength)
  factors = factors + jnp.asarray([1.0, 1.0, 1.0, 0.0])
  order = jnp.argsort(jax.random.uniform(order_key, (count, 4)), axis=1).astype(jnp.int32)
  return factors, order


def check_strength(strength: float, allow_zero: bool = True) -> None:
  """Raises ValueError unless 0 < strength <= 0.5 (or strength == 0, off, if allowed)."""
  if not (0.0 < strength <= 0.5 or (allow_zero and strength == 0.0)):
    raise ValueError(f"color_jitter={strength}: use a value in (0, 0.5] (0 turns it off).")


def check_host_path(strength: float) -> None:
  """`check_strength`, and ImportError when host jitter is on without OpenCV installed."""
  check_strength(strength)
  if strength and cv2 is None:
    raise ImportError(
      f"color_jitter={strength} on the host needs OpenCV: pip install opencv-python-headless, "
      "or set data_on_device=True to jitter on the accelerator."
    )


def jitter_uint8(pixels: np.ndarray, factors: np.ndarray, order: np.ndarray) -> np.ndarray:
  """One uint8 (H, W, 3) RGB image jittered with its factors (4,) in its order (4,)."""
  for op in order:
    factor = float(factors[op])
    if op == BRIGHTNESS:
      pixels = cv2.addWeighted(pixels, factor, pixels, 0.0, 0.0)
    elif op == CONTRAST:
      mean = int(cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY).mean() + 0.5)
      pixels = cv2.addWeighted(pixels, factor, pixels, 0.0, (1.0 - factor) * mean)
    elif op == SATURATION:
      gray = cv2.cvtColor(cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
      pixels = cv2.addWeighted(pixels, factor, gray, 1.0 - factor, 0.0)
    else:  # PIL's HSV has the hue in 0..255; torchvision shifts it by int(h * 255), wrapping.
      hsv = cv2.cvtColor(pixels, cv2.COLOR_RGB2HSV_FULL)
      hsv[..., 0] += np.uint8(int(factor * 255) % 256)
      pixels = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL)
  return pixels


def _gray(images: jax.Array) -> jax.Array:
  return (
    _GRAY_WEIGHTS[0] * images[..., 0]
    + _GRAY_WEIGHTS[1] * images[..., 1]
    + _GRAY_WEIGHTS[2] * images[..., 2]
  )[..., None]


def _blend(images: jax.Array, factors: jax.Array, ops: jax.Array) -> jax.Array:
  """Brightness, contrast or saturation per image (ops (N,)); identity where ops == HUE."""
  f = jnp.where(ops == HUE, 1.0, jnp.take_along_axis(factors, ops[:, None], axis=1)[:, 0])
  f = f[:, None, None, None]
  gray = _gray(images)
  target = jnp.where(
    (ops == SATURATION)[:, None, None, None], gray, jnp.mean(gray, axis=(1, 2, 3), keepdims=True)
  )
  target = jnp.where((ops == BRIGHTNESS)[:, None, None, None], 0.0, target)
  return jnp.clip(f * images + (1.0 - f) * target, 0.0, 1.0)


def _shift_hue(images: jax.Array, shift: jax.Array) -> jax.Array:
  """RGB in [0, 1] -> HSV, hue + shift (mod 1), -> RGB (torchvision's tensor formulas)."""
  r, g, b = images[..., 0], images[..., 1], images[..., 2]
  maxc, minc = jnp.max(images, axis=-1), jnp.min(images, axis=-1)
  flat = maxc == minc
  chroma = maxc - minc
  saturation = chroma / jnp.where(flat, 1.0, maxc)
  divisor = jnp.where(flat, 1.0, chroma)
  rc, gc, bc = (maxc - r) / divisor, (maxc - g) / divisor, (maxc - b) / divisor
  hue = jnp.where(maxc == r, bc - gc, jnp.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
  hue = jnp.mod(hue / 6.0 + 1.0 + shift[:, None, None], 1.0)
  sector = jnp.floor(hue * 6.0)
  frac = hue * 6.0 - sector
  sector = sector.astype(jnp.int32) % 6
  v = maxc
  p = jnp.clip(v * (1.0 - saturation), 0.0, 1.0)
  q = jnp.clip(v * (1.0 - saturation * frac), 0.0, 1.0)
  t = jnp.clip(v * (1.0 - saturation * (1.0 - frac)), 0.0, 1.0)
  table = jnp.stack(
    [jnp.stack(c, -1) for c in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))],
    axis=-2,
  )
  return jnp.take_along_axis(table, sector[..., None, None], axis=-2)[..., 0, :]


def jitter_float(images: jax.Array, factors: jax.Array, order: jax.Array) -> jax.Array:
  """(N, H, W, 3) float images in [0, 1] jittered per image (factors, order: (N, 4)).

  The hue shift, the costly step, runs once: on the image after the blends ordered before it,
  followed by the blends ordered after it.
  """
  hue_position = jnp.argmax(order == HUE, axis=1)
  before = images
  for position in range(3):  # Blends before the hue shift (the hue's own slot is an identity).
    stepped = _blend(before, factors, order[:, position])
    before = jnp.where((position < hue_position)[:, None, None, None], stepped, before)
  after = _shift_hue(before, factors[:, HUE])
  for position in range(1, 4):
    stepped = _blend(after, factors, order[:, position])
    after = jnp.where((position > hue_position)[:, None, None, None], stepped, after)
  return after


def jitter_uint8_batch_jax(images: jax.Array, factors: jax.Array, order: jax.Array) -> jax.Array:
  """uint8 images -> jittered uint8 images (inside jit)."""
  jittered = jitter_float(images.astype(jnp.float32) / 255.0, factors, order)
  return jnp.round(jittered * 255.0).astype(jnp.uint8)
