"""The datasets the train loop knows, and how to open their TFDS records.

Nothing here needs TensorFlow: tfds (>= 4.9.10) reads ArrayRecord data sources, dataset metadata
and, through `download_and_prepare`, builds the synthetic dataset without it (images stay encoded
bytes, decoded by the grain pipeline). Only the `tfds build` command line imports TensorFlow.
"""

import dataclasses
import importlib
import os
from typing import Any

from absl import logging
from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from animesion_jax import run_dir


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """How to find one dataset's builder and which splits it has."""

  builder_module: str  # Importing it defines (and registers with TFDS) the builder class `Builder`.
  train_split: str
  needs_download: bool  # False: it can be built here with no files from the user.
  build_command: str  # What the user runs to build it.


DATASETS: dict[str, DatasetSpec] = {
  "synthetic_characters": DatasetSpec(
    builder_module="tfds_builders.synthetic_characters",
    train_split="train",
    needs_download=False,
    build_command="tfds build tfds_builders/synthetic_characters",
  ),
  # Pictures with head boxes, for the detector (config.task='detect'); its 'dafre' config pastes
  # DAF:re's crops and needs the download (--manual_dir).
  "synthetic_scenes": DatasetSpec(
    builder_module="tfds_builders.synthetic_scenes",
    train_split="train",
    needs_download=False,
    build_command="tfds build tfds_builders/synthetic_scenes",
  ),
  "moeimouto": DatasetSpec(
    builder_module="tfds_builders.moeimouto",
    train_split="train",
    needs_download=True,
    build_command="tfds build tfds_builders/moeimouto --manual_dir=DIR",
  ),
  "dafre": DatasetSpec(
    builder_module="tfds_builders.dafre",
    train_split="train",
    needs_download=True,
    build_command="tfds build tfds_builders/dafre --manual_dir=DIR",
  ),
}


def get_spec(name: str) -> DatasetSpec:
  if name not in DATASETS:
    raise ValueError(
      f"config.dataset={name!r} is not a known dataset; choose one of {sorted(DATASETS)}."
    )
  return DATASETS[name]


def get_builder(
  name: str, data_dir: str = "", builder_config: str = ""
) -> tfds.core.DatasetBuilder:
  """The TFDS builder of a dataset in `DATASETS` (nothing is built or read yet)."""
  spec = get_spec(name)
  builder_cls = importlib.import_module(spec.builder_module).Builder
  # A relative or `~` data_dir means the user's directory; gs:// stays as it is.
  kwargs: dict[str, Any] = {"data_dir": os.fspath(run_dir.resolve(data_dir)) if data_dir else None}
  if builder_config:
    kwargs["config"] = builder_config
  return builder_cls(**kwargs)


def is_built(builder: tfds.core.DatasetBuilder) -> bool:
  return (epath.Path(builder.data_dir) / "dataset_info.json").exists()


def open_dataset(
  name: str, data_dir: str = "", builder_config: str = "", build_if_missing: bool = False
) -> tfds.core.DatasetBuilder:
  """Returns the builder of a prepared dataset, building it first if allowed.

  Raises:
    FileNotFoundError: the dataset is not built and cannot or may not be built here; the
      message gives the command that builds it.
  """
  spec = get_spec(name)
  builder = get_builder(name, data_dir, builder_config)
  if is_built(builder):
    return builder
  if build_if_missing and not spec.needs_download:
    logging.info("Building %s in %s (first use).", name, builder.data_dir)
    builder.download_and_prepare(file_format="array_record")
    return builder
  data_dir_flag = f" --data_dir={data_dir}" if data_dir else ""
  raise FileNotFoundError(
    f"Dataset {name!r} is not built in {builder.data_dir}. Build it first with:\n"
    f"  {spec.build_command}{data_dir_flag}\n"
    + (
      "(see README.md, section 'Datasets', for where to download the files)"
      if spec.needs_download
      else "(or set --config.build_dataset_if_missing=True)"
    )
  )


def available_eval_splits(builder: tfds.core.DatasetBuilder, wanted: tuple[str, ...]) -> list[str]:
  """The wanted evaluation splits that this dataset has, in the order asked for."""
  return [split for split in wanted if split in builder.info.splits]


def data_source(builder: tfds.core.DatasetBuilder, split: str):
  """Random-access records with the image left encoded (decoded by the input pipeline)."""
  return builder.as_data_source(
    split, decoders={"image": tfds.decode.SkipDecoding()}, file_format="array_record"
  )


_CARVE_SEED = 0  # Fixed, so runs with different seeds share one carved validation split.


class Subset:
  """Some records of a random-access source, by index (e.g. a validation split carved from train)."""

  def __init__(self, source: Any, indices: Any):
    self.source = source
    self.indices = [int(i) for i in indices]

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, index: int) -> Any:
    return self.source[self.indices[index]]


def carves_validation(builder: tfds.core.DatasetBuilder, validation_fraction: float) -> bool:
  """Whether 'validation' is carved from train (asked for, and the dataset has none)."""
  return validation_fraction > 0 and "validation" not in builder.info.splits


def split_source(
  builder: tfds.core.DatasetBuilder, split: str, dataset: str, validation_fraction: float = 0.0
):
  """The records of `split`; with config.validation_fraction > 0 on a dataset without a
  validation split, 'validation' is a seeded fraction of train and train is the rest."""
  train_split = get_spec(dataset).train_split
  if not carves_validation(builder, validation_fraction) or split not in (
    "validation",
    train_split,
  ):
    return data_source(builder, split)
  source = data_source(builder, train_split)
  order = np.random.default_rng(_CARVE_SEED).permutation(len(source))
  count = max(1, int(round(validation_fraction * len(source))))
  return Subset(source, sorted(order[:count] if split == "validation" else order[count:]))


class MissingClassCounts(ValueError):
  """The dataset was built without the training images per class that a loss needs."""


def stored_train_counts(
  builder: tfds.core.DatasetBuilder, dataset: str, validation_fraction: float = 0.0
) -> np.ndarray:
  """Training images per class, as stored when the dataset was built (metadata 'class_counts').

  With a validation split carved from train (config.validation_fraction), the carved records'
  labels are read (label feature only) and taken off.

  Raises:
    MissingClassCounts: the build stored no (or inconsistent) counts; says how to rebuild.
  """
  from tfds_builders.common import class_counts  # pylint: disable=g-import-not-at-top

  train_split = get_spec(dataset).train_split
  num_classes = builder.info.features["label"].num_classes
  counts = class_counts.stored_split_counts(builder, train_split, num_classes)
  if counts is None:
    raise MissingClassCounts(
      f"{builder.info.full_name} in {builder.data_dir} was built without the training images "
      f"per class (metadata 'class_counts' of split {train_split!r}), which the long-tail losses "
      "and class-balanced sampling use. Rebuild it with this version's builder:\n  "
      f"{get_spec(dataset).build_command} --overwrite"
    )
  if carves_validation(builder, validation_fraction):
    carved = split_source(builder, "validation", dataset, validation_fraction)
    labels = class_counts.read_labels(builder, train_split)[carved.indices]
    counts = counts - np.bincount(labels, minlength=num_classes)
  return counts


def train_labels(
  builder: tfds.core.DatasetBuilder, dataset: str, validation_fraction: float = 0.0
) -> np.ndarray:
  """The label of every record of the training source (`split_source`), in its order.

  Only the label feature is parsed (no image is decoded).
  """
  from tfds_builders.common import class_counts  # pylint: disable=g-import-not-at-top

  train_split = get_spec(dataset).train_split
  labels = class_counts.read_labels(builder, train_split)
  if carves_validation(builder, validation_fraction):
    labels = labels[split_source(builder, train_split, dataset, validation_fraction).indices]
  return labels
