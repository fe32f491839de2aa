"""Tests for the synthetic_scenes builder: scenes composed of characters, with head boxes."""

import io
import pathlib

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from animesion_jax.data import datasets
from tfds_builders.synthetic_scenes import composer
from tfds_builders.synthetic_scenes import sprites
from tfds_builders.synthetic_scenes import synthetic_scenes_dataset_builder as ssb

_REPO = pathlib.Path(__file__).resolve().parents[1]
_DAFRE_FIXTURE = _REPO / "tfds_builders" / "dafre" / "dummy_data" / "current"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  builder = ssb.Builder(config="tiny", data_dir=str(tmp_path_factory.mktemp("scenes")))
  builder.download_and_prepare(file_format="array_record")
  return builder


def _area(box):
  return float(box[2] * box[3])


def test_composed_boxes_lie_in_the_picture_and_stay_visible():
  layout = composer.Layout()
  source = sprites.SyntheticSprites()
  counts = []
  for index in range(30):
    scene = composer.compose(np.random.default_rng(index), source, layout, count=5)
    height, width, _ = scene.image.shape
    assert layout.min_side <= min(height, width) <= max(height, width) <= layout.max_side
    assert scene.boxes.shape == (len(scene.labels), 4)
    x, y, w, h = scene.boxes.T
    assert (x >= 0).all() and (y >= 0).all()
    assert (x + w <= width).all() and (y + h <= height).all()
    assert (np.maximum(w, h) >= 0.6 * layout.min_head).all()
    assert (np.maximum(w, h) <= layout.max_head).all()
    # Each box keeps most of its area uncovered by the boxes pasted after it.
    for i, box in enumerate(scene.boxes):
      covered = sum(composer._intersection(box, later) for later in scene.boxes[i + 1 :])
      assert covered <= 0.5 * _area(box)
    assert ((0 <= scene.labels) & (scene.labels < len(source.names()))).all()
    counts.append(len(scene.labels))
  assert np.mean(counts) >= 4  # Five asked for; few are left out for want of room.


def test_same_seed_same_scene_and_count_is_uniform():
  source, layout = sprites.SyntheticSprites(), composer.Layout(max_characters=5)
  a = composer.compose(np.random.default_rng(7), source, layout)
  b = composer.compose(np.random.default_rng(7), source, layout)
  np.testing.assert_array_equal(a.image, b.image)
  np.testing.assert_array_equal(a.boxes, b.boxes)
  counts = [
    len(composer.compose(np.random.default_rng(i), source, layout).labels) for i in range(60)
  ]
  assert 0 in counts and max(counts) >= 4


def test_a_box_crops_the_character_drawn_there():
  """The box is the sprite's square: cropping it gives the sprite back (here on a 1-character
  scene, unflipped or flipped)."""
  marker = Image.new("RGBA", (32, 32), (255, 0, 255, 255))
  source = lambda rng: composer.Sprite(3, marker)
  scene = composer.compose(np.random.default_rng(1), source, composer.Layout(), count=1)
  ((x, y, w, h),) = scene.boxes.astype(int)
  crop = scene.image[y : y + h, x : x + w]
  assert scene.labels.tolist() == [3]
  assert np.mean(np.all(crop == (255, 0, 255), axis=-1)) > 0.6  # Some may be behind a shape.


def test_tiny_build_has_boxes_names_and_empty_pictures(tiny):
  names = tiny.info.features["objects"]["label"].names
  assert names == sprites.SyntheticSprites().names()
  empty = 0
  for split, count in (("train", 12), ("validation", 4), ("test", 4)):
    source = datasets.data_source(tiny, split)
    assert len(source) == count
    for index in range(len(source)):
      record = source[index]
      image = np.asarray(Image.open(io.BytesIO(record["image"])))
      boxes = np.asarray(record["objects"]["box"], np.float32).reshape(-1, 4)
      assert len(boxes) == len(record["objects"]["label"]) <= 3
      assert (boxes[:, 0] + boxes[:, 2] <= image.shape[1]).all()
      assert (boxes[:, 1] + boxes[:, 3] <= image.shape[0]).all()
      empty += len(boxes) == 0
  assert empty >= 1  # 0 characters is one draw in four.


def test_dafre_crops_are_pasted_with_their_class_ids():
  source = sprites.dafre_sprites(_DAFRE_FIXTURE, "train")
  assert source.class_names[:2] == ("morrigan_aensland", "uchiha_sasuke")
  scene = composer.compose(np.random.default_rng(0), source, composer.Layout(), count=4)
  assert len(scene.labels) >= 3
  assert set(scene.labels.tolist()) <= set(source.labels)


def test_dafre_scenes_without_the_download_say_what_is_missing(tmp_path):
  with pytest.raises(FileNotFoundError, match="classid_classname.csv is missing"):
    sprites.dafre_sprites(tmp_path, "train")


def test_dafre_config_builds_scenes_of_the_fixture_crops(tmp_path):
  config = ssb.SyntheticScenesConfig(
    name="dafre_tiny",
    sprites="dafre",
    train_pictures=3,
    validation_pictures=2,
    test_pictures=2,
    layout=composer.Layout(min_side=96, max_side=128, min_head=24, max_head=64),
  )
  builder = ssb.Builder(config=config, data_dir=str(tmp_path))
  builder.download_and_prepare(
    file_format="array_record",
    download_config=tfds.download.DownloadConfig(manual_dir=str(_DAFRE_FIXTURE)),
  )
  test_crops = sprites.dafre_sprites(_DAFRE_FIXTURE, "test")
  source = datasets.data_source(builder, "test")
  labels = [int(x) for i in range(len(source)) for x in source[i]["objects"]["label"]]
  assert labels and set(labels) <= set(test_crops.labels)  # Test scenes paste test crops.


def test_dafre_config_without_a_manual_dir_says_where_to_get_it(tmp_path):
  builder = ssb.Builder(config="dafre", data_dir=str(tmp_path))
  with pytest.raises(FileNotFoundError, match="(?s)DAF:re's download.*--config=dafre --manual_dir"):
    builder.download_and_prepare(file_format="array_record")
