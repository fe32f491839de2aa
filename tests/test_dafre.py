"""Tests for the DAF:re builder and the CSV/JPEG helpers it relies on.

The dummy trees (tfds_builders/dafre/dummy_data, written by its
make_dummy_data.py): `current/` is the extracted download with a missing
file, a truncated JPEG, a text file named .jpg, an out-of-range class id, a
duplicate row and a blank line in train.csv, a grayscale JPEG in val and a
CMYK JPEG in test; `legacy/` has swapped columns and header rows.
"""

import pathlib
import shutil
import threading
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tfds_builders.common import build_report
from tfds_builders.common import class_counts
from tfds_builders.common import image_check
from tfds_builders.common import label_csv
from tfds_builders.common import manual_data
from tfds_builders.common import parallel
from tfds_builders.dafre import dafre_dataset_builder as dafre_builder

DUMMY = pathlib.Path(dafre_builder.__file__).parent / "dummy_data"
NAMES = ["morrigan_aensland", "uchiha_sasuke", "haruno_sakura", "futaba_rio"]


class _TfRecordHarness:
  """Makes TFDS's test harness build TFRecord.

  The harness reads through `as_dataset`, which ArrayRecord files do not
  support; the ArrayRecord default is exercised by the tests further down.
  """

  def _make_builder(self, config=None):
    return self.dataset_class(
      data_dir=self.tmp_dir, config=config, version=self.VERSION, file_format="tfrecord"
    )


class FacesTest(_TfRecordHarness, tfds.testing.DatasetBuilderTestCase):
  DATASET_CLASS = dafre_builder.Builder
  EXAMPLE_DIR = DUMMY / "current"
  BUILDER_CONFIG_NAMES_TO_TEST = ["faces"]
  SPLITS = {"train": 16, "validation": 4, "test": 8}


class FullIllustrationsTest(_TfRecordHarness, tfds.testing.DatasetBuilderTestCase):
  DATASET_CLASS = dafre_builder.Builder
  EXAMPLE_DIR = DUMMY / "current"
  # 'full' is not in BUILDER_CONFIGS (see the builder), so pass the object.
  BUILDER_CONFIG_NAMES_TO_TEST = [dafre_builder.Builder.get_builder_config("full")]
  SPLITS = {"train": 18, "validation": 4, "test": 8}


class LegacyLabelFilesTest(_TfRecordHarness, tfds.testing.DatasetBuilderTestCase):
  DATASET_CLASS = dafre_builder.Builder
  EXAMPLE_DIR = DUMMY / "legacy"
  BUILDER_CONFIG_NAMES_TO_TEST = ["faces"]
  SPLITS = {"train": 16, "validation": 4, "test": 8}


def _build(tmp_path, manual_dir, config="faces", name="data"):
  builder = dafre_builder.Builder(data_dir=tmp_path / name, config=config)
  builder.download_and_prepare(
    download_dir=tmp_path / "downloads",
    download_config=tfds.download.DownloadConfig(manual_dir=manual_dir),
  )
  return builder


def test_default_build_is_array_record_with_original_bytes(tmp_path):
  builder = _build(tmp_path, DUMMY / "current")
  assert builder.info.file_format.value == "array_record"
  assert builder.info.features["label"].names == NAMES
  source = builder.as_data_source("validation", decoders={"image": tfds.decode.SkipDecoding()})
  records = {ex["file_name"].decode(): ex for ex in source}
  assert len(records) == 4
  for name, ex in records.items():
    assert ex["image"] == (DUMMY / "current/faces" / name).read_bytes()
  # The grayscale JPEG is stored as is and decodes to 3 channels.
  modes = {name: image_check.inspect_image(ex["image"]).mode for name, ex in records.items()}
  assert sorted(modes.values()) == ["L", "RGB", "RGB", "RGB"]
  decoded = builder.as_data_source("validation")
  assert {ex["image"].shape for ex in decoded} == {(16, 16, 3)}


def test_build_report_lists_every_bad_row(tmp_path):
  builder = _build(tmp_path, DUMMY / "current")
  report = builder.info.metadata["build_report"]["train"]
  assert report["kept"] == 16
  assert {reason: entry["first"] for reason, entry in report["skipped"].items()} == {
    "blank_line": ["train.csv:20"],
    "class_id_out_of_range": ["train.csv:22: 9,0838/205838.jpg"],
    "duplicate_row": ["train.csv:21: 0919/197919.jpg"],
    "missing_file": ["train.csv:19: 0291/1796291.jpg (no such file)"],
    "not_an_image": [
      "train.csv:18: 0522/2354522.jpg (starts with b'<html>40', neither PNG nor JPEG)"
    ],
    "truncated_image": ["train.csv:17: 0943/2841943.jpg (JPEG ends inside a segment)"],
  }
  test_report = builder.info.metadata["build_report"]["test"]
  assert test_report["skipped"] == {}
  # The CMYK JPEG would decode to 4 channels with Pillow: re-encoded as RGB.
  assert test_report["notes"] == {"re-encoded as RGB PNG": "1: 0514/237514.jpg (CMYK)"}
  source = builder.as_data_source("test", decoders={"image": tfds.decode.SkipDecoding()})
  cmyk = next(ex for ex in source if ex["file_name"] == b"0514/237514.jpg")
  header = image_check.inspect_image(cmyk["image"], decode=True)
  assert (header.format, header.mode) == ("png", "RGB")
  feature = builder.info.features["image"]
  assert feature.decode_example_np_with_pil(cmyk["image"], 3).shape == (16, 16, 3)


def _animesion_layout(root):
  """The dummy download arranged as the original code read it."""
  shutil.copytree(DUMMY / "current" / "faces", root / "data")
  for path in (DUMMY / "current" / "labels").iterdir():
    shutil.copy(path, root)
  return root


def test_original_code_layout_gives_same_records(tmp_path):
  manual = tmp_path / "manual"
  _animesion_layout(manual / "danbooruFaces")
  builder = _build(tmp_path, manual, name="animesion")
  reference = _build(tmp_path, DUMMY / "current", name="release")
  assert builder.info.metadata["layout"] == dafre_builder.ANIMESION
  assert reference.info.metadata["layout"] == dafre_builder.RELEASE
  assert builder.info.metadata["image folder"] == str(manual / "danbooruFaces" / "data")
  assert builder.info.features["label"].names == NAMES
  for split in ("train", "validation", "test"):
    ours = builder.as_data_source(split, decoders={"image": tfds.decode.SkipDecoding()})
    theirs = reference.as_data_source(split, decoders={"image": tfds.decode.SkipDecoding()})
    assert [(ex["file_name"], ex["label"], ex["image"]) for ex in ours] == [
      (ex["file_name"], ex["label"], ex["image"]) for ex in theirs
    ]
  # Counted while writing: train keeps 16 of its 21 rows.
  stored = builder.info.metadata[class_counts.METADATA_KEY]
  assert stored == reference.info.metadata[class_counts.METADATA_KEY]
  assert [sum(stored[s]) for s in ("train", "validation", "test")] == [16, 4, 8]
  labels = class_counts.read_labels(builder, "train")
  assert np.bincount(labels, minlength=4).tolist() == stored["train"]


def test_original_code_layout_is_not_read_by_full_config(tmp_path):
  manual = _animesion_layout(tmp_path / "manual")
  with pytest.raises(
    manual_data.MissingDataError,
    match=r"original Animesion layout\), which only config "
    r"'faces' reads; config 'full' reads labels/ and "
    r"fullMin256/",
  ):
    _build(tmp_path, manual, config="full")


def test_original_code_layout_missing_split_file_is_named(tmp_path):
  manual = _animesion_layout(tmp_path / "manual")
  (manual / "val.csv").unlink()
  with pytest.raises(manual_data.MissingDataError, match=f"{manual} lacks val.csv"):
    _build(tmp_path, manual)


def test_missing_manual_data_names_dataset_source_dir_and_layout(tmp_path):
  manual = tmp_path / "manual"
  (manual / "dafre").mkdir(parents=True)
  (manual / "dafre" / "dafre_faces.tar.gz").write_bytes(b"not extracted")
  with pytest.raises(manual_data.MissingDataError) as error:
    _build(tmp_path, manual)
  message = str(error.value)
  for expected in (
    "dafre",
    str(manual),
    "xedwin23x/DAFB",
    "labels/classid_classname.csv",
    "faces/<NNNN>/<id>.jpg",
    f"tar -xzf {manual / 'dafre' / 'dafre_faces.tar.gz'}",
  ):
    assert expected in message


def test_full_config_without_its_folder_says_so(tmp_path):
  manual = tmp_path / "manual"
  shutil.copytree(DUMMY / "current" / "labels", manual / "labels")
  shutil.copytree(DUMMY / "current" / "faces", manual / "faces")
  with pytest.raises(
    manual_data.MissingDataError, match=r"no .*fullMin256/ \(config 'full'"
  ) as error:
    _build(tmp_path, manual, config="full")
  assert "tfds build tfds_builders/dafre --config=full --manual_dir=DIR" in (str(error.value))


def test_split_file_with_header_and_swapped_columns(tmp_path):
  path = tmp_path / "val.csv"
  path.write_text(
    "dir,label\n0933/194933.jpg,0\n\n0943/2841943.jpg,3\n"
    "0943/2841943.jpg,1\nbad row\n0522/2354522.jpg,x\n"
  )
  report = build_report.BuildReport("t")
  rows = label_csv.read_split(path, num_classes=3, report=report)
  # Line 4's class id is out of range, so line 5 is not a duplicate of it.
  assert [(r.class_id, r.path, r.where) for r in rows] == [
    (0, "0933/194933.jpg", "val.csv:2"),
    (1, "0943/2841943.jpg", "val.csv:5"),
  ]
  assert report.skipped() == {"blank_line": 1, "class_id_out_of_range": 1, "malformed_row": 2}
  notes = report.as_dict()["notes"]
  assert notes == {
    "val.csv header row": "dir,label",
    "val.csv columns": "relative_path,class_id (old order)",
  }


def test_split_file_duplicate_and_path_normalisation(tmp_path):
  path = tmp_path / "train.csv"
  path.write_text("1,./0001/1.jpg\n1,0001\\1.jpg\n2,../etc/passwd\n")
  report = build_report.BuildReport("t")
  rows = label_csv.read_split(path, num_classes=3, report=report)
  assert [(r.class_id, r.path) for r in rows] == [(1, "0001/1.jpg")]
  assert report.skipped() == {"duplicate_row": 1, "malformed_row": 1}


@pytest.mark.parametrize(
  "text, message",
  [
    ("0,a\n2,b\n", r"without gaps; missing \[1\]"),
    ("0,a\n1,a\n", "names appear twice"),
    ("0,a\n0,b\n", "class id 0 appears twice"),
    ("\n", "lists no classes"),
  ],
)
def test_bad_class_file_is_fatal_with_reason(tmp_path, text, message):
  path = tmp_path / "classid_classname.csv"
  path.write_text(text)
  with pytest.raises(ValueError, match=message):
    label_csv.read_class_names(path)


def test_class_file_swapped_with_header(tmp_path):
  path = tmp_path / "classid_classname.csv"
  path.write_text('class_name,class_id\n"b, the second",1\na,0\n')
  assert label_csv.read_class_names(path) == ["a", "b, the second"]


def _jpeg():
  return (DUMMY / "current/faces/0919/197919.jpg").read_bytes()


def test_jpeg_checks():
  data = _jpeg()
  header = image_check.inspect_image(data)
  assert (header.format, header.width, header.height, header.mode) == ("jpeg", 16, 16, "RGB")
  # Bytes after the end-of-image marker (some encoders pad) are tolerated.
  assert image_check.inspect_image(data + b"\0" * 7).width == 16
  # Cut inside the entropy-coded data: no end-of-image marker.
  with pytest.raises(image_check.BadImageError) as error:
    image_check.inspect_image(data[:-20])
  assert error.value.reason == image_check.TRUNCATED
  # An EXIF-style thumbnail's EOI before the scan does not hide truncation.
  fake_app1 = b"\xff\xe1\x00\x06\xff\xd9\x00\x00"
  with pytest.raises(image_check.BadImageError):
    image_check.inspect_image(data[:2] + fake_app1 + data[2:-20])
  assert image_check.inspect_image(data[:2] + fake_app1 + data[2:]).mode == ("RGB")
  for bad, reason in (
    (b"", image_check.EMPTY),
    (b"GIF89a...", image_check.NOT_AN_IMAGE),
    (b"\xff\xd8\x00\x00", image_check.CORRUPT),
  ):
    with pytest.raises(image_check.BadImageError) as error:
      image_check.inspect_image(bad)
    assert error.value.reason == reason


def test_ordered_map_keeps_order_and_bounds_memory():
  in_flight = []
  lock = threading.Lock()
  active = [0]

  def slow_square(x):
    with lock:
      active[0] += 1
      in_flight.append(active[0])
    time.sleep(0.001 * ((x * 7) % 5))  # Finishes out of order.
    with lock:
      active[0] -= 1
    return x * x

  results = list(parallel.ordered_map(slow_square, range(60), num_threads=4, max_in_flight=8))
  assert results == [x * x for x in range(60)]
  assert max(in_flight) <= 4
  assert list(parallel.ordered_map(str, [3, 1, 2], num_threads=1)) == ["3", "1", "2"]
