"""Where a ViT looks: class-token attention per layer, attention rollout, overlays on the input.

As the original Animesion inference (`vis_attention`): the attention probabilities of every encoder
block, averaged over heads; the rollout of Abnar & Zuidema (2020) adds the identity for the
residual connection, renormalises each row and multiplies the layers' matrices; the map is the
class token's row without the class token itself, on the patch grid; the overlay scales the image
by the map divided by its maximum, resized bilinearly to the image.

    result = attention.maps(model, variables, images)   # images: normalised NHWC floats
    attention.overlay(pil_image, result["rollout"][0]).save("rollout.png")
"""

import functools
from typing import Any

import flax
import flax.linen as nn
import jax
import numpy as np
from PIL import Image

from animesion_jax.models import vit

_WEIGHTS = "attention_weights"


def _check_vit(model: nn.Module) -> vit.VisionTransformer:
  if not isinstance(model, vit.VisionTransformer):
    raise ValueError(
      f"Attention maps need a ViT; this model is a {type(model).__name__}, which has no attention."
    )
  return model


@functools.partial(jax.jit, static_argnums=0)
def _attention(model: vit.VisionTransformer, variables: Any, images: jax.Array) -> jax.Array:
  """[B, layers, T, T] attention probabilities, averaged over heads, float32."""
  _, state = model.apply(variables, images, train=False, mutable=["intermediates"])
  flat = flax.traverse_util.flatten_dict(state["intermediates"])
  per_layer = {}
  for path, value in flat.items():
    if path[-1] == _WEIGHTS:
      block = next(p for p in path if p.startswith("encoderblock_"))
      per_layer[int(block.split("_")[1])] = value[0]  # sow stores a tuple of calls.
  if sorted(per_layer) != list(range(model.num_layers)):
    raise ValueError(
      f"Found attention weights of blocks {sorted(per_layer)}; expected {model.num_layers} blocks."
    )
  stacked = jax.numpy.stack([per_layer[i] for i in range(model.num_layers)], axis=1)
  return stacked.astype(jax.numpy.float32).mean(axis=2)


def full_attention(model: nn.Module, variables: Any, images: Any) -> np.ndarray:
  """Attention probabilities of every encoder block, averaged over heads: [B, layers, T, T].

  T = 1 + number of patches (the class token first). `images` are the normalised float model
  inputs, NHWC.
  """
  model = _check_vit(model)
  images = np.asarray(images, np.float32)
  if images.ndim != 4:
    raise ValueError(f"Expected NHWC images of rank 4, got shape {images.shape}.")
  return np.asarray(_attention(model, variables, images))


def _grid(model: vit.VisionTransformer, images: Any) -> tuple[int, int]:
  _, height, width, _ = np.shape(images)
  return height // model.patch_size, width // model.patch_size


def rollout(attention: np.ndarray, grid: tuple[int, int] | None = None) -> np.ndarray:
  """Attention rollout of the class token over all layers: [B, gh, gw].

  Args:
    attention: [B, layers, T, T] head-averaged attention (as `full_attention` returns), or
      [B, layers, heads, T, T] (averaged over heads here).
    grid: (gh, gw) with gh * gw = T - 1; None for a square grid.
  """
  attention = np.asarray(attention, np.float64)
  if attention.ndim == 5:
    attention = attention.mean(axis=2)
  if attention.ndim != 4 or attention.shape[-1] != attention.shape[-2]:
    raise ValueError(f"Expected attention of shape [B, layers, T, T], got {attention.shape}.")
  batch, layers, tokens, _ = attention.shape
  if grid is None:
    side = int(round(np.sqrt(tokens - 1)))
    grid = (side, side)
  if grid[0] * grid[1] != tokens - 1:
    raise ValueError(f"A {grid[0]}x{grid[1]} grid does not fit {tokens - 1} patch tokens.")
  # The residual connection: add the identity, then renormalise each row.
  augmented = attention + np.eye(tokens)
  augmented /= augmented.sum(axis=-1, keepdims=True)
  joint = augmented[:, 0]
  for n in range(1, layers):
    joint = augmented[:, n] @ joint
  return joint[:, 0, 1:].reshape(batch, *grid).astype(np.float32)


def maps(model: nn.Module, variables: Any, images: Any) -> dict[str, np.ndarray]:
  """{"layers": [B, layers, gh, gw] class-token attention, "rollout": [B, gh, gw]}."""
  attention = full_attention(model, variables, images)
  grid = _grid(model, images)
  batch, layers = attention.shape[:2]
  return {
    "layers": attention[:, :, 0, 1:].reshape(batch, layers, *grid),
    "rollout": rollout(attention, grid),
  }


def overlay(image: Image.Image, heatmap: np.ndarray) -> Image.Image:
  """The image scaled by the heat map (bilinear to the image size, divided by its maximum).

  A map with negative values is shifted to start at 0 first; a map that is zero everywhere leaves
  the image as it is.
  """
  heat = np.asarray(heatmap, np.float32)
  if heat.ndim != 2:
    raise ValueError(f"Expected a 2-D heat map, got shape {heat.shape}.")
  if not np.all(np.isfinite(heat)):
    raise ValueError("The heat map has NaN or infinite values.")
  rgb = image.convert("RGB")
  heat = heat - min(float(heat.min()), 0.0)
  peak = float(heat.max())
  if peak <= 0:
    return rgb.copy()
  resized = Image.fromarray(heat / peak, mode="F").resize(rgb.size, Image.Resampling.BILINEAR)
  mask = np.clip(np.asarray(resized), 0.0, 1.0)[..., None]
  return Image.fromarray((mask * np.asarray(rgb, np.float32)).astype(np.uint8), mode="RGB")
