"""TFDS builder for `moeimouto`: nagadomi's anime face character dataset.

173 characters, 14,395 face crops (~160x160 PNG) once the 2 non-RGB images
are dropped, as in the Animesion paper. Any of the three layouts described in
`layouts.py` is accepted and detected; nagadomi's zip is downloaded when
nothing is found in the manual directory and the network allows.

  tfds build tfds_builders/moeimouto --manual_dir=DIR   # both configs
  tfds build tfds_builders/moeimouto --config=drop_non_rgb --manual_dir=DIR

The default config gives the paper's split from nagadomi's zip alone: the
published Animesion split files ship with the builder (`paper_split/`).
Images are stored as the original PNG bytes (only non-RGB images are
re-encoded, and only by the `convert_to_rgb` config). Everything skipped,
dropped or ignored is counted in the build log and stored in the dataset's
metadata under 'build_report'; examples per class of each split under
'class_counts'.
"""

from __future__ import annotations

from collections.abc import Iterator
import dataclasses
from typing import Any

from absl import logging
from etils import epath
import tensorflow_datasets as tfds

from tfds_builders.common import build_report
from tfds_builders.common import class_counts
from tfds_builders.common import file_format as file_format_lib
from tfds_builders.common import image_check
from tfds_builders.common import label_csv
from tfds_builders.common import manual_data
from tfds_builders.common import parallel

from . import layouts

NON_RGB = "non_rgb_image"
# Threads reading and decoding images during the scan (Pillow and file reads
# release the GIL).
_NUM_THREADS = 8

_SPLIT_NOTE_USER = "the paper's split, from the Animesion split files in the manual directory"
_SPLIT_NOTE_SHIPPED = "the paper's split, from the Animesion split files shipped with the builder"
_SPLIT_NOTE_RULE = (
  "NOT the paper's exact split: sorted-name 80/20 rule (config "
  "convert_to_rgb without Animesion split files in the manual directory; "
  "the paper's split files do not list the non-RGB images)"
)

_DESCRIPTION = """\
moeImouto (nagadomi's animeface-character-dataset): face crops of anime
characters, one class per character; 173 classes and 14,395 RGB images in the
Animesion paper (2 non-RGB images dropped), split per class 80/20 into
train (11,452) and test (2,943).

Splits and class ids: the Animesion split files (train.csv, test.csv,
classid_classname.csv) define the splits, class ids and class names: the
user's copy when the manual directory holds one, else the published files
shipped with the builder, so the default config gives exactly the paper's
split from nagadomi's zip or the Kaggle copy. The paper's files do not list
the 2 non-RGB images, so the `convert_to_rgb` config, unless the manual
directory holds split files, uses a documented rule instead (NOT the paper's
split, which followed the filesystem's listing order and cannot be rebuilt
from the folders): classes sorted by folder name get ids 0, 1, ...; within a
class, the files sorted by name, the first int(n * 0.8) usable images go to
train and the rest to test. The build's metadata records which was used
('split_source').

Features: `image` (the original encoded PNG bytes), `label` (the character,
named after its folder, e.g. '000_hatsune_miku'), `file_name`
('<class folder>/<file>').
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

_EXPECTED_LAYOUT = f"""\
  Any one of (in DIR or in a subdirectory of DIR):
  DIR/{layouts.NAGADOMI_ZIP}            (nagadomi's zip, as downloaded)
  DIR/{layouts.NAGADOMI_DIR}/thumb/<NNN_name>/face_*.png   (the zip, extracted)
  DIR/{layouts.KAGGLE_DIR}/<NNN_name>/face_*.png   (Kaggle copy, or its zip)
  DIR/data/<NNN_name>/face_*.png + DIR/train.csv, DIR/test.csv,
      DIR/classid_classname.csv   (Animesion-prepared)
  The three Animesion CSVs may also sit beside any of the other layouts;
  without them the paper's split files shipped with the builder are used."""

_WHERE_TO_GET = (
  f"{layouts.NAGADOMI_URL} (nagadomi), or {layouts.KAGGLE_ZIP} from the "
  "Kaggle dataset 'tagged-anime-illustrations'"
)


@dataclasses.dataclass
class MoeimoutoConfig(tfds.core.BuilderConfig):
  """How non-RGB images are handled.

  Attributes:
    convert_non_rgb: re-encode non-RGB images (grayscale, palette, RGBA) as
      RGB PNG instead of dropping them as the paper did.
  """

  convert_non_rgb: bool = False


class Builder(tfds.core.GeneratorBasedBuilder):
  """DatasetBuilder for moeImouto."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {
    "1.0.0": "Initial release.",
    "1.1.0": (
      "The paper's split files ship with the builder: the default "
      "config gives the paper's split from nagadomi's zip or the "
      "Kaggle copy alone. Examples per class stored in the metadata "
      "('class_counts')."
    ),
  }
  BUILDER_CONFIGS = [
    MoeimoutoConfig(
      name="drop_non_rgb",
      description=("The paper's split (14,395 images); non-RGB images dropped, as in the paper."),
    ),
    MoeimoutoConfig(
      name="convert_to_rgb",
      convert_non_rgb=True,
      description=(
        "Non-RGB images kept, re-encoded as RGB PNG (14,397); "
        "sorted-name 80/20 split unless split files are in "
        "the manual directory."
      ),
    ),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = "drop_non_rgb"
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Download {_WHERE_TO_GET} and place it in the manual directory (--manual_dir),
as the zip or extracted. Without any of these, the builder downloads
nagadomi's zip itself when the network allows.
{_EXPECTED_LAYOUT}
"""

  def __init__(self, *, file_format: str | None = None, **kwargs: Any):
    super().__init__(file_format=file_format, **kwargs)
    file_format_lib.default_to_array_record(self, file_format)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      description=_DESCRIPTION,
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
          # Names come from the data (the class file or the folder names).
          "label": tfds.features.ClassLabel(),
          "file_name": tfds.features.Text(
            doc="<class folder>/<file>, e.g. 000_hatsune_miku/face_1.png"
          ),
        }
      ),
      supervised_keys=("image", "label"),
      homepage="http://www.nurs.or.jp/~nagadomi/animeface-character-dataset/",
      citation=_CITATION,
      metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    found = self._locate(dl_manager)
    scan = build_report.BuildReport("moeimouto/scan")
    scan.note("layout", found.layout)
    scan.note("image folder", str(found.image_root))
    reports = {
      split: build_report.BuildReport(f"moeimouto/{split}") for split in layouts.SPLIT_FILES
    }
    if found.csv_dir is not None:
      names, splits = self._splits_from_csv(
        found.csv_dir, layouts.SPLIT_FILES, found.image_root, reports, scan
      )
      split_source = _SPLIT_NOTE_USER
    elif not self.builder_config.convert_non_rgb:
      names, splits = self._splits_from_csv(
        layouts.PAPER_SPLIT_DIR, layouts.PAPER_SPLIT_FILES, found.image_root, reports, scan
      )
      split_source = _SPLIT_NOTE_SHIPPED
      _check_paper_images(splits, found.image_root, reports)
    else:
      names, splits = self._splits_by_rule(found.image_root, scan)
      split_source = _SPLIT_NOTE_RULE
      logging.warning("moeimouto: %s.", split_source)
    scan.note("split", split_source)
    scan.log()
    self.info.features["label"].names = names
    self.info.metadata["layout"] = found.layout
    self.info.metadata["split_source"] = split_source
    self.info.metadata["build_report"] = {"scan": scan.as_dict()}
    return {
      split: self._generate_examples(split, found.image_root, items, reports[split])
      for split, items in splits.items()
    }

  def _splits_from_csv(
    self,
    csv_dir: epath.Path,
    split_files: dict[str, str],
    image_root: epath.Path,
    reports: dict[str, build_report.BuildReport],
    scan: build_report.BuildReport,
  ) -> tuple[list, dict]:
    """Class names and splits from split files, keeping the usable listed images.

    Images in the class folders that no split file lists are counted in `scan`
    (the first few named in a note), with the folders' non-image files.
    """
    names = label_csv.read_class_names(csv_dir / layouts.CLASS_FILE)
    splits = {}
    listed = set()
    for split, file_name in split_files.items():
      rows = label_csv.read_split(csv_dir / file_name, len(names), reports[split])
      listed.update(row.path for row in rows)
      modes = self._screen(image_root, [(row.path, row.where) for row in rows], reports[split])
      splits[split] = [
        (row.class_id, row.path, modes[row.path]) for row in rows if row.path in modes
      ]
    scan.kept = sum(len(items) for items in splits.values())
    on_disk = layouts.list_class_folders(image_root, scan)
    unlisted = [
      f"{c}/{f}" for c, files in on_disk.items() for f in files if f"{c}/{f}" not in listed
    ]
    if unlisted:
      scan.ignore("image not in the split files", len(unlisted))
      scan.note(
        "not in the split files",
        ", ".join(unlisted[:10])
        + (f", ... ({len(unlisted) - 10} more)" if len(unlisted) > 10 else ""),
      )
    return names, splits

  def _splits_by_rule(
    self, image_root: epath.Path, scan: build_report.BuildReport
  ) -> tuple[list, dict]:
    """Class names and splits from the folders, by `layouts.split_by_rule`.

    Unusable images are removed before the 80/20 cut, as the paper removed
    the non-RGB ones before splitting.
    """
    files_by_class = layouts.list_class_folders(image_root, scan)
    all_files = [f"{c}/{f}" for c, files in files_by_class.items() for f in files]
    modes = self._screen(image_root, [(f, f) for f in all_files], scan)
    scan.kept = len(modes)
    usable = {c: [f for f in files if f"{c}/{f}" in modes] for c, files in files_by_class.items()}
    usable = {c: files for c, files in usable.items() if files}
    splits = {
      split: [(class_id, path, modes[path]) for class_id, path in items]
      for split, items in layouts.split_by_rule(usable).items()
    }
    return sorted(usable), splits

  def _locate(self, dl_manager: tfds.download.DownloadManager) -> layouts.Found:
    """Finds the split files and images; downloads as the last resort."""
    manual_dir, looked_in = manual_data.manual_dir(dl_manager)
    found = layouts.find(manual_dir) if manual_dir else layouts.Found()
    if found.image_root is not None:
      return found
    if found.archive is not None:
      source = str(found.archive)
      extracted = epath.Path(dl_manager.extract(found.archive))
    else:
      source = layouts.NAGADOMI_URL
      try:
        if reason := manual_data.unreachable_reason(source):
          raise ConnectionError(reason)
        extracted = epath.Path(dl_manager.download_and_extract(source))
      except Exception as e:  # pylint: disable=broad-except
        # Offline machines fail in many ways (DNS, proxy, timeout); whichever
        # it is, the user needs to know where to put the files by hand.
        raise manual_data.missing_data_error(
          "moeimouto",
          looked_in,
          _WHERE_TO_GET,
          _EXPECTED_LAYOUT,
          detail=(f"No copy found in the manual directory, and downloading {source} failed: {e}"),
        ) from e
    image_root = layouts.image_root_in(extracted)
    if image_root is None:
      raise manual_data.missing_data_error(
        "moeimouto",
        looked_in,
        _WHERE_TO_GET,
        _EXPECTED_LAYOUT,
        detail=(
          f"{source} (extracted to {extracted}) holds neither "
          f"{layouts.NAGADOMI_DIR}/thumb/ nor {layouts.KAGGLE_DIR}/."
        ),
      )
    return dataclasses.replace(found, image_root=image_root[0], layout=image_root[1])

  def _screen(
    self, image_root: epath.Path, files: list[tuple[str, str]], report: build_report.BuildReport
  ) -> dict[str, str]:
    """Reads and fully decodes images; returns {path: mode} of usable ones.

    Args:
      image_root: the folder of class folders.
      files: (path relative to image_root, where it was listed) pairs.
      report: counts missing, unreadable, truncated and corrupt files, and
        non-RGB images unless the config converts them.
    """
    convert = self.builder_config.convert_non_rgb
    checked = parallel.ordered_map(
      lambda f: image_check.read_and_check(image_root / f[0], decode=True), files, _NUM_THREADS
    )
    modes = {}
    for (rel_path, where), result in zip(files, checked):
      listed_as = rel_path if where == rel_path else f"{where}: {rel_path}"
      if result.problem:
        report.skip(result.problem, f"{listed_as} ({result.detail})")
      elif result.header.mode != "RGB" and not convert:
        report.skip(NON_RGB, f"{listed_as} (mode {result.header.mode})")
      else:
        modes[rel_path] = result.header.mode
    return modes

  def _generate_examples(
    self,
    split: str,
    image_root: epath.Path,
    items: list[tuple[int, str, str]],
    report: build_report.BuildReport,
  ) -> Iterator[tuple[str, dict]]:
    """Yields (relative path, example) for screened (class_id, path, mode)."""
    converted = 0
    counter = class_counts.SplitCounter()
    for class_id, rel_path, mode in items:
      data = (image_root / rel_path).read_bytes()
      if mode != "RGB":
        data = image_check.to_rgb_png(data)
        converted += 1
      report.kept += 1
      counter.add(class_id)
      yield rel_path, {"image": data, "label": class_id, "file_name": rel_path}
    if converted:
      report.note("converted to RGB", converted)
    report.log()
    self.info.metadata["build_report"][split] = report.as_dict()
    counter.store(self.info, split, self.info.features["label"].num_classes)


def _check_paper_images(
  splits: dict[str, list], image_root: epath.Path, reports: dict[str, build_report.BuildReport]
) -> None:
  """Says how much of the paper's split the folder holds; fails on none of it."""
  found = sum(len(items) for items in splits.values())
  if found == 0:
    raise manual_data.missing_data_error(
      "moeimouto",
      str(image_root),
      _WHERE_TO_GET,
      _EXPECTED_LAYOUT,
      detail=(
        f"None of the {layouts.PAPER_NUM_IMAGES:,} images of the "
        f"paper's split is usable in {image_root}. To split whatever "
        "images it holds by the sorted-name rule instead, build "
        "--config=convert_to_rgb."
      ),
    )
  unusable = sum(report.num_skipped for report in reports.values())
  if unusable:
    logging.warning(
      "moeimouto: %s of the %s images of the paper's split are missing or "
      "unusable in %s (see the build report); the other %s keep their "
      "paper split. To split whatever the folder holds by the sorted-name "
      "rule instead, build --config=convert_to_rgb.",
      f"{unusable:,}",
      f"{layouts.PAPER_NUM_IMAGES:,}",
      image_root,
      f"{found:,}",
    )
