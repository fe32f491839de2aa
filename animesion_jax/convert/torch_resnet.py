"""Loads torchvision-layout ResNet state dicts (the paper's CNN baselines).

The block type, the four stage depths, the base width and the class count are
read off the keys and shapes, so ResNet-18/34/50/101/152 and narrower variants
(any base width) load without arguments. Running BatchNorm statistics become
the 'batch_stats' collection; `num_batches_tracked` has no Flax counterpart and
is dropped (and reported). Wide / grouped ResNets (bottleneck width different
from the stage's planes) do not fit the model and fail with the offending
shapes.
"""

import os
import re
from typing import Any

import numpy as np

from animesion_jax.convert import conversion
from animesion_jax.convert import torch_vit

# ResNet parameters do not depend on the image size; this is only the size
# recorded in the summary (torchvision's) when none is given.
_DEFAULT_IMAGE_SIZE = 224
_NUM_STAGES = 4

_BLOCK = re.compile(r"^layer(\d+)\.(\d+)\.(.+)$")
_MODULE = re.compile(r"^(conv\d|bn\d|downsample\.0|downsample\.1)\.(.+)$")
_BN_LEAVES = {
  "weight": ("params", "scale"),
  "bias": ("params", "bias"),
  "running_mean": ("batch_stats", "mean"),
  "running_var": ("batch_stats", "var"),
}
_FLAX_MODULE = {"downsample.0": "downsample_conv", "downsample.1": "downsample_bn"}


def _place(
  flat: conversion.Flat,
  summary: dict[str, Any],
  key: str,
  module: str,
  leaf: str,
  value: np.ndarray,
  unknown: dict[str, np.ndarray],
) -> None:
  """Puts one torch tensor of `module` (a Flax path) into `flat`."""
  is_conv = re.search(r"conv\d?$", module) is not None
  if is_conv and leaf == "weight":
    if value.ndim != 4:
      raise conversion.ConversionError(f"{key} {value.shape} is not an OIHW conv.")
    flat["params"][f"{module}/kernel"] = value.transpose(2, 3, 1, 0)
  elif not is_conv and leaf in _BN_LEAVES:
    collection, name = _BN_LEAVES[leaf]
    flat[collection][f"{module}/{name}"] = value
  elif not is_conv and leaf == "num_batches_tracked":
    conversion.drop(
      summary, key, value, "Flax BatchNorm keeps no batch counter (momentum is fixed)"
    )
  else:
    unknown[key] = value


def _infer_fields(arrays: dict[str, np.ndarray], what: str) -> dict[str, Any]:
  """Block type, stage depths, base width and class count from the keys."""
  missing = [k for k in ("conv1.weight", "fc.weight", "layer1.0.conv1.weight") if k not in arrays]
  if missing:
    raise conversion.ConversionError(
      f"{what} is not a torchvision ResNet state dict: missing {missing}; "
      f"it has keys like {sorted(arrays)[:8]}."
    )
  depths: dict[int, set[int]] = {}
  for key in arrays:
    m = _BLOCK.match(key)
    if m:
      depths.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
  if sorted(depths) != list(range(1, _NUM_STAGES + 1)):
    raise conversion.ConversionError(
      f"{what}: expected stages layer1..layer{_NUM_STAGES}, found "
      f"{[f'layer{s}' for s in sorted(depths)]}."
    )
  for stage, blocks in depths.items():
    if sorted(blocks) != list(range(len(blocks))):
      raise conversion.ConversionError(
        f"{what}: blocks of layer{stage} are not numbered 0..n-1: {sorted(blocks)}"
      )
  fc = arrays["fc.weight"]
  if fc.ndim != 2:
    raise conversion.ConversionError(f"{what}: fc.weight {fc.shape} is not 2-D.")
  return {
    "num_classes": int(fc.shape[0]),
    "stage_sizes": tuple(len(depths[s]) for s in range(1, _NUM_STAGES + 1)),
    "block": "bottleneck" if "layer1.0.conv3.weight" in arrays else "basic",
    "base_width": int(arrays["conv1.weight"].shape[0]),
  }


def load(path: Any, target: conversion.Target) -> conversion.Conversion:
  """Loads a torchvision ResNet state dict into the project's `ResNet`.

  Args:
    path: A file written by `torch.save(model.state_dict())`, with or without
      the `model.` key prefix, zip or legacy format.
    target.num_classes: None keeps the checkpoint's fc layer; another count gets a
      zero one.
    target.image_size: Recorded only; ResNet parameters do not depend on it.
    target.num_heads: Must be None (ResNets have no attention heads).

  Returns:
    (model, variables, summary).
  """
  num_classes, image_size, num_heads = target.num_classes, target.image_size, target.num_heads
  if num_heads is not None:
    raise conversion.ConversionError("num_heads does not apply to a ResNet.")
  summary = conversion.new_summary("torchvision_resnet", path)
  arrays = torch_vit.read_state_dict(path, summary)
  what = os.fspath(path)
  fields = _infer_fields(arrays, what)

  flat: conversion.Flat = {"params": {}, "batch_stats": {}}
  unknown: dict[str, np.ndarray] = {}
  for key, value in arrays.items():
    if key == "fc.weight":
      flat["params"]["fc/kernel"] = value.T
      continue
    if key == "fc.bias":
      flat["params"]["fc/bias"] = value
      continue
    prefix, rest = "", key
    block = _BLOCK.match(key)
    if block:
      prefix = f"layer{block.group(1)}_{block.group(2)}/"
      rest = block.group(3)
    module = _MODULE.match(rest)
    if not module or (not block and module.group(1).startswith("downsample")):
      unknown[key] = value
      continue
    name = _FLAX_MODULE.get(module.group(1), module.group(1))
    _place(flat, summary, key, prefix + name, module.group(2), value, unknown)
  conversion.unknown_keys_error(what, unknown)

  return conversion.finish(
    summary,
    "ResNet",
    fields,
    flat,
    _DEFAULT_IMAGE_SIZE,
    num_classes=num_classes,
    new_image_size=image_size,
  )
