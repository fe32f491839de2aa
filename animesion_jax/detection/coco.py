"""COCO-style detection metrics computed by pycocotools (not by hand).

AP50 and AP50:95 are COCOeval's; recall and precision at the operating threshold count
COCOeval's own matches (IoU 0.5, all areas, up to 100 detections per picture) of the detections
scoring at least the threshold. Boxes are [x, y, w, h] in picture pixels; one class ('head').
"""

import contextlib
import dataclasses
import io

import numpy as np


@dataclasses.dataclass
class PictureResult:
  """One picture's ground truth and detections."""

  width: int
  height: int
  truth: np.ndarray  # [G, 4]
  boxes: np.ndarray  # [D, 4]
  scores: np.ndarray  # [D]


def _coco_api():
  try:
    from pycocotools import coco  # pylint: disable=g-import-not-at-top
    from pycocotools import cocoeval  # pylint: disable=g-import-not-at-top
  except ImportError as error:
    raise ImportError(
      "Detection metrics need pycocotools: pip install pycocotools (setup.py declares it)."
    ) from error
  return coco, cocoeval


def metrics(results: list[PictureResult], threshold: float) -> dict[str, float]:
  """{'ap50', 'ap', 'recall', 'precision', 'empty_clean', 'num_examples', 'num_boxes'}.

  'recall' and 'precision' are at `threshold` (IoU 0.5); 'empty_clean' is the fraction of
  pictures without a character that get no detection at `threshold` (1.0 when there are none).
  """
  coco, cocoeval = _coco_api()
  images, annotations, detections = [], [], []
  for image_id, result in enumerate(results, start=1):
    images.append({"id": image_id, "width": result.width, "height": result.height})
    for box in np.asarray(result.truth, np.float64).reshape(-1, 4):
      annotations.append(
        {
          "id": len(annotations) + 1,
          "image_id": image_id,
          "category_id": 1,
          "bbox": [float(v) for v in box],
          "area": float(box[2] * box[3]),
          "iscrowd": 0,
        }
      )
    for box, score in zip(np.asarray(result.boxes, np.float64).reshape(-1, 4), result.scores):
      detections.append(
        {
          "image_id": image_id,
          "category_id": 1,
          "bbox": [float(v) for v in box],
          "score": float(score),
        }
      )
  empty = [r for r in results if len(r.truth) == 0]
  clean = sum(1 for r in empty if not np.any(np.asarray(r.scores) >= threshold))
  out = {
    "num_examples": float(len(results)),
    "num_boxes": float(len(annotations)),
    "empty_clean": clean / len(empty) if empty else 1.0,
  }
  if not annotations or not detections:
    return {**out, "ap50": 0.0, "ap": 0.0, "recall": 0.0, "precision": 0.0}
  truth = coco.COCO()
  truth.dataset = {
    "images": images,
    "annotations": annotations,
    "categories": [{"id": 1, "name": "head"}],
  }
  with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress.
    truth.createIndex()
    found = truth.loadRes(detections)
    evaluation = cocoeval.COCOeval(truth, found, "bbox")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
  recall, precision = _at_threshold(evaluation, threshold)
  return {
    **out,
    "ap": float(evaluation.stats[0]),
    "ap50": float(evaluation.stats[1]),
    "recall": recall,
    "precision": precision,
  }


def _at_threshold(evaluation, threshold: float) -> tuple[float, float]:
  """Recall and precision at IoU 0.5 of the detections scoring >= threshold, from COCOeval's
  per-picture matches (evalImgs) over all areas with the largest detection count."""
  iou_index = int(np.argmin(np.abs(evaluation.params.iouThrs - 0.5)))
  all_areas, max_dets = evaluation.params.areaRng[0], evaluation.params.maxDets[-1]
  true_pos = false_pos = truths = 0
  for entry in evaluation.evalImgs:
    if entry is None or entry["aRng"] != all_areas or entry["maxDet"] != max_dets:
      continue
    truths += int(np.sum(np.asarray(entry["gtIgnore"]) == 0))
    scores = np.asarray(entry["dtScores"])
    kept = scores >= threshold
    matched = np.asarray(entry["dtMatches"])[iou_index] > 0
    ignored = np.asarray(entry["dtIgnore"])[iou_index].astype(bool)
    true_pos += int(np.sum(kept & matched & ~ignored))
    false_pos += int(np.sum(kept & ~matched & ~ignored))
  recall = true_pos / truths if truths else 0.0
  precision = true_pos / (true_pos + false_pos) if true_pos + false_pos else 0.0
  return recall, precision
