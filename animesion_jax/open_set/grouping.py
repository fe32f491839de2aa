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
# Most pictures clustered exactly (average linkage keeps their N x N distances: 4000 -> 64 MB).
MAX_LINKAGE = 4000
_BLOCK = 256  # Pictures compared at a time with the others (a block x N product: 100 MB at 100k).


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


def cluster(
  embeddings: np.ndarray, distance: float, max_linkage: int = MAX_LINKAGE, seed: int = 0
) -> np.ndarray:
  """Cluster ids 0..C-1 of L2-normalised embeddings (average linkage, cosine, cut at distance).

  Up to `max_linkage` pictures: exact average linkage (its N x N distances fit in memory).
  Beyond, memory stays linear in the pictures: average linkage on a random sample of
  `max_linkage`, then every other picture joins the nearest cluster mean within `distance`
  (compared in blocks); the pictures none is near are clustered the same way, round after round
  (each round clusters at least `max_linkage` of them).
  """
  embeddings = np.asarray(embeddings, np.float64)
  ids = np.full(len(embeddings), -1, np.int64)
  rng = np.random.default_rng(seed)
  left, found = np.arange(len(embeddings)), 0
  while len(left):
    if len(left) <= max_linkage:
      ids[left] = _linkage(embeddings[left], distance) + found
      break
    sample = np.sort(rng.choice(len(left), max_linkage, replace=False))
    sample_ids = _linkage(embeddings[left[sample]], distance)
    count = int(sample_ids.max()) + 1
    ids[left[sample]] = sample_ids + found
    means = np.zeros((count, embeddings.shape[1]))
    np.add.at(means, sample_ids, embeddings[left[sample]])
    means /= np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
    rest = np.setdiff1d(np.arange(len(left)), sample)
    for start in range(0, len(rest), _BLOCK):
      block = left[rest[start : start + _BLOCK]]
      cosines = embeddings[block] @ means.T
      best = cosines.argmax(axis=1)
      near = 1.0 - cosines[np.arange(len(block)), best] <= distance
      ids[block[near]] = best[near] + found
    found += count
    left = left[ids[left] < 0]
  return ids


def _linkage(embeddings: np.ndarray, distance: float) -> np.ndarray:
  """Exact average-linkage cluster ids 0..C-1 (memory quadratic in the pictures)."""
  if len(embeddings) < 2:
    return np.zeros(len(embeddings), np.int64)
  condensed = np.clip(scipy_distance.pdist(embeddings, "cosine"), 0.0, 2.0)
  tree = hierarchy.linkage(condensed, method="average")
  ids = hierarchy.fcluster(tree, t=distance, criterion="distance").astype(np.int64) - 1
  return np.unique(ids, return_inverse=True)[1].astype(np.int64)


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
  """For each picture, the index of an earlier near-identical one, or -1.

  Compared a block of pictures at a time with the earlier ones: memory linear in the pictures.
  """
  embeddings = np.asarray(embeddings, np.float32)
  found = np.full(len(embeddings), -1, np.int64)
  for start in range(0, len(embeddings), _BLOCK):
    block = embeddings[start : start + _BLOCK]
    similar = block @ embeddings[: start + len(block)].T  # [block, earlier and block]
    rows = np.arange(len(block))
    # Only earlier pictures count: the picture itself and the later ones in its block are out.
    similar[rows[:, None] + start <= np.arange(start + len(block))[None, :]] = -np.inf
    if start + len(block) < 2:
      continue
    best = similar.argmax(axis=1)
    keep = similar[rows, best] >= threshold
    found[start + rows[keep]] = best[keep]
  return [int(v) for v in found]


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


def cluster_distance_of(calibration: Any) -> float:
  """The cut of the clustering of unknown pictures: the calibration's (fitted on validation), or
  DEFAULT_CLUSTER_DISTANCE for an uncalibrated model."""
  if calibration is None:
    return DEFAULT_CLUSTER_DISTANCE
  return calibration.cluster_distance
