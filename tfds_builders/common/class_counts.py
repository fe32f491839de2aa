"""Examples per class of each split: stored when a dataset is built, read back cheaply.

Builders count the label of every example they write (`SplitCounter`) and store
the counts in the dataset's metadata (metadata.json, key 'class_counts': split
name -> list of counts indexed by class id). `split_class_counts` returns them
for a split expression such as 'train' or 'train+test', so that evaluation and
tools/dataset_stats.py never read a whole split to count labels. Datasets built
before the counts were stored (or counts that do not match the split sizes) are
counted from the labels alone: the raw ArrayRecord records are parsed for their
'label' feature only, and TFRecord files are read with the image feature left
unparsed; no image is ever decoded.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable

from absl import logging
import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.proto import tf_example_pb2

METADATA_KEY = "class_counts"
# Records parsed per batched ArrayRecord read when counting from the labels.
_READ_BATCH = 4096


class SplitCounter:
  """Counts the labels of the examples a builder writes to one split."""

  def __init__(self):
    self._counts: collections.Counter[int] = collections.Counter()

  def add(self, label: int) -> None:
    self._counts[int(label)] += 1

  def store(self, info: tfds.core.DatasetInfo, split: str, num_classes: int) -> None:
    """Writes the counts to `info.metadata` (declare a MetadataDict in _info)."""
    counts = [0] * num_classes
    for label, count in self._counts.items():
      counts[label] = count
    info.metadata.setdefault(METADATA_KEY, {})[split] = counts


def stored_split_counts(
  builder: tfds.core.DatasetBuilder, split: str, num_classes: int
) -> np.ndarray | None:
  """The stored counts of plain split `split`, if present and consistent (None otherwise)."""
  metadata = builder.info.metadata or {}
  counts = metadata.get(METADATA_KEY, {}).get(split)
  if counts is None:
    return None
  counts = np.asarray(counts, np.int64)
  expected = builder.info.splits[split].num_examples
  if len(counts) != num_classes or counts.sum() != expected or (counts < 0).any():
    logging.warning(
      "%s: stored class counts of split %r do not match the dataset (%d "
      "classes, %d examples; expected %d and %d); counting the labels.",
      builder.info.full_name,
      split,
      len(counts),
      counts.sum(),
      num_classes,
      expected,
    )
    return None
  return counts


def _array_record_labels(builder: tfds.core.DatasetBuilder, split: str) -> Iterable[int]:
  source = builder.as_data_source(
    split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES, file_format="array_record"
  )
  for start in range(0, len(source), _READ_BATCH):
    for record in source.__getitems__(range(start, min(start + _READ_BATCH, len(source)))):
      feature = tf_example_pb2.Example.FromString(record).features.feature
      yield feature["label"].int64_list.value[0]


def _tfrecord_labels(builder: tfds.core.DatasetBuilder, split: str) -> Iterable[int]:
  dataset = builder.as_dataset(
    split, shuffle_files=False, decoders=tfds.decode.PartialDecoding({"label": True})
  )
  for example in tfds.as_numpy(dataset):
    yield example["label"]


def read_labels(builder: tfds.core.DatasetBuilder, split: str) -> np.ndarray:
  """The label of every example of `split` (any split expression), in stored order.

  Only the 'label' feature is parsed; images are neither parsed nor decoded.
  """
  if builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD:
    labels = _array_record_labels(builder, split)
  else:
    labels = _tfrecord_labels(builder, split)
  return np.fromiter(labels, np.int64)


def split_class_counts(
  builder: tfds.core.DatasetBuilder, split: str, num_classes: int | None = None
) -> np.ndarray:
  """Examples per class id in `split` of a prepared dataset.

  Args:
    builder: the prepared dataset.
    split: a split name, or split names joined by '+'; any other TFDS split
      expression (slices) is counted from its labels.
    num_classes: length of the result; default: the dataset's class count.

  Returns:
    int64 array, [num_classes].

  Raises:
    ValueError: a label is outside [0, num_classes).
  """
  dataset_classes = builder.info.features["label"].num_classes
  num_classes = dataset_classes if num_classes is None else num_classes
  parts = [part.strip() for part in split.split("+")]
  if all(part in builder.info.splits for part in parts):
    stored = [stored_split_counts(builder, part, dataset_classes) for part in parts]
    if all(counts is not None for counts in stored):
      total = np.sum(stored, axis=0)
      if num_classes < dataset_classes and total[num_classes:].any():
        raise ValueError(
          f"{builder.info.full_name} [{split}] has labels >= {num_classes} "
          f"(it has {dataset_classes} classes)."
        )
      return np.pad(total, (0, max(0, num_classes - dataset_classes)))[:num_classes]
  logging.info(
    "%s [%s]: no stored class counts; reading the labels.", builder.info.full_name, split
  )
  labels = read_labels(builder, split)
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(
      f"{builder.info.full_name} [{split}]: labels must be in "
      f"[0, {num_classes}); got {labels.min()}..{labels.max()}."
    )
  return np.bincount(labels, minlength=num_classes)
