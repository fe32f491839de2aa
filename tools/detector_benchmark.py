r"""Measures the head detector, and detector + recognizer, on held-out synthetic scenes.

  python -m animesion_jax.main --config=configs/detector_quickstart.py --workdir=runs/detector
  python -m animesion_jax.main --config=configs/quickstart.py --workdir=runs/quickstart
  python tools/detector_benchmark.py --detector=runs/detector --recognizer=runs/quickstart \
      [--split=test] [--json=OUT]

Prints, on the split's pictures (the scenes config the detector trained on):
  - detection: COCO AP50 and AP50:95 (pycocotools), recall and precision at the detector's
    operating threshold (IoU 0.5), the share of pictures without a character that get no box;
  - naming (with --recognizer): set-level name recall (ground-truth heads found AND named right,
    over all heads) and name precision (boxes named right, over boxes given a name), beside the
    recognizer's accuracy on the ground-truth crops of the same pictures (its single-crop
    accuracy); a box matches the free ground-truth head of highest IoU >= 0.5, best score first;
  - the OpenCV face cascade (inference/faces.py) on the same pictures, when it is installed;
  - speed: pictures per second of detector + recognizer on --speed_pictures pictures resized so
    their longer side is 512 px, in batches of --batch_size (after one warm-up batch).
Goals (issue #27) are printed beside.
"""

import json
import time

from absl import app
from absl import flags
import jax
import numpy as np
from PIL import Image

from animesion_jax import recognizer as recognizer_lib
from animesion_jax import run_dir
from animesion_jax.cli import common
from animesion_jax.data import datasets
from animesion_jax.detection import boxes as boxes_lib
from animesion_jax.detection import coco
from animesion_jax.detection import pipeline
from animesion_jax.inference import faces
from animesion_jax.inference import head_detector

_DETECTOR = flags.DEFINE_string("detector", None, "The detector run (config.task='detect').")
_RECOGNIZER = flags.DEFINE_string("recognizer", None, "A recognizer run on the same characters.")
_SPLIT = flags.DEFINE_string("split", "test", "Scenes split measured.")
_LIMIT = flags.DEFINE_integer("limit", 0, "Measure the first N pictures only (0 = all).")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Pictures per detector call.")
_SPEED = flags.DEFINE_integer("speed_pictures", 64, "Pictures timed at 512 px (0 = no timing).")
common.define_runtime_flags(distributed=False)
_CASCADE = flags.DEFINE_bool("cascade", True, "Also measure the OpenCV face cascade if present.")
_CASCADE_FILE = flags.DEFINE_string(
  "cascade_file", None, f"The cascade's file (default: the {faces.CASCADE_FILE} a package ships)."
)
_JSON = flags.DEFINE_string("json", None, "Also write the numbers to this JSON file.")


def _pictures(detector: head_detector.HeadDetector) -> tuple[list, list, list, list[str]]:
  """(pictures, truth boxes, truth labels, label names) of the split."""
  config = detector.config
  builder = datasets.open_dataset(config.dataset, config.data_dir, config.dataset_config)
  source = datasets.data_source(builder, _SPLIT.value)
  count = len(source) if _LIMIT.value <= 0 else min(_LIMIT.value, len(source))
  pictures, truths, labels = [], [], []
  for index in range(count):
    picture, boxes, names = pipeline.decode(source[index])
    pictures.append(picture.convert("RGB"))
    truths.append(boxes)
    labels.append(names)
  return pictures, truths, labels, list(builder.info.features["objects"]["label"].names)


def _detect_all(detector, pictures):
  found = []
  for start in range(0, len(pictures), _BATCH.value):
    found += detector.detect_many(pictures[start : start + _BATCH.value])
  return found


def _match(boxes: np.ndarray, truth: np.ndarray) -> list[int]:
  """For each box (best first), the index of the ground-truth box it matches, or -1."""
  overlaps = boxes_lib.iou(boxes, truth)
  free, matches = np.ones(len(truth), bool), []
  for row in overlaps:
    candidates = np.where(free & (row >= 0.5), row, -1.0)
    best = int(np.argmax(candidates)) if len(candidates) else -1
    if best >= 0 and candidates[best] >= 0.5:
      free[best] = False
      matches.append(best)
    else:
      matches.append(-1)
  return matches


def _names(recognizer, picture: Image.Image, boxes: np.ndarray) -> list[str | None]:
  """The recognizer's answer (a name, or None for unknown) for each [x, y, w, h] box."""
  if len(boxes) == 0:
    return []
  ltrb = [faces.Box(*(round(v) for v in (x, y, x + w, y + h))) for x, y, w, h in boxes.tolist()]
  pixels = faces.square_crops(picture, ltrb, recognizer.config.image_size)
  logits, embeddings = recognizer.embed(pixels)
  return [answer.get("character") for answer in recognizer.answer(logits, embeddings, 1)]


def _naming(recognizer, pictures, truths, labels, found, names) -> dict[str, float]:
  named_right = boxes_named = heads = crops_right = 0
  for picture, truth, label, (boxes, _) in zip(pictures, truths, labels, found):
    heads += len(truth)
    truth_names = [names[i] for i in label]
    answers = _names(recognizer, picture, boxes)
    for answer, match in zip(answers, _match(boxes, truth)):
      boxes_named += answer is not None
      named_right += answer is not None and match >= 0 and answer == truth_names[match]
    crops_right += sum(a == n for a, n in zip(_names(recognizer, picture, truth), truth_names))
  return {
    "name_recall": named_right / max(heads, 1),
    "name_precision": named_right / max(boxes_named, 1),
    "single_crop_accuracy": crops_right / max(heads, 1),
  }


def _cascade(pictures, truths) -> dict[str, float] | str:
  try:
    detector = faces.FaceDetector(faces.find_cascade(_CASCADE_FILE.value))
  except faces.CascadeNotFound as error:
    return f"not measured: {error}"
  results = []
  for picture, truth in zip(pictures, truths):
    found = detector.detect(picture)
    boxes = np.asarray([[b.left, b.top, b.right - b.left, b.bottom - b.top] for b in found])
    results.append(
      coco.PictureResult(
        picture.width, picture.height, truth, boxes.reshape(-1, 4), np.ones(len(found))
      )
    )
  return coco.metrics(results, threshold=0.5)  # Every cascade box has score 1.


def _speed(detector, recognizer, pictures) -> float:
  """Pictures per second, detector + recognizer, at 512 px on the longer side."""
  big = []
  for picture in pictures[: _SPEED.value]:
    scale = 512 / max(picture.size)
    big.append(picture.resize((round(picture.width * scale), round(picture.height * scale))))
  batch = _BATCH.value

  def answer_batch(chunk):
    found = detector.detect_many(chunk)
    if recognizer is None:
      return
    size = recognizer.config.image_size
    pixels = [
      faces.square_crops(p, [faces.Box(round(x), round(y), round(x + w), round(y + h))], size)[0]
      for p, (boxes, _) in zip(chunk, found)
      for x, y, w, h in boxes.tolist()
    ]
    if pixels:
      logits, embeddings = recognizer.embed(np.stack(pixels), batch_size=256)
      recognizer.answer(logits, embeddings, 1)

  answer_batch(big[:batch])  # Warm-up: compiles the batch shapes.
  start = time.perf_counter()
  for begin in range(0, len(big), batch):
    answer_batch(big[begin : begin + batch])
  return len(big) / (time.perf_counter() - start)


def main(argv):
  del argv
  common.start_jax(flags.FLAGS)
  # Every detection above 0.01 for AP's precision-recall curve; the operating threshold after.
  detector = head_detector.HeadDetector(run_dir.resolve(_DETECTOR.value), threshold=0.01)
  operating = float(detector.config.detection.score_threshold)
  recognizer = None
  if _RECOGNIZER.value:
    recognizer = recognizer_lib.load_run(run_dir.resolve(_RECOGNIZER.value))
  pictures, truths, labels, names = _pictures(detector)
  found = _detect_all(detector, pictures)
  results = [
    coco.PictureResult(p.width, p.height, t, boxes, scores)
    for p, t, (boxes, scores) in zip(pictures, truths, found)
  ]
  report = {
    "split": _SPLIT.value,
    "pictures": len(pictures),
    "heads": int(sum(len(t) for t in truths)),
    "threshold": operating,
    "detector": coco.metrics(results, operating),
    "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
  }
  found = [(boxes[scores >= operating], scores[scores >= operating]) for boxes, scores in found]
  detector.threshold = operating
  if recognizer is not None:
    report["naming"] = _naming(recognizer, pictures, truths, labels, found, names)
  if _CASCADE.value:
    report["cascade"] = _cascade(pictures, truths)
  if _SPEED.value:
    report["pictures_per_second_512px"] = _speed(detector, recognizer, pictures)
  print(json.dumps(report, indent=1))
  d = report["detector"]
  print(
    f"\nDetector on {len(pictures)} {_SPLIT.value} pictures ({report['heads']} heads): "
    f"AP50 {d['ap50']:.3f} (goal >= 0.95), AP50:95 {d['ap']:.3f}, recall {d['recall']:.3f}, "
    f"precision {d['precision']:.3f} at score {operating:.2f}; no box on "
    f"{100 * d['empty_clean']:.1f}% of pictures without a character (goal >= 95%)."
  )
  if "naming" in report:
    n = report["naming"]
    print(
      f"Naming: recall {n['name_recall']:.3f}, precision {n['name_precision']:.3f} (goal: each "
      f">= 0.9 x single-crop accuracy {n['single_crop_accuracy']:.3f} = "
      f"{0.9 * n['single_crop_accuracy']:.3f})."
    )
  if isinstance(report.get("cascade"), dict):
    c = report["cascade"]
    print(
      f"Cascade: AP50 {c['ap50']:.3f}, recall {c['recall']:.3f}, precision {c['precision']:.3f}."
    )
  elif "cascade" in report:
    print(f"Cascade: {report['cascade']}")
  if "pictures_per_second_512px" in report:
    print(
      f"Speed: {report['pictures_per_second_512px']:.1f} pictures/s at 512 px "
      f"({'detector + recognizer' if recognizer else 'detector only'}; goal >= 8)."
    )
  if _JSON.value:
    with open(_JSON.value, "w", encoding="utf-8") as out:
      json.dump(report, out, indent=1)


if __name__ == "__main__":
  flags.mark_flags_as_required(["detector"])
  app.run(main)
