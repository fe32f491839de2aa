"""Tests for the synthetic_characters TFDS builder and its drawing code."""

import collections
import itertools
import os
import pathlib
import re
import subprocess
import sys

from array_record.python import array_record_module
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from tests import helpers
from tfds_builders.common import class_counts

# Importing the package registers the dataset name with TFDS.
from tfds_builders.synthetic_characters import drawing
from tfds_builders.synthetic_characters import synthetic_characters_dataset_builder as scb

_REPO = pathlib.Path(__file__).resolve().parents[1]
_NUM_CLASSES = len(drawing.CHARACTERS)
_SPLITS = ("train", "validation", "test")
_SMALL_PER_CLASS = {"train": 20, "validation": 4, "test": 8}


def _tiny_config(seed: int = 0, per_class: int = 2) -> scb.SyntheticCharactersConfig:
  return scb.SyntheticCharactersConfig(
    name=f"tiny_s{seed}_n{per_class}",
    seed=seed,
    train_per_class=per_class,
    validation_per_class=per_class,
    test_per_class=per_class,
  )


@pytest.fixture(scope="module")
def small_builder(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tfds")
  builder = tfds.builder("synthetic_characters/small", data_dir=data_dir)
  builder.download_and_prepare()
  return builder


@pytest.fixture(scope="module")
def small_splits(small_builder):
  """split -> (images [N,64,64,3] uint8, labels [N], file names [N])."""
  out = {}
  for split in _SPLITS:
    source = tfds.data_source(
      "synthetic_characters/small", split=split, data_dir=small_builder.data_dir_root
    )
    examples = [source[i] for i in range(len(source))]
    out[split] = (
      np.stack([e["image"] for e in examples]),
      np.array([e["label"] for e in examples]),
      [e["file_name"].decode() for e in examples],
    )
  return out


def _stored_pngs(builder) -> dict[str, bytes]:
  """file_name -> PNG bytes exactly as stored in the ArrayRecord shards."""
  pngs = {}
  for path in sorted(builder.data_path.glob("*.array_record-*")):
    reader = array_record_module.ArrayRecordReader(str(path))
    for record in reader.read_all():
      feature = tf.train.Example.FromString(record).features.feature
      file_name = feature["file_name"].bytes_list.value[0].decode()
      pngs[file_name] = feature["image"].bytes_list.value[0]
    reader.close()
  return pngs


# Class table.


def test_class_table_is_shared_but_unique():
  attributes = [c.attributes() for c in drawing.CHARACTERS]
  assert 24 <= _NUM_CLASSES <= 32
  assert len(set(drawing.class_names())) == _NUM_CLASSES
  assert len(set(attributes)) == _NUM_CLASSES
  # No attribute value singles out one class.
  for column in zip(*attributes):
    counts = collections.Counter(column)
    assert min(counts.values()) >= 2, counts
  # Any two classes differ in at least two attributes, and the closest pairs
  # in only two (so no class is separable by one trivial cue).
  distances = [
    sum(x != y for x, y in zip(a, b)) for i, a in enumerate(attributes) for b in attributes[i + 1 :]
  ]
  assert min(distances) == 2, min(distances)


def test_character_rejects_unknown_attribute():
  with pytest.raises(ValueError, match="hair_color"):
    drawing.Character("x", "round", "green", "long", "blue", "none")


# Drawing.


def test_draw_character_is_deterministic_and_varies():
  character = drawing.CHARACTERS[0]
  first = drawing.draw_character(character, drawing.image_rng(0, 1, 0, 5))
  again = drawing.draw_character(character, drawing.image_rng(0, 1, 0, 5))
  other = drawing.draw_character(character, drawing.image_rng(0, 1, 0, 6))
  assert first.shape == (64, 64, 3) and first.dtype == np.uint8
  np.testing.assert_array_equal(first, again)
  assert np.abs(first.astype(int) - other).mean() > 10


def test_draw_character_rejects_tiny_size():
  with pytest.raises(ValueError, match="at least 16"):
    drawing.draw_character(drawing.CHARACTERS[0], drawing.image_rng(0, 0, 0, 0), size=8)


def test_config_rejects_empty_split():
  with pytest.raises(ValueError, match="validation_per_class"):
    scb.SyntheticCharactersConfig(name="bad", validation_per_class=0)


# Built dataset.


def test_default_config_sizes():
  config = scb.Builder.BUILDER_CONFIGS[0]
  assert config.name == "default"
  assert [config.per_class(s) for s in _SPLITS] == [360, 20, 30]


def test_array_record_is_default_format(small_builder):
  assert small_builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD
  names = sorted(p.name for p in small_builder.data_path.glob("*.array_record-*"))
  assert [n.split(".")[0].split("-")[1] for n in names] == ["test", "train", "validation"]
  assert not list(small_builder.data_path.glob("*.tfrecord*"))


def test_split_sizes(small_builder, small_splits):
  for split in _SPLITS:
    expected = _SMALL_PER_CLASS[split] * _NUM_CLASSES
    assert small_builder.info.splits[split].num_examples == expected
    assert len(small_splits[split][1]) == expected


def test_labels_and_file_names(small_splits):
  names = drawing.class_names()
  seen = set()
  for split, (images, labels, file_names) in small_splits.items():
    assert images.shape[1:] == (64, 64, 3) and images.dtype == np.uint8
    assert labels.min() >= 0 and labels.max() < _NUM_CLASSES
    counts = np.bincount(labels, minlength=_NUM_CLASSES)
    assert (counts == _SMALL_PER_CLASS[split]).all(), counts
    for label, file_name in zip(labels, file_names):
      match = re.fullmatch(r"(\w+)/(\w+)/(\d{5})\.png", file_name)
      assert match, file_name
      assert match.group(1) == split
      assert match.group(2) == names[label]
    seen.update(file_names)
  assert len(seen) == sum(len(v[2]) for v in small_splits.values())


def test_images_vary_within_class(small_splits):
  images, labels, _ = small_splits["train"]
  for label in range(_NUM_CLASSES):
    members = images[labels == label].astype(np.float32)
    # Pixel std across one class's images, averaged over pixels.
    assert members.std(axis=0).mean() > 30
    assert len({m.tobytes() for m in members}) == len(members)


def test_splits_do_not_share_images(small_splits):
  hashes = {split: {img.tobytes() for img in small_splits[split][0]} for split in _SPLITS}
  for a, b in itertools.combinations(_SPLITS, 2):
    assert not hashes[a] & hashes[b]


def test_classes_differ_in_mean_centre_colour(small_splits):
  images, labels, _ = small_splits["train"]
  centre = images[:, 16:48, 16:48].reshape(len(images), -1, 3).astype(float)
  means = np.stack([centre[labels == k].mean(axis=(0, 1)) for k in range(_NUM_CLASSES)])
  dists = np.linalg.norm(means[:, None] - means[None], axis=-1)
  pair_dists = dists[np.triu_indices(_NUM_CLASSES, 1)]
  assert (pair_dists > 5).mean() >= 0.9, np.sort(pair_dists)[:10]


def test_nearest_centroid_is_above_chance_but_imperfect(small_splits):
  def features(images):
    x = images.astype(np.float32) / 255
    return x.reshape(len(x), 16, 4, 16, 4, 3).mean(axis=(2, 4)).reshape(len(x), -1)

  train_x, train_y, _ = small_splits["train"]
  test_x, test_y, _ = small_splits["test"]
  train_f, test_f = features(train_x), features(test_x)
  centroids = np.stack([train_f[train_y == k].mean(0) for k in range(_NUM_CLASSES)])
  dist = ((test_f[:, None] - centroids[None]) ** 2).sum(-1)
  accuracy = (dist.argmin(1) == test_y).mean()
  # Measured 0.23 here (chance 0.036); the default config gives 0.30.
  assert 3 / _NUM_CLASSES < accuracy < 0.9


def test_build_gives_byte_identical_pngs_per_seed(tmp_path):
  builds = []
  for run, seed in enumerate((0, 0, 1)):
    builder = scb.Builder(config=_tiny_config(seed=seed), data_dir=tmp_path / f"run{run}")
    builder.download_and_prepare()
    builds.append(_stored_pngs(builder))
  assert len(builds[0]) == 3 * 2 * _NUM_CLASSES
  assert all(png.startswith(b"\x89PNG") for png in builds[0].values())
  assert builds[0] == builds[1]
  assert builds[0].keys() == builds[2].keys()
  # Another seed redraws every image.
  assert all(builds[0][k] != builds[2][k] for k in builds[0])


def test_explicit_tfrecord_format_is_kept_on_reload(tmp_path):
  builder = scb.Builder(config=_tiny_config(per_class=1), data_dir=tmp_path, file_format="tfrecord")
  builder.download_and_prepare()
  assert list(builder.data_path.glob("*.tfrecord-*"))
  reloaded = scb.Builder(config=_tiny_config(per_class=1), data_dir=tmp_path)
  assert reloaded.info.file_format == tfds.core.FileFormat.TFRECORD
  assert reloaded.info.splits["test"].num_examples == _NUM_CLASSES


# Per-class counts stored at build time.


def test_class_counts_are_stored_and_read_without_records(small_builder, monkeypatch):
  reloaded = tfds.builder_from_directory(small_builder.data_dir)
  stored = reloaded.info.metadata[class_counts.METADATA_KEY]
  assert {split: stored[split] for split in _SPLITS} == {
    split: [_SMALL_PER_CLASS[split]] * _NUM_CLASSES for split in _SPLITS
  }

  def no_reading(*args):
    raise AssertionError(f"read the records: {args}")

  monkeypatch.setattr(class_counts, "read_labels", no_reading)
  counts = class_counts.split_class_counts(reloaded, "train+test")
  assert counts.tolist() == [28] * _NUM_CLASSES
  # A longer result is zero-padded; a shorter one must not drop any label.
  assert class_counts.split_class_counts(reloaded, "validation", _NUM_CLASSES + 2).tolist()[
    -3:
  ] == [4, 0, 0]
  with pytest.raises(ValueError, match=f"labels >= {_NUM_CLASSES - 1}"):
    class_counts.split_class_counts(reloaded, "test", _NUM_CLASSES - 1)


def test_class_counts_without_stored_counts_read_labels_only(small_builder, monkeypatch):
  reloaded = tfds.builder_from_directory(small_builder.data_dir)
  # As an older build: no counts in its metadata.
  del reloaded.info.metadata[class_counts.METADATA_KEY]
  labels = class_counts.read_labels(reloaded, "validation")
  source = reloaded.as_data_source("validation", decoders={"image": tfds.decode.SkipDecoding()})
  assert labels.tolist() == [int(ex["label"]) for ex in source]
  decoded = []
  monkeypatch.setattr(
    reloaded.info.features["image"], "decode_example_np", lambda *args, **kwargs: decoded.append(1)
  )
  counts = class_counts.split_class_counts(reloaded, "train[:50%]+test")
  assert counts.sum() == 10 * _NUM_CLASSES + 8 * _NUM_CLASSES
  assert not decoded
  # A slice has no stored counts either way; 'train' alone is read too.
  assert class_counts.split_class_counts(reloaded, "train").tolist() == ([20] * _NUM_CLASSES)


# The test session's own data directory (tests/helpers.py).


def test_session_data_is_built_in_this_sessions_own_directory(tmp_path_factory):
  root = os.environ[helpers.SESSION_DIR_ENV]
  # Under this session's pytest basetemp, so never a folder an earlier run left behind.
  assert pathlib.Path(root).parent == tmp_path_factory.getbasetemp()
  # Two training subprocesses asking first: one builds, the other waits for it.
  code = "from tests import helpers\nprint(helpers.tiny_config().data_dir)\n"
  processes = [
    subprocess.Popen(
      [sys.executable, "-c", code],
      cwd=_REPO,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for _ in range(2)
  ]
  outputs = [process.communicate(timeout=300) for process in processes]
  for process, (_, err) in zip(processes, outputs):
    assert process.returncode == 0, err[-2000:]
  data_dir = os.path.join(root, "tfds")
  assert [out.strip().splitlines()[-1] for out, _ in outputs] == [data_dir] * 2
  builder = tfds.builder("synthetic_characters/small", data_dir=data_dir)
  assert builder.info.splits["train"].num_examples == 20 * _NUM_CLASSES
  assert helpers.synthetic_data_dir() == data_dir
