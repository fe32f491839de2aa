"""TFDS builder for `synthetic_characters`: procedurally drawn characters.

Needs no download, so it is the dataset the quick start and the tests use to
exercise the whole pipeline (build -> ArrayRecord -> data source -> training).

Build it with either of:

  tfds build tfds_builders/synthetic_characters
  tfds.builder('synthetic_characters', data_dir=...).download_and_prepare()

The size knob is the builder config: `default` has 360/20/30 images per class
(train/validation/test); `small` has 20/4/8 for tests and smoke runs; `longtail`
has 300 generated characters whose training images follow a power law from 200
down to 4 (DAF:re's shape), with 10/20 validation/test images each (see
docs/longtail.md). Any other size or seed can be built by passing a
`SyntheticCharactersConfig` instance:

  Builder(config=SyntheticCharactersConfig(name='mine', seed=3,
                                           train_per_class=50), data_dir=...)
"""

from __future__ import annotations

from collections.abc import Iterator
import concurrent.futures
import dataclasses
import functools
import io
import multiprocessing
import os
from typing import Any

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from tfds_builders.common import class_counts
from tfds_builders.common import file_format as file_format_lib

from . import drawing

IMAGE_SIZE = 64
# Each split draws from its own random stream, so no image is repeated across
# splits and growing one split leaves the others unchanged.
_SPLIT_STREAMS = {"train": 1, "validation": 2, "test": 3}

# {num_classes} is filled in per builder config.
_DESCRIPTION = f"""\
SYNTHETIC data: {{num_classes}} procedurally drawn anime-style
"characters" at {IMAGE_SIZE}x{IMAGE_SIZE} RGB (PNG). It exists to exercise the
whole pipeline (dataset build, input pipeline, training, evaluation,
prediction) without downloading anything; accuracy on it says nothing about
real anime character recognition.

Each class is a fixed combination of face shape, hair colour, hair style, eye
colour and accessory; every attribute value is shared by several classes.
Position, scale, rotation, background, clothing and accessory colours, line
noise and colour jitter vary per image. The images are a deterministic
function of the config's seed.
"""


@dataclasses.dataclass
class SyntheticCharactersConfig(tfds.core.BuilderConfig):
  """Size and seed of a synthetic build.

  Attributes:
    seed: global seed; the same seed gives byte-identical PNGs.
    train_per_class: images per class in the train split.
    validation_per_class: images per class in the validation split.
    test_per_class: images per class in the test split.
    num_characters: 0: the 28 fixed characters (drawing.CHARACTERS); N > 0: N
      generated ones (drawing.generated_characters, from `seed`).
    train_min_per_class: 0: every class has train_per_class training images;
      M > 0: a long tail, from train_per_class images for the most frequent
      class down to M for the rarest (`train_counts`).
  """

  seed: int = 0
  train_per_class: int = 360
  validation_per_class: int = 20
  test_per_class: int = 30
  num_characters: int = 0
  train_min_per_class: int = 0

  def __post_init__(self):
    for split in _SPLIT_STREAMS:
      count = self.per_class(split)
      if not isinstance(count, int) or count < 1:
        raise ValueError(
          f"{split}_per_class must be a positive int (every class must "
          f"appear in every split), got {count!r}."
        )
    if not 0 <= self.train_min_per_class <= self.train_per_class:
      raise ValueError(
        f"train_min_per_class={self.train_min_per_class} must be in "
        f"[0, train_per_class={self.train_per_class}] (0: no long tail)."
      )

  def characters(self) -> tuple[drawing.Character, ...]:
    """The classes, in label order."""
    if self.num_characters:
      return drawing.generated_characters(self.num_characters, self.seed)
    return drawing.CHARACTERS

  def per_class(self, split: str) -> int:
    """Images per class in `split` (of the most frequent class, for a long-tailed train)."""
    return getattr(self, f"{split}_per_class")

  def split_counts(self, split: str) -> list[int]:
    """Images of each class (by label) in `split`."""
    if split == "train" and self.train_min_per_class:
      return train_counts(
        len(self.characters()), self.train_per_class, self.train_min_per_class, self.seed
      )
    return [self.per_class(split)] * len(self.characters())


def train_counts(num_classes: int, most: int, fewest: int, seed: int) -> list[int]:
  """Training images per class on a power law, n(r) = most * (1 + r/s)^-a by frequency rank r.

  s = num_classes / 20 keeps the median about 2.3 times the minimum, as in DAF:re's training
  split (median 32, minimum 14); a makes the rarest class have `fewest`. Which class gets which
  rank is a seeded permutation, so frequency is unrelated to the attributes.
  """
  ranks = np.arange(num_classes)
  scale = num_classes / 20
  power = np.log(most / fewest) / np.log1p((num_classes - 1) / scale) if num_classes > 1 else 0.0
  by_rank = np.maximum(fewest, np.round(most * (1 + ranks / scale) ** -power)).astype(int)
  rank_of_class = np.random.default_rng([seed, 0x7A11]).permutation(num_classes)
  return [int(by_rank[rank]) for rank in rank_of_class]


class Builder(tfds.core.GeneratorBasedBuilder):
  """DatasetBuilder for the synthetic characters dataset."""

  VERSION = tfds.core.Version("2.0.0")
  RELEASE_NOTES = {
    "1.0.0": "Initial release: 28 characters.",
    "2.0.0": "Classes differ in at least two attributes; 360 train images per class.",
  }
  BUILDER_CONFIGS = [
    SyntheticCharactersConfig(
      name="default", description="360/20/30 images per class (train/validation/test)."
    ),
    SyntheticCharactersConfig(
      name="small",
      train_per_class=20,
      validation_per_class=4,
      test_per_class=8,
      description="20/4/8 images per class; for tests and smoke runs.",
    ),
    SyntheticCharactersConfig(
      name="longtail",
      num_characters=300,
      train_per_class=200,
      train_min_per_class=4,
      validation_per_class=10,
      test_per_class=20,
      description=(
        "300 generated characters; training images per class on a power law from 200 down "
        "to 4 (DAF:re's shape); 10/20 validation/test images per class."
      ),
    ),
    SyntheticCharactersConfig(
      name="longtail_small",
      num_characters=30,
      train_per_class=20,
      train_min_per_class=2,
      validation_per_class=1,
      test_per_class=2,
      description="The long tail's shape in seconds: 30 characters, 20 down to 2; for tests.",
    ),
  ]

  def __init__(self, *, file_format: str | None = None, **kwargs: Any):
    super().__init__(file_format=file_format, **kwargs)
    file_format_lib.default_to_array_record(self, file_format)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description=_DESCRIPTION.format(num_classes=len(self.builder_config.characters())),
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 3), encoding_format="png"),
          "label": tfds.features.ClassLabel(
            names=[c.name for c in self.builder_config.characters()]
          ),
          "file_name": tfds.features.Text(
            doc='Synthetic path, e.g. "train/aoi_twintails/00017.png".'
          ),
        }
      ),
      supervised_keys=("image", "label"),
      # 'class_counts': examples per class of each split.
      metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Nothing to download.
    return {split: self._generate_examples(split) for split in _SPLIT_STREAMS}

  def _generate_examples(self, split: str) -> Iterator[tuple[str, dict]]:
    config = self.builder_config
    characters = config.characters()
    jobs = [
      (config.seed, _SPLIT_STREAMS[split], label, index)
      for label, count in enumerate(config.split_counts(split))
      for index in range(count)
    ]
    # Drawing dominates the build; each image depends only on its own job, so
    # worker processes draw in parallel and the order (and bytes) stay fixed.
    draw = functools.partial(_draw_png, characters=characters)
    workers = min(os.cpu_count() or 1, 8)
    if workers > 1:
      context = multiprocessing.get_context("fork")
      with concurrent.futures.ProcessPoolExecutor(workers, context) as pool:
        pngs = list(pool.map(draw, jobs, chunksize=64))
    else:
      pngs = [draw(job) for job in jobs]
    counter = class_counts.SplitCounter()
    for (_, _, label, index), png in zip(jobs, pngs):
      name = characters[label].name
      file_name = f"{split}/{name}/{index:05d}.png"
      counter.add(label)
      yield file_name, {"image": png, "label": label, "file_name": file_name}
    counter.store(self.info, split, len(characters))


def _draw_png(
  job: tuple[int, int, int, int], characters: tuple[drawing.Character, ...] = drawing.CHARACTERS
) -> bytes:
  """PNG bytes of image `index` of class `label` (of `characters`) in split stream `stream`."""
  seed, stream, label, index = job
  rng = drawing.image_rng(seed, stream, label, index)
  pixels = drawing.draw_character(characters[label], rng, IMAGE_SIZE)
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format="PNG")
  return buffer.getvalue()
