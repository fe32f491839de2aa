"""Grouping pictures by character: clusters of unknown faces, near-duplicates, adjusted Rand index.

Pictures answered with a name (trained or enrolled) go to that name's group; the unknown ones
are clustered by their embeddings (average linkage on cosine distance, cut at a distance fitted
on known validation pictures, `fit_cluster_distance`) into `unknown-1..N`, largest first.
"""

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.cluster import hierarchy
from scipy.spatial import distance as scipy_distance

DEFAULT_CLUSTER_DISTANCE = 0.5  # Cosine distance cut when the calibration has none.
DUPLICATE_COSINE = 0.995  # Embeddings this close: the same picture (resized, re-encoded).
_CUTS = np.linspace(0.05, 1.0, 39)


def adjusted_rand_index(a: Sequence[Any], b: Sequence[Any]) -> float:
  """Hubert and Arabie's adjusted Rand index of two labelings of the same items."""
  _, a = np.unique(np.asarray(a, object).astype(str), return_inverse=True)
  _, b = np.unique(np.asarray(b, object).astype(str), return_inverse=True)
  n = len(a)
  if n < 2:
    return 1.0
  table = np.zeros((a.max() + 1, b.max() + 1), np.int64)
  np.add.at(table, (a, b), 1)
  pairs = lambda x: (x * (x - 1) / 2).sum()  # noqa: E731
  index = pairs(table)
  rows, cols = pairs(table.sum(axis=1)), pairs(table.sum(axis=0))
  expected = rows * cols / (n * (n - 1) / 2)
  maximum = (rows + cols) / 2
  if maximum == expected:
    return 1.0
  return float((index - expected) / (maximum - expected))


def cluster(embeddings: np.ndarray, distance: float) -> np.ndarray:
  """Cluster ids 0..C-1 of L2-normalised embeddings (average linkage, cosine, cut at distance)."""
  embeddings = np.asarray(embeddings, np.float64)
  if len(embeddings) < 2:
    return np.zeros(len(embeddings), np.int64)
  condensed = np.clip(scipy_distance.pdist(embeddings, "cosine"), 0.0, 2.0)
  tree = hierarchy.linkage(condensed, method="average")
  return hierarchy.fcluster(tree, t=distance, criterion="distance").astype(np.int64) - 1


def fit_cluster_distance(
  embeddings: np.ndarray, labels: np.ndarray, seed: int = 0, max_pictures: int = 2000
) -> float:
  """The cut whose clusters of (a sample of) known pictures best match their classes (ARI)."""
  if len(embeddings) > max_pictures:
    keep = np.random.default_rng(seed).choice(len(embeddings), max_pictures, replace=False)
    embeddings, labels = embeddings[keep], labels[keep]
  if len(embeddings) < 2:
    return DEFAULT_CLUSTER_DISTANCE
  condensed = np.clip(scipy_distance.pdist(np.asarray(embeddings, np.float64), "cosine"), 0, 2)
  tree = hierarchy.linkage(condensed, method="average")
  scores = [
    adjusted_rand_index(labels, hierarchy.fcluster(tree, t=cut, criterion="distance"))
    for cut in _CUTS
  ]
  return float(_CUTS[int(np.argmax(scores))])


def near_duplicates(embeddings: np.ndarray, threshold: float = DUPLICATE_COSINE) -> list[int]:
  """For each picture, the index of an earlier near-identical one, or -1."""
  embeddings = np.asarray(embeddings, np.float64)
  found = []
  for i in range(len(embeddings)):
    if i == 0:
      found.append(-1)
      continue
    similar = embeddings[:i] @ embeddings[i]
    j = int(np.argmax(similar))
    found.append(j if similar[j] >= threshold else -1)
  return found


def group_names(answers: Sequence[Any], embeddings: np.ndarray, distance: float) -> list[str]:
  """Each picture's group: its answered name, or 'unknown-K' (K = 1 for the largest cluster)."""
  groups = [a.character if not a.unknown else None for a in answers]
  unknown = [i for i, g in enumerate(groups) if g is None]
  if unknown:
    ids = cluster(np.asarray(embeddings)[unknown], distance)
    sizes = np.bincount(ids)
    rank = {int(c): r + 1 for r, c in enumerate(np.argsort(-sizes, kind="stable"))}
    for i, c in zip(unknown, ids):
      groups[i] = f"unknown-{rank[int(c)]}"
  return groups
