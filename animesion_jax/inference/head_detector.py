"""The head detector trained here (config.task='detect'), as predict's front end for pictures.

`HeadDetector(run)` loads a detector run (its best checkpoint) and finds heads in pictures:
`detect(image)` gives faces.Box boxes (as the OpenCV cascade of faces.py does, so predict crops
and answers each the same way), `detect_many(images)` boxes [x, y, w, h] and scores for a batch.
Each box is the region a training crop covers, so cropping it and resizing to the recognizer's
input is how the training crops were made.
"""

import json
import os
from typing import Any

import jax
import numpy as np
from PIL import Image

from animesion_jax import config_schema
from animesion_jax import run_dir as run_dir_lib
from animesion_jax.data import datasets
from animesion_jax.detection import boxes as boxes_lib
from animesion_jax.detection import coco
from animesion_jax.detection import evaluation as detection_evaluation
from animesion_jax.inference import faces
from animesion_jax.training import model_setup


class NotADetector(config_schema.ConfigError):
  """The run given as a detector was trained for another task."""


class HeadDetector:
  """Finds heads with a trained detector run; safe to call from several threads."""

  # A picture with no head found has nothing to classify (the face cascade's callers classify
  # the whole picture instead).
  whole_image_fallback = False

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
    self.run, self.step = run, restored.step
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

  def evaluate(self, split: str = "test", batch_size: int = 32) -> dict[str, Any]:
    """COCO AP50, AP50:95, recall and precision at the threshold (coco.metrics) on a split of
    the scenes the detector was trained on; also written to the run's evaluation directory."""
    config = self.config
    builder = datasets.open_dataset(config.dataset, config.data_dir, config.dataset_config)
    if split not in builder.info.splits:
      raise FileNotFoundError(f"{builder.info.full_name} has no split {split!r}.")
    results, _ = detection_evaluation.detect_split(
      self._detect,
      self._variables,
      datasets.data_source(builder, split),
      batch_size=batch_size,
      image_size=self.image_size,
    )
    report = {**coco.metrics(results, self.threshold), "threshold": self.threshold}
    report.update(split=split, step=self.step, workdir=self.description)
    output_dir = self.run.evaluation_dir(split, self.step)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "detection.json").write_text(json.dumps(report, indent=1))
    report["output_dir"] = os.fspath(output_dir)
    return report


def is_detector_run(workdir: str | os.PathLike) -> bool:
  """Whether `workdir` is a run directory trained with config.task='detect'."""
  run = run_dir_lib.RunDir(run_dir_lib.resolve(workdir))
  return run.exists() and run.load_config().get("task", "classify") == "detect"


def format_report(report: dict[str, Any]) -> str:
  """The evaluate command's lines for a detector run."""
  return (
    f"{report['workdir']} (step {report['step']}), {report['split']}: "
    f"{int(report['num_examples'])} pictures, {int(report['num_boxes'])} heads\n"
    f"  AP50 {report['ap50']:.4f}  AP50:95 {report['ap']:.4f}  (COCO, pycocotools)\n"
    f"  recall {report['recall']:.4f}  precision {report['precision']:.4f}  at score "
    f"{report['threshold']:.2f} (IoU 0.5)\n"
    f"  no box on {100 * report['empty_clean']:.1f}% of pictures without a character"
  )
