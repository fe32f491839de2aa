"""Box geometry: letterboxing pictures into the detector's square input, and back.

Boxes are [x, y, w, h] in pixels everywhere (the datasets', predictions.json's and COCO's format).
A picture is scaled by `scale` and placed with its top-left corner at `offset` in the square
input; `to_picture` undoes that for detected boxes.
"""

import dataclasses

import numpy as np
from PIL import Image


@dataclasses.dataclass(frozen=True)
class Placement:
  """Where a picture went in the square input: input = picture * scale + offset."""

  scale: float
  offset_x: int = 0
  offset_y: int = 0

  def to_input(self, boxes: np.ndarray) -> np.ndarray:
    """[K, 4] picture boxes -> input boxes."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4) * self.scale
    return boxes + np.asarray([self.offset_x, self.offset_y, 0, 0], np.float32)

  def to_picture(self, boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """[K, 4] input boxes -> picture boxes, clipped to the picture's width x height."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    x0 = (boxes[:, 0] - self.offset_x) / self.scale
    y0 = (boxes[:, 1] - self.offset_y) / self.scale
    x1, y1 = x0 + boxes[:, 2] / self.scale, y0 + boxes[:, 3] / self.scale
    x0, x1 = np.clip(x0, 0, width), np.clip(x1, 0, width)
    y0, y1 = np.clip(y0, 0, height), np.clip(y1, 0, height)
    return np.stack([x0, y0, x1 - x0, y1 - y0], axis=-1)


def letterbox(
  picture: Image.Image, side: int, zoom: float = 1.0, offset: tuple[float, float] = (0.0, 0.0)
) -> tuple[np.ndarray, Placement]:
  """The picture scaled so its longer side is `side` * `zoom` (zoom <= 1), on a black square.

  `offset` in [0, 1]^2 places it within the room left (0, 0: top-left, as at inference).
  Returns the uint8 [side, side, 3] input and the placement.
  """
  picture = picture.convert("RGB")
  scale = side * zoom / max(picture.width, picture.height)
  width = max(1, min(side, round(picture.width * scale)))
  height = max(1, min(side, round(picture.height * scale)))
  canvas = np.zeros((side, side, 3), np.uint8)
  left = int(offset[0] * (side - width))
  top = int(offset[1] * (side - height))
  resized = picture.resize((width, height), Image.Resampling.BILINEAR)
  canvas[top : top + height, left : left + width] = np.asarray(resized)
  return canvas, Placement(scale, left, top)


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Pairwise intersection over union of [A, 4] and [B, 4] boxes: [A, B]."""
  a, b = np.asarray(a, np.float32).reshape(-1, 4), np.asarray(b, np.float32).reshape(-1, 4)
  x0 = np.maximum(a[:, None, 0], b[None, :, 0])
  y0 = np.maximum(a[:, None, 1], b[None, :, 1])
  x1 = np.minimum(a[:, None, 0] + a[:, None, 2], b[None, :, 0] + b[None, :, 2])
  y1 = np.minimum(a[:, None, 1] + a[:, None, 3], b[None, :, 1] + b[None, :, 3])
  inter = np.maximum(0, x1 - x0) * np.maximum(0, y1 - y0)
  union = a[:, None, 2] * a[:, None, 3] + b[None, :, 2] * b[None, :, 3] - inter
  return inter / np.maximum(union, 1e-9)
