"""Pictures from files -> crops, whose logits and embeddings `Recognizer.embed` gives (for
enrol and organize).

Each file gives its whole picture, or with a face detector every face it finds
(`largest_face_only`: only the biggest, as enrolment wants one face per picture). Files that
cannot be decoded, or where the detector finds no face when faces are required, are reported and
skipped.
"""

import dataclasses

import numpy as np

from animesion_jax.inference import faces
from animesion_jax.inference import image_files


@dataclasses.dataclass
class Crops:
  """What was cut from the files, in file order, and what could not be used."""

  files: list[image_files.ImageFile]  # The file of each crop.
  faces: list[int | None]  # Face index within its file (None: the whole picture).
  boxes: list[list[int] | None]
  pixels: np.ndarray  # uint8 [N, S, S, 3]
  problems: list[dict[str, str]]  # {'file', 'error'} of skipped files.


def read_crops(
  files: list[image_files.ImageFile],
  image_size: int,
  detector: faces.FaceDetector | None = None,
  *,
  require_face: bool = False,
  largest_face_only: bool = False,
) -> Crops:
  crops = Crops([], [], [], np.zeros((0, image_size, image_size, 3), np.uint8), [])
  pixels = []
  for file in files:
    try:
      image = image_files.load_image(file.path, min_size=None if detector else image_size)
    except (image_files.UnreadableImage, FileNotFoundError) as error:
      crops.problems.append({"file": file.path, "error": str(error)})
      continue
    boxes = detector.detect(image) if detector else []
    if detector and not boxes and require_face:
      crops.problems.append({"file": file.path, "error": "no face found"})
      continue
    if largest_face_only and len(boxes) > 1:
      boxes = [max(boxes, key=lambda b: (b.right - b.left) * (b.bottom - b.top))]
    cut = faces.square_crops(image, boxes, image_size)
    for i, piece in enumerate(cut):
      crops.files.append(file)
      crops.faces.append(i if boxes else None)
      crops.boxes.append(boxes[i].as_list() if boxes else None)
      pixels.append(piece)
  if pixels:
    crops.pixels = np.stack(pixels)
  return crops
