"""Long-tail metrics of a classifier from its per-example top-k predictions (pure numpy).

Shot groups follow the usual long-tail convention (Liu et al., OLTR, 2019), by the number of
TRAINING images of a class: many-shot (> 100), medium-shot (20-100) and few-shot (< 20).
Every class of DAF:re has at least 20 images in total, so its few-shot classes are those with
fewer than 20 training images. A group's `mean_class_top1` averages its classes' accuracies (the
convention of long-tail papers); `top1` pools its examples.
"""

from collections.abc import Sequence
import dataclasses
from typing import Any

import jax
import numpy as np

from animesion_jax import models

MANY_SHOT_ABOVE = 100  # Many-shot classes have more training images than this.
FEW_SHOT_BELOW = 20  # Few-shot classes have fewer training images than this.
GROUPS = ("many", "medium", "few")


def group_titles(many_above: int = MANY_SHOT_ABOVE, few_below: int = FEW_SHOT_BELOW) -> dict:
  """'many', 'medium', 'few' -> a title with the group's training-image range."""
  return {
    "many": f"many-shot (>{many_above})",
    "medium": f"medium-shot ({few_below}-{many_above})",
    "few": f"few-shot (<{few_below})",
  }


GROUP_TITLES = group_titles()  # DAF:re's groups.


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
  many_above: int = MANY_SHOT_ABOVE,
  few_below: int = FEW_SHOT_BELOW,
) -> dict[str, Any]:
  """Overall, balanced, per-shot-group and per-class accuracy, and the most confused pairs.

  Args:
    labels: [N] true class ids of the evaluated split.
    top_ids: [N, K] predicted class ids, best first; top-5 metrics use the first min(K, 5).
    train_counts: training images of each class (defines the shot groups).
    class_names: name of each class id.
    confused_limit: how many confused pairs to list.
    many_above: many-shot classes have more training images than this.
    few_below: few-shot classes have fewer training images than this.

  Returns:
    A JSON-ready dict: num_examples, top1, top5, mean_class_top1/top5 (balanced accuracy over
    classes present in the split), shot_groups {many_above, few_below}, groups {many, medium,
    few}, confused_pairs and per_class.
  """
  num_classes = len(class_names)
  train_counts = np.asarray(train_counts, np.int64)
  if len(train_counts) != num_classes:
    raise ValueError(f"{len(train_counts)} training counts for {num_classes} classes.")
  top_ids = np.asarray(top_ids)[:, :5]
  stats = per_class(labels, top_ids, num_classes)
  groups = shot_groups(train_counts, many_above, few_below)
  titles = group_titles(many_above, few_below)
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
    "shot_groups": {"many_above": many_above, "few_below": few_below},
    "groups": {
      name: {"title": titles[name], **_group_summary(stats, groups == name)} for name in GROUPS
    },
    "confused_pairs": pairs,
    "per_class": classes,
  }


def tau_normalized(variables: dict[str, Any], head: str, tau: float) -> dict[str, Any]:
  """The variables with the output layer tau-normalised (Kang et al., ICLR 2020).

  Each class's weight vector w_j (a column of params[head]['kernel'], [features, classes]) becomes
  w_j / ||w_j|| ** tau, and the bias is dropped (set to 0), as in the paper's classifier; tau = 0
  changes nothing. A softmax classifier trained on long-tailed data has longer weight vectors for
  frequent classes; tau = 1 makes them all unit length.
  """
  if tau == 0:
    return variables
  layer = dict(variables["params"][head])
  kernel = np.asarray(layer["kernel"], np.float32)
  norms = np.linalg.norm(kernel.reshape(-1, kernel.shape[-1]), axis=0)
  new = {"kernel": kernel / np.maximum(norms, 1e-12) ** tau}
  if "bias" in layer:
    new["bias"] = np.zeros(np.shape(layer["bias"]), np.float32)
  for name, value in new.items():  # Where and as what the old arrays were (e.g. on the mesh).
    old = layer[name]
    value = value.astype(old.dtype)
    layer[name] = jax.device_put(value, old.sharding) if hasattr(old, "sharding") else value
  return {**variables, "params": {**variables["params"], head: layer}}


def tau_normalized_run(run: Any, tau: float) -> Any:
  """A copy of a loaded run (inference.LoadedRun) with its classifier tau-normalised."""
  if tau < 0:
    raise ValueError(f"tau_norm={tau} must be >= 0.")
  head = models.family_of(run.model).head
  return dataclasses.replace(run, variables=tau_normalized(run.variables, head, tau))
