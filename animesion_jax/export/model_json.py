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
"""

import json
import os
from typing import Any

from etils import epath
import jax

from animesion_jax import recognizer
from animesion_jax import run_dir
from animesion_jax.data import preprocess

FILE_NAME = "model.json"
INPUT_NAME = "images"
OUTPUT_NAME = "logits"
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
