"""Synthetic episodes: short videos of the synthetic characters, with scripted shots and truth.

  script = episodes.scripted()                       # or episodes.random_script(seed, seconds)
  truth = episodes.render(script, "clip.mp4", size=(640, 360), fps=24)
  truth["shots"], truth["frames"][i]                 # boundaries; per frame: name, known, box

Each shot has a background (a gradient with stripes, which slide when the shot pans) and
characters drawn by drawing.draw_character, each inside a magenta frame (MARKER) so that
`find_tiles` can box them the way a head detector would; the drawing of a character is redrawn
every `redraw` seconds (a new pose, colour jitter and tile background), as animation changes
key frames. Shots start with a cut or a fade through black; characters enter and leave during a
shot; a character of `unseen_characters()` (not one of the trained classes) can appear.
The ground truth counts a character in a frame when at least half its tile is in the picture and
the picture is at least half as bright as the shot's.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from . import drawing

MARKER = (255, 0, 255)  # Frame colour around every character tile (RGB).
FADE = 0.5  # Seconds of fading out, and again of fading in, around a fade's black.
BLACK = 0.25  # Seconds of black in the middle of a fade (the boundary is in its middle).


@dataclasses.dataclass(frozen=True)
class Appearance:
  character: str  # A name of drawing.CHARACTERS or of unseen_characters().
  start: float  # Seconds from the shot's start.
  end: float
  x: float  # Tile centre at the shot's start, as a fraction of the picture's width / height.
  y: float
  redraw: float = 0.25  # Seconds between new drawings of the character.


@dataclasses.dataclass(frozen=True)
class ShotScript:
  duration: float  # Seconds (a fade's black is split between this shot and the next).
  transition: str = "cut"  # How the shot starts: "cut" or "fade" (through black).
  pan: float = 0.0  # Horizontal speed of background and characters, in picture widths / second.
  appearances: tuple[Appearance, ...] = ()


def unseen_characters(count: int = 4) -> tuple[drawing.Character, ...]:
  """Characters that are none of the trained classes: hair styles no trained class has (short,
  ponytail), the other attributes shared with them."""
  styles = {c.hair_style for c in drawing.CHARACTERS}
  fresh = [c for c in drawing.generated_characters(540, seed=7) if c.hair_style not in styles]
  return tuple(dataclasses.replace(c, name=f"unseen_{c.name}") for c in fresh[:count])


def _character(name: str) -> drawing.Character:
  for c in (*drawing.CHARACTERS, *unseen_characters()):
    if c.name == name:
      return c
  raise ValueError(f"No synthetic character {name!r}.")


def scripted() -> list[ShotScript]:
  """A 15-second episode: two cuts, a pan, a fade, characters entering and leaving, and a
  character that is none of the trained classes."""
  a, b, c = drawing.CHARACTERS[0].name, drawing.CHARACTERS[9].name, drawing.CHARACTERS[18].name
  stranger = unseen_characters()[2].name
  return [
    ShotScript(3.0, appearances=(Appearance(a, 0.0, 3.0, 0.35, 0.5, redraw=1.0),)),
    ShotScript(
      3.0, appearances=(Appearance(a, 0.0, 3.0, 0.25, 0.5), Appearance(b, 0.0, 2.0, 0.72, 0.45))
    ),
    ShotScript(3.0, pan=-0.12, appearances=(Appearance(c, 0.0, 3.0, 0.7, 0.5),)),
    ShotScript(
      3.0,
      transition="fade",
      appearances=(Appearance(stranger, 0.0, 3.0, 0.3, 0.5), Appearance(a, 1.2, 3.0, 0.72, 0.5)),
    ),
    ShotScript(3.0, appearances=(Appearance(b, 0.8, 3.0, 0.5, 0.5, redraw=0.5),)),
  ]


def random_script(seed: int, seconds: float) -> list[ShotScript]:
  """Shots of 1.5-6 s until `seconds`: cuts (a fifth of them fades), some pans, 0-3 characters
  each entering and leaving at random, one in eight of them never seen in training."""
  rng = np.random.default_rng([seed, 0xE915])
  known = [c.name for c in drawing.CHARACTERS]
  unseen = [c.name for c in unseen_characters()]
  shots, total = [], 0.0
  while total < seconds - 1.0:
    duration = float(min(rng.uniform(1.5, 6.0), max(seconds - total, 1.5)))
    count = int(rng.choice([0, 1, 1, 2, 2, 3]))
    slots = rng.permutation([0.2, 0.5, 0.8])[:count]
    appearances = []
    for x in slots:
      name = str(rng.choice(unseen)) if rng.random() < 0.125 else str(rng.choice(known))
      start = 0.0 if rng.random() < 0.6 else float(rng.uniform(0, duration / 2))
      end = duration if rng.random() < 0.6 else float(rng.uniform(start + 0.75, duration + 0.75))
      appearances.append(
        Appearance(
          name,
          start,
          min(end, duration),
          float(x),
          float(rng.uniform(0.4, 0.6)),
          float(rng.choice([0.25, 0.5, 1.0])),
        )
      )
    shots.append(
      ShotScript(
        duration,
        transition="fade" if shots and rng.random() < 0.2 else "cut",
        pan=float(rng.choice([0.0, 0.0, -0.1, 0.1])),
        appearances=tuple(appearances),
      )
    )
    total += duration
  return shots


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
  """uint8 RGB (height, width, 3): a gradient crossed by soft stripes (never magenta, never
  dark)."""
  colors = rng.integers(70, 230, (2, 3)).astype(np.float32)
  colors[:, 1] = np.maximum(colors[:, 1], 110)  # Green keeps it far from the magenta frames.
  t = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
  period = float(rng.uniform(0.08, 0.2)) * height
  stripes = 0.12 * np.sin(np.arange(width, dtype=np.float32) / period * 2 * np.pi)[None, :, None]
  pixels = (colors[0] + t * (colors[1] - colors[0])) * (1.0 + stripes)
  return np.clip(pixels, 0, 255).astype(np.uint8)


def _tile(character: drawing.Character, rng: np.random.Generator, side: int, border: int):
  import cv2  # pylint: disable=g-import-not-at-top

  drawn = drawing.draw_character(character, rng, size=64)
  inner = cv2.resize(drawn, (side, side), interpolation=cv2.INTER_LINEAR)
  return cv2.copyMakeBorder(inner, *(border,) * 4, cv2.BORDER_CONSTANT, value=MARKER)


def render(
  script: list[ShotScript], path: str, size=(640, 360), fps: int = 24, seed: int = 0
) -> dict:
  """Writes the episode to `path` (mp4v) and returns its ground truth (JSON-ready).

  Truth: {"fps", "size", "duration", "shots": [{"start", "end", "transition"}],
  "frames": [[{"character", "known", "box": [l, t, r, b]}, ...] per frame]}; a character's box is
  the tile inside its frame, clipped to the picture.
  """
  import cv2  # pylint: disable=g-import-not-at-top

  width, height = size
  side = int(round(height * 0.3))
  border = max(2, round(height / 90))  # As the detector's detectors.marker_width.
  rng = np.random.default_rng([seed, 0x5E1])
  writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
  if not writer.isOpened():
    raise OSError(f"OpenCV cannot write {path} (mp4v).")
  known = {c.name for c in drawing.CHARACTERS}
  starts = np.cumsum([0.0, *(s.duration for s in script)])
  truth = {"fps": fps, "size": [width, height], "duration": float(starts[-1]), "shots": []}
  frames = []
  for k, shot in enumerate(script):
    truth["shots"].append(
      {"start": float(starts[k]), "end": float(starts[k + 1]), "transition": shot.transition}
    )
  backgrounds = [_background(rng, 2 * width, height) for _ in script]
  drawn = {}  # (shot, appearance, redraw index) -> tile
  for i in range(int(round(starts[-1] * fps))):
    time = i / fps
    k = int(np.searchsorted(starts, time, side="right") - 1)
    shot, local = script[k], time - starts[k]
    offset = shot.pan * width * local
    shift = int(round(offset)) % width
    picture = backgrounds[k][:, shift : shift + width].astype(np.float32)
    boxes = []
    for j, a in enumerate(shot.appearances):
      if not a.start <= local < a.end:
        continue
      key = (k, j, int((local - a.start) // a.redraw))
      if key not in drawn:
        drawn[key] = _tile(
          _character(a.character), np.random.default_rng([seed, *key]), side, border
        )
      tile = drawn[key]
      left = int(round(a.x * width + offset - tile.shape[1] / 2))
      top = int(round(a.y * height - tile.shape[0] / 2))
      visible = _paste(picture, tile, left, top)
      inner = [left + border, top + border, left + border + side, top + border + side]
      clipped = [max(inner[0], 0), max(inner[1], 0), min(inner[2], width), min(inner[3], height)]
      if visible and (clipped[2] - clipped[0]) * (clipped[3] - clipped[1]) >= side * side / 2:
        boxes.append({"character": a.character, "known": a.character in known, "box": clipped})
    light = _brightness(script, starts, k, local)
    picture *= light
    frames.append(boxes if light >= 0.5 else [])
    writer.write(cv2.cvtColor(picture.astype(np.uint8), cv2.COLOR_RGB2BGR))
  writer.release()
  truth["frames"] = frames
  return truth


def _paste(picture: np.ndarray, tile: np.ndarray, left: int, top: int) -> bool:
  h, w = picture.shape[:2]
  x0, y0, x1, y1 = (
    max(left, 0),
    max(top, 0),
    min(left + tile.shape[1], w),
    min(top + tile.shape[0], h),
  )
  if x0 >= x1 or y0 >= y1:
    return False
  picture[y0:y1, x0:x1] = tile[y0 - top : y1 - top, x0 - left : x1 - left]
  return True


def _brightness(script: list[ShotScript], starts: np.ndarray, k: int, local: float) -> float:
  """1 in the open; ramps to 0 over FADE seconds before and after a fade's BLACK stretch, whose
  middle is the boundary."""
  light = 1.0
  if script[k].transition == "fade":
    light = min(light, float(np.clip((local - BLACK / 2) / FADE, 0, 1)))
  if k + 1 < len(script) and script[k + 1].transition == "fade":
    left = starts[k + 1] - starts[k] - local
    light = min(light, float(np.clip((left - BLACK / 2) / FADE, 0, 1)))
  return light


def save_truth(truth: dict, path: str) -> None:
  with open(path, "w", encoding="utf-8") as f:
    json.dump(truth, f)
