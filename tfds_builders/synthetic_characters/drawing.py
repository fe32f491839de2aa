"""Procedural drawing of the synthetic anime-style characters (numpy + Pillow).

Each class is a fixed combination of five attributes (face shape, hair colour,
hair style, eye colour, accessory). Every attribute value is shared by several
classes and every class has a "near twin" that differs in at most two
attributes, so no single cue identifies a class.

Everything else varies per image and is drawn from a `np.random.Generator`:
position, scale, rotation, background, clothing colour, accessory colour, mouth,
blush, line noise and colour jitter. Given the same generator state, the
output is bit-identical, which is what makes dataset builds reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import math

import numpy as np
from PIL import Image
from PIL import ImageDraw

# Shapes are drawn on a 2x canvas and downsampled, which anti-aliases edges.
_CANVAS = 128
_SKIN = (255, 224, 200)
_OUTLINE = (50, 35, 40)
# Normalised (y, x) pixel coordinates in [0, 1], shared by all backgrounds.
_GRID = np.mgrid[0:_CANVAS, 0:_CANVAS].astype(np.float32) / (_CANVAS - 1)

FACE_SHAPES = ("round", "oval", "sharp")
HAIR_STYLES = ("short", "long", "bob", "twintails", "ponytail", "spiky")
ACCESSORIES = ("none", "ribbon", "glasses", "hat", "cat_ears", "hairclip")
HAIR_COLORS = {
  "black": (40, 40, 55),
  "brown": (125, 75, 40),
  "blonde": (240, 210, 110),
  "pink": (245, 150, 190),
  "blue": (70, 120, 220),
  "silver": (200, 205, 215),
  "red": (200, 50, 50),
}
EYE_COLORS = {
  "blue": (40, 90, 220),
  "green": (40, 170, 80),
  "red": (200, 30, 40),
  "purple": (140, 60, 200),
  "amber": (220, 150, 30),
}


@dataclasses.dataclass(frozen=True)
class Character:
  """One class: a fixed combination of drawing attributes."""

  name: str
  face: str
  hair_color: str
  hair_style: str
  eye_color: str
  accessory: str

  def __post_init__(self):
    for field, allowed in (
      ("face", FACE_SHAPES),
      ("hair_color", HAIR_COLORS),
      ("hair_style", HAIR_STYLES),
      ("eye_color", EYE_COLORS),
      ("accessory", ACCESSORIES),
    ):
      if getattr(self, field) not in allowed:
        raise ValueError(
          f"Character {self.name!r}: {field}={getattr(self, field)!r} is not "
          f"one of {sorted(allowed)}."
        )

  def attributes(self) -> tuple[str, str, str, str, str]:
    return (self.face, self.hair_color, self.hair_style, self.eye_color, self.accessory)


def _c(spec: str) -> Character:
  return Character(*spec.split())


# The order here defines the integer labels; never reorder, only append (and
# bump the builder version). Class i has hair colour i % 7 and hair style
# i // 7, accessory (colour + style) % 6: every attribute value is shared by
# several classes, yet any two classes differ in at least two attributes, at
# least one of them a large one (hair colour, hair style or accessory), so a
# small model can tell them apart from a 32 px image.
CHARACTERS: tuple[Character, ...] = tuple(
  _c(s)
  for s in (
    "kuro_long round black long blue none",
    "kaede_long oval brown long purple ribbon",
    "kin_long sharp blonde long green glasses",
    "momo_long round pink long amber hat",
    "aoi_long oval blue long red cat_ears",
    "yuki_long sharp silver long blue hairclip",
    "akane_long round red long purple none",
    "yoru_twintails sharp black twintails green ribbon",
    "chika_twintails round brown twintails amber glasses",
    "hikari_twintails oval blonde twintails red hat",
    "sakura_twintails sharp pink twintails blue cat_ears",
    "ruri_twintails round blue twintails purple hairclip",
    "shiro_twintails oval silver twintails green none",
    "tsubaki_twintails sharp red twintails amber ribbon",
    "ren_spiky oval black spiky red glasses",
    "haru_spiky sharp brown spiky blue hat",
    "kai_spiky round blonde spiky purple cat_ears",
    "mai_spiky oval pink spiky green hairclip",
    "sora_spiky sharp blue spiky amber none",
    "jin_spiky round silver spiky red ribbon",
    "natsu_spiky oval red spiky blue glasses",
    "midori_bob round black bob purple hat",
    "tomo_bob oval brown bob green cat_ears",
    "hina_bob sharp blonde bob amber hairclip",
    "shion_bob round pink bob red none",
    "nagi_bob oval blue bob blue ribbon",
    "rin_bob sharp silver bob purple glasses",
    "akari_bob round red bob green hat",
  )
)


def class_names() -> list[str]:
  """Character names in label order."""
  return [c.name for c in CHARACTERS]


def image_rng(seed: int, stream: int, label: int, index: int) -> np.random.Generator:
  """Independent generator for one image, so any image can be drawn alone.

  Args:
    seed: global dataset seed.
    stream: split stream id (a different one per split).
    label: class index.
    index: image index within its class and split.

  Returns:
    A generator whose draws depend only on the four arguments.
  """
  return np.random.default_rng(np.random.SeedSequence([seed, stream, label, index]))


def _jitter(rgb: Sequence[int], rng: np.random.Generator, amount: float) -> tuple[int, int, int]:
  values = np.asarray(rgb, np.float64) + rng.normal(0.0, amount, 3)
  return tuple(int(v) for v in np.clip(values, 0, 255))


def _darker(rgb: Sequence[int], factor: float = 0.6) -> tuple[int, int, int]:
  return tuple(int(v * factor) for v in rgb)


def _random_color(rng: np.random.Generator) -> tuple[int, int, int]:
  return tuple(int(v) for v in rng.integers(0, 256, 3))


def _background(rng: np.random.Generator) -> Image.Image:
  """Solid, gradient or patterned background in random colours."""
  c0 = np.asarray(_random_color(rng), np.float32)
  c1 = np.asarray(_random_color(rng), np.float32)
  kind = rng.integers(0, 5)
  yy, xx = _GRID
  if kind == 0:  # Solid.
    t = np.zeros_like(xx)
  elif kind == 1:  # Linear gradient in a random direction.
    angle = rng.uniform(0, 2 * math.pi)
    t = xx * math.cos(angle) + yy * math.sin(angle)
    t = (t - t.min()) / (t.max() - t.min())
  elif kind == 2:  # Stripes.
    period = rng.uniform(0.08, 0.25)
    stripes = ((xx + yy * rng.uniform(-1, 1)) / period) % 1.0 < 0.5
    t = stripes.astype(np.float32)
  elif kind == 3:  # Checkerboard.
    cells = int(rng.integers(3, 9))
    t = ((np.floor(xx * cells) + np.floor(yy * cells)) % 2).astype(np.float32)
  else:  # Radial vignette.
    cx, cy = rng.uniform(0.2, 0.8, 2)
    t = np.clip(np.hypot(xx - cx, yy - cy) * 1.5, 0, 1)
  pixels = c0 + t[..., None] * (c1 - c0)
  return Image.fromarray(pixels.astype(np.uint8), "RGB")


def _face_polygon(shape: str) -> list[tuple[float, float]]:
  cx, cy = 64.0, 68.0
  rx, ry = {"round": (28, 28), "oval": (25, 33), "sharp": (27, 28)}[shape]
  if shape != "sharp":
    return [
      (cx + rx * math.cos(a), cy + ry * math.sin(a))
      for a in np.linspace(0, 2 * math.pi, 48, endpoint=False)
    ]
  top = [
    (cx + rx * math.cos(a), cy + ry * math.sin(a)) for a in np.linspace(math.pi, 2 * math.pi, 24)
  ]
  return top + [(cx + 17, cy + 24), (cx, cy + 37), (cx - 17, cy + 24)]


def _draw_back_hair(d: ImageDraw.ImageDraw, style: str, hair, line) -> None:
  kw = dict(fill=hair, outline=line, width=2)
  if style == "long":
    d.rounded_rectangle((30, 32, 98, 126), radius=22, **kw)
  elif style == "bob":
    d.rounded_rectangle((30, 32, 98, 100), radius=26, **kw)
  elif style == "twintails":
    d.ellipse((8, 48, 38, 120), **kw)
    d.ellipse((90, 48, 120, 120), **kw)
  elif style == "ponytail":
    d.polygon([(84, 40), (112, 54), (114, 110), (96, 100)], **kw)
  d.ellipse((34, 30, 94, 86), **kw)  # Back of the skull, all styles.


def _draw_bangs(d: ImageDraw.ImageDraw, style: str, hair, line) -> None:
  """Fringe over the forehead; its silhouette differs per style."""
  if style == "bob":  # Straight-cut fringe.
    pts = [(34, 60), (36, 36), (64, 28), (92, 36), (94, 60), (90, 54), (38, 54)]
  elif style == "long":  # Side-swept fringe.
    pts = [(34, 66), (36, 38), (64, 28), (92, 38), (94, 66), (88, 50), (70, 56), (50, 44), (40, 52)]
  elif style == "spiky":
    pts = [
      (32, 64),
      (24, 40),
      (38, 36),
      (34, 14),
      (52, 28),
      (64, 6),
      (76, 28),
      (94, 14),
      (90, 36),
      (104, 40),
      (96, 64),
      (86, 50),
      (76, 58),
      (64, 48),
      (52, 58),
      (42, 50),
    ]
  else:  # Jagged fringe for short, twintails and ponytail.
    pts = [
      (34, 62),
      (36, 38),
      (64, 28),
      (92, 38),
      (94, 62),
      (86, 48),
      (78, 56),
      (70, 46),
      (62, 56),
      (54, 46),
      (46, 56),
      (40, 48),
    ]
  d.polygon(pts, fill=hair, outline=line, width=2)
  if style == "twintails":  # Hair ties where the tails start.
    d.ellipse((28, 44, 40, 56), fill=_darker(hair, 0.5))
    d.ellipse((88, 44, 100, 56), fill=_darker(hair, 0.5))
  elif style == "ponytail":
    d.ellipse((84, 38, 96, 50), fill=_darker(hair, 0.5))


def _draw_eyes(d: ImageDraw.ImageDraw, iris, face: str) -> None:
  y = 72 if face == "oval" else 70
  for x in (52, 76):
    d.ellipse((x - 7, y - 8, x + 7, y + 8), fill=(255, 255, 255))
    d.ellipse((x - 5, y - 7, x + 5, y + 7), fill=iris)
    d.ellipse((x - 2, y - 2, x + 2, y + 4), fill=_darker(iris, 0.35))
    d.ellipse((x - 4, y - 5, x - 1, y - 2), fill=(255, 255, 255))
    d.line((x - 8, y - 9, x + 8, y - 9), fill=_OUTLINE, width=3)


def _draw_face_details(d: ImageDraw.ImageDraw, rng: np.random.Generator, face: str) -> None:
  mouth_y = 92 if face != "round" else 88
  if rng.random() < 0.5:  # Smile versus a flat mouth.
    d.arc((58, mouth_y - 5, 70, mouth_y + 3), 20, 160, fill=_OUTLINE, width=2)
  else:
    d.line((60, mouth_y, 68, mouth_y), fill=_OUTLINE, width=2)
  if rng.random() < 0.5:  # Blush.
    for x in (46, 82):
      d.ellipse((x - 5, 80, x + 5, 84), fill=(250, 160, 170))


def _draw_cat_ears(d: ImageDraw.ImageDraw, hair, line) -> None:
  for sign in (-1, 1):
    outer = [(64 + sign * 30, 48), (64 + sign * 28, 10), (64 + sign * 8, 32)]
    inner = [(64 + sign * 26, 42), (64 + sign * 26, 18), (64 + sign * 13, 34)]
    d.polygon(outer, fill=hair, outline=line, width=2)
    d.polygon(inner, fill=(250, 170, 180))


def _draw_accessory(
  d: ImageDraw.ImageDraw, rng: np.random.Generator, accessory: str, face: str
) -> None:
  color = _random_color(rng)
  line = _darker(color, 0.5)
  if accessory == "ribbon":
    d.polygon([(80, 26), (100, 14), (98, 40)], fill=color, outline=line)
    d.polygon([(80, 26), (64, 10), (66, 36)], fill=color, outline=line)
    d.ellipse((75, 21, 85, 31), fill=line)
  elif accessory == "glasses":
    y = 72 if face == "oval" else 70
    frame = _darker(color, 0.4)
    for x in (52, 76):
      d.ellipse((x - 10, y - 10, x + 10, y + 10), outline=frame, width=2)
    d.line((62, y, 66, y), fill=frame, width=2)
  elif accessory == "hat":
    d.rounded_rectangle((38, 6, 90, 40), radius=10, fill=color, outline=line, width=2)
    d.rectangle((38, 30, 90, 36), fill=_random_color(rng))
    d.ellipse((20, 32, 108, 48), fill=color, outline=line, width=2)
  elif accessory == "hairclip":
    d.polygon([(36, 48), (50, 40), (53, 45), (39, 53)], fill=color, outline=line)


def _draw_character_layer(character: Character, rng: np.random.Generator) -> Image.Image:
  """The character centred on a transparent canvas."""
  layer = Image.new("RGBA", (_CANVAS, _CANVAS), (0, 0, 0, 0))
  d = ImageDraw.Draw(layer)
  hair = _jitter(HAIR_COLORS[character.hair_color], rng, 10)
  hair_line = _darker(hair, 0.55)
  skin = _jitter(_SKIN, rng, 6)
  iris = _jitter(EYE_COLORS[character.eye_color], rng, 10)
  shirt = _random_color(rng)

  d.ellipse((22, 104, 106, 170), fill=shirt, outline=_darker(shirt), width=2)
  _draw_back_hair(d, character.hair_style, hair, hair_line)
  d.rectangle((56, 88, 72, 110), fill=_darker(skin, 0.9))
  if character.accessory == "cat_ears":
    _draw_cat_ears(d, hair, hair_line)
  d.polygon(_face_polygon(character.face), fill=skin, outline=_OUTLINE, width=2)
  _draw_eyes(d, iris, character.face)
  _draw_face_details(d, rng, character.face)
  _draw_bangs(d, character.hair_style, hair, hair_line)
  _draw_accessory(d, rng, character.accessory, character.face)
  return layer


def character_layer(character: Character, rng: np.random.Generator) -> Image.Image:
  """The character centred, unrotated, on a transparent 128 px RGBA square: a whole training
  crop's region (synthetic scenes paste it; its square is the head box)."""
  return _draw_character_layer(character, rng)


def _place(layer: Image.Image, rng: np.random.Generator) -> Image.Image:
  """Random scale, small rotation and shift about the canvas centre."""
  scale = rng.uniform(0.75, 1.05)
  angle = math.radians(rng.uniform(-12, 12))
  tx, ty = rng.uniform(-12, 12, 2)
  c = _CANVAS / 2
  # PIL's affine maps output to input coordinates: in = c + A^-1 (out - c - t).
  cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
  a, b, d, e = cos, sin, -sin, cos
  off_x, off_y = -c - tx, -c - ty
  coeffs = (a, b, c + a * off_x + b * off_y, d, e, c + d * off_x + e * off_y)
  return layer.transform(
    layer.size, Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BILINEAR
  )


def _line_noise(image: Image.Image, rng: np.random.Generator) -> None:
  d = ImageDraw.Draw(image)
  for _ in range(int(rng.integers(0, 5))):
    x0, y0, x1, y1 = (int(v) for v in rng.integers(0, _CANVAS, 4))
    d.line((x0, y0, x1, y1), fill=_random_color(rng), width=int(rng.integers(1, 3)))


def draw_character(character: Character, rng: np.random.Generator, size: int = 64) -> np.ndarray:
  """Draws one randomised image of `character`.

  Args:
    character: which character (class) to draw.
    rng: source of all per-image variation; consumed by this call.
    size: output height and width in pixels.

  Returns:
    uint8 array of shape (size, size, 3).
  """
  if size < 16:
    raise ValueError(f"size must be at least 16 pixels, got {size}.")
  layer = _place(_draw_character_layer(character, rng), rng)
  image = _background(rng).convert("RGBA")
  image.alpha_composite(layer)
  image = image.convert("RGB")
  _line_noise(image, rng)
  image = image.resize((size, size), Image.Resampling.BOX)
  pixels = np.asarray(image, np.float64)
  gain = 1.0 + rng.normal(0.0, 0.05, 3)  # Slight per-channel colour jitter.
  pixels = pixels * gain
  return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def generated_characters(count: int, seed: int) -> tuple[Character, ...]:
  """`count` characters, any two differing in at least two attributes (the long-tail set).

  Face, hair style, eye colour and accessory are free (540 combinations); the hair colour is
  their sum modulo 7, a check digit, so two combinations that differ in one free attribute also
  differ in hair colour. Combinations are taken round-robin over the (hair colour, hair style,
  accessory) triples, the attributes a 32 px image shows best, so that as few classes as possible
  share all three (252 triples: up to 252 classes share none). The choice and the order depend
  only on `seed`. Names spell the attributes, e.g. 'pink_twintails_ribbon_blue_round'.
  """
  colors, faces, styles = list(HAIR_COLORS), FACE_SHAPES, HAIR_STYLES
  eyes, accessories = list(EYE_COLORS), ACCESSORIES
  by_triple: dict[tuple[int, int, int], list[Character]] = {}
  for f, s, e, a in np.ndindex(len(faces), len(styles), len(eyes), len(accessories)):
    color = colors[(f + s + e + a) % len(colors)]
    name = f"{color}_{styles[s]}_{accessories[a]}_{eyes[e]}_{faces[f]}"
    character = Character(name, faces[f], color, styles[s], eyes[e], accessories[a])
    by_triple.setdefault((character.hair_color, s, a), []).append(character)
  if not 1 <= count <= sum(len(group) for group in by_triple.values()):
    raise ValueError(f"count={count}: choose 1 to 540 generated characters.")
  rng = np.random.default_rng([seed, 0x10C7A11])
  groups = [by_triple[key] for key in sorted(by_triple)]
  groups = [[group[i] for i in rng.permutation(len(group))] for group in groups]
  order = rng.permutation(len(groups))
  chosen = []
  for depth in range(max(len(group) for group in groups)):
    chosen += [groups[i][depth] for i in order if depth < len(groups[i])]
  return tuple(chosen[:count])
