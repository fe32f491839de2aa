r"""The open-set protocol of issue #26: folds of held-out classes x training seeds, tuned apart.

  python tools/open_set_protocol.py --config=configs/quickstart.py --root=runs/protocol \
      --train [--folds=3 --fold_size=8 --seeds=0,1 --shots=1,5] [--json=OUT] [--config.X=...]

The dataset's classes are dealt into --folds disjoint folds of --fold_size (drawn with
--fold_seed; animesion_jax/open_set/protocol.py). Each fold x seed is one run, ROOT/foldF_seedS,
trained with the fold's classes held out (config.open_set.holdout_classes) and config.seed=S;
--train trains (or resumes) the runs that are not yet calibrated, in this process, with --config
and its overrides; without it, missing runs are listed and left out. In each run, half of the
fold's classes are *tune* classes: the known-name score and threshold and the enrolled-name
threshold are chosen on them (and on known validation pictures) only. The other half are *report*
classes: some are enrolled from k of their training pictures (the mean over --draws draws), the
others never are, and their false names (an enrolled or a known name) are counted. Known test
pictures, the report classes' test pictures and no-character pictures (the kinds the rule was
fitted on, and kinds it never saw: open_set/no_character_kinds.py) are answered by the one
decision rule (answering.decide) at the tuned operating point. Printed: mean +- sd over every
fold x seed, then per report class (mean +- sd over seeds).
"""

import json
import os

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags
import numpy as np

from animesion_jax import calibrate
from animesion_jax import recognizer
from animesion_jax import run_dir
from animesion_jax.cli import common
from animesion_jax.data import datasets
from animesion_jax.data import holdout
from animesion_jax.open_set import fitting
from animesion_jax.open_set import no_character_kinds
from animesion_jax.open_set import protocol

_CONFIG = config_flags.DEFINE_config_file("config", None, "The training config of every run.")
_ROOT = flags.DEFINE_string("root", None, "Folder of the runs (ROOT/foldF_seedS).")
_TRAIN = flags.DEFINE_bool("train", False, "Train (or resume) the runs not yet calibrated.")
_FOLDS = flags.DEFINE_integer("folds", 3, "Disjoint folds of held-out classes.")
_FOLD_SIZE = flags.DEFINE_integer("fold_size", 8, "Held-out classes per fold (half tune).")
_FOLD_SEED = flags.DEFINE_integer("fold_seed", 0, "Seed dealing the classes into folds.")
_SEEDS = flags.DEFINE_string("seeds", "0,1", "Training seeds (config.seed) of each fold.")
_SHOTS = flags.DEFINE_string("shots", "1,5", "Enrolment pictures per enrolled class.")
_DRAWS = flags.DEFINE_integer("draws", 3, "Random draws of the k enrolment pictures, averaged.")
_NO_CHARACTER = flags.DEFINE_integer("no_character", 60, "No-character pictures per kind.")
_SEED = flags.DEFINE_integer("seed", 7, "Seed of the enrolment draws and no-character pictures.")
_BATCH = flags.DEFINE_integer("batch_size", 256, "Pictures per device call.")
_JSON = flags.DEFINE_string("json", None, "Also write every number to this JSON file.")

GOALS = {
  "shot5_enrolled_named": ">= 0.85",
  "shot1_enrolled_named": ">= 0.60",
  "shot5_known_drop": "<= 0.02",
  "report_unknown": ">= 0.70",
  "known_rejected": "<= 0.05",
  "auroc": ">= 0.95",
  "shot5_never_unknown": ">= 0.60",
  "no_character_fitted_unknown": ">= 0.98",
  "no_character_unseen_unknown": ">= 0.95",
}


def run_path(root: str, fold: protocol.Fold, seed: int) -> str:
  return os.path.join(root, f"fold{fold.index}_seed{seed}")


def train(base, workdir: str, fold: protocol.Fold, seed: int) -> None:
  """Trains (resuming) and calibrates the run of `fold` x `seed`, unless already calibrated."""
  if (run_dir.resolve(workdir) / run_dir.CALIBRATION_FILE).exists():
    return
  config = base.copy_and_resolve_references()
  config.open_set.holdout_classes = fold.holdout_flag()
  config.open_set.holdout_count = 0
  config.seed = seed
  logging.warning("Training %s (held out: %s).", workdir, fold.holdout_flag())
  calibrate.train_and_calibrate(config, workdir)


def _pictures(run, source, names, batch_size, desc) -> protocol.Pictures:
  logits, emb, labels = fitting.embed_source(run, source, batch_size, desc)
  return protocol.Pictures(logits, emb, np.asarray(names, dtype=object)[labels])


def measure(
  workdir: str, fold: protocol.Fold, seed: int, shots, draws, no_character, pic_seed, batch_size
) -> dict:
  """The protocol's numbers of one trained run (tune, then report)."""
  run = recognizer.load_run(workdir, "best")
  fitted = run.answerer.calibration
  if fitted is None:
    raise ValueError(f"{workdir} is not calibrated: {run.answerer.note}")
  config = run.config
  builder = datasets.open_dataset(config.dataset, config.data_dir, config.dataset_config)
  dataset_names = list(builder.info.features["label"].names)
  held = holdout.from_config(config, dataset_names)
  if set(held.held_out) != set(fold.held_out):
    raise ValueError(
      f"{workdir} holds out {sorted(held.held_out)}, not fold {fold.index}'s "
      f"{sorted(fold.held_out)}: train it with --train, or give another --root."
    )
  names = list(run.class_names)
  _, validation = fitting.calibration_sources(config, builder)
  known_validation = _pictures(run, validation, names, batch_size, "known validation")
  labels_of = lambda split: holdout.split_labels(builder, split, config.dataset)  # noqa: E731
  test, train_split = datasets.data_source(builder, "test"), datasets.data_source(builder, "train")
  test_labels = labels_of("test")
  known_test = _pictures(
    run, holdout.known_source(test, test_labels, held), names, batch_size, "known test"
  )
  held_test = _pictures(
    run, holdout.unknown_source(test, test_labels, held), dataset_names, batch_size, "held test"
  )
  pool = _pictures(
    run,
    holdout.unknown_source(train_split, labels_of("train"), held),
    dataset_names,
    batch_size,
    "held-out train",
  )
  rng = np.random.default_rng([pic_seed, fold.index, seed])

  def draws_of(classes):
    by_class = {c: pool.embeddings[pool.names == c] for c in classes}
    return {
      k: [
        {c: e[rng.choice(len(e), min(k, len(e)), replace=False)] for c, e in by_class.items()}
        for _ in range(draws)
      ]
      for k in shots
    }

  tune_draws, report_draws = draws_of(fold.tune_enrolled), draws_of(fold.report_enrolled)
  thresholds = protocol.tune(
    fitted, names, known_validation, held_test.of(fold.tune), tune_draws, fold
  )
  empty = {}
  for kind in no_character_kinds.FITTED_KINDS + no_character_kinds.UNSEEN_KINDS:
    pictures = no_character_kinds.draw(kind, no_character, config.image_size, pic_seed)
    empty[kind] = run.embed(pictures, batch_size)
  result = protocol.report(
    fitted, thresholds, names, known_test, held_test, report_draws, fold, empty
  )
  fitted_kinds = [result[f"no_character_{k}_unknown"] for k in no_character_kinds.FITTED_KINDS]
  unseen = [result[f"no_character_{k}_unknown"] for k in no_character_kinds.UNSEEN_KINDS]
  result["no_character_fitted_unknown"] = float(np.mean(fitted_kinds))
  result["no_character_unseen_unknown"] = float(np.mean(unseen))
  result.update(
    fold=fold.index,
    seed=seed,
    run=workdir,
    step=run.step,
    tuned={
      "score": thresholds.score,
      "accept": thresholds.accept,
      "threshold": thresholds.threshold,
      "enrolled": {str(k): v for k, v in thresholds.enrolled.items()},
      **thresholds.tune_metrics,
    },
  )
  result["tune_accept"] = thresholds.accept
  for k, v in thresholds.enrolled.items():
    result[f"shot{k}_tuned_cosine"] = v
  return result


def _row(title, key, stats) -> str:
  mean, sd, n = stats.get(key, (np.nan, np.nan, 0))
  return f"| {title} | {mean:.3f} +- {sd:.3f} | {n} | {GOALS.get(key, '')} |"


def format_tables(results: list[dict], shots: list[int]) -> str:
  stats = protocol.summarise(results)
  rows = [
    ("known top-1 (closed set, test)", "known_top1"),
    ("known pictures rejected (unknown)", "known_rejected"),
    ("known named right", "known_accuracy"),
    ("AUROC known vs report classes (tuned score)", "auroc"),
    ("FPR at 95% TPR", "fpr95"),
    ("report classes answered unknown, nothing enrolled", "report_unknown"),
  ]
  for k in shots:
    rows += [
      (f"{k}-shot: enrolled report classes named right", f"shot{k}_enrolled_named"),
      (f"{k}-shot: never-enrolled answered unknown", f"shot{k}_never_unknown"),
      (f"{k}-shot: never-enrolled given a false name", f"shot{k}_never_false_name"),
      (f"{k}-shot: ... of which an enrolled name", f"shot{k}_never_false_enrolled"),
      (f"{k}-shot: known accuracy drop", f"shot{k}_known_drop"),
      (f"{k}-shot: tuned enrolled-name cosine", f"shot{k}_tuned_cosine"),
    ]
  rows += [("tuned known acceptance (validation)", "tune_accept")]
  rows += [("no-character, fitted kinds: unknown", "no_character_fitted_unknown")]
  rows += [
    (f"  {kind}", f"no_character_{kind}_unknown") for kind in no_character_kinds.FITTED_KINDS
  ]
  rows += [("no-character, never-fitted kinds: unknown", "no_character_unseen_unknown")]
  rows += [
    (f"  {kind}", f"no_character_{kind}_unknown") for kind in no_character_kinds.UNSEEN_KINDS
  ]
  lines = ["| metric (report classes) | mean +- sd | runs | goal |", "|---|---|---|---|"]
  lines += [_row(title, key, stats) for title, key in rows]
  per_class = protocol.per_class_summary(results)
  columns = ["unknown_before"] + [
    f"shot{k}_{what}" for k in shots for what in ("named", "false_name")
  ]
  lines += ["", "| report class | fold | role | " + " | ".join(columns) + " |"]
  lines.append("|---" * (3 + len(columns)) + "|")
  roles = {n: r["role"] for res in results for n, r in res["per_class"].items()}
  for name, row in per_class.items():
    cells = [f"{row[c][0]:.2f} +- {row[c][1]:.2f}" if c in row else "" for c in columns]
    fold = int(row["fold"][0])
    lines.append(f"| {name} | {fold} | {roles[name]} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not _ROOT.value or _CONFIG.value is None:
    raise app.UsageError("Give --config=CONFIG (the runs' training config) and --root=FOLDER.")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  shots = [int(s) for s in _SHOTS.value.split(",") if s.strip()]
  seeds = [int(s) for s in _SEEDS.value.split(",") if s.strip()]
  base = _CONFIG.value
  results, missing = [], []
  try:
    builder = datasets.open_dataset(
      base.dataset,
      base.data_dir,
      base.dataset_config,
      build_if_missing=base.get("build_dataset_if_missing", False),
    )
    folds = protocol.make_folds(
      list(builder.info.features["label"].names), _FOLDS.value, _FOLD_SIZE.value, _FOLD_SEED.value
    )
    for seed in seeds:
      for fold in folds:
        workdir = run_path(_ROOT.value, fold, seed)
        if _TRAIN.value:
          train(base, workdir, fold, seed)
        if not (run_dir.resolve(workdir) / run_dir.CALIBRATION_FILE).exists():
          missing.append(workdir)
          continue
        results.append(
          measure(
            workdir, fold, seed, shots, _DRAWS.value, _NO_CHARACTER.value, _SEED.value, _BATCH.value
          )
        )
  except (*common.USER_ERRORS, ValueError) as error:
    common.exit_with_user_error("open_set_protocol", error)
  if not results:
    common.exit_with_user_error(
      "open_set_protocol", ValueError(f"No calibrated run under {_ROOT.value}; add --train.")
    )
  print(f"{len(results)} runs (folds x seeds) measured under {_ROOT.value}.")
  if missing:
    print(f"Not trained (left out; --train trains them): {', '.join(missing)}")
  for fold in folds:
    print(
      f"fold {fold.index}: tune {', '.join(fold.tune)}; report enrolled "
      f"{', '.join(fold.report_enrolled)}, never enrolled {', '.join(fold.report_never)}"
    )
  for r in results:
    tuned = r["tuned"]
    print(
      f"fold {r['fold']} seed {r['seed']} (step {r['step']}): tuned score {tuned['score']}, "
      f"known acceptance {tuned['accept']}, enrolled-name cosine {tuned['enrolled']}"
    )
  print(format_tables(results, shots))
  if _JSON.value:
    with open(_JSON.value, "w", encoding="utf-8") as f:
      json.dump({"folds": [f.__dict__ for f in folds], "runs": results}, f, indent=1)


if __name__ == "__main__":
  app.run(main)
