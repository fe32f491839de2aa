"""The open-set protocol (issue #26): disjoint folds of held-out classes, tune and report halves.

  folds = protocol.make_folds(class_names, fold_count=3, fold_size=8, seed=0)
  fold = folds[0]   # fold.held_out -> config.open_set.holdout_classes of the run trained for it
  thresholds = protocol.tune(...)          # fitted on fold.tune_* classes only
  tuned = protocol.tuned_calibration(calibration, thresholds)   # what answering.decide uses

Each fold holds out `fold_size` classes (disjoint across folds). Its first half are the *tune*
classes, on which the operating point (the kept score's threshold, the enrolled-name threshold)
is chosen; the second half are the *report* classes, on which nothing is chosen. Each half has
*enrolled* classes (enrolled from k of their training pictures) and *never-enrolled* ones (only
their false names are counted). Pure numpy: the tool (tools/open_set_protocol.py) embeds.
"""

from collections.abc import Sequence
import dataclasses

import numpy as np

from animesion_jax.open_set import answering
from animesion_jax.open_set import calibration as calibration_lib
from animesion_jax.open_set import gallery as gallery_lib

# Known-picture acceptance levels the tuning chooses the known-name threshold among.
ACCEPT_GRID = (0.95, 0.96, 0.97, 0.98, 0.99)
# Enrolled-name cosine thresholds the tuning chooses among.
COSINE_GRID = tuple(float(v) for v in np.round(np.arange(0.0, 1.0001, 0.02), 2))
# Most known validation pictures the tuned known-name threshold may reject (the goal).
KNOWN_REJECTED_BUDGET = 0.05
OUTCOMES = ("right", "unknown", "false_name", "false_enrolled", "false_known")


@dataclasses.dataclass(frozen=True)
class Fold:
  """One fold's held-out classes (dataset names), split into tune and report halves."""

  index: int
  tune_enrolled: tuple[str, ...]
  tune_never: tuple[str, ...]
  report_enrolled: tuple[str, ...]
  report_never: tuple[str, ...]

  @property
  def tune(self) -> tuple[str, ...]:
    return self.tune_enrolled + self.tune_never

  @property
  def report(self) -> tuple[str, ...]:
    return self.report_enrolled + self.report_never

  @property
  def held_out(self) -> tuple[str, ...]:
    return self.tune + self.report

  def holdout_flag(self) -> str:
    """The value of --config.open_set.holdout_classes for this fold's training."""
    return ",".join(self.held_out)


def make_folds(
  class_names: Sequence[str], fold_count: int = 3, fold_size: int = 8, seed: int = 0
) -> list[Fold]:
  """`fold_count` disjoint folds of `fold_size` classes, drawn with `seed` (not a training seed).

  Raises:
    ValueError: fewer than 4 classes per fold, or not enough classes for the folds (two must stay
      known in every fold).
  """
  names = list(class_names)
  if fold_size < 4:
    raise ValueError(f"fold_size={fold_size}: a fold needs at least 4 classes (2 tune, 2 report).")
  if fold_count < 1 or fold_count * fold_size > len(names) or len(names) - fold_size < 2:
    raise ValueError(
      f"{fold_count} folds of {fold_size} classes do not fit in {len(names)} classes "
      "(the folds are disjoint and 2 classes must stay known)."
    )
  order = np.random.default_rng([seed, 0x0F01D]).permutation(len(names))
  folds = []
  for f in range(fold_count):
    chosen = [names[i] for i in order[f * fold_size : (f + 1) * fold_size]]
    half = fold_size // 2
    tune, report = chosen[:half], chosen[half:]
    tune_cut, report_cut = (len(tune) + 1) // 2, (len(report) + 1) // 2
    folds.append(
      Fold(
        f,
        tuple(tune[:tune_cut]),
        tuple(tune[tune_cut:]),
        tuple(report[:report_cut]),
        tuple(report[report_cut:]),
      )
    )
  return folds


@dataclasses.dataclass(frozen=True)
class Pictures:
  """A model's outputs for some pictures and their true names (dataset names)."""

  logits: np.ndarray
  embeddings: np.ndarray
  names: np.ndarray  # [N] str

  def of(self, classes: Sequence[str]) -> "Pictures":
    keep = np.isin(self.names, list(classes))
    return Pictures(self.logits[keep], self.embeddings[keep], self.names[keep])

  def __add__(self, other: "Pictures") -> "Pictures":
    return Pictures(
      np.concatenate([self.logits, other.logits]),
      np.concatenate([self.embeddings, other.embeddings]),
      np.concatenate([self.names, other.names]),
    )

  def __len__(self) -> int:
    return len(self.names)


# One enrolment draw: character name -> the embeddings of the k pictures it is enrolled from.
Draw = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Thresholds:
  """The operating point chosen on a fold's tune classes."""

  score: str  # The known-name score (one of calibration.SCORES).
  accept: float  # Share of known validation pictures its threshold accepts.
  threshold: float
  enrolled: dict[int, float]  # Shots -> the enrolled-name cosine threshold.
  tune_metrics: dict[str, float]


def tuned_calibration(
  fitted: calibration_lib.Calibration, thresholds: Thresholds, shots: int | None = None
) -> calibration_lib.Calibration:
  """`fitted` answering at the tuned operating point: its kept score and threshold replaced and,
  with `shots`, every enrolled character's threshold the cosine tuned for that many shots."""
  quantiles = fitted.enrolled_quantiles
  if shots is not None:  # Constant quantiles: the same threshold at any accept and count.
    quantiles = {"1": [thresholds.enrolled[shots]] * len(fitted.quantiles[fitted.score])}
  return dataclasses.replace(
    fitted,
    score=thresholds.score,
    threshold=thresholds.threshold,
    accept=thresholds.accept,
    enrolled_quantiles=quantiles,
  )


def answers(
  fitted: calibration_lib.Calibration,
  class_names: Sequence[str],
  pictures: Pictures,
  enrolled: Draw | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  """(answered name or '' for unknown, whether that name is enrolled) per picture, from the one
  decision rule (answering.decide) with a gallery of `enrolled`."""
  made = None
  if enrolled:
    made = gallery_lib.Gallery({})
    for name, emb in enrolled.items():
      emb = np.asarray(emb, np.float64)
      made.characters[name] = gallery_lib.Character(len(emb), emb.sum(0), [])
  decided = answering.decide(
    pictures.logits, pictures.embeddings, class_names, fitted, made, top_k=1
  )
  named = np.array([a.character or "" for a in decided], dtype=object)
  return named, np.array([a.enrolled and not a.unknown for a in decided])


def shares(named: np.ndarray, enrolled: np.ndarray, truth: np.ndarray, known: set[str]) -> dict:
  """Per-picture outcomes -> shares: named right, unknown, a false name (any name but its own),
  a false enrolled name, a false known name."""
  if not len(truth):
    return dict.fromkeys(OUTCOMES, np.nan)
  right = named == truth
  unknown = named == ""
  false = ~right & ~unknown
  return {
    "right": float(right.mean()),
    "unknown": float(unknown.mean()),
    "false_name": float(false.mean()),
    "false_enrolled": float((false & enrolled).mean()),
    "false_known": float((false & np.isin(named, list(known))).mean()),
  }


def _balanced(parts: list[float]) -> float:
  return float(np.nanmean(parts))


def tune(
  fitted: calibration_lib.Calibration,
  class_names: Sequence[str],
  known_validation: Pictures,
  tune_test: Pictures,
  draws: dict[int, list[Draw]],
  fold: Fold,
  budget: float = KNOWN_REJECTED_BUDGET,
) -> Thresholds:
  """The operating point, chosen on the fold's tune classes and known validation pictures only.

  1. Known-name score and threshold: among calibration.SCORES x ACCEPT_GRID (each threshold at
     that share of the known validation pictures, from the calibration's stored quantiles), the
     one answering the most tune-class pictures unknown while rejecting at most `budget` of the
     known validation pictures (ties: the fewer rejected).
  2. Per shot count k, the enrolled-name cosine threshold in COSINE_GRID maximising the mean of:
     tune-enrolled pictures named right, tune never-enrolled pictures answered unknown and known
     validation pictures named right, with the tune-enrolled classes enrolled from `draws[k]`
     (their mean over the draws).
  """
  known_names = set(class_names)
  tune_test = tune_test.of(fold.tune)  # Whatever else is passed, only tune classes are seen.
  best, best_key = None, None
  for name in calibration_lib.SCORES:
    for accept in ACCEPT_GRID:
      candidate = dataclasses.replace(
        fitted, score=name, threshold=fitted.threshold_at(accept, name), accept=accept
      )
      named, _ = answers(candidate, class_names, known_validation)
      rejected = float(np.mean(named == ""))
      named, _ = answers(candidate, class_names, tune_test)
      unknown = float(np.mean(named == ""))
      key = (rejected <= budget, unknown if rejected <= budget else -rejected, -rejected)
      if best_key is None or key > best_key:
        best, best_key = candidate, key
        metrics = {"known_validation_rejected": rejected, "tune_unknown": unknown}
  enrolled_thresholds = {}
  both = known_validation + tune_test
  for k, k_draws in draws.items():
    objective = []
    for t in COSINE_GRID:
      chosen = Thresholds(best.score, best.accept, best.threshold, {k: t}, {})
      candidate = tuned_calibration(best, chosen, k)
      parts = []
      for drawn in k_draws:
        drawn = {c: e for c, e in drawn.items() if c in fold.tune_enrolled}
        named, enrolled = answers(candidate, class_names, both, drawn)
        right = named == both.names
        parts.append(
          _balanced(
            [
              float(right[np.isin(both.names, fold.tune_enrolled)].mean()),
              float((named == "")[np.isin(both.names, fold.tune_never)].mean()),
              float(right[np.isin(both.names, list(known_names))].mean()),
            ]
          )
        )
      objective.append(float(np.mean(parts)))
    index = int(np.argmax(objective))
    enrolled_thresholds[k] = COSINE_GRID[index]
    metrics[f"shot{k}_tune_objective"] = objective[index]
  return Thresholds(best.score, best.accept, best.threshold, enrolled_thresholds, metrics)


def report(
  fitted: calibration_lib.Calibration,
  thresholds: Thresholds,
  class_names: Sequence[str],
  known_test: Pictures,
  report_test: Pictures,
  draws: dict[int, list[Draw]],
  fold: Fold,
  no_character: dict[str, tuple[np.ndarray, np.ndarray]],
) -> dict:
  """The fold's numbers on its report classes (and the known test and no-character pictures),
  answered at the tuned operating point: flat metrics, plus 'per_class'."""
  known = set(class_names)
  base = tuned_calibration(fitted, thresholds)
  report_test = report_test.of(fold.report)
  result = {}
  known_named, _ = answers(base, class_names, known_test)
  result["known_rejected"] = float(np.mean(known_named == ""))
  result["known_accuracy"] = float(np.mean(known_named == known_test.names))
  result["known_top1"] = float(
    np.mean(np.asarray(class_names)[known_test.logits.argmax(1)] == known_test.names)
  )
  scores = [
    calibration_lib.score(base.score, p.logits, p.embeddings, base.prototypes, base.temperature)
    for p in (known_test, report_test)
  ]
  result["auroc"] = calibration_lib.auroc(*scores)
  result["fpr95"] = calibration_lib.fpr_at_tpr(*scores)
  named, enrolled = answers(base, class_names, report_test)
  before = shares(named, enrolled, report_test.names, known)
  result["report_unknown"] = before["unknown"]
  per_class = {c: {"fold": fold.index} for c in fold.report}
  for c in fold.report:
    mine = report_test.names == c
    per_class[c]["role"] = "enrolled" if c in fold.report_enrolled else "never enrolled"
    per_class[c]["pictures"] = int(mine.sum())
    per_class[c]["unknown_before"] = shares(
      named[mine], enrolled[mine], report_test.names[mine], known
    )["unknown"]
  for kind, (logits, emb) in no_character.items():
    empty = Pictures(logits, emb, np.full(len(logits), "", dtype=object))
    result[f"no_character_{kind}_unknown"] = float(
      np.mean(answers(base, class_names, empty)[0] == "")
    )
  for k, k_draws in draws.items():
    shot = tuned_calibration(fitted, thresholds, k)
    outcomes = {c: [] for c in fold.report}
    known_right, summary = [], {"enrolled": [], "never": []}
    for drawn in k_draws:
      drawn = {c: e for c, e in drawn.items() if c in fold.report_enrolled}
      named, enrolled = answers(shot, class_names, report_test, drawn)
      for c in fold.report:
        mine = report_test.names == c
        outcomes[c].append(shares(named[mine], enrolled[mine], report_test.names[mine], known))
      for role, classes in (("enrolled", fold.report_enrolled), ("never", fold.report_never)):
        mine = np.isin(report_test.names, list(classes))
        summary[role].append(shares(named[mine], enrolled[mine], report_test.names[mine], known))
      after, _ = answers(shot, class_names, known_test, drawn)
      known_right.append(float(np.mean(after == known_test.names)))
    mean = lambda rows, key: float(np.mean([r[key] for r in rows]))  # noqa: E731
    result[f"shot{k}_enrolled_named"] = mean(summary["enrolled"], "right")
    result[f"shot{k}_never_unknown"] = mean(summary["never"], "unknown")
    result[f"shot{k}_never_false_name"] = mean(summary["never"], "false_name")
    result[f"shot{k}_never_false_enrolled"] = mean(summary["never"], "false_enrolled")
    result[f"shot{k}_known_accuracy"] = float(np.mean(known_right))
    result[f"shot{k}_known_drop"] = result["known_accuracy"] - result[f"shot{k}_known_accuracy"]
    for c in fold.report:
      key = "right" if c in fold.report_enrolled else "false_name"
      per_class[c][f"shot{k}_{'named' if key == 'right' else 'false_name'}"] = mean(
        outcomes[c], key
      )
  result["per_class"] = per_class
  return result


def summarise(results: Sequence[dict]) -> dict[str, tuple[float, float, int]]:
  """Scalar metric -> (mean, sd, n) over runs (folds x seeds); sd is the sample sd (ddof=1; 0
  for a single run). NaNs (a metric a run lacks) are left out."""
  keys = sorted({k for r in results for k, v in r.items() if isinstance(v, (int, float))})
  out = {}
  for key in keys:
    values = np.array([r[key] for r in results if key in r], np.float64)
    values = values[~np.isnan(values)]
    if len(values):
      sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
      out[key] = (float(values.mean()), sd, len(values))
  return out


def per_class_summary(results: Sequence[dict]) -> dict[str, dict[str, tuple[float, float, int]]]:
  """Report class -> its per-class metrics' (mean, sd, n) over the runs (seeds) that report it."""
  by_class: dict[str, list[dict]] = {}
  for r in results:
    for name, row in r["per_class"].items():
      by_class.setdefault(name, []).append(row)
  return {name: summarise(rows) for name, rows in sorted(by_class.items())}
