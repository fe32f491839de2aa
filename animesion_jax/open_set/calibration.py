"""Calibrated confidence and an "unknown" threshold, fitted on validation and stored with a run.

Pure numpy. What is fitted (`fit`), from a model's logits and L2-normalised embeddings:
  - a temperature T for the softmax, minimising the validation negative log-likelihood;
  - a scale s for softmax(s * cosine to the class prototypes) the same way (the confidence of an
    enrolled character, animesion_jax/open_set/gallery.py);
  - for each open-set score (higher = more like a known character):
      max_softmax  max_k softmax(logits / T)
      max_logit    max_k logits
      energy       T * logsumexp(logits / T)  (the negative free energy)
      cosine       max_k cos(embedding, prototype_k), prototypes from training embeddings
    its separation (AUROC) of known validation pictures from two stand-ins for "unknown" that
    every run has: the same validation pictures with their own class taken away (the logit
    column or prototype of the true class removed: a character the model does not know) and
    pictures with no character at all (noise, flat colour, gradients; `no_character_pictures`).
    The score with the best mean AUROC is kept, and its threshold accepts a chosen share
    (default 95%) of the known validation pictures;
  - a no-character rule: a picture whose embedding is closer (by a margin) to one of the
    no-character pictures' embeddings than to every class prototype is unknown. The margin is the
    smallest that rejects at most NO_CHARACTER_BUDGET of the known validation pictures, and the
    kept score's threshold is then set so that both rules together accept the chosen share. Held-out classes are never used here, so a
    benchmark on them measures unseen characters honestly.
Metrics: AUROC, FPR at 95% TPR, ECE (15 bins), NLL before and after.
"""

import dataclasses
from typing import Any

import numpy as np

SCORES = ("max_softmax", "max_logit", "energy", "cosine")
DEFAULT_ACCEPT = 0.95
ECE_BINS = 15
_QUANTILES = 201  # Stored quantiles of each score on known validation pictures (any --accept).
NO_CHARACTER_BUDGET = 0.01  # Most known validation pictures the no-character rule may reject.
_MARGINS = np.round(np.arange(0.0, 1.0001, 0.025), 3)


def log_softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
  z = np.asarray(logits, np.float64) / temperature
  z = z - z.max(axis=-1, keepdims=True)
  return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
  return np.exp(log_softmax(logits, temperature))


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
  """Mean negative log-likelihood of `labels` under softmax(logits / temperature)."""
  log_p = log_softmax(logits, temperature)
  return float(-log_p[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
  """The T in [0.02, 50] minimising the NLL (a log-spaced grid, then golden-section refinement)."""
  grid = np.exp(np.linspace(np.log(0.02), np.log(50.0), 61))
  losses = [nll(logits, labels, t) for t in grid]
  best = int(np.argmin(losses))
  lo, hi = np.log(grid[max(best - 1, 0)]), np.log(grid[min(best + 1, len(grid) - 1)])
  ratio = (np.sqrt(5) - 1) / 2
  for _ in range(40):
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    if nll(logits, labels, np.exp(a)) < nll(logits, labels, np.exp(b)):
      hi = b
    else:
      lo = a
  t = float(np.exp((lo + hi) / 2))
  return t if nll(logits, labels, t) <= losses[best] else float(grid[best])


def prototypes(embeddings: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
  """[num_classes, D] L2-normalised class means of the embeddings (zero rows for absent classes)."""
  sums = np.zeros((num_classes, embeddings.shape[1]), np.float64)
  np.add.at(sums, labels, embeddings)
  norms = np.linalg.norm(sums, axis=1, keepdims=True)
  return (sums / np.maximum(norms, 1e-12)).astype(np.float32)


def score(
  name: str,
  logits: np.ndarray,
  embeddings: np.ndarray | None,
  class_prototypes: np.ndarray | None,
  temperature: float,
  drop: np.ndarray | None = None,
) -> np.ndarray:
  """Open-set score `name` per picture (higher: more like a known character).

  `drop[i]`, when given, is a class taken away from picture i (its own, for the stand-in unknowns).
  """
  if name == "cosine":
    values = np.asarray(embeddings, np.float64) @ np.asarray(class_prototypes, np.float64).T
  elif name in SCORES:
    values = np.asarray(logits, np.float64)
  else:
    raise ValueError(f"Unknown score {name!r}; choose one of {SCORES}.")
  if drop is not None:
    values = values.copy()
    values[np.arange(len(values)), drop] = -np.inf
  if name in ("cosine", "max_logit"):
    return values.max(axis=1)
  z = values / temperature
  top = z.max(axis=1)
  lse = top + np.log(np.exp(z - top[:, None]).sum(axis=1))
  if name == "energy":
    return temperature * lse
  return np.exp(top - lse)  # max_softmax


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
  """P(score of a positive > score of a negative) + P(tie) / 2 (the Mann-Whitney U statistic)."""
  positive, negative = np.asarray(positive, np.float64), np.asarray(negative, np.float64)
  values = np.concatenate([positive, negative])
  order = np.argsort(values, kind="mergesort")
  ranks = np.empty(len(values), np.float64)
  sorted_values = values[order]
  # Average ranks over ties.
  starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
  ends = np.r_[starts[1:], len(values)]
  for start, end in zip(starts, ends):
    ranks[order[start:end]] = (start + end + 1) / 2
  n_pos, n_neg = len(positive), len(negative)
  u = ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2
  return float(u / (n_pos * n_neg))


def threshold_for(positive: np.ndarray, accept: float) -> float:
  """The highest threshold t with score >= t for at least `accept` of `positive`."""
  values = np.sort(np.asarray(positive, np.float64))
  index = int(np.floor((1.0 - accept) * len(values) + 1e-9))
  return float(values[min(max(index, 0), len(values) - 1)])


def fpr_at_tpr(positive: np.ndarray, negative: np.ndarray, tpr: float = 0.95) -> float:
  """Share of negatives accepted at the threshold that accepts `tpr` of the positives."""
  return float(np.mean(np.asarray(negative) >= threshold_for(positive, tpr)))


def ece(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
  """Expected calibration error: sum over equal-width confidence bins of |acc - conf| * share."""
  confidence, correct = np.asarray(confidence, np.float64), np.asarray(correct, np.float64)
  edges = np.linspace(0.0, 1.0, bins + 1)
  which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
  total = 0.0
  for b in range(bins):
    members = which == b
    if members.any():
      total += members.mean() * abs(correct[members].mean() - confidence[members].mean())
  return float(total)


def no_character_pictures(count: int, size: int, seed: int) -> np.ndarray:
  """uint8 [count, size, size, 3]: thirds of uniform noise, flat colours and linear gradients."""
  rng = np.random.default_rng(seed)
  pictures = np.empty((count, size, size, 3), np.uint8)
  ramp = np.linspace(0.0, 1.0, size)
  for i in range(count):
    kind = i % 3
    if kind == 0:
      pictures[i] = rng.integers(0, 256, (size, size, 3))
    elif kind == 1:
      pictures[i] = rng.integers(0, 256, 3)
    else:
      angle = rng.uniform(0, 2 * np.pi)
      t = np.cos(angle) * ramp[None, :] + np.sin(angle) * ramp[:, None]
      t = (t - t.min()) / max(t.max() - t.min(), 1e-9)
      start, end = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
      pictures[i] = (start + t[..., None] * (end - start)).round().astype(np.uint8)
  return pictures


@dataclasses.dataclass
class Calibration:
  """What a run answers "unknown" with; stored as calibration.json (prototypes beside it)."""

  temperature: float
  cosine_scale: float
  score: str  # The kept score, one of SCORES.
  accept: float  # Share of known validation pictures accepted by `threshold`.
  threshold: float
  # Score name -> its values at _QUANTILES evenly spaced quantiles over known validation pictures.
  quantiles: dict[str, list[float]]
  metrics: dict[str, Any]
  provenance: dict[str, Any]  # model, checkpoint, step, class count the calibration was fitted for.
  # Cosine distance at which organize cuts clusters of unknown faces (fitted on known pictures).
  cluster_distance: float = 0.5
  # Pictures per character -> quantiles of the cosine of known validation pictures to a prototype of
  # their class made from that many training pictures (`enrolment_quantiles`): the thresholds
  # of enrolled characters. Empty: they use the cosine score's threshold.
  enrolled_quantiles: dict[str, list[float]] = dataclasses.field(default_factory=dict)
  # The no-character rule's margin (None: no rule, as calibrations before it).
  no_character_margin: float | None = None
  # Share of known validation pictures the no-character rule keeps (`quantiles` are over those).
  no_character_kept: float = 1.0
  # Training pictures per class behind `prototypes` (what pictures added to a known class with
  # enroll --refine are weighed against). Empty (calibrations before it): weighed equally.
  class_counts: list[int] = dataclasses.field(default_factory=list)
  prototypes: np.ndarray | None = None  # [classes, D] (not in the JSON).
  no_character: np.ndarray | None = None  # [M, D] no-character embeddings (not in the JSON).

  def threshold_at(self, accept: float, name: str | None = None) -> float:
    """The threshold of score `name` (default the kept one) accepting `accept` of known pictures
    (together with the no-character rule, for the kept score)."""
    values = np.asarray(self.quantiles[name or self.score])
    share = accept / self.no_character_kept if name in (None, self.score) else accept
    return float(np.quantile(values, 1.0 - min(share, 1.0), method="linear"))

  def enrolled_threshold(self, count: int, accept: float) -> float:
    """Cosine threshold naming `accept` of the pictures of a character enrolled from `count`."""
    sizes = sorted(int(k) for k in self.enrolled_quantiles)
    usable = [k for k in sizes if k <= count]
    if not usable:
      return self.threshold_at(accept, "cosine")
    values = np.asarray(self.enrolled_quantiles[str(usable[-1])])
    return float(np.quantile(values, 1.0 - accept, method="linear"))

  def no_character_rejects(self, embeddings: np.ndarray) -> np.ndarray:
    """Per picture: whether the no-character rule answers it unknown (all False without one)."""
    if self.no_character_margin is None or self.no_character is None:
      return np.zeros(len(embeddings), bool)
    return no_character_rule(embeddings, self.prototypes, self.no_character) > (
      self.no_character_margin
    )

  def to_json(self) -> dict[str, Any]:
    record = dataclasses.asdict(self)
    record.pop("prototypes")
    record.pop("no_character")
    return record

  @classmethod
  def from_json(
    cls,
    record: dict[str, Any],
    prototypes: np.ndarray | None,
    no_character: np.ndarray | None = None,
  ) -> "Calibration":
    arrays = {"prototypes", "no_character"}
    optional = {
      "cluster_distance",
      "no_character_margin",
      "no_character_kept",
      "enrolled_quantiles",
      "class_counts",
    }
    fields = {f.name for f in dataclasses.fields(cls)} - arrays
    missing = fields - set(record) - optional
    if missing:
      raise ValueError(f"calibration record lacks {sorted(missing)}")
    return cls(
      **{k: record[k] for k in fields if k in record},
      prototypes=prototypes,
      no_character=no_character,
    )


ENROL_SIZES = (1, 2, 3, 5, 10, 20, 50)  # Enrolment sizes simulated on the known classes.


def enrolment_quantiles(
  train_embeddings: np.ndarray,
  train_labels: np.ndarray,
  embeddings: np.ndarray,
  labels: np.ndarray,
  seed: int = 0,
) -> dict[str, list[float]]:
  """Enrolment simulated on known classes: for each size k, the quantiles of the cosine of every
  validation picture to a prototype of its class made from k random training pictures."""
  rng = np.random.default_rng(seed)
  train_embeddings = np.asarray(train_embeddings, np.float64)
  embeddings = np.asarray(embeddings, np.float64)
  levels = np.linspace(0.0, 1.0, _QUANTILES)
  by_class = {int(c): np.flatnonzero(train_labels == c) for c in np.unique(labels)}
  result = {}
  for k in ENROL_SIZES:
    cosines = []
    for c, pool in by_class.items():
      if len(pool) < k:
        continue
      total = train_embeddings[rng.choice(pool, k, replace=False)].sum(axis=0)
      cosines.append(embeddings[labels == c] @ (total / max(np.linalg.norm(total), 1e-12)))
    if cosines:
      result[str(k)] = [float(v) for v in np.quantile(np.concatenate(cosines), levels)]
  return result


def no_character_rule(
  embeddings: np.ndarray, class_prototypes: np.ndarray, no_character: np.ndarray
) -> np.ndarray:
  """Per picture: best cosine to a no-character picture minus best cosine to a class prototype."""
  embeddings = np.asarray(embeddings, np.float64)
  nearest_empty = (embeddings @ np.asarray(no_character, np.float64).T).max(axis=1)
  nearest_class = (embeddings @ np.asarray(class_prototypes, np.float64).T).max(axis=1)
  return nearest_empty - nearest_class


def _probability_metrics(probabilities: np.ndarray, labels: np.ndarray) -> dict[str, float]:
  top = probabilities.argmax(axis=1)
  picked = probabilities[np.arange(len(labels)), labels]
  return {
    "nll": float(-np.log(np.maximum(picked, 1e-12)).mean()),
    "ece": ece(probabilities.max(axis=1), top == labels),
    "top1": float(np.mean(top == labels)),
  }


def fit(
  logits: np.ndarray,
  embeddings: np.ndarray,
  labels: np.ndarray,
  class_prototypes: np.ndarray,
  no_character: tuple[np.ndarray, np.ndarray],
  *,
  accept: float = DEFAULT_ACCEPT,
  provenance: dict[str, Any] | None = None,
) -> Calibration:
  """Fits a Calibration on known validation pictures.

  Args:
    logits: [N, K] validation logits; embeddings: [N, D] their L2-normalised embeddings.
    labels: [N] true classes.
    class_prototypes: [K, D] from the training embeddings (`prototypes`).
    no_character: (logits, embeddings) of `no_character_pictures`.
    accept: share of known validation pictures to accept.
    provenance: what the calibration was fitted for (stored and checked when loaded).
  """
  if not 0.0 < accept <= 1.0:
    raise ValueError(f"accept={accept} must be in (0, 1].")
  labels = np.asarray(labels, np.int64)
  if len(labels) < 2:
    raise ValueError("Calibration needs at least 2 validation pictures.")
  temperature = fit_temperature(logits, labels)
  cosines = np.asarray(embeddings, np.float64) @ np.asarray(class_prototypes, np.float64).T
  cosine_scale = 1.0 / fit_temperature(cosines, labels)
  probabilities = {
    "softmax": {
      "before": _probability_metrics(softmax(logits), labels),
      "after": _probability_metrics(softmax(logits, temperature), labels),
    },
    "cosine": {
      "before": _probability_metrics(softmax(cosines), labels),
      "after": _probability_metrics(softmax(cosines * cosine_scale), labels),
    },
  }
  per_score, quantiles = {}, {}
  levels = np.linspace(0.0, 1.0, _QUANTILES)
  for name in SCORES:
    args = (embeddings, class_prototypes, temperature)
    known = score(name, logits, *args)
    own_class_out = score(name, logits, *args, drop=labels)
    empty = score(name, no_character[0], no_character[1], class_prototypes, temperature)
    per_score[name] = {
      "auroc_own_class_removed": auroc(known, own_class_out),
      "auroc_no_character": auroc(known, empty),
      "fpr95_own_class_removed": fpr_at_tpr(known, own_class_out),
      "fpr95_no_character": fpr_at_tpr(known, empty),
    }
    per_score[name]["selection"] = (
      per_score[name]["auroc_own_class_removed"] + per_score[name]["auroc_no_character"]
    ) / 2
    quantiles[name] = [float(v) for v in np.quantile(known, levels)]
  chosen = max(SCORES, key=lambda name: per_score[name]["selection"])
  known = score(chosen, logits, embeddings, class_prototypes, temperature)
  # The no-character rule: the smallest margin rejecting at most the budget of known pictures.
  gap = no_character_rule(embeddings, class_prototypes, no_character[1])
  margin = next(float(m) for m in _MARGINS if np.mean(gap > m) <= NO_CHARACTER_BUDGET)
  kept = gap <= margin
  kept_share = float(kept.mean())
  # Quantiles of the kept score over the pictures the rule keeps: with it, they name `accept`.
  quantiles[chosen] = [float(v) for v in np.quantile(known[kept], levels)]
  return Calibration(
    temperature=float(temperature),
    cosine_scale=float(cosine_scale),
    score=chosen,
    accept=float(accept),
    threshold=threshold_for(known[kept], min(accept / kept_share, 1.0)),
    quantiles=quantiles,
    metrics={
      "validation_pictures": int(len(labels)),
      "no_character_pictures": int(len(no_character[0])),
      "scores": per_score,
      "probabilities": probabilities,
      "no_character_rule": {"margin": margin, "known_validation_rejected": 1.0 - kept_share},
    },
    provenance=dict(provenance or {}),
    no_character_margin=margin,
    no_character_kept=kept_share,
    prototypes=np.asarray(class_prototypes, np.float32),
    no_character=np.asarray(no_character[1], np.float32),
  )
