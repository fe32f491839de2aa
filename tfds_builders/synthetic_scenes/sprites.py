"""Where the characters of a scene come from: the synthetic characters, or real head crops.

Each source is an rng -> composer.Sprite function; the builder pastes what it returns.
"""

from __future__ import annotations

import dataclasses
import io

from etils import epath
import numpy as np
from PIL import Image

from tfds_builders.common import build_report
from tfds_builders.common import image_check
from tfds_builders.common import label_csv
from tfds_builders.synthetic_characters import drawing

from . import composer

# A point of the synthetic characters' canvas inside the shirt for every hair style.
_SHIRT_PIXEL = (27, 126)
# Crops drawn before giving up when every one is damaged.
_DRAWS_PER_SPRITE = 20


@dataclasses.dataclass(frozen=True)
class SyntheticSprites:
  """The synthetic characters (drawing.CHARACTERS, or others), one uniformly at random."""

  characters: tuple[drawing.Character, ...] = drawing.CHARACTERS

  def names(self) -> list[str]:
    return [c.name for c in self.characters]

  def __call__(self, rng: np.random.Generator) -> composer.Sprite:
    label = int(rng.integers(len(self.characters)))
    layer = drawing.character_layer(self.characters[label], rng)
    return composer.Sprite(label, layer, tuple(layer.getpixel(_SHIRT_PIXEL)[:3]))


@dataclasses.dataclass(frozen=True)
class CropFolderSprites:
  """Real head crops (e.g. DAF:re's faces/), one uniformly at random; each crop's whole picture
  is its head box, as the dataset's crops were cut."""

  paths: tuple[str, ...]
  labels: tuple[int, ...]
  class_names: tuple[str, ...]

  def names(self) -> list[str]:
    return list(self.class_names)

  def __call__(self, rng: np.random.Generator) -> composer.Sprite:
    # Damaged files (truncated, corrupt, unreadable) are passed over for another draw.
    for _ in range(_DRAWS_PER_SPRITE):
      index = int(rng.integers(len(self.paths)))
      checked = image_check.read_and_check(epath.Path(self.paths[index]), decode=True)
      if checked.problem is None:
        picture = Image.open(io.BytesIO(checked.data)).convert("RGBA")
        return composer.Sprite(self.labels[index], picture)
    raise ValueError(
      f"{_DRAWS_PER_SPRITE} crops drawn in a row were damaged (the last: {self.paths[index]}, "
      f"{checked.problem}); check the download."
    )


# DAF:re's download, as tfds_builders/dafre reads it: faces/<NNNN>/<id>.jpg, labels/*.csv.
DAFRE_SPLIT_FILES = {"train": "train.csv", "validation": "val.csv", "test": "test.csv"}


def dafre_sprites(root: epath.Path, split: str) -> CropFolderSprites:
  """The head crops of one DAF:re split under `root` (the folder holding faces/ and labels/).

  Raises:
    FileNotFoundError: the layout is not there (the message names what is missing).
  """
  root = epath.Path(root)
  labels_dir, faces = root / "labels", root / "faces"
  for needed in (
    labels_dir / "classid_classname.csv",
    labels_dir / DAFRE_SPLIT_FILES[split],
    faces,
  ):
    if not needed.exists():
      raise FileNotFoundError(
        f"{needed} is missing: the DAF:re scenes need DAF:re's download as extracted "
        "(DIR/faces/<NNNN>/<id>.jpg and DIR/labels/*.csv; see tfds_builders/dafre)."
      )
  names = label_csv.read_class_names(labels_dir / "classid_classname.csv")
  rows = label_csv.read_split(
    labels_dir / DAFRE_SPLIT_FILES[split],
    len(names),
    build_report.BuildReport(f"dafre scenes/{split}"),
  )
  rows = [row for row in rows if (faces / row.path).exists()]
  if not rows:
    raise FileNotFoundError(f"No crop of {labels_dir / DAFRE_SPLIT_FILES[split]} is in {faces}.")
  return CropFolderSprites(
    tuple(str(faces / row.path) for row in rows), tuple(row.class_id for row in rows), tuple(names)
  )
