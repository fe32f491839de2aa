"""TFDS builder for `dafre`: DAF:re, Danbooru Animation Faces revamped.

3,263 characters, 463,437 images in the paper's train/val/test split files
(322,947 / 46,050 / 94,440). Manual download only (see
MANUAL_DOWNLOAD_INSTRUCTIONS); build with

  tfds build tfds_builders/dafre --manual_dir=DIR                 # faces
  tfds build tfds_builders/dafre --config=full --manual_dir=DIR   # fullMin256

DIR holds the download as extracted (faces/ and labels/) or the layout the
original Animesion code read (images under data/, the label files beside it).

Images are copied as the original bytes after a structural check (JPEG/PNG
header and end marker, no pixel decode), reading on a thread pool in file
order so the records are the same on every run; only images that would not
decode to RGB or grayscale (CMYK, palette, alpha) are re-encoded, as RGB PNG. Rows whose file is missing,
truncated or corrupt, out-of-range class ids, duplicate rows and blank lines
are skipped, counted in the build log and stored in the dataset's metadata
under 'build_report'; examples per class of each split under 'class_counts'.
"""

from __future__ import annotations

from collections.abc import Iterator
import dataclasses
import itertools
from typing import Any

from etils import epath
import tensorflow_datasets as tfds

from tfds_builders.common import build_report
from tfds_builders.common import class_counts
from tfds_builders.common import file_format as file_format_lib
from tfds_builders.common import image_check
from tfds_builders.common import label_csv
from tfds_builders.common import manual_data
from tfds_builders.common import parallel

LABELS_DIR = "labels"
# The original Animesion code's layout: DIR/data/<NNNN>/<id>.jpg with the
# label files directly in DIR (its `danbooruFaces` dataset class).
ANIMESION_IMAGE_DIR = "data"
# Layout names, as recorded in the dataset's metadata.
RELEASE = "release"
ANIMESION = "animesion"
CLASS_FILE = "classid_classname.csv"
SPLIT_FILES = {"train": "train.csv", "validation": "val.csv", "test": "test.csv"}
ARCHIVES = ("dafre_faces.tar.gz", "dafre_full.tar.gz", "labels.tar.gz")
HF_DATASET = "xedwin23x/DAFB"
# Threads reading files; reads release the GIL and hide disk latency.
NUM_THREADS = 16
# Modes every decoder (TF, OpenCV, Pillow via TFDS) turns into 3 channels.
# Anything else (CMYK or palette JPEG/PNG, alpha) is re-encoded, so that the
# `image` feature always decodes to RGB.
_DECODES_TO_RGB = ("RGB", "L")

_WHERE_TO_GET = (
  f"the Hugging Face dataset {HF_DATASET} "
  f"(https://huggingface.co/datasets/{HF_DATASET}): dafre_faces.tar.gz "
  "(or dafre_full.tar.gz) and labels.tar.gz, extracted into DIR"
)

_EXPECTED_LAYOUT = """\
  DIR/faces/<NNNN>/<id>.jpg          (dafre_faces.tar.gz; config 'faces')
  DIR/fullMin256/<NNNN>/<id>.jpg     (dafre_full.tar.gz; config 'full')
  DIR/labels/classid_classname.csv   (labels.tar.gz: class_id,class_name)
  DIR/labels/train.csv, val.csv, test.csv   (class_id,<NNNN>/<id>.jpg)
  or, as the original Animesion code read it (config 'faces'):
  DIR/data/<NNNN>/<id>.jpg + DIR/classid_classname.csv, DIR/train.csv,
      DIR/val.csv, DIR/test.csv
  DIR may also be a subdirectory of the manual directory."""

_DESCRIPTION = """\
DAF:re (Danbooru Animation Faces, revamped): 463,437 head crops (128x128
JPEG) of 3,263 anime characters from Danbooru, long-tailed (mean/median/std
of images per class 142 / 48 / 359), with the Animesion paper's split:
train 322,947, validation 46,050, test 94,440; every class appears in every
split. Splits, class ids and class names come from the published label files.

Features: `image` (the original encoded bytes; only CMYK, palette or alpha
images are re-encoded as RGB PNG), `label` (the
character's Danbooru tag), `file_name` ('<NNNN>/<id>.jpg', as in the split
files).
"""

_CITATION = """\
@article{rios2021dafre,
  title={{DAF:re}: A Challenging, Crowd-Sourced, Large-Scale, Long-Tailed
         Dataset For Anime Character Recognition},
  author={Rios, Edwin Arkel and Cheng, Wen-Huang and Lai, Bo-Cheng},
  journal={arXiv preprint arXiv:2101.08674},
  year={2021}
}
"""


@dataclasses.dataclass
class DafreConfig(tfds.core.BuilderConfig):
  """Which image folder to read.

  Attributes:
    image_dir: folder beside labels/ holding <NNNN>/<id>.jpg.
  """

  image_dir: str = "faces"


class Builder(tfds.core.GeneratorBasedBuilder):
  """DatasetBuilder for DAF:re."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
    DafreConfig(
      name="faces",
      image_dir="faces",
      description="128x128 head crops (faces/), the paper's dataset.",
    )
  ]
  # `tfds build` without --config builds every config in BUILDER_CONFIGS, and
  # 'full' needs a download of its own (dafre_full.tar.gz), so it is kept out
  # of that list and built only when asked for: --config=full.
  EXTRA_CONFIGS = [
    DafreConfig(
      name="full",
      image_dir="fullMin256",
      description="Whole illustrations, short side 256 (fullMin256/).",
    )
  ]
  DEFAULT_BUILDER_CONFIG_NAME = "faces"
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Download {_WHERE_TO_GET}. Expected layout (DIR is --manual_dir):
{_EXPECTED_LAYOUT}
"""

  @classmethod
  def get_builder_config(
    cls, name: str, version: str | tfds.core.Version | None = None
  ) -> tfds.core.BuilderConfig | None:
    """Looks `name` up in BUILDER_CONFIGS, then in EXTRA_CONFIGS."""
    found = super().get_builder_config(name, version)
    return found or next((c for c in cls.EXTRA_CONFIGS if c.name == name), None)

  def __init__(self, *, file_format: str | None = None, **kwargs: Any):
    super().__init__(file_format=file_format, **kwargs)
    file_format_lib.default_to_array_record(self, file_format)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      description=_DESCRIPTION,
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
          # Names come from labels/classid_classname.csv.
          "label": tfds.features.ClassLabel(),
          "file_name": tfds.features.Text(doc="<NNNN>/<id>.jpg, as in the split files"),
        }
      ),
      supervised_keys=("image", "label"),
      homepage=f"https://huggingface.co/datasets/{HF_DATASET}",
      citation=_CITATION,
      metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    labels, image_dir, layout = self._locate(dl_manager)
    names = label_csv.read_class_names(labels / CLASS_FILE)
    self.info.features["label"].names = names
    reports = {split: build_report.BuildReport(f"dafre/{split}") for split in SPLIT_FILES}
    rows = {
      split: label_csv.read_split(labels / file_name, len(names), reports[split])
      for split, file_name in SPLIT_FILES.items()
    }
    _note_overlaps(rows, reports)
    self.info.metadata["layout"] = layout
    self.info.metadata["image folder"] = str(image_dir)
    self.info.metadata["build_report"] = {}
    return {
      split: self._generate_examples(split, image_dir, rows[split], reports[split])
      for split in SPLIT_FILES
    }

  def _layouts(self, root: epath.Path) -> list[tuple[epath.Path, epath.Path, str]]:
    """(label folder, image folder, layout) pairs this config reads in `root`."""
    found = [(root / LABELS_DIR, root / self.builder_config.image_dir, RELEASE)]
    if self.builder_config.name == self.DEFAULT_BUILDER_CONFIG_NAME:
      found.append((root, root / ANIMESION_IMAGE_DIR, ANIMESION))
    return found

  def _locate(
    self, dl_manager: tfds.download.DownloadManager
  ) -> tuple[epath.Path, epath.Path, str]:
    """The label folder, the image folder and the name of their layout."""
    manual_dir, looked_in = manual_data.manual_dir(dl_manager)
    image_dir = self.builder_config.image_dir
    roots = manual_data.candidate_roots(manual_dir) if manual_dir else []
    for root in roots:
      for labels, images, layout in self._layouts(root):
        if (labels / CLASS_FILE).is_file() and images.is_dir():
          missing = [name for name in SPLIT_FILES.values() if not (labels / name).is_file()]
          if missing:
            raise self._missing(looked_in, f"{labels} lacks {', '.join(missing)}.")
          return labels, images, layout
    details = []
    for root in roots:
      if (root / CLASS_FILE).is_file() and (root / ANIMESION_IMAGE_DIR).is_dir():
        details.append(
          f"Found {root / ANIMESION_IMAGE_DIR}/ and the label files beside "
          "it (the original Animesion layout), which only config 'faces' "
          f"reads; config '{self.builder_config.name}' reads "
          f"{LABELS_DIR}/ and {image_dir}/."
        )
      elif (root / CLASS_FILE).is_file():
        details.append(f"Found {root / CLASS_FILE} but no {root / ANIMESION_IMAGE_DIR}/ beside it.")
      if (root / LABELS_DIR / CLASS_FILE).is_file():
        details.append(
          f"Found {root / LABELS_DIR} but no {root / image_dir}/"
          f" (config '{self.builder_config.name}' reads "
          f"{image_dir}/)."
        )
      elif (root / image_dir).is_dir():
        details.append(f"Found {root / image_dir}/ but no {root / LABELS_DIR / CLASS_FILE}.")
      for archive in ARCHIVES:
        if (root / archive).is_file():
          details.append(
            f"Found {root / archive}, which must be extracted "
            f"first: tar -xzf {root / archive} -C {root}"
          )
    raise self._missing(looked_in, "\n".join(details))

  def _missing(self, looked_in: str, detail: str) -> Exception:
    config = self.builder_config.name
    return manual_data.missing_data_error(
      "dafre",
      looked_in,
      _WHERE_TO_GET,
      _EXPECTED_LAYOUT,
      detail=detail,
      config="" if config == self.DEFAULT_BUILDER_CONFIG_NAME else config,
    )

  def _generate_examples(
    self,
    split: str,
    image_root: epath.Path,
    rows: list[label_csv.LabeledPath],
    report: build_report.BuildReport,
  ) -> Iterator[tuple[str, dict]]:
    """Yields (relative path, example), reading files on a thread pool."""
    checked = parallel.ordered_map(
      lambda row: image_check.read_and_check(image_root / row.path), rows, NUM_THREADS
    )
    converted = []
    counter = class_counts.SplitCounter()
    for row, result in zip(rows, checked):
      if result.problem:
        report.skip(result.problem, f"{row.where}: {row.path} ({result.detail})")
        continue
      data = result.data
      if result.header.mode not in _DECODES_TO_RGB:
        data = image_check.to_rgb_png(data)
        converted.append(f"{row.path} ({result.header.mode})")
      report.kept += 1
      counter.add(row.class_id)
      yield (row.path, {"image": data, "label": row.class_id, "file_name": row.path})
    if converted:
      report.note("re-encoded as RGB PNG", f"{len(converted)}: {', '.join(converted[:10])}")
    report.log()
    self.info.metadata["build_report"][split] = report.as_dict()
    counter.store(self.info, split, self.info.features["label"].num_classes)


def _note_overlaps(
  rows: dict[str, list[label_csv.LabeledPath]], reports: dict[str, build_report.BuildReport]
) -> None:
  """Notes files listed in two splits; kept, as the split files say."""
  paths = {split: {row.path for row in split_rows} for split, split_rows in rows.items()}
  for first, second in itertools.combinations(paths, 2):
    shared = sorted(paths[first] & paths[second])
    if shared:
      note = f"{len(shared)} files, e.g. {', '.join(shared[:3])}"
      reports[first].note(f"also listed in {second}", note)
      reports[second].note(f"also listed in {first}", note)
