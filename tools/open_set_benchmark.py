r"""Measures how a run trained with held-out classes answers characters it never saw.

  python -m animesion_jax.main --config=configs/quickstart.py --workdir=runs/qs_holdout \
      --config.open_set.holdout_count=4
  python tools/open_set_benchmark.py --workdir=runs/qs_holdout [--shots=1,5,10] [--json=OUT]

The run must be calibrated (training does it when there is a validation split). Prints, on the
test split: AUROC and FPR at 95% TPR of known vs held-out pictures (with the calibration's kept
score), the share of held-out pictures and of no-character pictures (noise, flat colour,
gradients, drawn with another seed than calibration's) answered unknown, the share of known
pictures rejected, ECE (15 bins) and NLL before and after calibration; then, for each k in
--shots, enrols every held-out class from k of its training pictures (an in-memory gallery; the
run is not changed; the mean over --draws random draws of the k pictures) and reports the share of held-out test pictures named right and the known
test accuracy before and after; and organize's adjusted Rand index on the held-out test pictures
(clusters of unknown faces against their true classes). Goals (issue #18) are printed beside.
"""

import dataclasses
import json

from absl import app
from absl import flags
from absl import logging
import numpy as np

from animesion_jax import recognizer
from animesion_jax.cli import common
from animesion_jax.data import datasets
from animesion_jax.data import holdout
from animesion_jax.open_set import answering
from animesion_jax.open_set import calibration
from animesion_jax.open_set import fitting
from animesion_jax.open_set import gallery
from animesion_jax.open_set import grouping

_WORKDIR = flags.DEFINE_string("workdir", None, "A run trained with config.open_set held out.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "best", "best, latest or a step directory.")
_SHOTS = flags.DEFINE_string("shots", "1,5,10", "Enrolment pictures per held-out class.")
_NO_CHARACTER = flags.DEFINE_integer("no_character", 600, "No-character pictures drawn.")
_SEED = flags.DEFINE_integer("seed", 7, "Seed of the shots and the no-character pictures.")
_BATCH = flags.DEFINE_integer("batch_size", 256, "Pictures per device call.")
_DRAWS = flags.DEFINE_integer("draws", 5, "Random draws of the k enrolment pictures, averaged.")
_JSON = flags.DEFINE_string("json", None, "Also write the numbers to this JSON file.")

GOALS = {
  "auroc": ">= 0.90",
  "no_character_unknown": ">= 0.95",
  "known_rejected": "<= 0.05",
  "shot5_accuracy": ">= 0.80",
  "known_accuracy_drop_5shot": "<= 0.02",
  "ece_after": "<= 0.03",
}


def _correct(answers, names, labels) -> np.ndarray:
  return np.array([a.character == names[y] for a, y in zip(answers, labels)])


def measure(
  run, builder, shots: list[int], seed: int, no_character: int, batch_size: int, draws: int = 5
):
  config = run.config
  held = holdout.from_config(config, list(builder.info.features["label"].names))
  if not held.held_out:
    raise ValueError(f"{run.description} holds no class out (config.open_set is empty).")
  fitted = run.answerer.calibration
  if fitted is None:
    raise ValueError(f"{run.description} is not calibrated: {run.answerer.note}")
  # Measured without whatever the run has enrolled.
  answerer = dataclasses.replace(run.answerer, gallery=None)
  labels_of = lambda split: holdout.split_labels(builder, split, config.dataset)  # noqa: E731
  test, train = datasets.data_source(builder, "test"), datasets.data_source(builder, "train")
  test_labels, train_labels = labels_of("test"), labels_of("train")
  known = holdout.known_source(test, test_labels, held)
  unknown = holdout.unknown_source(test, test_labels, held)
  k_logits, k_emb, k_labels = fitting.embed_source(run, known, batch_size, "known test")
  u_logits, u_emb, u_labels = fitting.embed_source(run, unknown, batch_size, "held-out test")
  empty = calibration.no_character_pictures(no_character, config.image_size, seed)
  e_logits, e_emb = run.embed(empty, batch_size)

  def scores(logits, emb):
    return calibration.score(fitted.score, logits, emb, fitted.prototypes, fitted.temperature)

  known_scores, unknown_scores = scores(k_logits, k_emb), scores(u_logits, u_emb)
  known_answers = answerer.answer(k_logits, k_emb)
  names = run.class_names
  probabilities = {t: calibration.softmax(k_logits, t) for t in (1.0, fitted.temperature)}
  result = {
    "run": run.description,
    "step": run.step,
    "score": fitted.score,
    "held_out": list(held.held_out),
    "known_test_pictures": len(k_labels),
    "held_out_test_pictures": len(u_labels),
    "auroc": calibration.auroc(known_scores, unknown_scores),
    "fpr95": calibration.fpr_at_tpr(known_scores, unknown_scores),
    "held_out_unknown": float(np.mean([a.unknown for a in answerer.answer(u_logits, u_emb)])),
    "no_character_unknown": float(np.mean([a.unknown for a in answerer.answer(e_logits, e_emb)])),
    "known_rejected": float(np.mean([a.unknown for a in known_answers])),
    "known_top1": float(np.mean(k_logits.argmax(1) == k_labels)),
    "known_accuracy": float(np.mean(_correct(known_answers, names, k_labels))),
  }
  for when, t in (("before", 1.0), ("after", fitted.temperature)):
    p = probabilities[t]
    result[f"ece_{when}"] = calibration.ece(p.max(1), p.argmax(1) == k_labels)
    result[f"nll_{when}"] = calibration.nll(k_logits, k_labels, t)
  # Enrolment: k training pictures of each held-out class, answered on its test pictures.
  dataset_names = list(held.dataset_names)
  rng = np.random.default_rng(seed)
  train_unknown = holdout.unknown_source(train, train_labels, held)
  pool = {c: np.flatnonzero(np.asarray(train_unknown.labels) == c) for c in held.held_out_ids}
  provenance = answering.provenance(run)
  for k in shots:
    held_right, known_right = [], []
    for _ in range(draws):  # Which k pictures matters: the mean over several draws.
      chosen = {c: rng.choice(pool[c], min(k, len(pool[c])), replace=False) for c in pool}
      indices = np.concatenate(list(chosen.values()))
      subset = holdout.Relabeled(
        train_unknown.source,
        np.asarray(train_unknown.indices)[indices],
        np.asarray(train_unknown.labels)[indices],
      )
      _, s_emb, s_labels = fitting.embed_source(run, subset, batch_size, f"{k}-shot")
      enrolled = gallery.Gallery(provenance)
      for c in pool:
        emb = s_emb[s_labels == c].astype(np.float64)
        enrolled.characters[dataset_names[c]] = gallery.Character(len(emb), emb.sum(0), [])
      with_gallery = answering.Answerer(names, fitted, enrolled)
      held_answers = with_gallery.answer(u_logits, u_emb)
      held_right.append(float(np.mean(_correct(held_answers, dataset_names, u_labels))))
      after = with_gallery.answer(k_logits, k_emb)
      known_right.append(float(np.mean(_correct(after, names, k_labels))))
    result[f"shot{k}_accuracy"] = float(np.mean(held_right))
    result[f"shot{k}_accuracy_sd"] = float(np.std(held_right))
    result[f"shot{k}_known_accuracy"] = float(np.mean(known_right))
    result[f"known_accuracy_drop_{k}shot"] = (
      result["known_accuracy"] - result[f"shot{k}_known_accuracy"]
    )
  # organize on the held-out test pictures (none enrolled): clusters against the true classes.
  groups = grouping.group_names(answerer.answer(u_logits, u_emb), u_emb, fitted.cluster_distance)
  result["organize_ari"] = grouping.adjusted_rand_index(u_labels, groups)
  result["organize_groups"] = len(set(groups))
  return result


def format_table(result: dict) -> str:
  rows = [
    ("AUROC known vs held-out (test)", "auroc"),
    ("FPR at 95% TPR", "fpr95"),
    ("held-out pictures answered unknown", "held_out_unknown"),
    ("no-character pictures answered unknown", "no_character_unknown"),
    ("known pictures rejected (unknown)", "known_rejected"),
    ("known top-1 (closed set)", "known_top1"),
    ("known named right (with unknown)", "known_accuracy"),
    ("ECE before calibration", "ece_before"),
    ("ECE after calibration", "ece_after"),
    ("NLL before calibration", "nll_before"),
    ("NLL after calibration", "nll_after"),
  ]
  shots = sorted(
    int(k[4:-9])
    for k in result
    if k.startswith("shot") and k.endswith("_accuracy") and "known" not in k
  )
  for k in shots:
    rows += [
      (f"{k}-shot: held-out named right", f"shot{k}_accuracy"),
      (f"{k}-shot: its sd over draws", f"shot{k}_accuracy_sd"),
      (f"{k}-shot: known named right", f"shot{k}_known_accuracy"),
      (f"{k}-shot: known accuracy drop", f"known_accuracy_drop_{k}shot"),
    ]
  rows.append(("organize adjusted Rand index (held-out)", "organize_ari"))
  lines = [
    f"{result['run']} step {result['step']}: {result['known_test_pictures']} known and "
    f"{result['held_out_test_pictures']} held-out test pictures; held out "
    f"{', '.join(result['held_out'])}; kept score {result['score']}",
    f"{'':42}{'value':>8}  goal",
  ]
  for title, key in rows:
    goal = GOALS.get(key, "")
    lines.append(f"{title:42}{result[key]:>8.4f}  {goal}")
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not _WORKDIR.value:
    raise app.UsageError("Give --workdir=RUN (a run trained with config.open_set).")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  shots = [int(s) for s in _SHOTS.value.split(",") if s.strip()]
  try:
    run = recognizer.load_run(_WORKDIR.value, _CHECKPOINT.value)
    config = run.config
    builder = datasets.open_dataset(config.dataset, config.data_dir, config.dataset_config)
    result = measure(
      run, builder, shots, _SEED.value, _NO_CHARACTER.value, _BATCH.value, _DRAWS.value
    )
  except (*common.USER_ERRORS, ValueError) as error:
    common.exit_with_user_error("open_set_benchmark", error)
  print(format_table(result))
  if _JSON.value:
    with open(_JSON.value, "w", encoding="utf-8") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  app.run(main)
