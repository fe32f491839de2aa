"""model.json: what a consumer of an exported model needs besides the model file.

  {"format": "onnx", "files": {"model": "model.onnx"},
   "input": {"name": "images", "layout": "NHWC", "dtype": "float32", "size": [224, 224],
             "color": "RGB", "scale": 255.0, "mean": [...], "std": [...], "resize": {...}},
   "output": {"name": "logits", ...}, "class_names": [...], "calibration": {...},
   "source": {"run": ..., "checkpoint": ..., "step": ..., "model": ..., ...}}

The input recipe is `animesion_jax.predict`'s, step by step: read the file as RGB (EXIF
orientation applied, first frame, transparency on white; JPEGs may be decoded at a reduced
scale no smaller than the model's size, Pillow's `draft`), stretch it to size x size with
Pillow's BILINEAR filter (antialiased when shrinking), then x / scale, minus mean, over std,
per channel.

A head detector (config.task='detect') has a letterboxed input (LETTERBOX), its raw CenterNet
output "heads" and a "detection" section: how boxes are decoded from it (as detection/heads.py
decodes them), the score threshold and the number of detections kept.
"""

import json
import os
from typing import Any

from etils import epath
import jax

from animesion_jax import recognizer
from animesion_jax import run_dir
from animesion_jax.data import preprocess
from animesion_jax.models import centernet

FILE_NAME = "model.json"
INPUT_NAME = "images"
OUTPUT_NAME = "logits"
DETECTOR_OUTPUT_NAME = "heads"  # A head detector's (config.task='detect') raw CenterNet output.
SCHEMA_VERSION = 1

# How predict turns a picture into the model's input size (see the module docstring).
RESIZE = {
  "library": "Pillow",
  "method": "bilinear",
  "call": "image.resize((width, height), Image.BILINEAR)",
  "antialias": True,
  "aspect": "stretch",
  "crop": None,
  "jpeg_draft": "Image.draft('RGB', (width, height)) before decoding",
  "exif_orientation": True,
  "transparency": "composited on white",
}


# How the head detector (inference/head_detector.py, detection/boxes.letterbox) turns a picture
# into its square input: no stretching, the picture at the top-left of a black square.
LETTERBOX = {
  "library": "Pillow",
  "method": "bilinear",
  "call": "image.resize((width, height), Image.BILINEAR)",
  "antialias": True,
  "aspect": "letterbox",
  "scale": "size / max(picture width, picture height)",
  "resized": "width = max(1, min(size, round(picture width * scale))), height likewise",
  "placement": "top-left of a size x size canvas of black (0, 0, 0) pixels, before normalising",
  "exif_orientation": True,
  "transparency": "composited on white",
}


def is_detector(run: recognizer.Recognizer) -> bool:
  """Whether the run is a head detector (config.task='detect')."""
  return run.config.get("task", "classify") == "detect"


def output_name(run: recognizer.Recognizer) -> str:
  return DETECTOR_OUTPUT_NAME if is_detector(run) else OUTPUT_NAME


def _detector_output(run: recognizer.Recognizer) -> dict[str, Any]:
  """model.json's "output" and "detection" for a CenterNet head detector (detection/heads.py)."""
  size = int(run.config.image_size)
  grid = size // centernet.STRIDE
  classes = run.num_classes
  detection = run.config.detection
  output = {
    "name": DETECTOR_OUTPUT_NAME,
    "dtype": "float32",
    "shape": ["batch", grid, grid, classes + centernet.BOX_CHANNELS],
    "meaning": (
      f"per cell of a stride-{centernet.STRIDE} grid: heatmap logits of each class (channels "
      f"0..{classes - 1}), then log(w / stride), log(h / stride), and the box centre's offset "
      "(x, y) from the cell's corner, in cells"
    ),
  }
  decoding = {
    "stride": centernet.STRIDE,
    "score_threshold": float(detection.score_threshold),
    "max_detections": int(detection.max_detections),
    "score": "sigmoid(heatmap logit)",
    "peaks": "cells whose score equals the maximum of their 3x3 neighbourhood (no NMS)",
    "top": "the max_detections best peaks (over cells and classes), best first",
    "box": (
      "w = exp(log w) * stride, h = exp(log h) * stride, centre = ((column + offset x) * "
      "stride, (row + offset y) * stride); [centre x - w / 2, centre y - h / 2, w, h]"
    ),
    "to_picture": (
      "divide by the letterbox scale and clip to the picture; keep scores >= score_threshold "
      "and boxes at least 1 pixel wide and high"
    ),
    "box_format": "[x, y, w, h] in the picture's pixels",
  }
  return {"output": output, "detection": decoding}


def _calibration(run: recognizer.Recognizer) -> dict[str, Any] | None:
  """The model's calibration.json, from where its open-set answerer reads it (the run
  directory or --gallery), if there is one and it fits this checkpoint (its answerer uses it)."""
  directory = run.answerer.directory
  if directory is None or run.answerer.calibration is None:
    return None
  path = directory / run_dir.CALIBRATION_FILE
  return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def contract(run: recognizer.Recognizer, format_name: str, files: dict[str, str]) -> dict[str, Any]:
  """The content of model.json for `run` exported as `format_name` into `files`."""
  size = int(run.config.image_size)
  mean, std = preprocess.NORMALIZATIONS[run.config.normalization]
  contents = {
    "schema_version": SCHEMA_VERSION,
    "format": format_name,
    "files": files,
    "input": {
      "name": INPUT_NAME,
      "layout": "NHWC",
      "dtype": "float32",
      "shape": ["batch", size, size, 3],
      "size": [size, size],
      "color": "RGB",
      "scale": 255.0,
      "mean": list(mean),
      "std": list(std),
      "resize": RESIZE,
    },
    "output": {
      "name": OUTPUT_NAME,
      "dtype": "float32",
      "shape": ["batch", run.num_classes],
      "meaning": "logits; softmax gives the class probabilities (index = class id)",
    },
    "class_names": list(run.class_names),
  }
  if is_detector(run):
    contents["input"]["resize"] = LETTERBOX
    contents.update(_detector_output(run))
  calibration = _calibration(run)
  if calibration is not None:
    contents["calibration"] = calibration
  contents["source"] = {
    "run": run.description,
    "checkpoint": run.checkpoint,
    "step": run.step,
    "model": run.config.model.name,
    "module": type(run.model).__name__,
    "normalization": run.config.normalization,
    "trained_dtype": run.config.get("dtype", "float32"),
    # The exported classifier is tau-normalised by this much (the run's config.tau_norm).
    "tau_norm": run.tau_norm,
    # Of the parameters exported (recognizer.Recognizer.fingerprint), as the calibration's.
    "fingerprint": run.fingerprint,
    "jax_version": jax.__version__,
  }
  return contents


def write(contents: dict[str, Any], output_dir: str | os.PathLike) -> epath.Path:
  path = epath.Path(output_dir) / FILE_NAME
  path.write_text(json.dumps(contents, indent=1, ensure_ascii=False), encoding="utf-8")
  return path


def read(export_dir: str | os.PathLike) -> dict[str, Any]:
  path = epath.Path(export_dir) / FILE_NAME
  if not path.exists():
    raise FileNotFoundError(f"{path} not found: {export_dir} is not an export folder.")
  return json.loads(path.read_text(encoding="utf-8"))
