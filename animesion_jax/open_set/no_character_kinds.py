"""No-character pictures by kind: those the no-character rule is fitted on, and kinds it never saw.

  pictures = no_character_kinds.draw("stripes", count=100, size=32, seed=3)   # uint8 [N, S, S, 3]

FITTED_KINDS are calibration.no_character_pictures' thirds (uniform noise, flat colours, linear
gradients): the calibration fits its no-character rule on them, so a benchmark on them measures
the fitted rule on its own kind. UNSEEN_KINDS are never used in fitting: random polygons, text,
smooth (low-frequency) noise, stripes, scenery-like drawings (sky, hills, sun, trees) and crops
of the synthetic dataset's own character backgrounds (no character drawn on them; its stripes,
checkerboards and vignettes: its flat and linear-gradient backgrounds are fitted kinds and are
redrawn). Every kind is deterministic in its seed.
"""

import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont

from animesion_jax.open_set import calibration as calibration_lib

FITTED_KINDS = ("noise", "flat", "gradient")
UNSEEN_KINDS = ("polygons", "text", "smooth_noise", "stripes", "scenery", "background_crops")
_CANVAS = 64  # Drawn at this size, then resized to the model's.
_TRIES = 50  # Background crops redrawn until neither flat nor a linear gradient.
_WORDS = ("unknown", "chapter 3", "the end", "ANIME", "hello!", "42", "sale 50%", "next time")


def _colour(rng: np.random.Generator, low: int = 0, high: int = 256) -> tuple[int, int, int]:
  return tuple(int(v) for v in rng.integers(low, high, 3))


def _polygons(rng: np.random.Generator) -> Image.Image:
  image = Image.new("RGB", (_CANVAS, _CANVAS), _colour(rng))
  draw = ImageDraw.Draw(image)
  for _ in range(int(rng.integers(2, 7))):
    points = [tuple(float(v) for v in p) for p in rng.uniform(0, _CANVAS, (rng.integers(3, 7), 2))]
    draw.polygon(points, fill=_colour(rng), outline=_colour(rng))
  return image


def _text(rng: np.random.Generator) -> Image.Image:
  image = Image.new("RGB", (_CANVAS, _CANVAS), _colour(rng, 128))
  draw = ImageDraw.Draw(image)
  for _ in range(int(rng.integers(1, 4))):
    font = ImageFont.load_default(size=int(rng.integers(8, 20)))
    word = _WORDS[int(rng.integers(len(_WORDS)))]
    xy = (float(rng.uniform(-8, _CANVAS / 2)), float(rng.uniform(0, _CANVAS - 12)))
    draw.text(xy, word, fill=_colour(rng, 0, 128), font=font)
  return image


def _smooth_noise(rng: np.random.Generator) -> Image.Image:
  cells = int(rng.integers(2, 9))
  small = rng.integers(0, 256, (cells, cells, 3)).astype(np.uint8)
  return Image.fromarray(small, "RGB").resize((_CANVAS, _CANVAS), Image.Resampling.BICUBIC)


def _stripes(rng: np.random.Generator) -> Image.Image:
  yy, xx = np.mgrid[0:_CANVAS, 0:_CANVAS].astype(np.float64)
  angle, period = rng.uniform(0, np.pi), rng.uniform(4, 16)
  phase = (xx * np.cos(angle) + yy * np.sin(angle)) / period
  t = ((phase % 1.0) < 0.5).astype(np.float64)[..., None]
  a, b = np.asarray(_colour(rng), np.float64), np.asarray(_colour(rng), np.float64)
  return Image.fromarray((a + t * (b - a)).astype(np.uint8), "RGB")


def _scenery(rng: np.random.Generator) -> Image.Image:
  sky_top, sky_low = _colour(rng, 60, 200), _colour(rng, 150, 256)
  t = np.linspace(0, 1, _CANVAS)[:, None, None]
  sky = np.asarray(sky_top) + t * (np.asarray(sky_low) - np.asarray(sky_top))
  image = Image.fromarray(np.repeat(sky, _CANVAS, axis=1).astype(np.uint8), "RGB")
  draw = ImageDraw.Draw(image)
  sun = rng.uniform(8, _CANVAS - 8, 2)
  r = float(rng.uniform(4, 9))
  draw.ellipse([sun[0] - r, sun[1] / 2 - r, sun[0] + r, sun[1] / 2 + r], fill=(250, 220, 90))
  horizon = float(rng.uniform(0.5, 0.75) * _CANVAS)
  for _ in range(int(rng.integers(1, 4))):  # Hills.
    x = float(rng.uniform(0, _CANVAS))
    w, h = float(rng.uniform(20, 50)), float(rng.uniform(8, 25))
    draw.polygon([(x - w, horizon), (x, horizon - h), (x + w, horizon)], fill=_colour(rng, 40, 160))
  draw.rectangle([0, horizon, _CANVAS, _CANVAS], fill=_colour(rng, 30, 140))
  for _ in range(int(rng.integers(0, 4))):  # Trees: a trunk and a crown.
    x, y = float(rng.uniform(0, _CANVAS)), float(rng.uniform(horizon, _CANVAS - 4))
    draw.rectangle([x - 1, y - 8, x + 1, y], fill=(90, 60, 30))
    draw.ellipse([x - 5, y - 16, x + 5, y - 6], fill=_colour(rng, 20, 120))
  return image


def _background_crop(rng: np.random.Generator) -> Image.Image:
  from tfds_builders.synthetic_characters import drawing  # pylint: disable=g-import-not-at-top

  for _ in range(_TRIES):
    background = drawing._background(rng)  # pylint: disable=protected-access
    side = int(rng.integers(background.width // 4, background.width // 2 + 1))
    left, top = (int(v) for v in rng.integers(0, background.width - side + 1, 2))
    crop = background.crop((left, top, left + side, top + side))
    if not _flat_or_linear(np.asarray(crop.resize((_CANVAS, _CANVAS)), np.float64)):
      break
  return crop


def _flat_or_linear(pixels: np.ndarray) -> bool:
  """Whether a picture is a flat colour or a linear gradient (the fitted kinds): its second
  differences along both axes are all rounding-small."""
  return max(np.abs(np.diff(pixels, n=2, axis=a)).max() for a in (0, 1)) <= 8


_DRAWERS = {
  "polygons": _polygons,
  "text": _text,
  "smooth_noise": _smooth_noise,
  "stripes": _stripes,
  "scenery": _scenery,
  "background_crops": _background_crop,
}


def draw(kind: str, count: int, size: int, seed: int) -> np.ndarray:
  """uint8 [count, size, size, 3]: `count` pictures of `kind` (FITTED_KINDS or UNSEEN_KINDS)."""
  if kind in FITTED_KINDS:
    which = FITTED_KINDS.index(kind)
    every = calibration_lib.no_character_pictures(3 * count, size, seed)
    return every[which::3][:count]
  if kind not in _DRAWERS:
    raise ValueError(
      f"Unknown no-character kind {kind!r}; choose from {FITTED_KINDS + UNSEEN_KINDS}."
    )
  rng = np.random.default_rng([seed, UNSEEN_KINDS.index(kind)])
  pictures = np.empty((count, size, size, 3), np.uint8)
  for i in range(count):
    image = _DRAWERS[kind](rng).resize((size, size), Image.Resampling.BILINEAR)
    pictures[i] = np.asarray(image.convert("RGB"))
  return pictures
