"""The steps every converter shares, and the model description a checkpoint carries.

Every source loader turns its file into a model description ({'class', 'fields'}) plus flat
variables ({collection: {'a/b/c': array}}) named like the Flax modules, then calls `finish`, which
applies the shared fine-tuning semantics (new class count, new image size), checks the variables
against the shapes the module itself creates, and builds the summary.
"""

import dataclasses
import os
from typing import Any, NamedTuple

from absl import logging
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from animesion_jax import models

# Class name in model.json -> model family (of the one model table); the classes a checkpoint holds.
FAMILY_BY_CLASS: dict[str, models.Family] = {f.module.__name__: f for f in models.FAMILIES}
POS_EMBEDDING = "Transformer/posembed_input/pos_embedding"
_MAX_LISTED = 25

# {collection: {'a/b/c': array}} and {collection: {'a/b/c': shape}}.
Flat = dict[str, dict[str, np.ndarray]]
Shapes = dict[str, dict[str, tuple[int, ...]]]


class ConversionError(ValueError):
  """A checkpoint does not match the model it is being converted into."""


@dataclasses.dataclass(frozen=True)
class Target:
  """What a conversion should produce; each None keeps what the checkpoint has."""

  num_classes: int | None = None  # Another count replaces the classifier (zeros / fresh init).
  image_size: int | None = None  # Another size resizes a ViT's position-embedding grid.
  num_heads: int | None = None  # ViT attention heads where the file does not store them.


class Conversion(NamedTuple):
  """A loaded checkpoint: `model.apply(variables, images, train=False)`."""

  model: nn.Module
  variables: dict[str, Any]
  summary: dict[str, Any]


def model_spec(model: nn.Module) -> dict[str, Any]:
  """Returns {'class': name, 'fields': {...}} (JSON-safe) describing `model`."""
  name = type(model).__name__
  if name not in FAMILY_BY_CLASS or FAMILY_BY_CLASS[name].module is not type(model):
    raise ConversionError(
      f"Cannot describe a {type(model)!r}; exportable classes: {sorted(FAMILY_BY_CLASS)}."
    )
  fields = {}
  for field in dataclasses.fields(model):
    if field.name in ("parent", "name"):
      continue
    fields[field.name] = _to_json(field.name, getattr(model, field.name))
  return {"class": name, "fields": fields}


def model_from_spec(spec: dict[str, Any]) -> nn.Module:
  """Rebuilds the module described by `model_spec`."""
  name = spec.get("class")
  if name not in FAMILY_BY_CLASS:
    raise ConversionError(
      f"Unknown model class {name!r} in model spec; known: {sorted(FAMILY_BY_CLASS)}."
    )
  return _build(name, {k: field_from_json(k, v) for k, v in spec.get("fields", {}).items()})


def _build(name: str, fields: dict[str, Any]) -> nn.Module:
  try:
    return FAMILY_BY_CLASS[name].module(**fields)
  except TypeError as e:
    raise ConversionError(f"Model fields do not fit {name}: {e}") from e


def _to_json(name: str, value: Any) -> Any:
  if name.endswith("dtype"):
    return np.dtype(value).name
  if isinstance(value, (tuple, list)):
    return [_to_json("", v) for v in value]
  if value is None or isinstance(value, (bool, int, float, str)):
    return value
  raise ConversionError(f"Model field {name}={value!r} cannot be written to model.json.")


def field_from_json(name: str, value: Any) -> Any:
  if name.endswith("dtype"):
    if not isinstance(getattr(jnp, str(value), None), type):
      raise ConversionError(f"Model field {name}={value!r} is not a dtype.")
    return getattr(jnp, value)
  if isinstance(value, list):
    return tuple(field_from_json("", v) for v in value)
  return value


def flatten(variables: dict[str, Any]) -> Flat:
  """{collection: nested dict} -> {collection: {'a/b': numpy array}}."""
  return {
    col: {k: np.asarray(v) for k, v in flax.traverse_util.flatten_dict(tree, sep="/").items()}
    for col, tree in flax.core.unfreeze(variables).items()
  }


def expected_shapes(model: nn.Module, image_size: int) -> Shapes:
  """Shapes of the variables `model.init` creates for square `image_size`."""
  images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
  shapes = jax.eval_shape(lambda x: model.init(rngs, x, train=False), images)
  return {
    col: {k: tuple(v.shape) for k, v in flax.traverse_util.flatten_dict(tree, sep="/").items()}
    for col, tree in shapes.items()
  }


def assemble(
  model: nn.Module, flat: Flat, image_size: int, want: Shapes | None = None
) -> dict[str, Any]:
  """Checks `flat` against what `model` creates; returns nested jnp variables.

  Args:
    model: The module the variables are for.
    flat: {collection: {'a/b': array}}.
    image_size: Square input size the variables must fit.
    want: `expected_shapes(model, image_size)` when already computed.

  Raises:
    ConversionError: listing every unexpected key, missing key and shape
      mismatch (with shapes), so that no tensor is silently ignored.
  """
  if want is None:
    want = expected_shapes(model, image_size)
  unexpected, missing, wrong = [], [], []
  for col in sorted(set(want) | set(flat)):
    have_col, want_col = flat.get(col, {}), want.get(col, {})
    for key in sorted(set(have_col) - set(want_col)):
      unexpected.append(f"{col}/{key} {tuple(have_col[key].shape)}")
    for key in sorted(set(want_col) - set(have_col)):
      missing.append(f"{col}/{key} {want_col[key]}")
    for key in sorted(set(want_col) & set(have_col)):
      if tuple(have_col[key].shape) != want_col[key]:
        wrong.append(f"{col}/{key}: checkpoint {tuple(have_col[key].shape)}, model {want_col[key]}")
  if unexpected or missing or wrong:
    raise ConversionError(
      f"Checkpoint does not fit {type(model).__name__} at image size "
      f"{image_size}:"
      + _listing("unexpected (unused) keys", unexpected)
      + _listing("missing keys", missing)
      + _listing("wrong shapes", wrong)
    )
  return {
    col: flax.traverse_util.unflatten_dict(
      {k: jnp.asarray(v, jnp.float32) for k, v in tree.items()}, sep="/"
    )
    for col, tree in flat.items()
  }


def _listing(title: str, items: list[str]) -> str:
  if not items:
    return ""
  shown = items[:_MAX_LISTED]
  more = len(items) - len(shown)
  return (
    f"\n  {title} ({len(items)}):\n    "
    + "\n    ".join(shown)
    + (f"\n    ... and {more} more" if more else "")
  )


def unknown_keys_error(what: str, arrays: dict[str, np.ndarray]) -> None:
  """Raises for source tensors that no rule maps (listing key and shape)."""
  if arrays:
    raise ConversionError(
      f"{what} holds tensors this converter does not know:"
      + _listing("unknown keys", [f"{k} {tuple(v.shape)}" for k, v in sorted(arrays.items())])
    )


def resize_pos_embedding(posemb: np.ndarray, grid: int) -> np.ndarray:
  """Resizes a (1, 1+g*g, D) embedding to a (grid x grid) token grid.

  The class-token row is kept; the grid is interpolated bilinearly with
  align_corners=True (what the original code got from scipy.ndimage.zoom with
  order=1).
  """
  cls_row, tokens = posemb[:, :1], posemb[0, 1:]
  old = int(round(np.sqrt(tokens.shape[0])))
  if old * old != tokens.shape[0]:
    raise ConversionError(
      f"Position embedding {posemb.shape} has {tokens.shape[0]} patch "
      "tokens, not a square grid; cannot resize it."
    )
  tokens = tokens.reshape(old, old, -1).astype(np.float64)
  tokens = _linear_axis(_linear_axis(tokens, grid, axis=0), grid, axis=1)
  tokens = tokens.reshape(1, grid * grid, -1).astype(posemb.dtype)
  return np.concatenate([cls_row, tokens], axis=1)


def _linear_axis(x: np.ndarray, size: int, axis: int) -> np.ndarray:
  """Linear interpolation along `axis` whose end points map onto end points."""
  old = x.shape[axis]
  src = np.arange(size) * ((old - 1) / (size - 1)) if size > 1 else np.zeros(1)
  lo = np.clip(np.floor(src).astype(int), 0, old - 1)
  hi = np.minimum(lo + 1, old - 1)
  shape = [1] * x.ndim
  shape[axis] = size
  w = (src - lo).reshape(shape)
  return np.take(x, lo, axis=axis) * (1 - w) + np.take(x, hi, axis=axis) * w


def new_summary(source: str, path: Any) -> dict[str, Any]:
  """Starts the summary every loader fills in."""
  return {
    "source": source,
    "input": os.fspath(path),
    "notes": [],
    "dropped": [],
    "resized": [],
    "reinitialised": [],
  }


def drop(summary: dict[str, Any], key: str, array: np.ndarray, reason: str) -> None:
  """Records a source tensor that is deliberately not carried over."""
  summary["dropped"].append({"key": key, "shape": list(array.shape), "reason": reason})


def finish(
  summary: dict[str, Any],
  model_class: str,
  fields: dict[str, Any],
  flat: Flat,
  image_size: int,
  *,
  num_classes: int | None,
  new_image_size: int | None,
) -> Conversion:
  """Applies the class-count / image-size changes, validates, summarises.

  Args:
    summary: From `new_summary`, with what the loader already recorded.
    model_class: Key of FAMILY_BY_CLASS.
    fields: Constructor fields of that class, as found in the checkpoint.
    flat: The checkpoint's variables, named like the module's.
    image_size: The image size the checkpoint's variables are made for.
    num_classes: None keeps the head; a different count re-initialises it to
      zeros (and drops a ViT's `pre_logits`, the original fine-tuning recipe).
    new_image_size: None keeps the size; another one resizes a ViT's position
      embedding (ResNets are size-agnostic).

  Returns:
    The model, its nested variables and the completed summary.
  """
  if model_class not in FAMILY_BY_CLASS:
    raise ConversionError(f"Unknown model class {model_class!r}; known: {sorted(FAMILY_BY_CLASS)}.")
  fields = dict(fields)
  params = flat.setdefault("params", {})
  if num_classes is not None and num_classes != fields.get("num_classes"):
    if num_classes < 1:
      raise ConversionError(f"num_classes must be positive, got {num_classes}.")
    head = FAMILY_BY_CLASS[model_class].head
    if model_class == "VisionTransformer" and "pre_logits/kernel" in params:
      for key in ("pre_logits/kernel", "pre_logits/bias"):
        drop(
          summary,
          key,
          params.pop(key),
          "fine-tuning for a new class count drops the representation layer",
        )
      fields["representation_size"] = None
    # The new shapes come from the rebuilt model (below).
    reinit = {key: params.pop(key) for key in (f"{head}/kernel", f"{head}/bias")}
    fields["num_classes"] = num_classes
  else:
    reinit = {}

  size = image_size
  if new_image_size is not None and new_image_size != image_size:
    size = _resize_for(summary, model_class, fields, params, image_size, new_image_size)

  model = _build(model_class, fields)
  want = expected_shapes(model, size)
  for key, old in reinit.items():
    params[key] = np.zeros(want["params"][key], np.float32)
    summary["reinitialised"].append(
      {"key": key, "from": list(old.shape), "to": list(params[key].shape), "init": "zeros"}
    )
  variables = assemble(model, flat, size, want)
  summary["model"] = model_spec(model)
  summary["image_size"] = size
  summary["num_params"] = models.count_params(params)
  for item in summary["dropped"]:
    logging.info("convert: dropped %s %s (%s)", item["key"], item["shape"], item["reason"])
  return Conversion(model, variables, summary)


def _resize_for(summary, model_class, fields, params, image_size, new_image_size) -> int:
  """Adapts `params` in place to `new_image_size`; returns the size used."""
  if new_image_size < 1:
    raise ConversionError(f"image_size must be positive, got {new_image_size}.")
  if model_class == "ResNet":
    summary["notes"].append(f"image_size {new_image_size}: ResNet parameters do not depend on it.")
    return new_image_size
  if model_class != "VisionTransformer":
    raise ConversionError(
      f"{model_class} parameters are tied to the image size {image_size}; "
      f"cannot adapt them to {new_image_size}."
    )
  patch = fields["patch_size"]
  if new_image_size % patch:
    raise ConversionError(
      f"image_size {new_image_size} is not a multiple of the patch size {patch}."
    )
  old = params[POS_EMBEDDING]
  params[POS_EMBEDDING] = resize_pos_embedding(old, new_image_size // patch)
  summary["resized"].append(
    {
      "key": POS_EMBEDDING,
      "from": list(old.shape),
      "to": list(params[POS_EMBEDDING].shape),
      "how": "class token kept; grid bilinear, align_corners=True",
    }
  )
  return new_image_size


def from_module(
  summary: dict[str, Any],
  model: nn.Module,
  variables: dict[str, Any],
  image_size: int,
  *,
  num_classes: int | None = None,
  new_image_size: int | None = None,
) -> Conversion:
  """A project model and its variables (e.g. a training run's) as a Conversion.

  The same class-count and image-size changes as every other source apply.
  """
  spec = model_spec(model)
  return finish(
    summary,
    spec["class"],
    {k: field_from_json(k, v) for k, v in spec["fields"].items()},
    flatten(variables),
    image_size,
    num_classes=num_classes,
    new_image_size=new_image_size,
  )
