"""Held-out classes: characters kept out of training, to measure how unknown ones are answered.

With config.open_set.holdout_classes (names) and/or holdout_count (chosen with config.seed),
those classes leave the training and validation splits and the model's classes: the remaining
("known") classes are renumbered 0..K-1 in their dataset order, and the class names saved with
the run are the known ones. Their test pictures are kept apart as the unknown set
(`unknown_source`), which tools/open_set_benchmark.py measures against.

  held = holdout.from_config(config, dataset_names)
  sources, names = holdout.known_sources(builder, config, sources)   # what train.py trains on
"""

import dataclasses
import difflib
from typing import Any

import ml_collections
import numpy as np

from animesion_jax import config_schema
from animesion_jax.data import datasets


@dataclasses.dataclass(frozen=True)
class Holdout:
  """Which of a dataset's classes are held out, and the known classes' new ids."""

  dataset_names: tuple[str, ...]
  held_out: tuple[str, ...]  # In dataset order.

  @property
  def known_names(self) -> list[str]:
    held = set(self.held_out)
    return [name for name in self.dataset_names if name not in held]

  @property
  def held_out_ids(self) -> list[int]:
    """Dataset class ids of the held-out classes."""
    held = set(self.held_out)
    return [i for i, name in enumerate(self.dataset_names) if name in held]

  @property
  def new_ids(self) -> np.ndarray:
    """Dataset class id -> known class id, or -1 for a held-out class."""
    held = set(self.held_out)
    ids = np.full(len(self.dataset_names), -1, np.int64)
    known = [i for i, name in enumerate(self.dataset_names) if name not in held]
    ids[known] = np.arange(len(known))
    return ids


def from_config(config: ml_collections.ConfigDict, dataset_names: list[str]) -> Holdout:
  """The classes config.open_set holds out of `dataset_names` (none for older configs).

  Raises:
    config_schema.ConfigError: a name the dataset lacks (with the closest names), or fewer
      than two known classes left.
  """
  open_set = config.get("open_set") or ml_collections.ConfigDict()
  given = [name.strip() for name in str(open_set.get("holdout_classes", "")).split(",")]
  given = [name for name in given if name]
  count = int(open_set.get("holdout_count", 0))
  missing = [name for name in given if name not in dataset_names]
  if missing:
    close = difflib.get_close_matches(missing[0], dataset_names, n=3)
    raise config_schema.ConfigError(
      f"config.open_set.holdout_classes: {missing} not among the dataset's "
      f"{len(dataset_names)} classes" + (f" (closest: {close})" if close else "") + "."
    )
  if count < 0:
    raise config_schema.ConfigError(f"config.open_set.holdout_count={count} must be >= 0.")
  rest = [i for i, name in enumerate(dataset_names) if name not in set(given)]
  if len(rest) - count < 2:
    raise config_schema.ConfigError(
      f"config.open_set holds out {len(given) + count} of {len(dataset_names)} classes; "
      "at least 2 must stay known."
    )
  rng = np.random.default_rng([int(config.get("seed", 0)), 0x0BE7])
  chosen = {int(i) for i in rng.choice(rest, size=count, replace=False)} if count else set()
  held = set(given) | {dataset_names[i] for i in chosen}
  return Holdout(tuple(dataset_names), tuple(n for n in dataset_names if n in held))


class Relabeled:
  """Some records of a source, by index, with their labels replaced."""

  def __init__(self, source: Any, indices: np.ndarray, labels: np.ndarray):
    self.source = source
    self.indices = [int(i) for i in indices]
    self.labels = [int(label) for label in labels]

  def __len__(self) -> int:
    return len(self.indices)

  def _relabel(self, record: Any, index: int) -> dict[str, Any]:
    return {**record, "label": self.labels[index]}

  def __getitem__(self, index: int) -> dict[str, Any]:
    return self._relabel(self.source[self.indices[index]], index)

  def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
    wanted = [self.indices[i] for i in indices]
    if hasattr(self.source, "__getitems__"):
      records = list(self.source.__getitems__(wanted))
    else:
      records = [self.source[i] for i in wanted]
    return [self._relabel(r, i) for r, i in zip(records, indices)]


def split_labels(
  builder: Any, split: str, dataset: str, validation_fraction: float = 0.0
) -> np.ndarray:
  """Dataset labels of `datasets.split_source(...)`'s records, in its order (no image decoded)."""
  from tfds_builders.common import class_counts  # pylint: disable=g-import-not-at-top

  source = datasets.split_source(builder, split, dataset, validation_fraction)
  if isinstance(source, datasets.Subset):
    base = class_counts.read_labels(builder, datasets.get_spec(dataset).train_split)
    return base[np.asarray(source.indices, np.int64)]
  return class_counts.read_labels(builder, split)


def known_source(source: Any, labels: np.ndarray, held: Holdout) -> Relabeled:
  """The records of known classes, labelled with their known class ids."""
  new = held.new_ids[labels]
  keep = np.flatnonzero(new >= 0)
  return Relabeled(source, keep, new[keep])


def unknown_source(source: Any, labels: np.ndarray, held: Holdout) -> Relabeled:
  """The records of held-out classes, keeping their dataset class ids as labels."""
  keep = np.flatnonzero(held.new_ids[labels] < 0)
  return Relabeled(source, keep, labels[keep])


def known_counts(counts: np.ndarray, held: Holdout) -> np.ndarray:
  """Per-class counts of the dataset's classes -> those of the known classes (known id order)."""
  return np.asarray(counts)[held.new_ids >= 0]


def known_labels(labels: np.ndarray, held: Holdout) -> np.ndarray:
  """Dataset labels of a split's records -> the known class ids of the records `known_source`
  keeps, in its order."""
  new = held.new_ids[np.asarray(labels, np.int64)]
  return new[new >= 0]


def known_sources(
  builder: Any, config: ml_collections.ConfigDict, sources: dict[str, Any]
) -> tuple[dict[str, Any], list[str]]:
  """(split -> records of known classes, known class names); unchanged without a holdout."""
  names = list(builder.info.features["label"].names)
  held = from_config(config, names)
  if not held.held_out:
    return sources, names
  known = {
    split: known_source(
      source, split_labels(builder, split, config.dataset, config.validation_fraction), held
    )
    for split, source in sources.items()
  }
  return known, held.known_names
