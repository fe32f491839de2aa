"""Tests for tools/dataset_stats.py on a built dummy moeImouto dataset.

The dummy Animesion-layout build (see tfds_builders/moeimouto/dummy_data)
has 3 classes: 144_kotegawa_yui (id 0) with 2 train + 2 test images,
000_hatsune_miku (id 1) with 4 + 2 and 001_kinomoto_sakura (id 2) with 4 + 1.
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from tests import helpers
from tfds_builders.common import class_counts
from tfds_builders.moeimouto import moeimouto_dataset_builder as moe_builder

ROOT = pathlib.Path(__file__).resolve().parents[1]
DUMMY = ROOT / "tfds_builders/moeimouto/dummy_data/animesion"


dataset_stats = helpers.load_tool("dataset_stats")


def _build(data_dir, file_format=None):
  builder = moe_builder.Builder(data_dir=data_dir, file_format=file_format)
  builder.download_and_prepare(
    download_dir=data_dir / "downloads",
    download_config=tfds.download.DownloadConfig(manual_dir=DUMMY),
  )
  return builder


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  return _build(tmp_path_factory.mktemp("array_record"))


def test_all_splits_stats_json_and_figures(built, tmp_path):
  stats = dataset_stats.compute_and_plot(built, None, tmp_path, grid=4, head_above=5, tail_below=5)
  assert stats["split"] == "train+test"
  assert (stats["num_classes"], stats["num_classes_present"], stats["num_images"]) == (3, 3, 15)
  per_class = stats["images_per_class"]
  assert per_class["mean"] == pytest.approx(5.0)
  assert per_class["median"] == pytest.approx(5.0)
  assert per_class["std"] == pytest.approx(np.sqrt(2 / 3))
  assert (per_class["min"], per_class["max"]) == (4, 6)
  # 6 images: head (> 5); 5: medium; 4: tail (< 5).
  assert {k: v for k, v in stats["long_tail"].items() if k != "rule"} == {
    "head": 1,
    "medium": 1,
    "tail": 1,
  }
  assert stats["top_classes"] == [
    {"name": "000_hatsune_miku", "images": 6},
    {"name": "001_kinomoto_sakura", "images": 5},
    {"name": "144_kotegawa_yui", "images": 4},
  ]
  written = json.loads((tmp_path / "moeimouto_drop_non_rgb_train_test_stats.json").read_text())
  assert written == stats
  with Image.open(stats["figures"]["top_classes"]) as histogram:
    # 6 x 6 inches at 120 dpi for 3 bars; the width grows with the bars.
    assert (histogram.format, histogram.size) == ("PNG", (720, 720))
    assert np.asarray(histogram.convert("L")).std() > 10
  with Image.open(stats["figures"]["samples"]) as samples:
    assert samples.format == "PNG"
    # Not blank: the grid shows images, not just white axes.
    assert np.asarray(samples.convert("L")).std() > 10


def test_single_split_counts(built, tmp_path, monkeypatch):
  def no_reading(*args):
    raise AssertionError(f"read the records: {args}")

  # The counts stored at build time suffice: no record is read.
  monkeypatch.setattr(class_counts, "read_labels", no_reading)
  stats = dataset_stats.compute_and_plot(built, "train", tmp_path, grid=0)
  assert stats["num_images"] == 10
  assert stats["images_per_class"]["mean"] == pytest.approx(10 / 3)
  assert stats["images_per_class"]["median"] == 4.0
  assert stats["long_tail"]["tail"] == 3  # All under the default 20.
  assert "samples" not in stats["figures"]


def test_samples_are_one_per_distinct_class(built):
  labels = class_counts.read_labels(built, "train")
  assert np.bincount(labels).tolist() == [2, 4, 4]
  examples = dataset_stats.sample_examples(built, "train", labels, 3, seed=1)
  assert sorted(ex["label"] for ex in examples) == [0, 1, 2]
  assert {ex["image"].shape for ex in examples} == {(16, 16, 3)}


def test_tfrecord_build_gives_same_labels(built, tmp_path):
  tfrecord = _build(tmp_path, file_format="tfrecord")
  assert tfrecord.info.file_format == tfds.core.FileFormat.TFRECORD
  assert sorted(class_counts.read_labels(tfrecord, "test").tolist()) == (
    sorted(class_counts.read_labels(built, "test").tolist())
  )
  labels = class_counts.read_labels(tfrecord, "test")
  examples = dataset_stats.sample_examples(tfrecord, "test", labels, 2, 0)
  assert len({ex["label"] for ex in examples}) == 2


def test_long_tail_groups_boundaries():
  counts = np.array([19, 20, 100, 101, 3000])
  assert dataset_stats.long_tail_groups(counts, 100, 20) == {"head": 2, "medium": 2, "tail": 1}
  assert dataset_stats.class_count_stats(np.array([1, 2, 3, 10])) == {
    "mean": 4.0,
    "median": 2.5,
    "std": pytest.approx(3.5355339),
    "min": 1,
    "max": 10,
  }


def test_command_line_with_relative_paths(built, tmp_path):
  (tmp_path / "work").mkdir()
  relative = os.path.relpath(built.data_dir, tmp_path / "work")
  result = subprocess.run(
    [
      sys.executable,
      str(ROOT / "tools" / "dataset_stats.py"),
      f"--dataset_dir={relative}",
      "--out_dir=stats",
      "--grid=2",
      "--split=test",
    ],
    cwd=tmp_path / "work",
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  written = json.loads(
    (tmp_path / "work" / "stats" / "moeimouto_drop_non_rgb_test_stats.json").read_text()
  )
  assert (written["num_images"], written["images_per_class"]["max"]) == (5, 2)
  assert pathlib.Path(written["figures"]["samples"]).is_file()
