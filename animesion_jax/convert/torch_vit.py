"""Loads `pytorch_pretrained_vit.ViT` state dicts (the original Animesion ViTs).

Animesion wrapped the network as `self.model`, so its saved files prefix every
key with `model.`; both prefixed and bare state dicts load, in torch's zip or
legacy format. The network uses exact (erf) GELU and LayerNorm epsilon 1e-6.
Its attention projections are full (D, D) linears whose output splits into
heads head-major, so the head count is not stored in the file: it is an
argument (default hidden / 64, as in every released ViT).
"""

import os
import re
from typing import Any

import numpy as np

from animesion_jax.convert import conversion
from animesion_jax.convert import vit_npz

# Prefixes that wrappers put in front of every key (Animesion's `self.model`,
# torch.nn.DataParallel's `module`).
_WRAPPER_PREFIXES = ("model.", "module.")

_BLOCK = re.compile(r"^transformer\.blocks\.(\d+)\.(.+)$")
_ATTENTION = "MultiHeadDotProductAttention_1"
# torch name inside a block -> Flax path inside `encoderblock_{i}` and how the
# tensor is rearranged (see `_rearrange`; 't' transposes a linear's (out, in)
# weight).
_BLOCK_RULES = {
  "norm1.weight": ("LayerNorm_0/scale", None),
  "norm1.bias": ("LayerNorm_0/bias", None),
  "attn.proj_q.weight": (f"{_ATTENTION}/query/kernel", "qkv"),
  "attn.proj_q.bias": (f"{_ATTENTION}/query/bias", "qkv_b"),
  "attn.proj_k.weight": (f"{_ATTENTION}/key/kernel", "qkv"),
  "attn.proj_k.bias": (f"{_ATTENTION}/key/bias", "qkv_b"),
  "attn.proj_v.weight": (f"{_ATTENTION}/value/kernel", "qkv"),
  "attn.proj_v.bias": (f"{_ATTENTION}/value/bias", "qkv_b"),
  "proj.weight": (f"{_ATTENTION}/out/kernel", "out"),
  "proj.bias": (f"{_ATTENTION}/out/bias", None),
  "norm2.weight": ("LayerNorm_2/scale", None),
  "norm2.bias": ("LayerNorm_2/bias", None),
  "pwff.fc1.weight": ("MlpBlock_3/Dense_0/kernel", "t"),
  "pwff.fc1.bias": ("MlpBlock_3/Dense_0/bias", None),
  "pwff.fc2.weight": ("MlpBlock_3/Dense_1/kernel", "t"),
  "pwff.fc2.bias": ("MlpBlock_3/Dense_1/bias", None),
}
_TOP_RULES = {
  "class_token": ("cls", None),
  "patch_embedding.weight": ("embedding/kernel", "conv"),
  "patch_embedding.bias": ("embedding/bias", None),
  "positional_embedding.pos_embedding": (conversion.POS_EMBEDDING, None),
  "norm.weight": ("Transformer/encoder_norm/scale", None),
  "norm.bias": ("Transformer/encoder_norm/bias", None),
  "fc.weight": ("head/kernel", "t"),
  "fc.bias": ("head/bias", None),
}
_PRE_LOGITS = ("pre_logits.weight", "pre_logits.bias")
# The intermediate-features head of the original's later work sits beside the wrapped network
# (`inter_class_head`; `class_head` in its first version): Sequential(Linear(layers, 1),
# Rearrange, ReLU, LayerNorm(D), Linear(D, classes)). Its network has no final `norm` / `fc`.
INTERM_HEAD_PREFIXES = ("inter_class_head.", "class_head.")
_INTERM_RULES = {
  "0.weight": ("interm_aggregate/kernel", "t"),
  "0.bias": ("interm_aggregate/bias", None),
  "3.weight": ("interm_norm/scale", None),
  "3.bias": ("interm_norm/bias", None),
  "4.weight": ("head/kernel", "t"),
  "4.bias": ("head/bias", None),
}
# The original's later ViT (its packed pytorch_pretrained_vit) used LayerNorm epsilon 1e-12.
_INTERM_LAYER_NORM_EPSILON = 1e-12


def read_state_dict(
  path: Any, summary: dict[str, Any], beside_wrapper: tuple[str, ...] = ()
) -> dict[str, np.ndarray]:
  """Reads a torch state dict as numpy arrays, without wrapper prefixes.

  Floating tensors become float32. A stripped prefix is noted in `summary`.
  Keys starting with one of `beside_wrapper` (modules next to the wrapped
  network) are kept as they are and do not stop the prefix from being stripped.
  """
  import torch  # pylint: disable=g-import-not-at-top  # optional dependency

  if not os.path.isfile(path):
    raise FileNotFoundError(f"No such checkpoint file: {path}")
  try:
    state = torch.load(path, map_location="cpu", weights_only=True)
  # torch's unpickler fails on foreign bytes with many exception types
  # (KeyError, EOFError, UnpicklingError, ...); all mean "not a checkpoint".
  except Exception as e:  # pylint: disable=broad-exception-caught
    raise conversion.ConversionError(
      f"{path} is not a torch checkpoint ({type(e).__name__}: {str(e)[:300]})."
    ) from e
  if not isinstance(state, dict):
    raise conversion.ConversionError(
      f"{path} holds a {type(state).__name__}, not a state dict (save model.state_dict())."
    )
  not_tensors = sorted(
    f"{k} ({type(v).__name__})" for k, v in state.items() if not isinstance(v, torch.Tensor)
  )
  if not_tensors:
    raise conversion.ConversionError(
      f"{path} is not a plain state dict; non-tensor entries: "
      f"{not_tensors[:10]}. If it is a training checkpoint, save its "
      "model.state_dict() instead."
    )
  if not state:
    raise conversion.ConversionError(f"{path} is an empty state dict.")
  beside = lambda key: key.startswith(beside_wrapper) if beside_wrapper else False
  for prefix in _WRAPPER_PREFIXES:
    wrapped = [k for k in state if not beside(k)]
    if wrapped and all(k.startswith(prefix) for k in wrapped):
      state = {k if beside(k) else k[len(prefix) :]: v for k, v in state.items()}
      summary["notes"].append(f"stripped the key prefix '{prefix}'")
  arrays = {}
  for key, tensor in state.items():
    tensor = tensor.detach().cpu()
    if tensor.is_floating_point():
      tensor = tensor.float()
    arrays[key] = tensor.numpy()
  return arrays


def _rearrange(how: str | None, key: str, x: np.ndarray, hidden: int, heads: int) -> np.ndarray:
  """torch layout -> Flax layout; checks the shapes the reshapes rely on."""
  head_dim = hidden // heads
  expect = {"qkv": (hidden, hidden), "out": (hidden, hidden), "qkv_b": (hidden,)}.get(how)
  if expect is not None and x.shape != expect:
    raise conversion.ConversionError(
      f"{key} has shape {x.shape}; expected {expect} for hidden size {hidden}."
    )
  if how is None:
    return x
  if how == "t":
    if x.ndim != 2:
      raise conversion.ConversionError(f"{key} {x.shape} is not a linear weight.")
    return x.T
  if how == "conv":
    if x.ndim != 4:
      raise conversion.ConversionError(f"{key} {x.shape} is not an OIHW conv.")
    return x.transpose(2, 3, 1, 0)
  if how == "qkv":  # (out, in) -> (in, heads, head_dim); out is head-major.
    return x.T.reshape(hidden, heads, head_dim)
  if how == "qkv_b":
    return x.reshape(heads, head_dim)
  # 'out': the merged heads are the input: (out, in) -> (heads, head_dim, out).
  return x.T.reshape(heads, head_dim, hidden)


def _interm_head(arrays: dict[str, np.ndarray], what: str) -> dict[str, tuple[str, str | None]]:
  """torch key -> (Flax path, rearrangement) of an intermediate-features head, if any."""
  prefixes = sorted({p for p in INTERM_HEAD_PREFIXES for k in arrays if k.startswith(p)})
  if not prefixes:
    return {}
  if len(prefixes) > 1:
    raise conversion.ConversionError(f"{what} has two classifier heads ({prefixes}); expected one.")
  prefix = prefixes[0]
  keys = {k[len(prefix) :] for k in arrays if k.startswith(prefix)}
  if keys != set(_INTERM_RULES):
    raise conversion.ConversionError(
      f"{what}: the head {prefix!r} has {sorted(keys)}; the intermediate-features head has "
      f"{sorted(_INTERM_RULES)} (Linear(layers, 1), LayerNorm, Linear). Other heads of the "
      "original's later code (e.g. the masked-language-model variant) are not supported."
    )
  return {prefix + k: rule for k, rule in _INTERM_RULES.items()}


def load(path: Any, target: conversion.Target) -> conversion.Conversion:
  """Loads a `pytorch_pretrained_vit.ViT` state dict into an exact-GELU ViT.

  Args:
    path: A `.pth`/`.ckpt` file written by `torch.save(model.state_dict())`.
    target.num_classes: None keeps the checkpoint's head; another count gets a zero
      head.
    target.image_size: None keeps the position-embedding grid; another size resizes
      it.
    target.num_heads: Attention heads (not stored in the file); default hidden / 64.

  Returns:
    (model, variables, summary).
  """
  num_classes, image_size, num_heads = target.num_classes, target.image_size, target.num_heads
  summary = conversion.new_summary("pytorch_vit", path)
  arrays = read_state_dict(path, summary, beside_wrapper=INTERM_HEAD_PREFIXES)
  interm = _interm_head(arrays, os.fspath(path))
  if "class_token" not in arrays or "patch_embedding.weight" not in arrays:
    raise conversion.ConversionError(
      f"{path} is not a pytorch_pretrained_vit state dict (no class_token / "
      f"patch_embedding.weight); it has keys like {sorted(arrays)[:8]}."
    )
  hidden = int(arrays["class_token"].shape[-1])
  if num_heads is None:
    if hidden % 64:
      raise conversion.ConversionError(
        f"Hidden size {hidden} is not a multiple of 64, so the default head "
        "count (hidden / 64) does not apply; pass num_heads."
      )
    num_heads = hidden // 64
  if num_heads < 1 or hidden % num_heads:
    raise conversion.ConversionError(
      f"num_heads={num_heads} does not divide the hidden size {hidden}."
    )

  if any(k in arrays for k in _PRE_LOGITS):
    head = arrays.get("fc.weight")
    if num_classes is None or (head is not None and num_classes == head.shape[0]):
      raise conversion.ConversionError(
        "The state dict has pre_logits (load_repr_layer=True), which "
        "pytorch_pretrained_vit applies to every token before the final "
        "LayerNorm; the Flax ViT applies it after, so the network cannot be "
        "reproduced. Pass a new num_classes to fine-tune without it."
      )
    for key in _PRE_LOGITS:
      if key in arrays:
        conversion.drop(
          summary,
          key,
          arrays.pop(key),
          "fine-tuning for a new class count drops the representation layer",
        )

  params, unknown = {}, {}
  for key, value in arrays.items():
    m = _BLOCK.match(key)
    if m and m.group(2) in _BLOCK_RULES:
      target, how = _BLOCK_RULES[m.group(2)]
      target = f"Transformer/encoderblock_{m.group(1)}/{target}"
    elif key in _TOP_RULES:
      target, how = _TOP_RULES[key]
    elif key in interm:
      target, how = interm[key]
    else:
      unknown[key] = value
      continue
    params[target] = _rearrange(how, key, value, hidden, num_heads)
  conversion.unknown_keys_error(os.fspath(path), unknown)

  fields, size = vit_npz.infer_fields(params, os.fspath(path))
  fields["gelu_approximate"] = False
  if interm:
    fields["head_type"] = "intermediate_features"
    fields["layer_norm_epsilon"] = _INTERM_LAYER_NORM_EPSILON
    summary["notes"].append(
      "intermediate-features head (the original's interm_features_fc); LayerNorm epsilon "
      f"{_INTERM_LAYER_NORM_EPSILON} as its ViT"
    )
  return conversion.finish(
    summary,
    "VisionTransformer",
    fields,
    {"params": params},
    size,
    num_classes=num_classes,
    new_image_size=image_size,
  )
