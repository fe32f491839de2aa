"""Running the detector over pictures: a jitted detect function, and a split's COCO metrics."""

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from animesion_jax.data import preprocess
from animesion_jax.detection import boxes as boxes_lib
from animesion_jax.detection import coco
from animesion_jax.detection import heads
from animesion_jax.detection import pipeline

# Detections scoring below this are dropped before COCO's AP (they only lengthen its lists).
MIN_SCORE = 0.01

# (variables, uint8 images [B, S, S, 3]) -> heads.decode's dict (boxes in input pixels).
DetectFn = Callable[[Any, Any], dict[str, jax.Array]]


def make_detect_fn(model: Any, normalization: str, max_detections: int) -> DetectFn:
  """The jitted forward + decode of `model` (a models/centernet.py CenterNet)."""

  def detect(variables, images):
    output = model.apply(
      variables, preprocess.normalize(images, normalization, model.dtype), train=False
    )
    return heads.decode(output, max_detections)

  return jax.jit(detect)


def picture_detections(
  decoded: dict[str, np.ndarray],
  row: int,
  placement: boxes_lib.Placement,
  size: tuple[int, int],
  min_score: float = MIN_SCORE,
) -> tuple[np.ndarray, np.ndarray]:
  """(boxes [D, 4] in picture pixels, scores [D]) of one row of a decoded batch, best first."""
  scores = np.asarray(decoded["scores"][row])
  keep = scores >= min_score
  boxes = placement.to_picture(np.asarray(decoded["boxes"][row])[keep], *size)
  scores = scores[keep]
  visible = (boxes[:, 2] >= 1) & (boxes[:, 3] >= 1)  # Boxes wholly off the picture go.
  return boxes[visible], scores[visible]


def detect_split(
  detect_fn: DetectFn, variables: Any, source: Sequence[Any], *, batch_size: int, image_size: int
) -> tuple[list[coco.PictureResult], list[np.ndarray]]:
  """Every picture's ground truth and detections (and its ground-truth labels), in order."""
  results, labels = [], []
  for batch in pipeline.eval_batches(source, batch_size=batch_size, image_size=image_size):
    decoded = jax.device_get(detect_fn(variables, batch.images))
    for row in range(batch.count):
      found, scores = picture_detections(decoded, row, batch.placements[row], batch.sizes[row])
      width, height = batch.sizes[row]
      results.append(coco.PictureResult(width, height, batch.boxes[row], found, scores))
      labels.append(batch.labels[row])
  return results, labels


def evaluate_split(
  detect_fn: DetectFn,
  variables: Any,
  source: Sequence[Any],
  *,
  batch_size: int,
  image_size: int,
  threshold: float,
) -> dict[str, float]:
  """COCO metrics (coco.metrics) of the detector on every picture of `source`."""
  results, _ = detect_split(
    detect_fn, variables, source, batch_size=batch_size, image_size=image_size
  )
  return coco.metrics(results, threshold)
