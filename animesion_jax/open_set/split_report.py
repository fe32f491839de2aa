"""Open-set numbers of a model on one split, for `evaluate` (and runs trained with held-out classes).

With held-out classes (config.open_set) the split is evaluated on the known classes' pictures
(relabelled as the model's classes) and the held-out classes' pictures are the unknown set:
AUROC and FPR at 95% TPR for every score. For every calibrated model: the share of known
pictures named right and answered unknown, ECE and NLL before and after calibration.
"""

import dataclasses
from typing import Any

import numpy as np

from animesion_jax.data import datasets
from animesion_jax.data import holdout
from animesion_jax.open_set import calibration
from animesion_jax.open_set import fitting


def held_out(run: Any, builder: Any) -> holdout.Holdout:
  """The classes the run's config held out of this dataset (none for other models)."""
  return holdout.from_config(run.config, list(builder.info.features["label"].names))


def known_split(run: Any, builder: Any, split: str) -> tuple[Any, np.ndarray | None]:
  """(records of the known classes relabelled, known-class rows of per-dataset-class arrays).

  (None, None) when nothing is held out: evaluate the split as it is.
  """
  held = held_out(run, builder)
  if not held.held_out:
    return None, None
  labels = holdout.split_labels(builder, split, run.config.dataset)
  source = holdout.known_source(datasets.data_source(builder, split), labels, held)
  return source, np.flatnonzero(held.new_ids >= 0)


def report(
  run: Any, builder: Any, split: str, batch_size: int, known_outputs: dict[str, np.ndarray]
) -> dict[str, Any]:
  """The open-set section of an evaluation report, by the model's calibration (`run.answerer`).

  known_outputs: {'logits', 'embedding', 'label'} of the split's known-class pictures in record
  order, from evaluate's one pass over the split (evaluation.make_eval_fn with_outputs). Only
  held-out classes' pictures, which that pass leaves out, are run through the model here.
  """
  fitted = run.answerer.calibration
  if fitted is None:
    return {"calibrated": False, "note": run.answerer.note}
  # The split's classes are the model's own: enrolled characters are left out.
  answerer = dataclasses.replace(run.answerer, gallery=None)
  held = held_out(run, builder)
  logits, embeddings = known_outputs["logits"], known_outputs["embedding"]
  y = np.asarray(known_outputs["label"], np.int64)
  answers = answerer.answer(logits, embeddings)
  result: dict[str, Any] = {
    "calibrated": True,
    "score": fitted.score,
    "threshold": answerer.threshold,
    "accept": answerer.accept or fitted.accept,
    "known_named_right": float(
      np.mean([a.character == run.class_names[t] for a, t in zip(answers, y)])
    ),
    "known_answered_unknown": float(np.mean([a.unknown for a in answers])),
    "validation": fitted.metrics,
  }
  for when, t in (("before", 1.0), ("after", fitted.temperature)):
    p = calibration.softmax(logits, t)
    result[f"ece_{when}"] = calibration.ece(p.max(1), p.argmax(1) == y)
    result[f"nll_{when}"] = calibration.nll(logits, y, t)
  if held.held_out:
    source = datasets.data_source(builder, split)
    labels = holdout.split_labels(builder, split, run.config.dataset)
    unknown = holdout.unknown_source(source, labels, held)
    u_logits, u_embeddings, _ = fitting.embed_source(run, unknown, batch_size, "held out")
    result["held_out_classes"] = list(held.held_out)
    result["held_out_pictures"] = len(unknown)
    result["held_out_answered_unknown"] = float(
      np.mean([a.unknown for a in answerer.answer(u_logits, u_embeddings)])
    )
    args = (fitted.prototypes, fitted.temperature)
    result["scores"] = {}
    for name in calibration.SCORES:
      k = calibration.score(name, logits, embeddings, *args)
      u = calibration.score(name, u_logits, u_embeddings, *args)
      result["scores"][name] = {
        "auroc": calibration.auroc(k, u),
        "fpr95": calibration.fpr_at_tpr(k, u),
      }
  return result


def format_lines(section: dict[str, Any]) -> list[str]:
  """The summary lines `evaluate` prints."""
  if not section.get("calibrated"):
    return [f"Open set: {section.get('note', 'uncalibrated')}"]
  lines = [
    f"Open set ({section['score']}, names {100 * section['accept']:.0f}% of known validation "
    f"pictures): known named right {100 * section['known_named_right']:.2f}%, answered unknown "
    f"{100 * section['known_answered_unknown']:.2f}%; ECE {section['ece_before']:.4f} -> "
    f"{section['ece_after']:.4f}, NLL {section['nll_before']:.4f} -> {section['nll_after']:.4f}"
  ]
  if "scores" in section:
    lines.append(
      f"Held out ({section['held_out_pictures']} pictures of {len(section['held_out_classes'])} "
      f"classes): answered unknown {100 * section['held_out_answered_unknown']:.2f}%; "
      + ", ".join(
        f"{name} AUROC {row['auroc']:.4f} FPR95 {row['fpr95']:.4f}"
        for name, row in section["scores"].items()
      )
    )
  return lines
