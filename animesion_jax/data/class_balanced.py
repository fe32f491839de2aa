"""Class-balanced sampling: a class uniformly at random, then one of its records uniformly.

The sampler of decoupled classifier re-training (Kang et al., ICLR 2020): every class, rare or
frequent, fills the same share of a batch in expectation. Draws are a function of the generator
passed in, so the train pipeline keeps its batches a function of (seed, step).
"""

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class ClassBalancedSampler:
  """Record indices drawn class-balanced from the labels of a training source.

  Attributes:
    order: record indices sorted by label.
    starts: where each present class begins in `order`.
    sizes: records of each present class.
  """

  order: np.ndarray
  starts: np.ndarray
  sizes: np.ndarray

  @classmethod
  def from_labels(cls, labels: np.ndarray) -> "ClassBalancedSampler":
    """A sampler over records with these labels (record i has label labels[i])."""
    labels = np.asarray(labels, np.int64)
    if labels.ndim != 1 or not labels.size:
      raise ValueError(f"Class-balanced sampling needs the train labels; got shape {labels.shape}.")
    order = np.argsort(labels, kind="stable")
    _, starts, sizes = np.unique(labels[order], return_index=True, return_counts=True)
    return cls(order=order, starts=starts, sizes=sizes)

  @property
  def num_classes(self) -> int:
    """Classes with at least one record (the ones drawn)."""
    return len(self.sizes)

  def sample(self, rng: np.random.Generator, count: int) -> np.ndarray:
    """`count` record indices: each a uniform class, then a uniform record of that class."""
    classes = rng.integers(0, self.num_classes, count)
    within = rng.integers(0, self.sizes[classes])
    return self.order[self.starts[classes] + within]
