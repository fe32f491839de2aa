"""Loads the original Animesion ShallowNet state dicts (torch) into the Flax ShallowNet.

The torch module (classification/models/models.py) is `layer1`/`layer2` =
Sequential(Conv2d, BatchNorm2d, ReLU, MaxPool2d) and `fc` = Sequential(Flatten,
Linear, ReLU, Dropout, Linear), saved unwrapped. Its first linear reads the
feature map flattened channel-major (C, H, W); Flax flattens (H, W, C), so that
weight is permuted. The feature map is square, so its side, and the image size
the checkpoint was trained at (the smallest that gives it: 4 * side + 12, 224
for the original's 53), come from the weight's shape.
"""

import math
import os
import re
from typing import Any

import numpy as np

from animesion_jax.convert import conversion
from animesion_jax.convert import torch_vit
from animesion_jax.models import shallow

_CONV = re.compile(r"^layer(\d+)\.0\.(weight|bias)$")
_BN = re.compile(r"^layer(\d+)\.1\.(weight|bias|running_mean|running_var|num_batches_tracked)$")
_BN_LEAVES = {
  "weight": ("params", "scale"),
  "bias": ("params", "bias"),
  "running_mean": ("batch_stats", "mean"),
  "running_var": ("batch_stats", "var"),
}
_FIRST_FC, _LAST_FC = "fc.1", "fc.4"


def _first_fc_kernel(weight: np.ndarray, channels: int, what: str) -> tuple[np.ndarray, int]:
  """(hidden, C*H*W) torch weight -> (H*W*C, hidden) Flax kernel, and the feature side."""
  hidden, features = weight.shape
  side = math.isqrt(features // channels) if features % channels == 0 else 0
  if side * side * channels != features:
    raise conversion.ConversionError(
      f"{what}: {_FIRST_FC}.weight {weight.shape} does not read a square {channels}-channel "
      "feature map."
    )
  kernel = weight.reshape(hidden, channels, side, side).transpose(2, 3, 1, 0)
  return kernel.reshape(side * side * channels, hidden), side


def load(path: Any, target: conversion.Target) -> conversion.Conversion:
  """Loads an Animesion ShallowNet state dict.

  Args:
    path: A `.pth`/`.ckpt` file written by `torch.save(model.state_dict())`.
    target.num_classes: None keeps the classifier; another count re-initialises it.
    target.image_size: None for the checkpoint's size, or another size with the same
      feature-map side (the first linear layer is tied to it).
    target.num_heads: Not used (ShallowNet has no attention); must be None.

  Returns:
    (model, variables, summary).
  """
  num_classes, image_size, num_heads = target.num_classes, target.image_size, target.num_heads
  summary = conversion.new_summary("pytorch_shallownet", path)
  what = os.fspath(path)
  if num_heads is not None:
    raise conversion.ConversionError("num_heads does not apply to a ShallowNet checkpoint.")
  arrays = torch_vit.read_state_dict(path, summary)
  required = ["layer1.0.weight", f"{_FIRST_FC}.weight", f"{_LAST_FC}.weight"]
  missing = [k for k in required if k not in arrays]
  if missing:
    raise conversion.ConversionError(
      f"{what} is not an Animesion ShallowNet state dict: missing {missing}; it has keys like "
      f"{sorted(arrays)[:8]}."
    )

  flat: conversion.Flat = {"params": {}, "batch_stats": {}}
  unknown: dict[str, np.ndarray] = {}
  channels = []
  for key, value in sorted(arrays.items()):
    conv, bn = _CONV.match(key), _BN.match(key)
    if conv:
      if conv.group(2) == "weight":
        if value.ndim != 4:
          raise conversion.ConversionError(f"{key} {value.shape} is not an OIHW conv.")
        channels.append(int(value.shape[0]))
        value = value.transpose(2, 3, 1, 0)
      leaf = "kernel" if conv.group(2) == "weight" else "bias"
      flat["params"][f"conv{conv.group(1)}/{leaf}"] = value
    elif bn and bn.group(2) == "num_batches_tracked":
      conversion.drop(summary, key, value, "Flax BatchNorm keeps no batch counter")
    elif bn:
      collection, leaf = _BN_LEAVES[bn.group(2)]
      flat[collection][f"bn{bn.group(1)}/{leaf}"] = value
    elif key not in (
      f"{_FIRST_FC}.weight",
      f"{_FIRST_FC}.bias",
      f"{_LAST_FC}.weight",
      f"{_LAST_FC}.bias",
    ):
      unknown[key] = value
  conversion.unknown_keys_error(what, unknown)

  kernel, side = _first_fc_kernel(arrays[f"{_FIRST_FC}.weight"], channels[-1], what)
  flat["params"]["fc1/kernel"] = kernel
  flat["params"]["fc1/bias"] = arrays.get(f"{_FIRST_FC}.bias")
  flat["params"]["fc2/kernel"] = arrays[f"{_LAST_FC}.weight"].T
  flat["params"]["fc2/bias"] = arrays.get(f"{_LAST_FC}.bias")
  flat["params"] = {k: v for k, v in flat["params"].items() if v is not None}
  size = side
  for _ in channels:  # Invert s -> (s - 4) // 2 with the smallest s.
    size = 2 * size + shallow.KERNEL - 1
  if image_size is not None and image_size != size:
    if shallow.feature_side(image_size, len(channels)) != side:
      raise conversion.ConversionError(
        f"image_size {image_size} gives a {shallow.feature_side(image_size, len(channels))}-"
        f"pixel feature map, but the checkpoint's first linear layer reads {side}x{side} "
        f"(image size {size}, e.g.); ShallowNet parameters are tied to the image size."
      )
    size = image_size
  fields = {
    "num_classes": int(arrays[f"{_LAST_FC}.weight"].shape[0]),
    "channels": tuple(channels),
    "hidden": int(arrays[f"{_FIRST_FC}.weight"].shape[0]),
  }
  return conversion.finish(
    summary, "ShallowNet", fields, flat, size, num_classes=num_classes, new_image_size=None
  )
