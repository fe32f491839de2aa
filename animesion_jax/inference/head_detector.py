"""The head detector trained here (config.task='detect'), as predict's front end for pictures.

`HeadDetector(run)` loads a detector run (its best checkpoint) and finds heads in pictures:
`detect(image)` gives faces.Box boxes (as the OpenCV cascade of faces.py does, so predict crops
and answers each the same way), `detect_many(images)` boxes [x, y, w, h] and scores for a batch.
Each box is the region a training crop covers, so cropping it and resizing to the recognizer's
input is how the training crops were made.
"""

import os
from typing import Any

import jax
import numpy as np
from PIL import Image

from animesion_jax import config_schema
from animesion_jax.detection import boxes as boxes_lib
from animesion_jax.detection import evaluation as detection_evaluation
from animesion_jax.inference import faces
from animesion_jax.training import model_setup


class NotADetector(config_schema.ConfigError):
  """The run given as a detector was trained for another task."""


class HeadDetector:
  """Finds heads with a trained detector run; safe to call from several threads."""

  def __init__(self, workdir: str | os.PathLike, threshold: float | None = None):
    """Loads the run's best checkpoint (or the step directory given).

    Args:
      workdir: a detector run directory (trained with config.task='detect').
      threshold: the score a detection needs (default: the run's config.detection.score_threshold).

    Raises:
      FileNotFoundError: not a run directory, or no checkpoint.
      NotADetector: the run is a classifier.
    """
    run, which = model_setup.run_and_checkpoint(workdir)
    config = model_setup.with_defaults(run.load_config())
    if config.task != "detect":
      raise NotADetector(
        f"{workdir} is a {config.task!r} run ({config.model.name}), not a head detector; train "
        "one with configs/detector_quickstart.py (docs/detector.md)."
      )
    restored = model_setup.restore_run(run, which)
    self.description = os.fspath(workdir)
    self.config = restored.config
    self.image_size = int(self.config.image_size)
    self.threshold = float(
      self.config.detection.score_threshold if threshold is None else threshold
    )
    self._variables: Any = restored.variables
    self._detect = detection_evaluation.make_detect_fn(
      restored.model, self.config.normalization, self.config.detection.max_detections
    )

  def detect_many(self, images: list[Image.Image]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(boxes [K, 4] as [x, y, w, h] picture pixels, scores [K]) of each picture, best first,
    the detections scoring at least the threshold."""
    if not images:
      return []
    inputs = np.zeros((len(images), self.image_size, self.image_size, 3), np.uint8)
    placements = []
    for row, image in enumerate(images):
      inputs[row], placement = boxes_lib.letterbox(image, self.image_size)
      placements.append(placement)
    decoded = jax.device_get(self._detect(self._variables, inputs))
    return [
      detection_evaluation.picture_detections(
        decoded, row, placements[row], image.size, min_score=self.threshold
      )
      for row, image in enumerate(images)
    ]

  def detect(self, image: Image.Image) -> list[faces.Box]:
    """Head boxes of one picture in reading order (top to bottom, then left to right)."""
    ((found, _),) = self.detect_many([image])
    boxes = [
      faces.Box(round(x), round(y), round(x + w), round(y + h))
      for x, y, w, h in found.tolist()
      if round(w) >= 1 and round(h) >= 1
    ]
    return sorted(boxes, key=lambda box: (box.top, box.left))
