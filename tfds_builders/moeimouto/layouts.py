"""The three layouts in which moeImouto is distributed, and how to find them.

1. nagadomi's zip `animeface-character-dataset.zip`, whose class folders are
   under `animeface-character-dataset/thumb/`;
2. the Kaggle copy, class folders directly under `moeimouto-faces/`;
3. the folder prepared by the original Animesion code: class folders under
   `data/`, beside `train.csv`, `test.csv` and `classid_classname.csv`.

Class folders are named `<NNN>_<name>` and hold `face_*.png` images next to
non-image files (`ignore`, `color.csv`); about 30 of the 203 folders in
nagadomi's zip hold no image at all. The Animesion split files list paths
relative to the folder of class folders (`190_kawashima_ami/face_1_2_3.png`),
so they apply to the images of any layout; when they are found they define
the splits and class ids, whichever layout the images come from.

The published split files (from the Animesion repository, MIT licence; they
exist only in its history) ship with the builder in `paper_split/`, the split
files gzipped, so that nagadomi's zip or the Kaggle copy alone gives the
paper's split.
"""

from __future__ import annotations

import dataclasses

from etils import epath

from tfds_builders.common import build_report
from tfds_builders.common import manual_data

NAGADOMI_URL = (
  "http://www.nurs.or.jp/~nagadomi/animeface-character-dataset/data/animeface-character-dataset.zip"
)
NAGADOMI_ZIP = "animeface-character-dataset.zip"
NAGADOMI_DIR = "animeface-character-dataset"
KAGGLE_ZIP = "moeimouto-faces.zip"
KAGGLE_DIR = "moeimouto-faces"
ANIMESION_IMAGE_DIR = "data"
CLASS_FILE = "classid_classname.csv"
SPLIT_FILES = {"train": "train.csv", "test": "test.csv"}
# The paper's split files as published, shipped with the builder (the split
# files gzipped; `gunzip -c` gives the published bytes).
PAPER_SPLIT_DIR = epath.Path(__file__).parent / "paper_split"
PAPER_SPLIT_FILES = {split: f"{name}.gz" for split, name in SPLIT_FILES.items()}
# Images in the paper's split files, and the 2 non-RGB images the paper
# dropped before splitting (not listed in its split files).
PAPER_NUM_IMAGES = 14_395
PAPER_DROPPED = ("144_kotegawa_yui/face_272_204_0.png", "144_kotegawa_yui/face_284_227_1.png")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

# Layout names, as recorded in the build report.
ANIMESION = "animesion"
NAGADOMI = "nagadomi"
KAGGLE = "kaggle"

# Share of each class's images that goes to train (the paper's 80/20 cut).
TRAIN_FRACTION = 0.8


@dataclasses.dataclass(frozen=True)
class Found:
  """What a manual directory holds.

  Attributes:
    csv_dir: folder with the Animesion split and class files, if any.
    image_root: folder of class folders, if an extracted copy was found.
    layout: ANIMESION, NAGADOMI or KAGGLE: where `image_root` comes from.
    archive: a zip of nagadomi's or the Kaggle copy, for when no extracted
      copy was found.
  """

  csv_dir: epath.Path | None = None
  image_root: epath.Path | None = None
  layout: str | None = None
  archive: epath.Path | None = None


def has_split_files(folder: epath.Path) -> bool:
  return all((folder / name).is_file() for name in (CLASS_FILE, *SPLIT_FILES.values()))


def image_root_in(folder: epath.Path) -> tuple[epath.Path, str] | None:
  """The folder of class folders in an extracted copy at `folder`, if any."""
  candidates = (
    (folder / NAGADOMI_DIR / "thumb", NAGADOMI),
    (folder / "thumb", NAGADOMI),
    (folder / KAGGLE_DIR, KAGGLE),
  )
  for path, layout in candidates:
    if path.is_dir():
      return path, layout
  if folder.name == KAGGLE_DIR:
    return folder, KAGGLE
  return None


def find(manual_dir: epath.Path) -> Found:
  """Looks for every layout in `manual_dir` and its immediate subfolders.

  The Animesion split files are used wherever they are. Images come, in order
  of preference, from the Animesion `data/` folder beside them, an extracted
  copy of nagadomi's zip, an extracted Kaggle copy, or one of the two zips.
  """
  roots = manual_data.candidate_roots(manual_dir)
  csv_dir = next((r for r in roots if has_split_files(r)), None)
  if csv_dir is not None and (csv_dir / ANIMESION_IMAGE_DIR).is_dir():
    return Found(csv_dir, csv_dir / ANIMESION_IMAGE_DIR, ANIMESION)
  extracted = [found for r in roots if (found := image_root_in(r))]
  extracted.sort(key=lambda found: found[1] != NAGADOMI)
  if extracted:
    image_root, layout = extracted[0]
    return Found(csv_dir, image_root, layout)
  for name in (NAGADOMI_ZIP, KAGGLE_ZIP):
    for root in roots:
      if (root / name).is_file():
        return Found(csv_dir, archive=root / name)
  return Found(csv_dir)


def list_class_folders(
  image_root: epath.Path, report: build_report.BuildReport
) -> dict[str, list[str]]:
  """Maps each class folder holding images to its image names, all sorted.

  Files that are not images (by extension), files directly in `image_root`,
  nested folders and class folders without any image are ignored and counted
  in `report`.
  """
  classes = {}
  for folder in sorted(image_root.iterdir(), key=lambda p: p.name):
    if not folder.is_dir():
      report.ignore("file outside class folders")
      continue
    images = []
    for entry in folder.iterdir():
      if entry.is_dir():
        report.ignore("folder inside a class folder")
      elif entry.suffix.lower() in IMAGE_SUFFIXES:
        images.append(entry.name)
      else:
        report.ignore("non-image file")
    if images:
      classes[folder.name] = sorted(images)
    else:
      report.ignore("class folder without images")
  return classes


def split_by_rule(files_by_class: dict[str, list[str]]) -> dict[str, list]:
  """The documented replacement for the paper's unreproducible split.

  Classes in name order get ids 0, 1, ...; within a class, files in name
  order, the first int(n * 0.8) go to train and the rest to test (the
  paper's rule, applied to sorted rather than filesystem order).

  Args:
    files_by_class: class folder name -> usable image names, sorted.

  Returns:
    {'train': [(class_id, 'class/file'), ...], 'test': [...]}
  """
  splits = {"train": [], "test": []}
  for class_id, name in enumerate(sorted(files_by_class)):
    files = sorted(files_by_class[name])
    cut = int(len(files) * TRAIN_FRACTION)
    splits["train"] += [(class_id, f"{name}/{f}") for f in files[:cut]]
    splits["test"] += [(class_id, f"{name}/{f}") for f in files[cut:]]
  return splits
