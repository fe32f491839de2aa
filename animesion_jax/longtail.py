"""Long-tail metrics of a classifier from its per-example top-k predictions (pure numpy).

Shot groups follow the usual long-tail convention (Liu et al., OLTR, 2019), by the number of
TRAINING images of a class: many-shot (> 100), medium-shot (20-100) and few-shot (< 20).
Every class of DAF:re has at least 20 images in total, so its few-shot classes are those with
fewer than 20 training images. A group's `mean_class_top1` averages its classes' accuracies (the
convention of long-tail papers); `top1` pools its examples.
"""

from collections.abc import Sequence
from typing import Any

import numpy as np

MANY_SHOT_ABOVE = 100  # Many-shot classes have more training images than this.
FEW_SHOT_BELOW = 20  # Few-shot classes have fewer training images than this.
GROUPS = ("many", "medium", "few")
GROUP_TITLES = {
  "many": f"many-shot (>{MANY_SHOT_ABOVE})",
  "medium": f"medium-shot ({FEW_SHOT_BELOW}-{MANY_SHOT_ABOVE})",
  "few": f"few-shot (<{FEW_SHOT_BELOW})",
}


def class_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
  """Examples per class id."""
  labels = np.asarray(labels, np.int64)
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"Labels must be in [0, {num_classes}); got {labels.min()}..{labels.max()}.")
  return np.bincount(labels, minlength=num_classes)


def shot_groups(
  train_counts: np.ndarray, many_above: int = MANY_SHOT_ABOVE, few_below: int = FEW_SHOT_BELOW
) -> np.ndarray:
  """'many', 'medium' or 'few' for each class, from its number of training images."""
  counts = np.asarray(train_counts)
  return np.where(counts > many_above, "many", np.where(counts < few_below, "few", "medium"))


def per_class(labels: np.ndarray, top_ids: np.ndarray, num_classes: int) -> dict[str, np.ndarray]:
  """Per-class examples, top-1/top-k hits and accuracies (NaN for classes with no examples).

  Args:
    labels: [N] true class ids.
    top_ids: [N, K] predicted class ids, best first (K >= 1).
    num_classes: number of classes.
  """
  labels = np.asarray(labels, np.int64)
  top_ids = np.asarray(top_ids, np.int64)
  if top_ids.ndim != 2 or len(top_ids) != len(labels):
    raise ValueError(f"top_ids must be [N, K] with N = {len(labels)}; got {top_ids.shape}.")
  hit1 = top_ids[:, 0] == labels
  hitk = np.any(top_ids == labels[:, None], axis=1)
  examples = class_counts(labels, num_classes)
  correct1 = np.bincount(labels, weights=hit1, minlength=num_classes)
  correctk = np.bincount(labels, weights=hitk, minlength=num_classes)
  with np.errstate(invalid="ignore", divide="ignore"):
    return {
      "examples": examples,
      "top1_correct": correct1.astype(np.int64),
      "topk_correct": correctk.astype(np.int64),
      "top1": np.where(examples > 0, correct1 / examples, np.nan),
      "topk": np.where(examples > 0, correctk / examples, np.nan),
    }


def confused_pairs(
  labels: np.ndarray, predictions: np.ndarray, limit: int = 20
) -> list[tuple[int, int, int]]:
  """The most frequent (true class, predicted class, count) mistakes, most frequent first.

  Ties are broken by class ids so the order is reproducible.
  """
  labels = np.asarray(labels, np.int64)
  predictions = np.asarray(predictions, np.int64)
  wrong = labels != predictions
  if not wrong.any():
    return []
  pairs, counts = np.unique(
    np.stack([labels[wrong], predictions[wrong]], axis=1), axis=0, return_counts=True
  )
  order = np.lexsort((pairs[:, 1], pairs[:, 0], -counts))[:limit]
  return [(int(pairs[i, 0]), int(pairs[i, 1]), int(counts[i])) for i in order]


def _group_summary(stats: dict[str, np.ndarray], members: np.ndarray) -> dict[str, Any]:
  present = members & (stats["examples"] > 0)
  examples = int(stats["examples"][present].sum())
  summary = {"classes": int(present.sum()), "examples": examples}
  if examples == 0:
    return {**summary, "top1": None, "top5": None, "mean_class_top1": None, "mean_class_top5": None}
  return {
    **summary,
    "top1": float(stats["top1_correct"][present].sum() / examples),
    "top5": float(stats["topk_correct"][present].sum() / examples),
    "mean_class_top1": float(np.mean(stats["top1"][present])),
    "mean_class_top5": float(np.mean(stats["topk"][present])),
  }


def summarize(
  labels: np.ndarray,
  top_ids: np.ndarray,
  train_counts: np.ndarray,
  class_names: Sequence[str],
  confused_limit: int = 20,
) -> dict[str, Any]:
  """Overall, balanced, per-shot-group and per-class accuracy, and the most confused pairs.

  Args:
    labels: [N] true class ids of the evaluated split.
    top_ids: [N, K] predicted class ids, best first; top-5 metrics use the first min(K, 5).
    train_counts: training images of each class (defines the shot groups).
    class_names: name of each class id.
    confused_limit: how many confused pairs to list.

  Returns:
    A JSON-ready dict: num_examples, top1, top5, mean_class_top1/top5 (balanced accuracy over
    classes present in the split), groups {many, medium, few}, confused_pairs and per_class.
  """
  num_classes = len(class_names)
  train_counts = np.asarray(train_counts, np.int64)
  if len(train_counts) != num_classes:
    raise ValueError(f"{len(train_counts)} training counts for {num_classes} classes.")
  top_ids = np.asarray(top_ids)[:, :5]
  stats = per_class(labels, top_ids, num_classes)
  groups = shot_groups(train_counts)
  overall = _group_summary(stats, np.ones(num_classes, bool))
  predicted = np.asarray(top_ids)[:, 0]
  pairs = []
  for true_id, pred_id, count in confused_pairs(labels, predicted, confused_limit):
    pairs.append(
      {
        "true_id": true_id,
        "true_name": class_names[true_id],
        "predicted_id": pred_id,
        "predicted_name": class_names[pred_id],
        "count": count,
        "fraction_of_true": count / int(stats["examples"][true_id]),
      }
    )
  classes = []
  for i in range(num_classes):
    classes.append(
      {
        "class_id": i,
        "name": class_names[i],
        "train_count": int(train_counts[i]),
        "group": str(groups[i]),
        "examples": int(stats["examples"][i]),
        "top1": None if np.isnan(stats["top1"][i]) else float(stats["top1"][i]),
        "top5": None if np.isnan(stats["topk"][i]) else float(stats["topk"][i]),
      }
    )
  return {
    "num_examples": overall["examples"],
    "num_classes": num_classes,
    "classes_evaluated": overall["classes"],
    "top1": overall["top1"],
    "top5": overall["top5"],
    "mean_class_top1": overall["mean_class_top1"],
    "mean_class_top5": overall["mean_class_top5"],
    "groups": {
      name: {"title": GROUP_TITLES[name], **_group_summary(stats, groups == name)}
      for name in GROUPS
    },
    "confused_pairs": pairs,
    "per_class": classes,
  }
