"""Loads the original google-research ViT `.npz` checkpoints.

The files hold one array per parameter, keyed by the Flax path joined with
'/'. The released files use the pre-Linen module names inside each encoder
block (`LayerNorm_0`, `MultiHeadDotProductAttention_1`, `LayerNorm_2`,
`MlpBlock_3`), which the project's ViT uses too; files written by current Linen
code count per module type (`LayerNorm_0`, `MultiHeadDotProductAttention_0`,
`LayerNorm_1`, `MlpBlock_0`) and are renamed on load.

They were trained with tanh-approximated GELU and LayerNorm epsilon 1e-6.
"""

import os
import re
from typing import Any

import numpy as np

from animesion_jax.convert import conversion

_BLOCK = re.compile(r"^Transformer/encoderblock_(\d+)/([^/]+)/(.*)$")
# Linen module name -> pre-Linen module name, inside an encoder block.
_LINEN_TO_PRE_LINEN = {
  "LayerNorm_0": "LayerNorm_0",
  "MultiHeadDotProductAttention_0": "MultiHeadDotProductAttention_1",
  "LayerNorm_1": "LayerNorm_2",
  "MlpBlock_0": "MlpBlock_3",
}
_PRE_LINEN_ONLY = {"MultiHeadDotProductAttention_1", "LayerNorm_2", "MlpBlock_3"}
_LINEN_ONLY = {"MultiHeadDotProductAttention_0", "LayerNorm_1", "MlpBlock_0"}

_QUERY = "Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel"
_MLP_IN = "Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel"


def read_npz(path: Any) -> dict[str, np.ndarray]:
  """Reads every array of an `.npz` file as float32."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"No such checkpoint file: {path}")
  # Foreign bytes fail inside numpy / zipfile with many exception types.
  try:
    data = np.load(path, allow_pickle=False)
    if isinstance(data, np.lib.npyio.NpzFile):
      with data:
        arrays = {key: np.asarray(data[key]) for key in data.files}
  except Exception as e:  # pylint: disable=broad-exception-caught
    raise conversion.ConversionError(
      f"{path} is not an .npz ViT checkpoint ({type(e).__name__}: {e})."
    ) from e
  if not isinstance(data, np.lib.npyio.NpzFile):
    raise conversion.ConversionError(
      f"{path} holds a single .npy array, not an .npz ViT checkpoint."
    )
  if not arrays:
    raise conversion.ConversionError(f"{path} is an empty .npz file.")
  non_float = sorted(k for k, v in arrays.items() if not np.issubdtype(v.dtype, np.floating))
  if non_float:
    raise conversion.ConversionError(
      f"{path}: non-float arrays are not ViT parameters: {non_float}"
    )
  return {k: v.astype(np.float32) for k, v in arrays.items()}


def to_pre_linen_names(arrays: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], str]:
  """Renames Linen block module names; returns (arrays, generation found)."""
  modules = {m.group(2) for m in map(_BLOCK.match, arrays) if m}
  linen, pre_linen = modules & _LINEN_ONLY, modules & _PRE_LINEN_ONLY
  if linen and pre_linen:
    raise conversion.ConversionError(
      "Checkpoint mixes Linen module names "
      f"{sorted(linen)} with pre-Linen ones {sorted(pre_linen)}."
    )
  if not linen:
    return arrays, "pre-linen"
  renamed = {}
  for key, value in arrays.items():
    m = _BLOCK.match(key)
    if m and m.group(2) in _LINEN_TO_PRE_LINEN:
      key = f"Transformer/encoderblock_{m.group(1)}/{_LINEN_TO_PRE_LINEN[m.group(2)]}/{m.group(3)}"
    renamed[key] = value
  return renamed, "linen"


def infer_fields(params: dict[str, np.ndarray], what: str) -> tuple[dict[str, Any], int]:
  """Reads the ViT architecture off Flax-named flat parameters.

  Args:
    params: {'embedding/kernel': ..., ...} named like the project's ViT.
    what: How to name the checkpoint in error messages.

  Returns:
    (VisionTransformer fields except the GELU flavour, image size).
  """
  required = ["embedding/kernel", "cls", conversion.POS_EMBEDDING, "head/kernel", _QUERY, _MLP_IN]
  missing = [k for k in required if k not in params]
  if missing:
    sample = sorted(params)[:8]
    raise conversion.ConversionError(
      f"{what} is not a ViT checkpoint: missing {missing}; "
      f"it has {len(params)} arrays, e.g. {sample}."
    )
  kernel = params["embedding/kernel"]
  if kernel.ndim != 4 or kernel.shape[0] != kernel.shape[1]:
    raise conversion.ConversionError(
      f"{what}: embedding/kernel {kernel.shape} is not a square HWIO patch convolution."
    )
  if kernel.shape[2] != 3:
    raise conversion.ConversionError(
      f"{what}: embedding/kernel {kernel.shape} expects {kernel.shape[2]} "
      "input channels; the models take RGB (3)."
    )
  patch, hidden = kernel.shape[0], kernel.shape[3]
  layers = sorted({int(m.group(1)) for m in map(_BLOCK.match, params) if m})
  if layers != list(range(len(layers))):
    raise conversion.ConversionError(f"{what}: encoder blocks are not numbered 0..n-1: {layers}")
  posemb = params[conversion.POS_EMBEDDING]
  tokens = posemb.shape[1] - 1 if posemb.ndim == 3 else -1
  grid = int(round(np.sqrt(max(tokens, 0))))
  if tokens < 1 or grid * grid != tokens:
    raise conversion.ConversionError(
      f"{what}: position embedding {posemb.shape} is not (1, 1 + g*g, D): "
      "a class token plus a square patch grid."
    )
  query = params[_QUERY]
  if query.ndim != 3:
    raise conversion.ConversionError(
      f"{what}: {_QUERY} {query.shape} is not (hidden, heads, head_dim)."
    )
  representation = params.get("pre_logits/kernel")
  fields = {
    "num_classes": int(params["head/kernel"].shape[-1]),
    "patch_size": int(patch),
    "hidden_size": int(hidden),
    "mlp_dim": int(params[_MLP_IN].shape[-1]),
    "num_heads": int(query.shape[1]),
    "num_layers": len(layers),
    "representation_size": (None if representation is None else int(representation.shape[-1])),
    "layer_norm_epsilon": 1e-6,
  }
  return fields, grid * patch


def load(path: Any, target: conversion.Target) -> conversion.Conversion:
  """Loads an original ViT `.npz` into a tanh-GELU `VisionTransformer`.

  Args:
    path: The `.npz` file.
    target.num_classes: None keeps the checkpoint's head; another count gets a zero
      head and drops `pre_logits` (the original fine-tuning recipe).
    target.image_size: None keeps the position-embedding grid; another size resizes
      it.
    target.num_heads: Optional check; the file itself stores the head count.

  Returns:
    (model, variables, summary).
  """
  num_classes, image_size, num_heads = target.num_classes, target.image_size, target.num_heads
  summary = conversion.new_summary("vit_npz", path)
  arrays, generation = to_pre_linen_names(read_npz(path))
  summary["notes"].append(f"module names: {generation}")
  fields, size = infer_fields(arrays, os.fspath(path))
  if num_heads is not None and num_heads != fields["num_heads"]:
    raise conversion.ConversionError(
      f"num_heads={num_heads} contradicts the checkpoint, whose attention "
      f"kernels have {fields['num_heads']} heads."
    )
  fields["gelu_approximate"] = True
  return conversion.finish(
    summary,
    "VisionTransformer",
    fields,
    {"params": arrays},
    size,
    num_classes=num_classes,
    new_image_size=image_size,
  )
