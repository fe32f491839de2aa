"""Scenes for a head detector: head crops pasted on illustrated backgrounds, with their boxes.

A scene is a picture with 0 to N characters at varied sizes and positions, flipped, overlapping
one another, partly outside the picture or behind a foreground shape. Each character comes from a
*sprite*: an RGBA square whose whole extent is the region a training crop covers (the synthetic
characters' 128 px canvas, or a real head crop such as a DAF:re face). Its box in the scene,
[x, y, w, h] in pixels, is that square as pasted, clipped to the picture: cropping the box gives
back a picture like the recognizer's training crops.

Everything is drawn from one `np.random.Generator`, so a scene is a function of its seed.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import math

import numpy as np
from PIL import Image
from PIL import ImageDraw


@dataclasses.dataclass(frozen=True)
class Sprite:
  """One character to paste: its label, its RGBA square, and the colour of its clothes (drawn as
  a torso below the square; None: none, as for a real crop, which shows its own shoulders)."""

  label: int
  image: Image.Image
  body_color: tuple[int, int, int] | None = None


# rng -> a sprite; called once per character of a scene.
SpriteSource = Callable[[np.random.Generator], Sprite]


@dataclasses.dataclass(frozen=True)
class Layout:
  """Sizes of the scenes.

  Attributes:
    min_side: smallest picture width or height, in pixels.
    max_side: largest picture width or height, in pixels.
    min_head: smallest head box side, in pixels.
    max_head: largest head box side, in pixels (never above 0.9 x the picture's shorter side).
    max_characters: scenes have 0 to this many characters, uniformly.
  """

  min_side: int = 256
  max_side: int = 512
  min_head: int = 24
  max_head: int = 160
  max_characters: int = 5

  def __post_init__(self):
    if not 16 <= self.min_side <= self.max_side:
      raise ValueError(f"Need 16 <= min_side <= max_side, got {self.min_side}, {self.max_side}.")
    if not 8 <= self.min_head <= self.max_head:
      raise ValueError(f"Need 8 <= min_head <= max_head, got {self.min_head}, {self.max_head}.")
    if self.min_head > 0.9 * self.min_side:
      raise ValueError(f"min_head={self.min_head} does not fit a {self.min_side} px picture.")


@dataclasses.dataclass
class Scene:
  image: np.ndarray  # uint8 [H, W, 3].
  boxes: np.ndarray  # float32 [K, 4]: x, y, w, h in pixels, clipped to the picture.
  labels: np.ndarray  # int64 [K].


# A pasted square keeps at least this fraction of its area inside the picture...
_MIN_INSIDE = 0.6
# ... and every earlier square keeps at least this fraction of its area uncovered by later ones.
_MIN_UNCOVERED = 0.55
_PLACEMENT_TRIES = 30


def _color(rng: np.random.Generator, low: int = 0, high: int = 256) -> tuple[int, int, int]:
  return tuple(int(v) for v in rng.integers(low, high, 3))


def _mix(a, b, t: float) -> tuple[int, int, int]:
  return tuple(int(x + (y - x) * t) for x, y in zip(a, b))


def _outdoor(rng: np.random.Generator, width: int, height: int) -> Image.Image:
  """Sky gradient, horizon, hills, clouds, trees, houses and a sun."""
  horizon = int(height * rng.uniform(0.35, 0.8))
  top, low = _color(rng, 60, 256), _color(rng, 120, 256)
  ground0, ground1 = _color(rng, 20, 200), _color(rng, 20, 200)
  rows = np.linspace(0, 1, height)[:, None, None]
  sky = np.asarray(top, np.float32) + rows * (np.asarray(low, np.float32) - top)
  ground = np.asarray(ground0, np.float32) + rows * (np.asarray(ground1, np.float32) - ground0)
  pixels = np.where(np.arange(height)[:, None, None] < horizon, sky, ground)
  image = Image.fromarray(np.broadcast_to(pixels, (height, width, 3)).astype(np.uint8))
  d = ImageDraw.Draw(image)
  if rng.random() < 0.5:  # Sun or moon.
    r = rng.uniform(0.04, 0.1) * width
    cx, cy = rng.uniform(0, width), rng.uniform(0, horizon)
    d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=_color(rng, 180, 256))
  for _ in range(int(rng.integers(0, 4))):  # Hills on the horizon.
    cx, r = rng.uniform(0, width), rng.uniform(0.2, 0.6) * width
    d.ellipse((cx - r, horizon - r * 0.4, cx + r, horizon + r * 0.4), fill=_color(rng, 20, 180))
  for _ in range(int(rng.integers(0, 5))):  # Clouds: clusters of pale ellipses.
    cx, cy, r = rng.uniform(0, width), rng.uniform(0, horizon), rng.uniform(0.03, 0.08) * width
    shade = _color(rng, 200, 256)
    for _ in range(4):
      ox, oy = rng.normal(0, r, 2)
      d.ellipse((cx + ox - r, cy + oy * 0.4 - r * 0.6, cx + ox + r, cy + oy * 0.4 + r * 0.6), shade)
  for _ in range(int(rng.integers(0, 5))):  # Houses and trees standing on the ground.
    x, base = rng.uniform(-0.1, 1.0) * width, horizon + rng.uniform(0, height - horizon)
    w, h = rng.uniform(0.06, 0.25) * width, rng.uniform(0.1, 0.45) * height
    if rng.random() < 0.5:
      wall = _color(rng, 60, 256)
      d.rectangle((x, base - h, x + w, base), fill=wall, outline=_mix(wall, (0, 0, 0), 0.5))
      d.polygon(
        [(x - w * 0.1, base - h), (x + w / 2, base - h * 1.4), (x + w * 1.1, base - h)],
        fill=_color(rng, 40, 200),
      )
      for wx in np.arange(x + w * 0.15, x + w * 0.8, w * 0.35):
        d.rectangle((wx, base - h * 0.7, wx + w * 0.2, base - h * 0.45), fill=_color(rng, 120, 256))
    else:
      d.rectangle((x + w * 0.4, base - h * 0.5, x + w * 0.6, base), fill=_color(rng, 60, 140))
      d.ellipse((x, base - h * 1.1, x + w, base - h * 0.35), fill=_color(rng, 20, 160))
  return image


def _indoor(rng: np.random.Generator, width: int, height: int) -> Image.Image:
  """A wall (plain or striped), a floor, windows, frames and furniture blocks."""
  wall, floor_y = _color(rng, 80, 256), int(height * rng.uniform(0.55, 0.9))
  image = Image.new("RGB", (width, height), wall)
  d = ImageDraw.Draw(image)
  if rng.random() < 0.5:  # Wallpaper stripes.
    stripe, period = _mix(wall, _color(rng), 0.3), rng.uniform(0.03, 0.12) * width
    for x in np.arange(0, width, period):
      d.rectangle((x, 0, x + period / 2, floor_y), fill=stripe)
  d.rectangle((0, floor_y, width, height), fill=_color(rng, 40, 200))
  for _ in range(int(rng.integers(0, 4))):  # Windows and picture frames.
    w, h = rng.uniform(0.1, 0.3) * width, rng.uniform(0.1, 0.35) * height
    x, y = rng.uniform(0, width - w), rng.uniform(0, max(1.0, floor_y - h))
    d.rectangle(
      (x, y, x + w, y + h),
      fill=_color(rng, 100, 256),
      outline=_color(rng, 0, 120),
      width=max(2, int(w * 0.05)),
    )
  for _ in range(int(rng.integers(0, 3))):  # Furniture.
    w, h = rng.uniform(0.1, 0.4) * width, rng.uniform(0.05, 0.3) * height
    x = rng.uniform(-0.1, 1.0) * width
    d.rectangle((x, floor_y - h, x + w, floor_y + h * 0.2), fill=_color(rng, 30, 200))
  return image


def background(rng: np.random.Generator, width: int, height: int) -> Image.Image:
  """An illustrated background: outdoors (2 in 3) or a room."""
  return (_outdoor if rng.random() < 2 / 3 else _indoor)(rng, width, height)


def _intersection(a: np.ndarray, b: np.ndarray) -> float:
  """Overlap area of two [x, y, w, h] boxes."""
  w = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
  h = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
  return max(0.0, w) * max(0.0, h)


def _clip(box: np.ndarray, width: int, height: int) -> np.ndarray:
  x0, y0 = max(box[0], 0.0), max(box[1], 0.0)
  x1, y1 = min(box[0] + box[2], width), min(box[1] + box[3], height)
  return np.asarray([x0, y0, max(0.0, x1 - x0), max(0.0, y1 - y0)], np.float32)


def _find_place(
  rng: np.random.Generator,
  layout: Layout,
  width: int,
  height: int,
  aspect: float,
  placed: list[np.ndarray],
  covered: list[float],
) -> tuple[np.ndarray, list[float]] | None:
  """A square [x, y, w, h] (unclipped) that leaves the earlier squares visible enough, with the
  area of each earlier square it covers; None after a few tries."""
  biggest = min(layout.max_head, 0.9 * min(width, height))
  for _ in range(_PLACEMENT_TRIES):
    side = math.exp(rng.uniform(math.log(layout.min_head), math.log(biggest)))
    w, h = side, side * aspect
    box = np.asarray(
      [rng.uniform(-0.3 * w, width - 0.7 * w), rng.uniform(-0.3 * h, height - 0.7 * h), w, h],
      np.float32,
    )
    if _clip(box, width, height)[2:].prod() < _MIN_INSIDE * w * h:
      continue
    # The torso drawn below the square (when the sprite has one) covers what is under it too.
    torso = _torso(box)
    overlaps = [_intersection(box, other) + _intersection(torso, other) for other in placed]
    if all(
      c + o <= (1 - _MIN_UNCOVERED) * other[2] * other[3]
      for c, o, other in zip(covered, overlaps, placed)
    ):
      return box, [c + o for c, o in zip(covered, overlaps)]
  return None


def _torso(box: np.ndarray) -> np.ndarray:
  x, y, w, h = box
  return np.asarray([x + w * 0.15, y + h * 0.9, w * 0.7, h * 0.9], np.float32)


def _occlude(
  d: ImageDraw.ImageDraw, rng: np.random.Generator, box: np.ndarray, others: list[np.ndarray]
) -> None:
  """A foreground shape (a bush, a table edge, a sign) over one side of the box, up to 35% of it;
  none where it would cover more than a tenth of another box."""
  x, y, w, h = (float(v) for v in box)
  depth = rng.uniform(0.15, 0.35)
  side = int(rng.integers(0, 3))
  if side == 0:  # From below.
    shape = (x - w * 0.3, y + h * (1 - depth), x + w * 1.3, y + h * 1.5)
  elif side == 1:  # From the left.
    shape = (x - w * 0.5, y + h * 0.2, x + w * depth, y + h * 1.5)
  else:  # From the right.
    shape = (x + w * (1 - depth), y + h * 0.2, x + w * 1.5, y + h * 1.5)
  extent = np.asarray([shape[0], shape[1], shape[2] - shape[0], shape[3] - shape[1]])
  if any(_intersection(extent, other) > 0.1 * other[2] * other[3] for other in others):
    return
  if rng.random() < 0.5:
    d.ellipse(shape, fill=_color(rng, 0, 200))
  else:
    d.rectangle(shape, fill=_color(rng, 0, 200), outline=_color(rng, 0, 100), width=2)


def compose(
  rng: np.random.Generator, sprites: SpriteSource, layout: Layout, count: int | None = None
) -> Scene:
  """One scene with `count` characters (default: 0 to layout.max_characters, uniformly).

  A character that finds no place leaving the others visible enough is left out, so a scene can
  hold fewer than `count`.
  """
  width, height = (int(v) for v in rng.integers(layout.min_side, layout.max_side + 1, 2))
  if count is None:
    count = int(rng.integers(0, layout.max_characters + 1))
  image = background(rng, width, height)
  d = ImageDraw.Draw(image)
  placed, covered, labels = [], [], []
  for _ in range(count):
    sprite = sprites(rng)
    aspect = sprite.image.height / sprite.image.width
    found = _find_place(rng, layout, width, height, aspect, placed, covered)
    if found is None:
      continue
    box, covered = found
    x, y, w, h = (int(round(float(v))) for v in box)
    picture = sprite.image.convert("RGBA").resize((w, h), Image.Resampling.BILINEAR)
    if rng.random() < 0.5:
      picture = picture.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if sprite.body_color is not None:  # Torso below the head square.
      tx, ty, tw, th = (float(v) for v in _torso(np.asarray([x, y, w, h], np.float32)))
      d.rounded_rectangle(
        (tx, ty, tx + tw, ty + th),
        radius=max(1, w // 6),
        fill=sprite.body_color,
        outline=_mix(sprite.body_color, (0, 0, 0), 0.4),
        width=2,
      )
    image.paste(picture, (x, y), picture)
    if rng.random() < 0.25:
      _occlude(d, rng, np.asarray([x, y, w, h], np.float32), placed)
    placed.append(np.asarray([x, y, w, h], np.float32))
    covered.append(0.0)
    labels.append(sprite.label)
  boxes = [_clip(b, width, height) for b in placed]
  return Scene(
    image=np.asarray(image, np.uint8),
    boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
    labels=np.asarray(labels, np.int64),
  )
