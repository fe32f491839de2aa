r"""Evaluates a model on a whole split: top-1/top-5, loss and long-tail metrics.

  python -m animesion_jax.evaluate --workdir=runs/b16_dafre [--split=test] \
      [--checkpoint=best|latest|PATH] [--output_dir=DIR]
  python -m animesion_jax.evaluate --checkpoint=b16_dafre.pth --source=pytorch_vit \
      --dataset=dafre --data_dir=DIR [--class_names=classid_classname.csv] [--num_heads=N] \
      [--image_size=S] [--output_dir=DIR]

A head detector run (config.task='detect', docs/detector.md) gets its COCO AP50, AP50:95 and
recall and precision at its threshold on the split instead (written to
WORKDIR/evaluation/<split>_step<N>/detection.json).

The second form evaluates a checkpoint with no training run (SOURCE: pytorch_vit,
torchvision_resnet, animesion, vit_npz or run; the architecture is read from the file); the
class names default to the dataset's and must match them if given. Every example of the split
is seen exactly once. Writes, under --output_dir (default WORKDIR/evaluation/<split>_step<N>/,
or evaluation/<checkpoint>_<split>/ in the current directory for a checkpoint):
  evaluation.json               all metrics: overall, balanced, per shot group, per class,
                                most confused pairs
  per_class.csv                 class_id, name, train_count, group, examples, top1, top5
  confused_pairs.csv            the most frequent (true, predicted) mistakes
  predictions.csv               every example: record index, label, top-5 class ids
  accuracy_vs_train_count.png   per-class top-1 against training images per class
  confusions.png                confusion matrix of the most confused classes
and prints a compact summary table.
"""

import csv
import io
import json
import os
from typing import Any

from absl import app
from absl import flags
from absl import logging
from etils import epath
import jax
import numpy as np

from animesion_jax import recognizer
from animesion_jax import run_dir
from animesion_jax import sharding
from animesion_jax.cli import common
from animesion_jax.data import datasets
from animesion_jax.inference import head_detector
from animesion_jax.inference import longtail
from animesion_jax.inference import plots
from animesion_jax.open_set import split_report
from animesion_jax.training import evaluation


class EvaluationError(ValueError):
  """The evaluation asked for cannot be done (e.g. a split the dataset lacks)."""


def train_class_counts(builder: Any, train_split: str, num_classes: int) -> np.ndarray:
  """Training images per class: stored when the dataset was built, else from the labels alone."""
  from tfds_builders.common import class_counts  # pylint: disable=g-import-not-at-top

  return class_counts.split_class_counts(builder, train_split, num_classes)


def split_outputs(
  run: recognizer.Recognizer, builder: Any, split: str, batch_size: int, source: Any = None
) -> dict[str, Any]:
  """{'index', 'label', 'top5'} of every example in record order (with 'logits' and
  'embedding' for a calibrated model), and exact 'metrics'."""
  # A calibrated model's open-set section reads the logits and embeddings of the same pass.
  with_outputs = run.answerer.calibration is not None
  return evaluation.predict_split(
    run.variables,
    evaluation.make_eval_fn(run.model, run.config.normalization, with_outputs),
    builder,
    split,
    batch_size=batch_size,
    image_size=run.config.image_size,
    workers=run.config.get("data_workers", 0),
    mesh=run.mesh,
    source=source,
  )


def evaluate_loaded(
  run: recognizer.Recognizer,
  builder: Any,
  dataset: str,
  split: str = "test",
  output_dir: epath.Path | None = None,
  batch_size: int = 256,
  confused_limit: int = 20,
  many_shot_above: int = longtail.MANY_SHOT_ABOVE,
  few_shot_below: int = longtail.FEW_SHOT_BELOW,
) -> dict[str, Any]:
  """Evaluates a loaded model on `split` of `builder`, writes the report files, returns it.

  The model's calibration (`run.answerer`, see recognizer.Recognizer.with_open_set) shapes the
  open-set section (#18). A model loaded tau-normalised (`run.tau_norm`, see
  recognizer.load_run) is evaluated and reported as such; the shot groups are split at many_shot_above and few_shot_below
  training images.
  """
  if split not in builder.info.splits:
    raise EvaluationError(
      f"--split={split!r}: dataset {dataset!r} has splits {sorted(builder.info.splits)}."
    )
  names = list(builder.info.features["label"].names)
  known, known_rows = split_report.known_split(run, builder, split)  # Held-out classes out.
  if known_rows is not None:
    names = [names[i] for i in known_rows]
  if len(names) != run.num_classes:
    raise EvaluationError(
      f"{run.description} has {run.num_classes} classes but dataset {dataset!r} has {len(names)}."
    )
  batch_size = sharding.round_up_batch(batch_size, run.mesh.size)
  tau_norm = run.tau_norm
  outputs = split_outputs(run, builder, split, batch_size, known)
  train_counts = train_class_counts(
    builder, datasets.get_spec(dataset).train_split, len(builder.info.features["label"].names)
  )
  train_counts = train_counts if known_rows is None else train_counts[known_rows]
  report = longtail.summarize(
    outputs["label"],
    outputs["top5"],
    train_counts,
    run.class_names,
    confused_limit,
    many_shot_above,
    few_shot_below,
  )
  report = {
    "workdir": run.description,
    "checkpoint": run.checkpoint,
    "step": run.step,
    "split": split,
    "dataset": dataset,
    "model": run.config.model.name,
    "training_loss": run.config.get("loss", "softmax"),
    "tau_norm": tau_norm,
    "loss": outputs["metrics"]["loss"],
    **report,
    "open_set": split_report.report(run, builder, split, batch_size, outputs),
  }
  if output_dir is None:
    output_dir = (
      run.workdir.evaluation_dir(split, run.step)
      if run.workdir is not None
      else run_dir.resolve("evaluation") / f"{epath.Path(run.checkpoint).stem}_{split}"
    )
    if tau_norm:
      output_dir = output_dir.parent / f"{output_dir.name}_tau{tau_norm:g}"
  if jax.process_index() == 0:
    write_report(report, outputs, output_dir)
  report["output_dir"] = os.fspath(output_dir)
  return report


def evaluate(
  workdir: str | os.PathLike,
  split: str = "test",
  checkpoint: str = "best",
  output_dir: str | os.PathLike | None = None,
  batch_size: int = 0,
  confused_limit: int = 20,
  accept: float | None = None,
  gallery: str | os.PathLike | None = None,
  tau_norm: float | None = None,
  many_shot_above: int | None = None,
  few_shot_below: int | None = None,
) -> dict[str, Any]:
  """Evaluates a training run's checkpoint on `split` of the dataset it was trained on.

  `accept` and `gallery` (the calibration's directory) shape the open-set section (#18);
  tau_norm, many_shot_above and few_shot_below default to the run's config.
  """
  run = recognizer.load_run(
    workdir, checkpoint, accept=accept, gallery=gallery, tau_norm=tau_norm
  )  # tau_norm None: the run's config.tau_norm.
  config = run.config
  pick = lambda given, field: config.get(field) if given is None else given
  builder = datasets.open_dataset(
    config.dataset, config.data_dir, config.dataset_config, config.build_dataset_if_missing
  )
  return evaluate_loaded(
    run,
    builder,
    config.dataset,
    split,
    None if output_dir is None else run_dir.resolve(output_dir),
    batch_size or config.eval_batch_size,
    confused_limit,
    pick(many_shot_above, "many_shot_above"),
    pick(few_shot_below, "few_shot_below"),
  )


def evaluate_checkpoint(
  checkpoint: str | os.PathLike,
  source: str,
  dataset: str,
  *,
  class_names: str | os.PathLike | None = None,
  data_dir: str = "",
  dataset_config: str = "",
  num_heads: int | None = None,
  image_size: int | None = None,
  accept: float | None = None,
  gallery: str | os.PathLike | None = None,
  tau_norm: float = 0.0,
  **kwargs,
) -> dict[str, Any]:
  """Evaluates a checkpoint with no training run (see recognizer.load_checkpoint).

  The class names default to the dataset's; given ones must be the dataset's, in its order.
  `accept`, `gallery` and `tau_norm` as for `evaluate` (a checkpoint file is calibrated only
  where `gallery` names its calibration's directory). `kwargs` are those of `evaluate_loaded`
  (split, output_dir, batch_size, confused_limit, many_shot_above, few_shot_below).
  """
  builder = datasets.open_dataset(
    dataset, os.fspath(run_dir.resolve(data_dir)) if data_dir else "", dataset_config
  )
  names = list(builder.info.features["label"].names)
  if class_names is not None:
    given = recognizer.read_class_names(class_names)
    differ = [i for i, (a, b) in enumerate(zip(given, names)) if a != b]
    if len(given) != len(names) or differ:
      first = differ[0] if differ else min(len(given), len(names))
      raise EvaluationError(
        f"--class_names={os.fspath(class_names)} does not match dataset {dataset!r}: "
        f"{len(given)} names against {len(names)}"
        + (
          f"; first difference at class {first}: {given[first]!r} against {names[first]!r}"
          if differ
          else ""
        )
        + ". The checkpoint's class ids would not mean the dataset's."
      )
  run = recognizer.load_checkpoint(
    checkpoint,
    source,
    names,
    num_heads=num_heads,
    image_size=image_size,
    accept=accept,
    gallery=gallery,
    tau_norm=tau_norm,
  )
  if kwargs.get("output_dir") is not None:
    kwargs["output_dir"] = run_dir.resolve(kwargs["output_dir"])
  return evaluate_loaded(run, builder, dataset, **kwargs)


def write_report(
  report: dict[str, Any], outputs: dict[str, Any], output_dir: str | os.PathLike
) -> None:
  """JSON, CSV and PNG files of an evaluation."""
  output_dir = epath.Path(output_dir)
  output_dir.mkdir(parents=True, exist_ok=True)
  (output_dir / "evaluation.json").write_text(
    json.dumps(report, indent=1, ensure_ascii=False), encoding="utf-8"
  )
  _write_csv(
    output_dir / "per_class.csv",
    report["per_class"],
    ["class_id", "name", "train_count", "group", "examples", "top1", "top5"],
  )
  _write_csv(
    output_dir / "confused_pairs.csv",
    report["confused_pairs"],
    ["true_id", "true_name", "predicted_id", "predicted_name", "count", "fraction_of_true"],
  )
  k = outputs["top5"].shape[1]
  rows = [
    {"index": int(index), "label": int(label), **{f"top{i + 1}": int(c) for i, c in enumerate(top)}}
    for index, label, top in zip(outputs["index"], outputs["label"], outputs["top5"])
  ]
  _write_csv(
    output_dir / "predictions.csv", rows, ["index", "label"] + [f"top{i + 1}" for i in range(k)]
  )
  plots.accuracy_vs_frequency(report, output_dir / "accuracy_vs_train_count.png")
  plots.confusions(report, outputs["label"], outputs["top5"][:, 0], output_dir / "confusions.png")


def _write_csv(path: epath.Path, records: list[dict[str, Any]], fields: list[str]) -> None:
  text = io.StringIO()
  writer = csv.DictWriter(text, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
  writer.writeheader()
  writer.writerows(records)
  path.write_text(text.getvalue(), encoding="utf-8")


def _percent(value: float | None) -> str:
  return "-" if value is None else f"{100 * value:.2f}"


def format_summary(report: dict[str, Any], pairs: int = 5) -> str:
  """A compact text table of an evaluation report."""
  where = "converted checkpoint" if report["step"] is None else f"checkpoint step {report['step']}"
  if report.get("tau_norm"):
    where += f", tau-normalised classifier (tau {report['tau_norm']:g})"
  lines = [
    f"{report['workdir']}: {report['model']}, {where}, "
    f"{report['dataset']} {report['split']}: {report['num_examples']} examples, "
    f"{report['classes_evaluated']}/{report['num_classes']} classes, loss "
    f"{report['loss']:.4f}",
    f"{'':24}{'classes':>8}{'examples':>10}{'top-1':>8}{'top-5':>8}{'class-avg top-1':>17}",
  ]
  rows = [
    (
      "all",
      {
        "classes": report["classes_evaluated"],
        "examples": report["num_examples"],
        "top1": report["top1"],
        "top5": report["top5"],
        "mean_class_top1": report["mean_class_top1"],
      },
    )
  ]
  rows += [(group["title"], group) for group in report["groups"].values()]
  for title, row in rows:
    lines.append(
      f"{title:24}{row['classes']:>8}{row['examples']:>10}{_percent(row['top1']):>8}"
      f"{_percent(row['top5']):>8}{_percent(row['mean_class_top1']):>17}"
    )
  if "open_set" in report:
    lines += split_report.format_lines(report["open_set"])
  if report["confused_pairs"]:
    lines.append("Most confused (count: true -> predicted):")
    for pair in report["confused_pairs"][:pairs]:
      lines.append(f"  {pair['count']:>5}: {pair['true_name']} -> {pair['predicted_name']}")
  return "\n".join(lines)


def define_flags() -> None:
  """The command line flags (defined only when run as a program: importing defines none)."""
  flags.DEFINE_string("split", "test", "Split to evaluate.")
  flags.DEFINE_string("dataset", None, "With --source: the dataset (moeimouto, dafre, ...).")
  flags.DEFINE_string("data_dir", "", "With --source: TFDS data directory of --dataset.")
  flags.DEFINE_string("dataset_config", "", "With --source: builder config of --dataset.")
  common.define_model_flags(
    "With --source: classid_classname.csv or a JSON list (default: the dataset's names)."
  )
  flags.DEFINE_string(
    "output_dir",
    None,
    "Where to write (default WORKDIR/evaluation/SPLIT_stepN, or evaluation/CHECKPOINT_SPLIT here).",
  )
  flags.DEFINE_integer(
    "batch_size",
    0,
    "Global batch size (0: the run's eval_batch_size, or 256; "
    "rounded up to a multiple of the device count).",
  )
  flags.DEFINE_integer("confused_pairs", 20, "How many most-confused pairs to report.")
  flags.DEFINE_float(
    "tau_norm",
    None,
    "Tau-normalise the classifier: each class's weights / their norm ** T, bias dropped "
    "(0 = off; default: the run's config.tau_norm, else 0).",
  )
  flags.DEFINE_integer(
    "many_shot_above",
    None,
    "Many-shot classes have more training images than this (default: the run's config, else 100).",
  )
  flags.DEFINE_integer(
    "few_shot_below",
    None,
    "Few-shot classes have fewer training images than this (default: the run's config, else 20).",
  )
  common.define_runtime_flags(distributed=True)
  flags.adopt_module_key_flags(common)  # --help lists them with this program's own.


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  flag = flags.FLAGS
  common.check_model_flags(flag)
  if flag.source is not None and not flag.dataset:
    raise app.UsageError("--source needs --dataset (and --data_dir where it is built).")
  if not flag["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Library INFO chatter would bury the summary.
  common.start_jax(flag)
  try:
    if flag.workdir is not None and head_detector.is_detector_run(flag.workdir):
      detector = head_detector.HeadDetector(run_dir.resolve(flag.workdir))
      print(head_detector.format_report(detector.evaluate(flag.split, flag.batch_size or 32)))
      return
    if flag.workdir is not None:
      report = evaluate(
        flag.workdir,
        flag.split,
        flag.checkpoint or "best",
        flag.output_dir,
        flag.batch_size,
        flag.confused_pairs,
        flag.accept,
        flag.gallery,
        flag.tau_norm,
        flag.many_shot_above,
        flag.few_shot_below,
      )
    else:
      report = evaluate_checkpoint(
        flag.checkpoint,
        flag.source,
        flag.dataset,
        class_names=flag.class_names,
        data_dir=flag.data_dir,
        dataset_config=flag.dataset_config,
        num_heads=flag.num_heads,
        image_size=flag.image_size,
        split=flag.split,
        output_dir=flag.output_dir,
        batch_size=flag.batch_size or 256,
        confused_limit=flag.confused_pairs,
        accept=flag.accept,
        gallery=flag.gallery,
        tau_norm=flag.tau_norm or 0.0,
        many_shot_above=(
          longtail.MANY_SHOT_ABOVE if flag.many_shot_above is None else flag.many_shot_above
        ),
        few_shot_below=longtail.FEW_SHOT_BELOW
        if flag.few_shot_below is None
        else flag.few_shot_below,
      )
  except (*common.USER_ERRORS, EvaluationError) as error:  # Says what is wrong: no usage dump.
    common.exit_with_user_error("evaluate", error)
  if jax.process_index() == 0:
    print(format_summary(report))
    print(f"Wrote {report['output_dir']}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
