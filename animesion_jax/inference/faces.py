"""Anime face detection for whole illustrations (OpenCV cascade classifier).

The detector is nagadomi's `lbpcascade_animeface.xml` (MIT licence), the same kind of
Viola-Jones cascade that cropped the moeImouto faces. It is not bundled here: it ships inside
the PyPI package `danbooru-utility` (`pip install --no-deps danbooru-utility`), or can be given
by path. OpenCV must be 4.x (`opencv-python-headless<5`): 5.x has no CascadeClassifier.
"""

import dataclasses
import importlib.metadata
import os
import threading

import numpy as np
from PIL import Image

from animesion_jax.data import preprocess

CASCADE_FILE = "lbpcascade_animeface.xml"
_PACKAGES_WITH_CASCADE = ("danbooru-utility",)  # Looked at first; then every installed package.

_HOW_TO_GET_IT = (
  f"Install a package that ships {CASCADE_FILE} (`pip install --no-deps danbooru-utility`) or "
  f"download it from https://github.com/nagadomi/lbpcascade_animeface (MIT licence) and pass "
  "--cascade=PATH."
)


class CascadeNotFound(FileNotFoundError):
  """No usable face-detection cascade (or no usable OpenCV)."""


def _in_distribution(distribution: importlib.metadata.Distribution) -> str | None:
  for file in distribution.files or ():
    if file.name == CASCADE_FILE:
      path = str(distribution.locate_file(file))
      if os.path.isfile(path):
        return path
  return None


def find_cascade(path: str | None = None) -> str:
  """The cascade file: `path` if given, else the first one an installed package ships.

  Raises:
    CascadeNotFound: `path` does not exist, or no installed package ships the cascade.
  """
  if path:
    if not os.path.isfile(path):
      raise CascadeNotFound(f"--cascade={path!r} does not exist. {_HOW_TO_GET_IT}")
    return path
  for name in _PACKAGES_WITH_CASCADE:
    try:
      found = _in_distribution(importlib.metadata.distribution(name))
    except importlib.metadata.PackageNotFoundError:
      continue
    if found:
      return found
  for distribution in importlib.metadata.distributions():
    found = _in_distribution(distribution)
    if found:
      return found
  raise CascadeNotFound(
    f"The anime face detector {CASCADE_FILE} was not found in any installed "
    f"package. {_HOW_TO_GET_IT}"
  )


def _import_cv2():
  try:
    import cv2  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise CascadeNotFound(
      "Face detection needs OpenCV: pip install 'opencv-python-headless<5'."
    ) from None
  if not hasattr(cv2, "CascadeClassifier"):
    raise CascadeNotFound(
      f"OpenCV {cv2.__version__} has no CascadeClassifier (removed in 5.x): "
      "pip install 'opencv-python-headless<5'."
    )
  return cv2


@dataclasses.dataclass(frozen=True)
class Box:
  """A face box in pixels: left, top (inclusive), right, bottom (exclusive)."""

  left: int
  top: int
  right: int
  bottom: int

  def as_list(self) -> list[int]:
    return [self.left, self.top, self.right, self.bottom]


def square_crops(image: Image.Image, boxes: list[Box], image_size: int) -> np.ndarray:
  """uint8 [n, S, S, 3]: each box of `image` resized to S x S; the whole image when no boxes."""
  parts = [image.crop((b.left, b.top, b.right, b.bottom)) for b in boxes] or [image]
  return np.stack([np.asarray(preprocess.resize_square(part, image_size)) for part in parts])


class FaceDetector:
  """Finds faces in RGB images; safe to call from several threads."""

  def __init__(
    self,
    cascade_path: str,
    *,
    scale_factor: float = 1.1,
    min_neighbors: int = 5,
    min_size: int = 24,
    margin: float = 0.25,
  ):
    """Loads the cascade.

    Args:
      cascade_path: an OpenCV cascade XML file (see `find_cascade`).
      scale_factor: image pyramid step of the detector.
      min_neighbors: overlapping detections needed to accept a face (higher: fewer, surer).
      min_size: smallest face side, in pixels.
      margin: each box grows by this fraction of its side on every side (clipped to the image),
        so the crop shows the whole head as the training crops do.
    """
    self._cv2 = _import_cv2()
    self.cascade_path = cascade_path
    self.scale_factor = scale_factor
    self.min_neighbors = min_neighbors
    self.min_size = min_size
    self.margin = margin
    self._local = threading.local()  # CascadeClassifier objects are not shared across threads.
    self._classifier()  # Fail now, not in a worker thread, if the file is not a cascade.

  def _classifier(self):
    classifier = getattr(self._local, "classifier", None)
    if classifier is None:
      try:
        classifier = self._cv2.CascadeClassifier(self.cascade_path)
      except (self._cv2.error, SystemError):  # OpenCV's parse error (surfaces as SystemError).
        classifier = None
      if classifier is None or classifier.empty():
        raise CascadeNotFound(
          f"{self.cascade_path} is not an OpenCV cascade file. {_HOW_TO_GET_IT}"
        )
      self._local.classifier = classifier
    return classifier

  def detect(self, image: Image.Image) -> list[Box]:
    """Face boxes in reading order (top to bottom, then left to right)."""
    gray = self._cv2.equalizeHist(np.asarray(image.convert("L")))
    found = self._classifier().detectMultiScale(
      gray,
      scaleFactor=self.scale_factor,
      minNeighbors=self.min_neighbors,
      minSize=(self.min_size, self.min_size),
    )
    boxes = []
    for x, y, w, h in np.asarray(found, dtype=np.int64).reshape(-1, 4).tolist():
      grow_x, grow_y = round(w * self.margin), round(h * self.margin)
      boxes.append(
        Box(
          left=max(0, x - grow_x),
          top=max(0, y - grow_y),
          right=min(image.width, x + w + grow_x),
          bottom=min(image.height, y + h + grow_y),
        )
      )
    return sorted(boxes, key=lambda box: (box.top, box.left))


def create_detector(
  cascade: str | None = None, *, margin: float = 0.25, min_size: int = 24
) -> FaceDetector:
  """The detector of `cascade` (default: the one an installed package ships; see `find_cascade`).

  Raises:
    CascadeNotFound: no cascade file, not a cascade file, or no usable OpenCV.
  """
  return FaceDetector(find_cascade(cascade), margin=margin, min_size=min_size)
