"""Reading the images people have: files and folders, any format Pillow reads, any mode.

Everything becomes an RGB image: transparency is composited on white (a transparent PNG or GIF
background would otherwise turn black), palette and grayscale images are expanded, 16-bit and
float images are scaled to 8 bits, animated GIF/WebP give their first frame, and a JPEG's EXIF
orientation is applied.
"""

from collections.abc import Sequence
import dataclasses
import io
import os
import struct
from typing import BinaryIO
import zlib

from etils import epath
import numpy as np
from PIL import Image
from PIL import ImageOps

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
_WHITE = (255, 255, 255, 255)
# What Pillow raises on foreign, damaged or cut-short bytes: the file cannot be read as an image.
# Anything else raised while reading is a bug and propagates.
DECODE_ERRORS = (
  OSError,
  SyntaxError,
  ValueError,
  EOFError,
  struct.error,
  zlib.error,
  Image.DecompressionBombError,
)


class UnreadableImage(ValueError):
  """A file that is not a readable image (foreign format, damaged or cut short)."""


@dataclasses.dataclass(frozen=True)
class ImageFile:
  path: str  # As found (input path, or input folder joined with the relative path).
  relative: str  # Name for outputs: 'file.png' or 'folder/sub/file.png'.


def find_images(inputs: Sequence[str]) -> tuple[list[ImageFile], list[tuple[str, str]]]:
  """Files named directly, plus image files (by extension) anywhere under named folders.

  Paths are local (relative as typed, `~`, absolute) or gs://...; outputs name them as given.

  Returns:
    (images in input order, folders sorted by name) and (input, problem) for inputs that do not
    exist or are folders without images.
  """
  found, problems = [], []
  for given in inputs:
    remote = "://" in given
    path = epath.Path(given if remote else os.path.expanduser(given))
    if path.is_dir():
      root = os.fspath(path).rstrip("/") if remote else os.path.normpath(os.fspath(path))
      here = []
      for folder, _, files in epath.Path(root).walk():
        folder = os.fspath(folder)
        if remote and "://" not in folder:  # gcsfs walks bucket/dir: the scheme is given back.
          folder = f"{root.split('://', 1)[0]}://{folder}"
        for name in files:
          if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."):
            file = os.fspath(epath.Path(folder) / name)
            relative = (
              file[len(root) :].lstrip("/")
              if remote
              else os.path.relpath(file, root).replace(os.sep, "/")
            )
            here.append((relative, file))
      # Top-down, sorted: a folder's files, then each subfolder's, by name.
      here.sort(key=lambda item: (tuple(item[0].split("/")[:-1]), item[0].split("/")[-1]))
      name = root.rsplit("/", 1)[-1] or "images"
      found += [ImageFile(file, f"{name}/{relative}") for relative, file in here]
      if not here:
        problems.append((given, f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in this folder"))
    elif path.is_file():
      found.append(ImageFile(os.fspath(path) if not remote else given, path.name))
    else:
      problems.append((given, "no such file or folder"))
  return found, problems


def to_rgb(image: Image.Image) -> Image.Image:
  """Any Pillow image -> RGB, compositing transparency on white."""
  if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
    pixels = np.asarray(image, dtype=np.float64)
    top = 65535.0 if image.mode.startswith("I;16") else max(float(pixels.max()), 255.0)
    image = Image.fromarray(np.clip(pixels * 255.0 / top, 0, 255).astype(np.uint8), "L")
  has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
    image.mode in ("P", "L", "RGB") and "transparency" in image.info
  )
  if has_alpha:
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, _WHITE)
    background.alpha_composite(rgba)
    return background.convert("RGB")
  return image if image.mode == "RGB" else image.convert("RGB")


def load_image(path: str | os.PathLike | BinaryIO, min_size: int | None = None) -> Image.Image:
  """Reads one image file as RGB (first frame of animations, EXIF orientation applied).

  Args:
    path: the file (or an open binary file).
    min_size: if given, JPEGs may be decoded at a reduced scale whose sides are still at least
      this (much faster for large photos that are resized anyway).

  Raises:
    FileNotFoundError: no such file.
    UnreadableImage: the file is not a readable image (the message has Pillow's reason).
  """
  if isinstance(path, str) and "://" in path:  # gs://...: Pillow opens local files only.
    path = io.BytesIO(epath.Path(path).read_bytes())
  try:
    with Image.open(path) as image:
      if getattr(image, "n_frames", 1) > 1:
        image.seek(0)
      if min_size and image.format == "JPEG":
        image.draft("RGB", (min_size, min_size))
      image = ImageOps.exif_transpose(image)
      image.load()
      return to_rgb(image)
  except FileNotFoundError:
    raise
  except DECODE_ERRORS as error:
    raise UnreadableImage(f"{type(error).__name__}: {error}") from error
