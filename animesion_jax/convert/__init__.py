"""Public (convert.load, convert.SOURCES, ConversionError): checkpoint conversion: original ViT, Animesion, torchvision weights -> Flax.

    from animesion_jax import convert
    model, variables = convert.load('vit_npz', 'ViT-B_16.npz', num_classes=173,
                                    image_size=128)
    logits = model.apply(variables, images, train=False)

Sources (the architecture is read from the checkpoint itself):
  vit_npz             original google-research ViT `.npz` (tanh GELU).
  pytorch_vit         `pytorch_pretrained_vit.ViT` state dicts, as the original
                      Animesion code saved them (exact GELU), also with the
                      intermediate-features head of its later work.
  torchvision_resnet  torchvision ResNet state dicts, BatchNorm stats included.
  pytorch_shallownet  the original Animesion ShallowNet state dicts.
  animesion           a directory written by `save` (tools/convert_checkpoint).

`num_classes=None` keeps the checkpoint's head; a different count replaces it
with zeros (and drops a ViT's `pre_logits`, the original fine-tuning recipe).
`image_size=None` keeps the position-embedding grid; another size resizes it
(class token kept, bilinear with align_corners=True). Torch is imported only by
the torch sources.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn

from animesion_jax.convert import exported
from animesion_jax.convert import torch_resnet
from animesion_jax.convert import torch_shallow
from animesion_jax.convert import torch_vit
from animesion_jax.convert import vit_npz
from animesion_jax.convert.conversion import Conversion
from animesion_jax.convert.conversion import ConversionError
from animesion_jax.convert.conversion import Target
from animesion_jax.convert.conversion import model_from_spec
from animesion_jax.convert.conversion import model_spec
from animesion_jax.convert.exported import save

__all__ = [
  "SOURCES",
  "Conversion",
  "ConversionError",
  "load",
  "load_with_summary",
  "model_from_spec",
  "model_spec",
  "save",
  "Target",
]

# Source name -> loader(path, target).
SOURCES: dict[str, Callable[[Any, Target], Conversion]] = {
  "vit_npz": vit_npz.load,
  "pytorch_vit": torch_vit.load,
  "torchvision_resnet": torch_resnet.load,
  "pytorch_shallownet": torch_shallow.load,
  "animesion": exported.load,
}


def load_with_summary(source: str, path: Any, target: Target = Target()) -> Conversion:
  """Like `load`, with the target as a `Target`, also returning the summary.

  The summary (JSON-safe) has: source, input, model ({'class', 'fields'}),
  image_size, num_params, dropped / resized / reinitialised (lists of
  {'key', shapes, reason}), notes.
  """
  if source not in SOURCES:
    raise ValueError(f"Unknown checkpoint source {source!r}; valid: {sorted(SOURCES)}.")
  return SOURCES[source](path, target)


def load(
  source: str,
  path: Any,
  *,
  num_classes: int | None = None,
  image_size: int | None = None,
  num_heads: int | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
  """Loads a checkpoint into the project's model.

  Args:
    source: A key of SOURCES.
    path: The checkpoint file (or directory for 'animesion').
    num_classes: None keeps the head; another class count re-initialises it.
    image_size: None keeps the checkpoint's image size; another one resizes a
      ViT's position embedding.
    num_heads: ViT attention heads where the file does not store them
      ('pytorch_vit'; default hidden / 64).

  Returns:
    (model, variables) with `model.apply(variables, images, train=False)`
    giving the checkpoint's logits.

  Raises:
    ConversionError: the file is not a checkpoint of that source, or its
      tensors do not fit (the message lists the keys and shapes).
  """
  model, variables, _ = load_with_summary(source, path, Target(num_classes, image_size, num_heads))
  return model, variables
