"""TFDS builder for `synthetic_scenes`: pictures of 0-5 characters with head boxes and names.

What the head detector trains on (configs/detector_quickstart.py). The characters are the
synthetic characters' drawings (or, with the `dafre` config, DAF:re's real head crops) pasted on
illustrated backgrounds by composer.py; each box is the region a recognizer's training crop covers.

  tfds build tfds_builders/synthetic_scenes                     # default: 256-512 px pictures
  tfds build tfds_builders/synthetic_scenes --config=dafre --manual_dir=DIR   # DAF:re crops
  tfds.builder('synthetic_scenes', config='small', data_dir=...).download_and_prepare()

Features: `image` (PNG), `objects` (a sequence of `box` [x, y, w, h] float32 pixels and
`label`, the character), `file_name`.
"""

from __future__ import annotations

from collections.abc import Iterator
import concurrent.futures
import dataclasses
import io
import multiprocessing
import os
from typing import Any

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from tfds_builders.common import file_format as file_format_lib
from tfds_builders.common import manual_data

from . import composer
from . import sprites as sprites_lib

# Each split draws from its own random stream (none shared with synthetic_characters' streams).
_SPLIT_STREAMS = {"train": 11, "validation": 12, "test": 13}
# Classes of DAF:re's label files (tfds_builders/dafre).
DAFRE_NUM_CLASSES = 3263

_DESCRIPTION = """\
SYNTHETIC scenes for training and measuring a head detector: pictures of 0 to N characters
pasted at varied sizes and positions on illustrated backgrounds (outdoors or rooms), flipped,
overlapping one another, partly outside the picture or behind a foreground shape. Each character
has its head box ([x, y, w, h] in pixels: the region a recognizer's training crop covers,
clipped to the picture) and its name. A detector trained here has seen only these drawings and
backgrounds; see docs/detector.md for what it misses on real pictures.
"""


@dataclasses.dataclass
class SyntheticScenesConfig(tfds.core.BuilderConfig):
  """Sizes, counts and seed of a scenes build.

  Attributes:
    seed: global seed; the same seed gives byte-identical PNGs.
    train_pictures: pictures in the train split.
    validation_pictures: pictures in the validation split.
    test_pictures: pictures in the test split.
    layout: picture and head sizes and the most characters per picture.
    sprites: 'synthetic' (the 28 synthetic characters) or 'dafre' (DAF:re's head crops, from the
      manual directory, each split's scenes from that split's crops).
  """

  seed: int = 0
  train_pictures: int = 4000
  validation_pictures: int = 200
  test_pictures: int = 400
  layout: composer.Layout = composer.Layout()
  sprites: str = "synthetic"

  def pictures(self, split: str) -> int:
    return getattr(self, f"{split}_pictures")


def _sprite_source(config: SyntheticScenesConfig, split: str, manual_dir) -> Any:
  if config.sprites == "synthetic":
    return sprites_lib.SyntheticSprites()
  if config.sprites == "dafre":
    for root in manual_data.candidate_roots(manual_dir):
      if (root / "labels").exists():
        return sprites_lib.dafre_sprites(root, split)
    return sprites_lib.dafre_sprites(manual_dir, split)  # Raises, naming what is missing.
  raise ValueError(f"sprites={config.sprites!r}: choose 'synthetic' or 'dafre'.")


class Builder(tfds.core.GeneratorBasedBuilder):
  """DatasetBuilder for synthetic scenes with head boxes."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    "Only the 'dafre' config reads files: DAF:re's download as extracted (DIR/faces/ and "
    "DIR/labels/, see tfds_builders/dafre); the other configs need nothing."
  )
  BUILDER_CONFIGS = [
    SyntheticScenesConfig(
      name="default",
      description="4000/200/400 pictures of 256-512 px, heads 24-160 px, 0-5 characters.",
    ),
    SyntheticScenesConfig(
      name="small",
      train_pictures=3000,
      validation_pictures=100,
      test_pictures=300,
      layout=composer.Layout(min_side=160, max_side=256, min_head=28, max_head=112),
      description="3000/100/300 pictures of 160-256 px, heads 28-112 px: the quick start's.",
    ),
    SyntheticScenesConfig(
      name="tiny",
      train_pictures=12,
      validation_pictures=4,
      test_pictures=4,
      layout=composer.Layout(min_side=64, max_side=96, min_head=16, max_head=48, max_characters=3),
      description="12/4/4 pictures of 64-96 px; for tests.",
    ),
    SyntheticScenesConfig(
      name="dafre",
      train_pictures=50000,
      validation_pictures=1000,
      test_pictures=2000,
      sprites="dafre",
      description="DAF:re's head crops (manual download) pasted the same way; 50000/1000/2000.",
    ),
  ]

  def __init__(self, *, file_format: str | None = None, **kwargs: Any):
    super().__init__(file_format=file_format, **kwargs)
    file_format_lib.default_to_array_record(self, file_format)

  def _label_feature(self) -> tfds.features.ClassLabel:
    if self.builder_config.sprites == "dafre":
      # DAF:re's class ids; their names are those of the dafre dataset (tfds_builders/dafre).
      return tfds.features.ClassLabel(num_classes=DAFRE_NUM_CLASSES)
    return tfds.features.ClassLabel(names=sprites_lib.SyntheticSprites().names())

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description=_DESCRIPTION,
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
          "objects": tfds.features.Sequence(
            {
              "box": tfds.features.Tensor(
                shape=(4,), dtype=np.float32, doc="x, y, width, height in pixels."
              ),
              "label": self._label_feature(),
            }
          ),
          "file_name": tfds.features.Text(doc='Synthetic path, e.g. "train/00017.png".'),
        }
      ),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual_dir = None
    if self.builder_config.sprites != "synthetic":
      manual_dir, looked_in = manual_data.manual_dir(dl_manager)
      if manual_dir is None:
        raise manual_data.missing_data_error(
          "synthetic_scenes",
          looked_in,
          "DAF:re's download (see tfds_builders/dafre: dafre_faces.tar.gz and labels.tar.gz)",
          "  DIR/faces/<NNNN>/<id>.jpg\n  DIR/labels/classid_classname.csv, train.csv, val.csv, "
          "test.csv",
          config=self.builder_config.name,
        )
    return {
      split: self._generate_examples(split, _sprite_source(self.builder_config, split, manual_dir))
      for split in _SPLIT_STREAMS
    }

  def _generate_examples(self, split: str, sprites: Any) -> Iterator[tuple[str, dict]]:
    config = self.builder_config
    jobs = [(config.seed, _SPLIT_STREAMS[split], i) for i in range(config.pictures(split))]
    # The forked workers inherit the sprites and layout (DAF:re's list of crops is too large to
    # send with every chunk of jobs).
    _DRAWING["sprites"], _DRAWING["layout"] = sprites, config.layout
    workers = min(os.cpu_count() or 1, 8)
    if workers > 1 and len(jobs) > 16:
      context = multiprocessing.get_context("fork")
      with concurrent.futures.ProcessPoolExecutor(workers, context) as pool:
        scenes = pool.map(_draw_scene, jobs, chunksize=16)
        yield from _examples(split, scenes)
    else:
      yield from _examples(split, map(_draw_scene, jobs))


def _examples(split: str, scenes) -> Iterator[tuple[str, dict]]:
  for index, (png, boxes, labels) in enumerate(scenes):
    file_name = f"{split}/{index:05d}.png"
    yield (
      file_name,
      {"image": png, "objects": {"box": boxes, "label": labels}, "file_name": file_name},
    )


def scene_rng(seed: int, stream: int, index: int) -> np.random.Generator:
  """Independent generator for one scene, so any scene can be drawn alone."""
  return np.random.default_rng(np.random.SeedSequence([seed, stream, index]))


# What _draw_scene draws with: set by the builder before it forks its workers.
_DRAWING: dict[str, Any] = {}


def _draw_scene(job: tuple[int, int, int]) -> tuple[bytes, np.ndarray, np.ndarray]:
  seed, stream, index = job
  rng = scene_rng(seed, stream, index)
  scene = composer.compose(rng, _DRAWING["sprites"], _DRAWING["layout"])
  buffer = io.BytesIO()
  Image.fromarray(scene.image).save(buffer, format="PNG")
  return buffer.getvalue(), scene.boxes, scene.labels
