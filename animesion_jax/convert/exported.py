"""The project's own checkpoint format (the `animesion` source).

An exported checkpoint is a directory:

  model.json        {"class": "VisionTransformer", "fields": {...},
                     "image_size": 128}: enough to rebuild the exact module.
  variables/        Orbax `StandardCheckpointer` of {'params': ...,
                    ['batch_stats': ...]}.
  conversion.json   The summary of the conversion that produced it.

`load` reads the format back through the same `conversion.finish` as every other source.
"""

import json
from typing import Any

import flax
import flax.linen as nn
import jax
import orbax.checkpoint as ocp

from animesion_jax import run_dir
from animesion_jax.convert import conversion


def save(
  output_dir: Any, model: nn.Module, variables: dict[str, Any], summary: dict[str, Any]
) -> None:
  """Writes an exported checkpoint (see the module docstring) to `output_dir`.

  Args:
    output_dir: Directory to create or overwrite.
    model: A model of the model table (models.FAMILIES).
    variables: {'params': ..., ['batch_stats': ...]} for `model`.
    summary: JSON-safe; written as conversion.json. Its 'image_size' (every
      loader sets it) is required: the square input size the variables fit.

  Raises:
    conversion.ConversionError: the variables do not fit the model (nothing is written).
  """
  image_size = summary.get("image_size")
  if image_size is None:
    raise conversion.ConversionError(
      "summary['image_size'] is required: the image size the variables are made for."
    )
  # Refuse to write a checkpoint that would not load back.
  conversion.assemble(model, conversion.flatten(variables), image_size)
  spec = dict(conversion.model_spec(model), image_size=int(image_size))
  out = run_dir.resolve(output_dir)
  out.mkdir(parents=True, exist_ok=True)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(out / "variables", dict(flax.core.unfreeze(variables)), force=True)
  checkpointer.wait_until_finished()
  (out / "model.json").write_text(json.dumps(spec, indent=2) + "\n")
  (out / "conversion.json").write_text(json.dumps(summary, indent=2) + "\n")


def load(path: Any, target: conversion.Target) -> conversion.Conversion:
  """Reads a checkpoint written by `save` (the `animesion` source)."""
  num_classes, image_size, num_heads = target.num_classes, target.image_size, target.num_heads
  root = run_dir.resolve(path)
  spec_file = root / "model.json"
  if not spec_file.is_file() or not (root / "variables").is_dir():
    raise conversion.ConversionError(
      f"{root} is not an exported animesion checkpoint (it needs model.json "
      "and variables/); create one with tools/convert_checkpoint.py."
    )
  try:
    spec = json.loads(spec_file.read_text())
    model_class, fields, size = (spec["class"], spec["fields"], int(spec["image_size"]))
  except (ValueError, KeyError, TypeError) as e:
    raise conversion.ConversionError(
      f"{spec_file} is not a valid model description ({e!r}); it needs "
      '"class", "fields" and "image_size".'
    ) from e
  if num_heads is not None and num_heads != fields.get("num_heads"):
    raise conversion.ConversionError(
      f"num_heads={num_heads} contradicts the checkpoint "
      f"({fields.get('num_heads')}); leave it unset."
    )
  checkpointer = ocp.StandardCheckpointer()
  # Restored as host numpy arrays (no sharding in the target), whatever
  # devices wrote them.
  metadata = checkpointer.metadata(root / "variables").item_metadata.tree
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), metadata)
  variables = checkpointer.restore(root / "variables", target)
  summary = conversion.new_summary("animesion", root)
  previous = root / "conversion.json"
  if previous.is_file():
    earlier = json.loads(previous.read_text())
    summary["notes"].append(f"exported earlier from {earlier.get('source')} {earlier.get('input')}")
    if earlier.get("normalization"):  # The inputs a trained run's model expects.
      summary["normalization"] = earlier["normalization"]
  return conversion.finish(
    summary,
    model_class,
    {k: conversion.field_from_json(k, v) for k, v in fields.items()},
    conversion.flatten(variables),
    size,
    num_classes=num_classes,
    new_image_size=image_size,
  )
