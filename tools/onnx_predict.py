r"""Names the characters in pictures with an exported ONNX model: numpy, Pillow, onnxruntime only.

  pip install numpy pillow onnxruntime
  python tools/onnx_predict.py EXPORT_DIR my_pictures/ art.png [--top_k=5] [--output_dir=DIR]
  python tools/onnx_predict.py EXPORT_DIR group.png --detector=DETECTOR_EXPORT_DIR

EXPORT_DIR is what `python -m animesion_jax.export --format=onnx` wrote (model.onnx, model.json).
Prints the table and writes the predictions.json and predictions.csv that `animesion_jax.predict`
would for the same pictures (default --output_dir: predictions/ in the current directory), with
the same picture handling: files and folders (searched recursively, sorted), any format and mode
Pillow reads (EXIF orientation, first frame, transparency on white), stretched to the model's
size with Pillow's bilinear filter. With --detector (a head detector's export), every head it
finds is cropped and named, as `predict --detector` does; a picture with no head gets a note.
This file needs no JAX and nothing of this package: copy it
next to an export. Its image reading mirrors animesion_jax/inference/image_files.py and predict.py (kept
equal by tests/test_onnx_predict.py).
"""

import argparse
import concurrent.futures
import csv
import io
import json
import os
import pathlib
import struct
import sys
import zlib

import numpy as np
import onnxruntime
from PIL import Image
from PIL import ImageOps

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
DECODE_ERRORS = (
  OSError,
  SyntaxError,
  ValueError,
  EOFError,
  struct.error,
  zlib.error,
  Image.DecompressionBombError,
)
_WHITE = (255, 255, 255, 255)


class UnreadableImage(ValueError):
  """A file that is not a readable image."""


def find_images(inputs):
  """([(path, relative name)] in input order, [(input, problem)]), as predict finds them."""
  found, problems = [], []
  for given in inputs:
    path = pathlib.Path(os.path.expanduser(given))
    if path.is_dir():
      root = os.path.normpath(path)
      here = []
      for folder, _, files in os.walk(root):
        for name in files:
          if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."):
            file = str(pathlib.Path(folder) / name)
            here.append((os.path.relpath(file, root).replace(os.sep, "/"), file))
      here.sort(key=lambda item: (tuple(item[0].split("/")[:-1]), item[0].split("/")[-1]))
      name = root.rsplit("/", 1)[-1] or "images"
      found += [(file, f"{name}/{relative}") for relative, file in here]
      if not here:
        problems.append((given, f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in this folder"))
    elif path.is_file():
      found.append((str(path), path.name))
    else:
      problems.append((given, "no such file or folder"))
  return found, problems


def to_rgb(image):
  """Any Pillow image -> RGB, compositing transparency on white."""
  if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
    pixels = np.asarray(image, dtype=np.float64)
    top = 65535.0 if image.mode.startswith("I;16") else max(float(pixels.max()), 255.0)
    image = Image.fromarray(np.clip(pixels * 255.0 / top, 0, 255).astype(np.uint8), "L")
  has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
    image.mode in ("P", "L", "RGB") and "transparency" in image.info
  )
  if has_alpha:
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, _WHITE)
    background.alpha_composite(rgba)
    return background.convert("RGB")
  return image if image.mode == "RGB" else image.convert("RGB")


def load_image(path, draft_size=None):
  """The file as an RGB Pillow image (first frame, EXIF orientation, transparency on white); a
  JPEG may be decoded at a reduced scale no smaller than `draft_size` (None: full size)."""
  try:
    with Image.open(path) as image:
      if getattr(image, "n_frames", 1) > 1:
        image.seek(0)
      if draft_size and image.format == "JPEG":
        image.draft("RGB", (draft_size, draft_size))
      image = ImageOps.exif_transpose(image)
      image.load()
      return to_rgb(image)
  except FileNotFoundError:
    raise
  except DECODE_ERRORS as error:
    raise UnreadableImage(f"{type(error).__name__}: {error}") from error


def resize_square(image, size):
  """uint8 [size, size, 3]: the RGB image stretched to size x size (Pillow BILINEAR)."""
  if image.size != (size, size):
    image = image.resize((size, size), Image.BILINEAR)
  return np.asarray(image)


def load_pixels(path, size):
  """uint8 [size, size, 3]: the file as RGB, stretched to size x size (Pillow BILINEAR)."""
  return resize_square(load_image(path, size), size)


def normalize(pixels, contract):
  """uint8 NHWC -> the model's float32 input, as model.json's "input" says."""
  spec = contract["input"]
  mean, std = np.asarray(spec["mean"], np.float32), np.asarray(spec["std"], np.float32)
  return ((pixels.astype(np.float32) / np.float32(spec["scale"]) - mean) / std).astype(np.float32)


def top_k(logits, k):
  """(probabilities, class ids) [n, k], best first; ties to the lower class id."""
  logits = logits.astype(np.float32)
  exp = np.exp(logits - logits.max(axis=1, keepdims=True))
  probabilities = exp / exp.sum(axis=1, keepdims=True)
  ids = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
  return np.take_along_axis(probabilities, ids, axis=1), ids


UNCALIBRATED = (
  "uncalibrated: onnx_predict names every picture with its top-1 class (no 'unknown' answers, "
  "plain softmax; the export's calibration is not applied)"
)


class Model:
  """An export folder: the onnxruntime session and model.json."""

  def __init__(self, export_dir, threads=0):
    with open(os.path.join(export_dir, "model.json"), encoding="utf-8") as f:
      self.contract = json.load(f)
    if self.contract.get("format") != "onnx":
      raise ValueError(f"{export_dir} holds a {self.contract.get('format')} export, not ONNX.")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    self.session = onnxruntime.InferenceSession(
      os.path.join(export_dir, self.contract["files"]["model"]),
      options,
      providers=["CPUExecutionProvider"],
    )
    self.size = int(self.contract["input"]["size"][0])
    self.class_names = self.contract["class_names"]

  def logits(self, pixels):
    return self.session.run(
      None, {self.contract["input"]["name"]: normalize(pixels, self.contract)}
    )[0]


NO_CHARACTER = "no character found by the head detector"


def letterbox(image, side):
  """(uint8 [side, side, 3], scale): the RGB picture scaled so its longer side is `side`, at the
  top-left of a black square (model.json's input.resize of a detector)."""
  scale = side / max(image.width, image.height)
  width = max(1, min(side, round(image.width * scale)))
  height = max(1, min(side, round(image.height * scale)))
  canvas = np.zeros((side, side, 3), np.uint8)
  canvas[:height, :width] = np.asarray(image.resize((width, height), Image.BILINEAR))
  return canvas, scale


def decode(heads, max_detections, stride):
  """(boxes [D, 4] as [x, y, w, h] input pixels, scores [D]) of one picture's CenterNet output
  [H, W, classes + 4], best first, as model.json's "detection" says."""
  heads = heads.astype(np.float32)
  grid_h, grid_w, channels = heads.shape
  classes = channels - 4
  heat = (1 / (1 + np.exp(-heads[..., :classes]))).astype(np.float32)
  padded = np.pad(heat, ((1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
  pooled = np.max(
    [padded[dy : dy + grid_h, dx : dx + grid_w] for dy in range(3) for dx in range(3)], axis=0
  )
  peaks = np.where(heat >= pooled, heat, 0).reshape(-1)
  flat = np.argsort(-peaks, kind="stable")[: min(max_detections, peaks.size)]
  cell = flat // classes
  iy, ix = cell // grid_w, cell % grid_w
  regress = heads[..., classes:].reshape(-1, 4)[cell]
  size = np.exp(regress[:, :2]) * stride
  cx, cy = (ix + regress[:, 2]) * stride, (iy + regress[:, 3]) * stride
  boxes = np.stack([cx - size[:, 0] / 2, cy - size[:, 1] / 2, size[:, 0], size[:, 1]], -1)
  return boxes.astype(np.float32), peaks[flat]


class Detector:
  """A head detector's export folder (model.json with a "detection" section)."""

  def __init__(self, export_dir, threads=0, threshold=None):
    self.model = Model(export_dir, threads)
    self.spec = self.model.contract.get("detection")
    if not self.spec:
      raise ValueError(f"{export_dir} is not a head detector's export (no 'detection').")
    self.threshold = self.spec["score_threshold"] if threshold is None else threshold

  def detect(self, image):
    """[left, top, right, bottom] head boxes of an RGB picture, in reading order."""
    inputs, scale = letterbox(image, self.model.size)
    heads = self.model.session.run(
      None, {self.model.contract["input"]["name"]: normalize(inputs[None], self.model.contract)}
    )[0][0]
    boxes, scores = decode(heads, self.spec["max_detections"], self.spec["stride"])
    boxes = boxes[scores >= self.threshold]
    x0, y0 = boxes[:, 0] / scale, boxes[:, 1] / scale
    x1, y1 = x0 + boxes[:, 2] / scale, y0 + boxes[:, 3] / scale
    x0, x1 = np.clip(x0, 0, image.width), np.clip(x1, 0, image.width)
    y0, y1 = np.clip(y0, 0, image.height), np.clip(y1, 0, image.height)
    found = np.stack([x0, y0, x1 - x0, y1 - y0], axis=-1)
    found = found[(found[:, 2] >= 1) & (found[:, 3] >= 1)]
    picked = [
      [round(x), round(y), round(x + w), round(y + h)]
      for x, y, w, h in found.tolist()
      if round(w) >= 1 and round(h) >= 1
    ]
    return sorted(picked, key=lambda box: (box[1], box[0]))


def file_crops(path, size, detector=None):
  """[(face, box, uint8 pixels)]: the whole picture, or each head the detector finds ([] if none),
  cropped and stretched to size x size."""
  if detector is None:
    return [(None, None, load_pixels(path, size))]
  image = load_image(path)
  return [
    (face, box, resize_square(image.crop(tuple(box)), size))
    for face, box in enumerate(detector.detect(image))
  ]


def predict_files(model, files, top=5, batch_size=64, workers=None, detector=None):
  """(results, errors) as animesion_jax.predict.predict_files, for (path, relative) files."""
  k = min(top, len(model.class_names))
  workers = workers or min(16, (os.cpu_count() or 2) + 2)
  results, errors, batch = [], [], []

  def flush():
    probabilities, ids = top_k(model.logits(np.stack([crop[2] for _, crop in batch])), k)
    for (file, (face, box, _)), row_p, row_ids in zip(batch, probabilities, ids):
      results.append(
        {
          "file": file[0],
          "relative": file[1],
          "face": face,
          "box": box,
          "note": "",
          **_uncalibrated_answer(model.class_names[int(row_ids[0])], float(row_p[0])),
          "predictions": [
            {
              "rank": rank + 1,
              "class_id": int(class_id),
              "name": model.class_names[int(class_id)],
              "probability": float(probability),
            }
            for rank, (class_id, probability) in enumerate(zip(row_ids, row_p))
          ],
        }
      )
    batch.clear()

  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    futures = [pool.submit(file_crops, path, model.size, detector) for path, _ in files]
    for file, future in zip(files, futures):
      try:
        crops = future.result()
      except (UnreadableImage, FileNotFoundError) as error:
        errors.append({"file": file[0], "error": str(error)})
        continue
      if not crops:  # The head detector found no character: a note, no answer.
        results.append(
          {"file": file[0], "relative": file[1], "face": None, "box": None}
          | {"note": NO_CHARACTER, "character": None, "predictions": []}
        )
      for crop in crops:
        batch.append((file, crop))
        if len(batch) == batch_size:
          flush()
    if batch:
      flush()
  order = {path: i for i, (path, _) in enumerate(files)}
  results.sort(key=lambda result: order[result["file"]])  # Noted pictures came in early.
  return results, errors


def _uncalibrated_answer(name, probability):
  """predict's answer fields for a model without calibration: the top-1 name, never unknown."""
  return {
    "character": name,
    "unknown": False,
    "confidence": probability,
    "closest": name,
    "enrolled": False,
    "calibrated": False,
  }


def format_table(results, limit=50):
  """predict's text table (at most `limit` pictures; 0 = all)."""
  shown = results if limit <= 0 else results[:limit]
  width = max([len(r["file"]) for r in shown] + [4])
  names = max([len(p["name"]) for r in shown for p in r["predictions"]] + [9])
  lines = [f"{'file':{width}}  {'face':>4}  {'#':>2}  {'character':{names}}  {'prob':>7}   answer"]
  for result in shown:
    face = "" if result["face"] is None else str(result["face"])
    if not result["predictions"]:  # Nothing classified (no head found): the note says why.
      lines.append(f"{result['file']:{width}}  {'':>4}  {'':>2}  {'-':{names}}  {'':>7}   -")
    for p in result["predictions"]:
      first = p["rank"] == 1
      probability = f"{100 * p['probability']:.1f}%"
      lines.append(
        (
          f"{result['file'] if first else '':{width}}  {face if first else '':>4}  "
          f"{p['rank']:>2}  {p['name']:{names}}  {probability:>7}"
          + (f"   {result['character']}" if first else "")
        ).rstrip()
      )
    if result["note"]:
      lines.append(f"{'':{width}}  ({result['note']})")
  if len(shown) < len(results):
    lines.append(f"... and {len(results) - len(shown)} more (see predictions.csv).")
  return "\n".join(lines)


def write_outputs(results, errors, source, output_dir):
  """predictions.json and predictions.csv, as predict writes them."""
  os.makedirs(output_dir, exist_ok=True)
  document = {
    "workdir": source.get("run"),
    "checkpoint": source.get("checkpoint"),
    "step": source.get("step"),
    "calibration": UNCALIBRATED,
    "results": list(results),
    "errors": list(errors),
  }
  with open(os.path.join(output_dir, "predictions.json"), "w", encoding="utf-8") as f:
    f.write(json.dumps(document, indent=1, ensure_ascii=False))
  text = io.StringIO()
  writer = csv.writer(text, lineterminator="\n")
  writer.writerow(
    ["file", "face", "box_left", "box_top", "box_right", "box_bottom"]
    + ["rank", "class_id", "name", "probability", "character", "unknown", "confidence"]
  )
  for result in results:
    face = "" if result["face"] is None else result["face"]
    for p in result["predictions"]:
      writer.writerow(
        [result["file"], face, *(result["box"] or ["", "", "", ""])]
        + [p["rank"], p["class_id"], p["name"]]
        + [f"{p['probability']:.6f}", result["character"], 0, f"{result['confidence']:.6f}"]
      )
  with open(os.path.join(output_dir, "predictions.csv"), "w", encoding="utf-8") as f:
    f.write(text.getvalue())


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("export_dir", help="Folder with model.onnx and model.json.")
  parser.add_argument("pictures", nargs="+", help="Image files and/or folders.")
  parser.add_argument("--top_k", type=int, default=5, help="Characters listed per picture.")
  parser.add_argument("--output_dir", default="predictions", help="Where to write.")
  parser.add_argument("--batch_size", type=int, default=64, help="Pictures per onnxruntime run.")
  parser.add_argument("--print_limit", type=int, default=50, help="Pictures shown (0 = all).")
  parser.add_argument("--threads", type=int, default=0, help="onnxruntime threads (0: its own).")
  parser.add_argument(
    "--detector",
    default=None,
    help="A head detector's ONNX export: name every head it finds rather than whole pictures.",
  )
  parser.add_argument(
    "--score_threshold",
    type=float,
    default=None,
    help="Score a head needs (default: the detector's model.json).",
  )
  args = parser.parse_args(argv)
  if args.top_k < 1 or args.batch_size < 1:
    parser.error("--top_k and --batch_size must be at least 1.")
  files, problems = find_images(args.pictures)
  for given, problem in problems:
    print(f"Skipping {given}: {problem}")
  try:
    model = Model(args.export_dir, args.threads)
  except (OSError, ValueError, KeyError) as error:
    sys.exit(f"onnx_predict: {args.export_dir} is not a usable ONNX export: {error}")
  detector = None
  if args.detector:
    try:
      detector = Detector(args.detector, args.threads, args.score_threshold)
    except (OSError, ValueError, KeyError) as error:
      sys.exit(f"onnx_predict: --detector={args.detector} is not a usable ONNX export: {error}")
  output_dir = os.path.abspath(os.path.expanduser(args.output_dir))
  results, errors = predict_files(model, files, args.top_k, args.batch_size, detector=detector)
  errors = [{"file": given, "error": problem} for given, problem in problems] + errors
  write_outputs(results, errors, model.contract.get("source", {}), output_dir)
  if results:
    print(format_table(results, args.print_limit))
  for error in errors:
    print(f"Could not read {error['file']}: {error['error']}")
  classified = len({result["file"] for result in results})
  print(f"{len(results)} predictions for {classified} of {len(files)} images; wrote {output_dir}")
  if not results:
    sys.exit("onnx_predict: no image was classified (see the messages above).")


if __name__ == "__main__":
  main()
