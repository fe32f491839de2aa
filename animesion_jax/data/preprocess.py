"""Host-side image preprocessing: decode, resize, crop, flip. Output stays uint8.

Normalisation to float happens on the device (`normalize`), so a batch crosses to the
accelerator at a quarter of the float32 size.
"""

import dataclasses
import io
from typing import Any

import grain.python as grain
import jax.numpy as jnp
import numpy as np
from PIL import Image

# (mean, std) per channel, for images scaled to [0, 1].
NORMALIZATIONS = {
    "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def decode_rgb(encoded: bytes) -> Image.Image:
  """Decodes image bytes of any format Pillow reads into an RGB image."""
  image = Image.open(io.BytesIO(encoded))
  if image.mode != "RGB":
    image = image.convert("RGB")
  return image


def resize_square(image: Image.Image, size: int) -> Image.Image:
  if image.size == (size, size):
    return image
  return image.resize((size, size), Image.BILINEAR)


@dataclasses.dataclass(frozen=True)
class TrainPreprocess(grain.RandomMapTransform):
  """The paper's train augmentation: resize to S+margin, random SxS crop, random flip."""
  image_size: int
  resize_margin: int
  horizontal_flip: bool

  def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
    big = self.image_size + self.resize_margin
    pixels = np.asarray(resize_square(decode_rgb(element["image"]), big))
    top, left = rng.integers(0, self.resize_margin + 1, size=2)
    pixels = pixels[top:top + self.image_size, left:left + self.image_size]
    if self.horizontal_flip and rng.random() < 0.5:
      pixels = pixels[:, ::-1]
    return {"image": np.ascontiguousarray(pixels), "label": np.int32(element["label"])}


@dataclasses.dataclass(frozen=True)
class EvalPreprocess(grain.MapTransform):
  """Eval preprocessing: resize to SxS."""
  image_size: int

  def map(self, element: dict[str, Any]) -> dict[str, np.ndarray]:
    pixels = np.asarray(resize_square(decode_rgb(element["image"]), self.image_size))
    return {"image": pixels, "label": np.int32(element["label"])}


def normalize(images: jnp.ndarray, normalization: str, dtype=jnp.float32) -> jnp.ndarray:
  """uint8 NHWC images -> normalised float images (on the device, inside jit)."""
  if normalization not in NORMALIZATIONS:
    raise ValueError(f"normalization={normalization!r}; choose one of {sorted(NORMALIZATIONS)}.")
  mean, std = NORMALIZATIONS[normalization]
  scaled = images.astype(jnp.float32) / 255.0
  return ((scaled - jnp.asarray(mean)) / jnp.asarray(std)).astype(dtype)
