"""Host-side image preprocessing: decode and resize. Output stays uint8.

JPEGs and 8-bit PNGs are decoded with OpenCV (libjpeg-turbo and libpng/zlib: the same pixels as
Pillow, 1.3-1.5x faster). Upscaling and same-size go through OpenCV's bilinear resize, which differs
from Pillow's BILINEAR by at most 1 grey level (rounding); downscaling uses Pillow's
antialiased BILINEAR, as torchvision's Resize on the original's PIL images. Anything else
(16-bit PNGs, GIF, BMP, WebP, ...) goes through Pillow. Without OpenCV installed (a bare
accelerator box: its wheel is 60 MB) Pillow and numpy do all of it, with the same pixels up to that
1 grey level.

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

try:
  import cv2
except ImportError:  # Optional speed-up (see the module docstring).
  cv2 = None

# (mean, std) per channel, for images scaled to [0, 1].
NORMALIZATIONS = {
  "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
  "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
_JPEG_MAGIC = b"\xff\xd8"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# The stored pixel order (Pillow does not apply EXIF orientation either); RGB where OpenCV can.
_CV2_RGB = hasattr(cv2, "IMREAD_COLOR_RGB")  # OpenCV >= 4.10.
_CV2_FLAGS = (
  ((cv2.IMREAD_COLOR_RGB if _CV2_RGB else cv2.IMREAD_COLOR) | cv2.IMREAD_IGNORE_ORIENTATION)
  if cv2 is not None
  else None
)


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


def decode_resized(encoded: bytes, size: int) -> np.ndarray:
  """Image bytes -> uint8 (size, size, 3) RGB pixels, resized with bilinear interpolation."""
  pixels = None
  # JPEGs, and 8-bit PNGs (IHDR bit depth at byte 24), which OpenCV decodes as Pillow does.
  if cv2 is not None and (
    encoded[:2] == _JPEG_MAGIC or (encoded[:8] == _PNG_MAGIC and encoded[24:25] == b"\x08")
  ):
    pixels = cv2.imdecode(np.frombuffer(encoded, np.uint8), _CV2_FLAGS)
    if pixels is not None and not _CV2_RGB:
      pixels = cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)
  if pixels is None:  # Not a JPEG, or one OpenCV cannot read: Pillow decides (and explains).
    return np.asarray(resize_square(decode_rgb(encoded), size))
  height, width = pixels.shape[:2]
  if (height, width) == (size, size):
    return pixels
  if (
    height <= size and width <= size
  ):  # Upscaling: no antialiasing involved; OpenCV matches Pillow.
    return cv2.resize(pixels, (size, size), interpolation=cv2.INTER_LINEAR)
  # Shrinking along some side: Pillow's antialiased filter, as torchvision on PIL images.
  return np.asarray(Image.fromarray(pixels).resize((size, size), Image.BILINEAR))


def crop_into(pixels: np.ndarray, top: int, left: int, flip: bool, out: np.ndarray) -> None:
  """Writes the crop of `pixels` at (top, left) of out's size into `out`, mirrored if `flip`.

  (OpenCV's flip: numpy's copy of a negatively strided uint8 view is ~20x slower.)
  """
  crop = pixels[top : top + out.shape[0], left : left + out.shape[1]]
  if flip and cv2 is not None:
    cv2.flip(crop, 1, dst=out)
  elif flip:
    out[...] = crop[:, ::-1]
  else:
    out[...] = crop


@dataclasses.dataclass(frozen=True)
class EvalPreprocess(grain.MapTransform):
  """Eval preprocessing: resize to SxS."""

  image_size: int

  def map(self, element: dict[str, Any]) -> dict[str, np.ndarray]:
    return {
      "image": decode_resized(element["image"], self.image_size),
      "label": np.int32(element["label"]),
    }


def normalize(images: jnp.ndarray, normalization: str, dtype=jnp.float32) -> jnp.ndarray:
  """uint8 NHWC images -> normalised float images (on the device, inside jit)."""
  if normalization not in NORMALIZATIONS:
    raise ValueError(f"normalization={normalization!r}; choose one of {sorted(NORMALIZATIONS)}.")
  mean, std = NORMALIZATIONS[normalization]
  scaled = images.astype(jnp.float32) / 255.0
  return ((scaled - jnp.asarray(mean)) / jnp.asarray(std)).astype(dtype)
