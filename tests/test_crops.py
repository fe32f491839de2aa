"""inference/crops.py: the one reader of crops from files (predict, enrol, organize)."""

import numpy as np
from PIL import Image

from animesion_jax.inference import crops
from animesion_jax.inference import faces
from animesion_jax.inference import image_files


class _BoxesByWidth:
  """A stand-in detector: pictures 60 px wide have two faces (the second larger), 50 px none."""

  def detect(self, image):
    if image.width == 60:
      return [faces.Box(0, 0, 10, 10), faces.Box(20, 20, 50, 50)]
    return []


def _files(tmp_path):
  paths = []
  for name, width, colour in [("two.png", 60, (200, 0, 0)), ("none.png", 50, (0, 200, 0))]:
    Image.new("RGB", (width, 60), colour).save(tmp_path / name)
    paths.append(name)
  (tmp_path / "broken.png").write_bytes(b"not a picture")
  paths.insert(1, "broken.png")
  return [image_files.ImageFile(str(tmp_path / p), p) for p in paths]


def test_whole_pictures_in_file_order_and_broken_files_reported(tmp_path):
  found = crops.read_crops(_files(tmp_path), 16, workers=2)
  assert [f.relative for f in found.files] == ["two.png", "none.png"]
  assert found.faces == [None, None] and found.boxes == [None, None]
  assert found.pixels.shape == (2, 16, 16, 3) and found.pixels.dtype == np.uint8
  np.testing.assert_array_equal(found.pixels[0], np.full((16, 16, 3), (200, 0, 0), np.uint8))
  assert [p["file"] for p in found.problems] == [str(tmp_path / "broken.png")]


def test_faces_each_or_the_largest_and_files_without_one(tmp_path):
  files = _files(tmp_path)
  every = crops.read_crops(files, 16, _BoxesByWidth())
  assert [(f.relative, face) for f, face in zip(every.files, every.faces)] == [
    ("two.png", 0),
    ("two.png", 1),
    ("none.png", None),  # No face: the whole picture.
  ]
  assert every.boxes[:2] == [[0, 0, 10, 10], [20, 20, 50, 50]]
  enrol = crops.read_crops(files, 16, _BoxesByWidth(), require_face=True, largest_face_only=True)
  assert enrol.boxes == [[20, 20, 50, 50]] and enrol.faces == [0]
  assert {p["file"]: p["error"] for p in enrol.problems}[str(tmp_path / "none.png")] == (
    "no face found"
  )
  # predict's notes: a picture without a face says it was classified whole.
  (whole,) = crops.file_crops(files[2], 16, _BoxesByWidth())
  assert whole.note == "no face found; whole image classified"
