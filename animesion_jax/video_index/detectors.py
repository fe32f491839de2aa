"""What finds the boxes in a frame: a callable, RGB uint8 (H, W, 3) -> [[left, top, right, bottom]].

DETECTORS names each one the `video` command offers (--detector); `make` builds one. A head
detector plugs in by adding its row here: any callable image -> boxes will do.

  whole_frame        the whole frame is one box (one answer per sampled frame)
  faces              OpenCV's cascade (inference/faces.py: lbpcascade_animeface), as predict's
                     --detect_faces; a frame where it finds nothing has no box
  synthetic_markers  the magenta frames that tfds_builders/synthetic_characters/episodes.py draws
                     around its characters (for synthetic episodes: tests and the benchmark)
"""

from collections.abc import Callable

import numpy as np
from PIL import Image

from animesion_jax.inference import faces

Box = list[int]  # [left, top, right, bottom] in pixels, right and bottom exclusive.
Detector = Callable[[np.ndarray], list[Box]]

# The synthetic episodes' tile frames are magenta (episodes.MARKER), dimmed in fades and moved
# by lossy coding: red and blue at least this (a tile is found until a fade has dimmed it to
# half, where the episodes' truth stops counting it), green at most this share of them.
_MARKER_RED_BLUE_MIN = 120
_MARKER_GREEN_SHARE = 0.35
_MARKER_MIN_SIDE = 32  # Pixels; the episodes' tiles are 30% of the picture's height (54 at 180p).


def whole_frame(image: np.ndarray) -> list[Box]:
  return [[0, 0, int(image.shape[1]), int(image.shape[0])]]


def marker_width(height: int) -> int:
  """Line width of the synthetic episodes' tile frames in a picture `height` pixels high."""
  return max(2, round(height / 90))


def synthetic_markers(image: np.ndarray) -> list[Box]:
  """The tiles inside the magenta frames of a synthetic episode, in reading order."""
  import cv2  # pylint: disable=g-import-not-at-top

  r, g, b = (image[..., c].astype(np.int16) for c in range(3))
  low = np.minimum(r, b)
  mask = (low >= _MARKER_RED_BLUE_MIN) & (g <= _MARKER_GREEN_SHARE * low)
  mask = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8))
  thickness = marker_width(image.shape[0])
  count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
  found = []
  for x, y, w, h, _ in stats[1:count].tolist():
    # A tile is square: a narrower box is a tile less than half in the picture (not counted
    # on screen, as in the episodes' truth) or a magenta patch of some drawing.
    if min(w, h) < _MARKER_MIN_SIDE or min(w, h) < 0.5 * max(w, h):
      continue
    found.append([x + thickness, y + thickness, x + w - thickness, y + h - thickness])
  # A magenta patch inside a tile's drawing is not a tile of its own.
  boxes = [b for b in found if not any(o is not b and _inside(b, o) for o in found)]
  return sorted(boxes, key=lambda box: (box[1], box[0]))


def _inside(box, other) -> bool:
  """Whether the centre of `box` lies in `other`, which is larger."""
  cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
  larger = (other[2] - other[0]) * (other[3] - other[1]) > (box[2] - box[0]) * (box[3] - box[1])
  return larger and other[0] <= cx < other[2] and other[1] <= cy < other[3]


def face_detector(cascade: str | None = None, margin: float = 0.25, min_size: int = 24) -> Detector:
  """predict's --detect_faces detector as a frame -> boxes callable.

  Raises:
    faces.CascadeNotFound: no cascade file (the message says how to get one).
  """
  detector = faces.FaceDetector(faces.find_cascade(cascade), margin=margin, min_size=min_size)

  def detect(image: np.ndarray) -> list[Box]:
    return [box.as_list() for box in detector.detect(Image.fromarray(image))]

  return detect


# --detector's choices: name -> (what it is, how to build it from the face options).
DETECTORS: dict[str, tuple[str, Callable[..., Detector]]] = {
  "whole_frame": ("the whole frame is one box", lambda **_: whole_frame),
  "faces": ("OpenCV anime face cascade (as --detect_faces)", face_detector),
  "synthetic_markers": ("tiles of synthetic episodes (tests)", lambda **_: synthetic_markers),
}


def make(name: str, **face_options) -> Detector:
  """The detector called `name` (a key of DETECTORS).

  Raises:
    ValueError: an unknown name.
    faces.CascadeNotFound: 'faces' without a cascade.
  """
  if name not in DETECTORS:
    raise ValueError(f"--detector={name!r}: choose one of {sorted(DETECTORS)}.")
  return DETECTORS[name][1](**face_options)
