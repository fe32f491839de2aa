"""Pictures from files -> the crops a model classifies (predict, enrol, organize).

Each file gives its whole picture, or with a face detector every face it finds
(`largest_face_only`: only the biggest, as enrolment wants one face per picture; `require_face`:
a file without a face is skipped rather than classified whole). Files are decoded in worker
threads, a bounded number ahead of the consumer, in input order. Files that cannot be decoded
(or have no face when one is required) are reported as {'file', 'error'} and skipped; any other
exception of a worker (a bug) is raised.
"""

import collections
from collections.abc import Iterator, Sequence
import concurrent.futures
import dataclasses
import os

from absl import logging
import numpy as np
import tqdm

from animesion_jax.inference import faces
from animesion_jax.inference import image_files


class NoFace(Exception):
  """The detector found no face in a file that needs one."""


NO_CHARACTER = "no character found by the head detector"

# What skips a file (reported) rather than stopping the run.
SKIPPED = (image_files.UnreadableImage, FileNotFoundError, NoFace)


@dataclasses.dataclass
class Crop:
  """One thing to classify: a whole image, or one face in it."""

  file: image_files.ImageFile
  face: int | None  # Index of the face in its image (reading order); None for the whole image.
  box: faces.Box | None
  pixels: np.ndarray | None  # uint8 [S, S, 3]; None: nothing to classify (no head found).
  note: str = ""


def file_crops(
  file: image_files.ImageFile,
  image_size: int,
  detector: faces.FaceDetector | None = None,
  *,
  require_face: bool = False,
  largest_face_only: bool = False,
) -> list[Crop]:
  """Decodes one file into its crops (safe to run in worker threads).

  Raises:
    image_files.UnreadableImage, FileNotFoundError: the file cannot be decoded.
    NoFace: `require_face` and the detector found none.
  """
  image = image_files.load_image(file.path, min_size=None if detector else image_size)
  boxes = detector.detect(image) if detector else []
  if detector and not boxes and require_face:
    raise NoFace("no face found")
  if largest_face_only and len(boxes) > 1:
    boxes = [max(boxes, key=lambda b: (b.right - b.left) * (b.bottom - b.top))]
  if detector and not boxes and not getattr(detector, "whole_image_fallback", True):
    # A head detector that finds no character: nothing to classify, the note says so.
    return [Crop(file, None, None, None, note=NO_CHARACTER)]
  pixels = faces.square_crops(image, boxes, image_size)
  if not boxes:
    note = "no face found; whole image classified" if detector else ""
    return [Crop(file, None, None, pixels[0], note=note)]
  return [Crop(file, i, box, pixels[i]) for i, box in enumerate(boxes)]


def read_ahead(
  files: Sequence[image_files.ImageFile],
  image_size: int,
  detector: faces.FaceDetector | None,
  pool: concurrent.futures.Executor,
  errors: list[dict[str, str]],
  in_flight: int,
  *,
  verbose: bool = False,
  **options: bool,
) -> Iterator[Crop]:
  """Crops of all files in order, decoding up to `in_flight` files ahead in `pool`.

  Skipped files are appended to `errors`. `verbose`: a progress bar (on a terminal) and a
  warning per skipped file. `options`: those of `file_crops`.
  """
  pending = collections.deque()
  queue = iter(files)
  with tqdm.tqdm(total=len(files), unit="image", disable=None if verbose else True) as progress:
    while True:
      while len(pending) < in_flight:
        file = next(queue, None)
        if file is None:
          break
        pending.append((file, pool.submit(file_crops, file, image_size, detector, **options)))
      if not pending:
        break
      file, future = pending.popleft()
      progress.update(1)
      try:
        crops = future.result()
      except SKIPPED as error:
        errors.append({"file": file.path, "error": str(error)})
        if verbose:
          logging.warning("Skipping %s: %s", file.path, error)
        continue
      yield from crops


@dataclasses.dataclass
class Crops:
  """Every crop of some files, in file order, and what could not be used."""

  files: list[image_files.ImageFile]  # The file of each crop.
  faces: list[int | None]  # Face index within its file (None: the whole picture).
  boxes: list[list[int] | None]
  pixels: np.ndarray  # uint8 [N, S, S, 3]
  problems: list[dict[str, str]]  # {'file', 'error'} of skipped files.


def read_crops(
  files: Sequence[image_files.ImageFile],
  image_size: int,
  detector: faces.FaceDetector | None = None,
  *,
  workers: int | None = None,
  **options: bool,
) -> Crops:
  """All crops of `files` at once (for enrol and organize); `options`: those of `file_crops`."""
  problems = []
  workers = workers or min(16, (os.cpu_count() or 2) + 2)
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    found = []
    for crop in read_ahead(files, image_size, detector, pool, problems, 2 * workers, **options):
      if crop.pixels is None:  # A head detector found no character: nothing to classify.
        problems.append({"file": crop.file.path, "error": crop.note})
      else:
        found.append(crop)
  pixels = np.zeros((0, image_size, image_size, 3), np.uint8)
  return Crops(
    files=[c.file for c in found],
    faces=[c.face for c in found],
    boxes=[c.box.as_list() if c.box else None for c in found],
    pixels=np.stack([c.pixels for c in found]) if found else pixels,
    problems=problems,
  )
