"""Uploaded bytes -> the crops to classify, with a clear answer for every kind of bad file.

Uploads are decoded from memory (nothing is written to disk) by the same reader as `predict`
(`image_files.load_image`: any mode, first frame of animations, EXIF orientation, transparency
on white), after a header-only look that refuses decompression bombs before any pixel is decoded.
"""

import dataclasses
import io

import numpy as np
from PIL import Image
from PIL import UnidentifiedImageError

from animesion_jax.inference import crops as crops_lib
from animesion_jax.inference import faces
from animesion_jax.inference import image_files
from tfds_builders.synthetic_characters import drawing
from tfds_builders.synthetic_characters import synthetic_characters_dataset_builder as synthetic

_FORMATS = "JPEG, PNG, WebP, GIF, BMP or TIFF"
_TEST_STREAM = 3  # The synthetic builder's random stream of its test split.


@dataclasses.dataclass(frozen=True)
class Limits:
  """What one upload may be."""

  max_upload_bytes: int = 16 * 2**20  # Largest request body.
  max_pixels: int = 40_000_000  # Largest picture (width x height) decoded.
  max_faces: int = 16  # Most faces classified per picture (the largest ones).


class BadPicture(ValueError):
  """An upload that cannot be classified; `status` is the HTTP status to answer."""

  def __init__(self, status: int, message: str):
    super().__init__(message)
    self.status = status
    self.message = message


@dataclasses.dataclass
class Picture:
  """A decoded upload and the crops to classify."""

  image: Image.Image  # RGB.
  boxes: list[list[int]]  # [x, y, w, h] per crop (the whole picture when `whole`).
  crops: np.ndarray  # uint8 [n, S, S, 3].
  whole: bool  # True: no face box, the whole picture is classified.
  notes: list[str]


def _megapixels(pixels: int) -> str:
  return f"{pixels / 1e6:.0f} megapixels" if pixels >= 1e6 else f"{pixels} pixels"


def read_picture(
  data: bytes, image_size: int, detector: faces.FaceDetector | None, limits: Limits
) -> Picture:
  """Decodes an upload and cuts out its faces (or takes the whole picture).

  Raises:
    BadPicture: empty, not a picture, too many pixels, or damaged (400/413/415).
  """
  if not data:
    raise BadPicture(400, "The file is empty (0 bytes). Choose a picture file.")
  try:
    with Image.open(io.BytesIO(data)) as probe:  # Reads the header only.
      width, height = probe.size
      frames = getattr(probe, "n_frames", 1)
  except UnidentifiedImageError:
    raise BadPicture(
      415, f"This file is not a picture that can be read: send a {_FORMATS} file."
    ) from None
  except Image.DecompressionBombError as error:  # Over twice Pillow's own limit.
    raise BadPicture(
      413,
      f"This picture has far too many pixels to decode ({error}); the limit "
      f"is {_megapixels(limits.max_pixels)}.",
    ) from None
  except image_files.DECODE_ERRORS as error:  # A damaged header.
    raise BadPicture(
      400, f"The picture could not be read: the file is damaged or cut short ({error})."
    ) from None
  if width * height > limits.max_pixels:
    raise BadPicture(
      413,
      f"The picture is {width}x{height} ({_megapixels(width * height)}); "
      f"the limit is {_megapixels(limits.max_pixels)}. Scale it down and try "
      "again.",
    )
  try:
    image = image_files.load_image(io.BytesIO(data), min_size=None if detector else image_size)
  except image_files.UnreadableImage as error:
    raise BadPicture(
      400, f"The picture could not be decoded: the file is damaged or cut short ({error})."
    ) from None
  notes = ["animated picture: its first frame was classified"] if frames > 1 else []
  boxes = detector.detect(image) if detector else []
  if len(boxes) > limits.max_faces:
    notes.append(f"{len(boxes)} faces found; the {limits.max_faces} largest were classified")
    largest = sorted(boxes, key=lambda b: (b.right - b.left) * (b.bottom - b.top), reverse=True)
    boxes = sorted(largest[: limits.max_faces], key=lambda box: (box.top, box.left))
  if detector and not boxes and not getattr(detector, "whole_image_fallback", True):
    # A head detector found no character: no box, nothing to classify, and the page says so.
    notes.append(crops_lib.NO_CHARACTER)
    return Picture(image, [], np.zeros((0, image_size, image_size, 3), np.uint8), False, notes)
  crops = faces.square_crops(image, boxes, image_size)
  if not boxes:
    if detector:
      notes.append("no face found: the whole picture was classified")
    return Picture(image, [[0, 0, image.width, image.height]], crops, True, notes)
  return Picture(
    image, [[b.left, b.top, b.right - b.left, b.bottom - b.top] for b in boxes], crops, False, notes
  )


def png_bytes(image: Image.Image) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, format="PNG")
  return buffer.getvalue()


def examples(class_names: list[str], count: int = 6) -> list[tuple[str, bytes]]:
  """(true name, PNG) of test pictures of the synthetic dataset, for models that know them.

  The pictures are drawn exactly as the synthetic builder draws its test split (seed 0), so they
  are ones the model never trained on. Empty for models trained on other data.
  """
  known = set(class_names)
  labels = [label for label, character in enumerate(drawing.CHARACTERS) if character.name in known]
  if len(labels) < count:
    return []
  chosen = [labels[i * len(labels) // count] for i in range(count)]
  return [
    (
      drawing.CHARACTERS[label].name,
      png_bytes(
        Image.fromarray(
          drawing.draw_character(
            drawing.CHARACTERS[label],
            drawing.image_rng(0, _TEST_STREAM, label, 0),
            synthetic.IMAGE_SIZE,
          )
        )
      ),
    )
    for label in chosen
  ]
