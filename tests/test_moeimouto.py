"""Tests for the moeImouto builder, on dummy trees of each download layout.

The dummy trees (tfds_builders/moeimouto/dummy_data, written by its
make_dummy_data.py) hold 3 classes with images named as in the paper's split
files, a class folder without images, non-image files, a grayscale PNG and a
truncated PNG; the Animesion split files add a missing file, a blank line, a
duplicate row and an out-of-range class id. Expected counts are worked out in
make_dummy_data.py.
"""

import collections
import gzip
import pathlib
import shutil
import socket
from unittest import mock
import zipfile

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tfds_builders.common import build_report
from tfds_builders.common import class_counts
from tfds_builders.common import image_check
from tfds_builders.common import label_csv
from tfds_builders.common import manual_data
from tfds_builders.moeimouto import layouts
from tfds_builders.moeimouto import moeimouto_dataset_builder as moe_builder

DUMMY = pathlib.Path(moe_builder.__file__).parent / "dummy_data"
SORTED_NAMES = ["000_hatsune_miku", "001_kinomoto_sakura", "144_kotegawa_yui"]
PAPER_ORDER_NAMES = ["144_kotegawa_yui", "000_hatsune_miku", "001_kinomoto_sakura"]


class _TfRecordHarness:
  """Makes TFDS's test harness build TFRecord.

  The harness reads through `as_dataset`, which ArrayRecord files do not
  support; the ArrayRecord default is exercised by the tests further down.
  """

  def _make_builder(self, config=None):
    return self.dataset_class(
      data_dir=self.tmp_dir, config=config, version=self.VERSION, file_format="tfrecord"
    )


class AnimesionDropNonRgbTest(_TfRecordHarness, tfds.testing.DatasetBuilderTestCase):
  DATASET_CLASS = moe_builder.Builder
  EXAMPLE_DIR = DUMMY / "animesion"
  BUILDER_CONFIG_NAMES_TO_TEST = ["drop_non_rgb"]
  SPLITS = {"train": 10, "test": 5}


class AnimesionConvertToRgbTest(_TfRecordHarness, tfds.testing.DatasetBuilderTestCase):
  DATASET_CLASS = moe_builder.Builder
  EXAMPLE_DIR = DUMMY / "animesion"
  BUILDER_CONFIG_NAMES_TO_TEST = ["convert_to_rgb"]
  SPLITS = {"train": 11, "test": 5}


class NagadomiExtractedTest(_TfRecordHarness, tfds.testing.DatasetBuilderTestCase):
  DATASET_CLASS = moe_builder.Builder
  EXAMPLE_DIR = DUMMY / "nagadomi"
  BUILDER_CONFIG_NAMES_TO_TEST = ["drop_non_rgb"]
  SPLITS = {"train": 11, "test": 4}


class KaggleConvertToRgbTest(_TfRecordHarness, tfds.testing.DatasetBuilderTestCase):
  DATASET_CLASS = moe_builder.Builder
  EXAMPLE_DIR = DUMMY / "kaggle"
  BUILDER_CONFIG_NAMES_TO_TEST = ["convert_to_rgb"]
  SPLITS = {"train": 12, "test": 4}


class DownloadWhenManualDirHasNothingTest(_TfRecordHarness, tfds.testing.DatasetBuilderTestCase):
  DATASET_CLASS = moe_builder.Builder
  EXAMPLE_DIR = DUMMY / "no_manual"
  # The mocked download "extracts" nagadomi's zip to the dummy tree.
  DL_EXTRACT_RESULT = str(DUMMY / "nagadomi")
  # The 564 MB zip cannot be fetched here to record its checksum.
  SKIP_CHECKSUMS = True
  BUILDER_CONFIG_NAMES_TO_TEST = ["drop_non_rgb"]
  SPLITS = {"train": 11, "test": 4}

  def setUp(self):
    super().setUp()
    # The builder probes the host before downloading; tests stay offline.
    patcher = mock.patch.object(manual_data, "unreachable_reason", return_value=None)
    patcher.start()
    self.addCleanup(patcher.stop)


def _build(tmp_path, manual_dir, config="drop_non_rgb", name="data"):
  builder = moe_builder.Builder(data_dir=tmp_path / name, config=config)
  builder.download_and_prepare(
    download_dir=tmp_path / "downloads",
    download_config=tfds.download.DownloadConfig(manual_dir=manual_dir),
  )
  return builder


def _records(builder, split):
  source = builder.as_data_source(split, decoders={"image": tfds.decode.SkipDecoding()})
  return {ex["file_name"].decode(): ex for ex in source}


def test_animesion_split_files_give_paper_ids_and_report(tmp_path):
  builder = _build(tmp_path, DUMMY / "animesion")
  assert builder.info.features["label"].names == PAPER_ORDER_NAMES
  assert "paper" in builder.info.metadata["split_source"]
  train = _records(builder, "train")
  assert len(train) == 10
  # Class ids come from the CSV, not from sorted folder names.
  assert train["000_hatsune_miku/face_214_99_108.png"]["label"] == 1
  # Images are the files' own bytes, not re-encoded.
  path = DUMMY / "animesion/data/000_hatsune_miku/face_214_99_108.png"
  assert train["000_hatsune_miku/face_214_99_108.png"]["image"] == (path.read_bytes())
  report = builder.info.metadata["build_report"]["train"]
  skipped = {reason: entry["count"] for reason, entry in report["skipped"].items()}
  assert skipped == {
    "blank_line": 1,
    "class_id_out_of_range": 1,
    "duplicate_row": 1,
    "missing_file": 1,
    "non_rgb_image": 1,
    "truncated_image": 1,
  }
  assert report["skipped"]["missing_file"]["first"] == [
    "train.csv:8: 000_hatsune_miku/face_404_0_0.png (no such file)"
  ]
  assert report["kept"] == 10


def _paper_rows(split):
  return label_csv.read_split(
    layouts.PAPER_SPLIT_DIR / layouts.PAPER_SPLIT_FILES[split],
    num_classes=173,
    report=build_report.BuildReport(split),
  )


def test_shipped_files_are_the_papers_split():
  names = label_csv.read_class_names(layouts.PAPER_SPLIT_DIR / layouts.CLASS_FILE)
  assert len(names) == 173
  # Ids follow the original's filesystem order, not name order.
  assert names[:3] == ["190_kawashima_ami", "073_subaru_nakajima", "092_shindou_kei"]
  rows = {split: _paper_rows(split) for split in ("train", "test")}
  assert {split: len(r) for split, r in rows.items()} == {"train": 11452, "test": 2943}
  paths = {split: {row.path for row in r} for split, r in rows.items()}
  assert not paths["train"] & paths["test"]
  assert not set(layouts.PAPER_DROPPED) & (paths["train"] | paths["test"])
  per_class = {split: collections.Counter(row.class_id for row in r) for split, r in rows.items()}
  # Every class is in both splits, cut per class at int(n * 0.8), and each
  # file sits in the folder of its class.
  for class_id, name in enumerate(names):
    n_train, n_test = per_class["train"][class_id], per_class["test"][class_id]
    assert n_test > 0 and n_train == int((n_train + n_test) * 0.8), name
  assert all(row.path.split("/")[0] == names[row.class_id] for r in rows.values() for row in r)
  # Gunzipped, the shipped files are text CSVs without a header, as published.
  text = gzip.decompress((layouts.PAPER_SPLIT_DIR / "test.csv.gz").read_bytes())
  assert text.startswith(b"0,190_kawashima_ami/face_249_207_45.png\n")


def test_plain_download_gives_the_papers_split(tmp_path):
  builder = _build(tmp_path, DUMMY / "nagadomi")
  names = builder.info.features["label"].names
  assert len(names) == 173
  assert "shipped with the builder" in builder.info.metadata["split_source"]
  expected = {
    split: {row.path: row.class_id for row in _paper_rows(split)} for split in ("train", "test")
  }
  for split, count in (("train", 11), ("test", 4)):
    records = _records(builder, split)
    assert len(records) == count
    # Every image is in the split, with the class id, the paper gave it.
    assert {p: int(ex["label"]) for p, ex in records.items()} == {
      p: expected[split][p] for p in records
    }
  assert names[73] == "000_hatsune_miku"
  report = builder.info.metadata["build_report"]
  # 11,452 + 2,943 listed; 12 + 4 of them are in the dummy tree, one
  # of which is truncated.
  assert report["train"]["skipped"]["missing_file"]["count"] == 11452 - 12
  assert report["test"]["skipped"]["missing_file"]["count"] == 2943 - 4
  assert report["train"]["skipped"]["truncated_image"]["first"] == [
    "train.csv.gz:1172: 144_kotegawa_yui/face_228_166_78.png (PNG has no IEND chunk at its end)"
  ]
  # The grayscale image is one the paper dropped: on disk, in no split.
  assert report["scan"]["ignored"] == {
    "image not in the split files": 1,
    "class folder without images": 1,
    "non-image file": 8,
  }
  assert report["scan"]["notes"]["not in the split files"] == (
    "144_kotegawa_yui/face_272_204_0.png"
  )
  stored = builder.info.metadata[class_counts.METADATA_KEY]
  assert (stored["train"][16], stored["train"][73], stored["train"][170]) == (3, 4, 4)
  assert sum(stored["test"]) == 4 and len(stored["test"]) == 173


def test_images_unknown_to_the_papers_split_fail_with_advice(tmp_path):
  manual = tmp_path / "manual" / layouts.KAGGLE_DIR / "001_someone"
  manual.mkdir(parents=True)
  for index, name in enumerate(("face_298_149_4.png", "face_113_132_80.png")):
    shutil.copy(
      DUMMY / "kaggle" / layouts.KAGGLE_DIR / "144_kotegawa_yui" / name,
      manual / f"face_{index}_0_0.png",
    )
  with pytest.raises(
    manual_data.MissingDataError,
    match=r"None of the 14,395 images of the paper's split"
    r"(.|\n)*--config=convert_to_rgb",
  ):
    _build(tmp_path, tmp_path / "manual")
  # The sorted rule takes whatever the folder holds.
  builder = _build(tmp_path, tmp_path / "manual", config="convert_to_rgb", name="rule")
  assert builder.info.features["label"].names == ["001_someone"]
  assert {s: v.num_examples for s, v in builder.info.splits.items()} == {"train": 1, "test": 1}


def test_sorted_rule_split_and_grayscale_conversion(tmp_path):
  builder = _build(tmp_path, DUMMY / "kaggle", config="convert_to_rgb")
  assert builder.info.features["label"].names == SORTED_NAMES
  assert "NOT the paper" in builder.info.metadata["split_source"]
  train = _records(builder, "train")
  test = _records(builder, "test")
  # 144 has 5 usable images sorted by name: the first int(5*0.8)=4 train.
  assert sorted(p for p in train if p.startswith("144")) == [
    "144_kotegawa_yui/face_113_132_80.png",
    "144_kotegawa_yui/face_132_180_83.png",
    "144_kotegawa_yui/face_272_204_0.png",
    "144_kotegawa_yui/face_284_132_91.png",
  ]
  assert [p for p in test if p.startswith("144")] == ["144_kotegawa_yui/face_298_149_4.png"]
  grey = train["144_kotegawa_yui/face_272_204_0.png"]
  header = image_check.inspect_image(grey["image"], decode=True)
  assert (header.format, header.mode) == ("png", "RGB")
  pixels = builder.info.features["image"].decode_example_np(grey["image"])
  assert pixels.shape == (16, 16, 3)
  # The grey image's three channels stayed equal after conversion.
  np.testing.assert_array_equal(pixels[..., 0], pixels[..., 2])
  scan = builder.info.metadata["build_report"]["scan"]
  assert scan["ignored"] == {"class folder without images": 1, "non-image file": 8}
  assert scan["kept"] == 16


def test_zip_in_manual_dir_is_extracted(tmp_path):
  manual = tmp_path / "manual" / "moeimouto"
  manual.mkdir(parents=True)
  shutil.copy(DUMMY / "nagadomi_zip" / layouts.NAGADOMI_ZIP, manual)
  builder = _build(tmp_path, tmp_path / "manual")
  assert {s: v.num_examples for s, v in builder.info.splits.items()} == {"train": 11, "test": 4}
  assert builder.info.metadata["layout"] == layouts.NAGADOMI


def test_split_files_beside_nagadomi_images_give_paper_split(tmp_path):
  manual = tmp_path / "manual"
  shutil.copytree(DUMMY / "nagadomi", manual)
  for name in ("train.csv", "test.csv", "classid_classname.csv"):
    shutil.copy(DUMMY / "animesion" / name, manual)
  builder = _build(tmp_path, manual)
  assert builder.info.metadata["layout"] == layouts.NAGADOMI
  assert builder.info.features["label"].names == PAPER_ORDER_NAMES
  assert builder.info.splits["train"].num_examples == 10


@pytest.mark.parametrize(
  "probe, download_error, expected_reason",
  [
    (
      "cannot connect to www.nurs.or.jp:80 (offline)",
      None,
      "cannot connect to www.nurs.or.jp:80 (offline)",
    ),
    (None, ConnectionError("connection reset"), "connection reset"),
  ],
)
def test_missing_data_error_says_where_and_what(tmp_path, probe, download_error, expected_reason):
  manual = tmp_path / "manual"
  manual.mkdir()
  (manual / "notes.txt").write_text("nothing useful")
  download = mock.Mock(side_effect=download_error)
  with (
    mock.patch.object(manual_data, "unreachable_reason", return_value=probe),
    mock.patch.object(tfds.download.DownloadManager, "download_and_extract", download),
  ):
    with pytest.raises(manual_data.MissingDataError) as error:
      _build(tmp_path, manual)
  # An unreachable host is reported without TFDS's minutes of retries.
  assert download.call_count == (0 if probe else 1)
  message = str(error.value)
  for expected in (
    "moeimouto",
    str(manual),
    layouts.NAGADOMI_URL,
    expected_reason,
    "animeface-character-dataset/thumb",
    "classid_classname.csv",
    "tfds build",
  ):
    assert expected in message


def test_unreachable_reason_on_a_closed_local_port():
  with socket.socket() as server:
    server.bind(("127.0.0.1", 0))
    port = server.getsockname()[1]
  # Nothing listens on the port any more: the connection is refused.
  reason = manual_data.unreachable_reason(f"http://127.0.0.1:{port}/x.zip", timeout_s=2)
  assert reason.startswith(f"cannot connect to 127.0.0.1:{port} (")


def test_interrupted_build_reruns_to_identical_records(tmp_path):
  reference = _build(tmp_path, DUMMY / "nagadomi", name="reference")
  original = moe_builder.Builder._generate_examples

  def dies_after_three(self, *args, **kwargs):
    for count, example in enumerate(original(self, *args, **kwargs)):
      if count == 3:
        raise KeyboardInterrupt("simulated interruption")
      yield example

  with mock.patch.object(moe_builder.Builder, "_generate_examples", dies_after_three):
    with pytest.raises(KeyboardInterrupt):
      _build(tmp_path, DUMMY / "nagadomi", name="rerun")
  rerun = _build(tmp_path, DUMMY / "nagadomi", name="rerun")
  for split in ("train", "test"):
    ours = list(rerun.as_data_source(split))
    theirs = list(reference.as_data_source(split))
    assert [ex["file_name"] for ex in ours] == [ex["file_name"] for ex in theirs]
    for a, b in zip(ours, theirs):
      np.testing.assert_array_equal(a["image"], b["image"])
      assert a["label"] == b["label"]
  shard_names = sorted(p.name for p in pathlib.Path(rerun.data_dir).glob("*.array_record*"))
  assert shard_names == sorted(
    p.name for p in pathlib.Path(reference.data_dir).glob("*.array_record*")
  )
  for name in shard_names:
    assert (pathlib.Path(rerun.data_dir) / name).read_bytes() == (
      pathlib.Path(reference.data_dir) / name
    ).read_bytes()


def test_list_class_folders_and_rule_on_awkward_tree(tmp_path):
  (tmp_path / "002_empty").mkdir()
  (tmp_path / "003_only_nested" / "sub").mkdir(parents=True)
  (tmp_path / "003_only_nested" / "sub" / "face_1.png").write_bytes(b"x")
  for i in range(7):
    (tmp_path / "001_b" / f"face_{i}.PNG").parent.mkdir(exist_ok=True)
    (tmp_path / "001_b" / f"face_{i}.PNG").write_bytes(b"x")
  (tmp_path / "001_b" / "color.csv").write_text("")
  (tmp_path / "README").write_text("")
  report = build_report.BuildReport("t")
  classes = layouts.list_class_folders(tmp_path, report)
  assert list(classes) == ["001_b"]
  assert report.as_dict()["ignored"] == {
    "class folder without images": 2,
    "file outside class folders": 1,
    "folder inside a class folder": 1,
    "non-image file": 1,
  }
  splits = layouts.split_by_rule(
    {"b": [f"{i}.png" for i in range(7)], "a": [f"{i}.png" for i in range(10)]}
  )
  # Class 'a' sorts first (id 0): int(10*0.8)=8 train; 'b': int(7*0.8)=5.
  assert [c for c, _ in splits["train"]] == [0] * 8 + [1] * 5
  assert splits["test"] == [(0, "a/8.png"), (0, "a/9.png"), (1, "b/5.png"), (1, "b/6.png")]


def test_png_checks_catch_truncation_and_report_mode():
  data = (DUMMY / "kaggle/moeimouto-faces/144_kotegawa_yui/face_272_204_0.png").read_bytes()
  header = image_check.inspect_image(data, decode=True)
  assert (header.format, header.width, header.height, header.mode) == ("png", 16, 16, "L")
  for cut in (10, 40, len(data) - 5):
    with pytest.raises(image_check.BadImageError) as error:
      image_check.inspect_image(data[:cut])
    assert error.value.reason == image_check.TRUNCATED
  # Damage inside the compressed data only shows up when decoding.
  damaged = bytearray(data)
  damaged[45:60] = b"\0" * 15
  with pytest.raises(image_check.BadImageError) as error:
    image_check.inspect_image(bytes(damaged), decode=True)
  assert error.value.reason == image_check.CORRUPT


def test_zip_fixture_mirrors_nagadomi_layout():
  with zipfile.ZipFile(DUMMY / "nagadomi_zip" / layouts.NAGADOMI_ZIP) as z:
    names = z.namelist()
  assert "animeface-character-dataset/thumb/048_unused/ignore" in names
  assert "animeface-character-dataset/tools/README" in names
