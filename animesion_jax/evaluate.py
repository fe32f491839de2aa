r"""Evaluates a trained run on a whole split: top-1/top-5, loss and long-tail metrics.

  python -m animesion_jax.evaluate --workdir=runs/b16_dafre [--split=test] \
      [--checkpoint=best|latest|PATH] [--output_dir=DIR]

Every example of the split is seen exactly once. Writes, under --output_dir (default
WORKDIR/evaluation/<split>_step<N>/):
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
import functools
import json
import os
from typing import Any

from absl import app
from absl import flags
from absl import logging
import jax
import matplotlib
import matplotlib.ticker
import numpy as np
import tqdm

from animesion_jax import inference
from animesion_jax import longtail
from animesion_jax import sharding
from animesion_jax import steps
from animesion_jax.data import datasets
from animesion_jax.data import pipeline

matplotlib.use("Agg")  # Files only; no display needed.
from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

CONFUSION_CLASSES = 16  # Classes shown in the confusion plot at most.


class EvaluationError(ValueError):
  """The evaluation asked for cannot be done (e.g. a split the dataset lacks)."""


def train_class_counts(builder: Any, train_split: str, num_classes: int) -> np.ndarray:
  """Training images per class, read from the built dataset's train split."""
  source = datasets.data_source(builder, train_split)
  labels = np.fromiter((record["label"] for record in source), np.int64, count=len(source))
  return longtail.class_counts(labels, num_classes)


def _gather(array: np.ndarray) -> np.ndarray:
  """Every process's rows, concatenated in process order (all processes pass the same shape)."""
  if jax.process_count() == 1:
    return array
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  gathered = multihost_utils.process_allgather(array)
  return gathered.reshape(-1, *array.shape[1:])


def predict_split(run: inference.LoadedRun, builder: Any, split: str,
                  batch_size: int) -> dict[str, Any]:
  """Runs the model over the whole split.

  Returns {'index', 'label', 'top5'} sorted by record index (one row per example) and
  'metrics' {'loss', 'top1', 'top5', 'num_examples'} summed exactly on the device.
  """
  source = datasets.data_source(builder, split)
  eval_fn = jax.jit(functools.partial(steps.eval_step, model=run.model,
                                      normalization=run.config.normalization))
  totals, rows, previous = None, {"index": [], "label": [], "top5": []}, None
  batches = pipeline.eval_batches(source, global_batch_size=batch_size,
                                  image_size=run.config.image_size,
                                  workers=run.config.data_workers)
  total = pipeline.num_eval_batches(len(source), batch_size)
  for local in tqdm.tqdm(batches, total=total, desc=f"{split}", unit="batch",
                         disable=None if jax.process_index() == 0 else True):
    index = local.pop("index")
    batch_metrics, top5 = eval_fn(run.state, sharding.to_global_batch(local, run.mesh))
    totals = batch_metrics if totals is None else totals.merge(batch_metrics)
    if previous is not None:  # Fetched one batch late, so the device never waits for the host.
      rows["top5"].append(inference.host_rows(previous, run.mesh))
    previous = top5
    rows["index"].append(index)  # Padding rows (index -1) are kept until after the gather, so
    rows["label"].append(local["label"])  # that every process contributes the same shape.
  rows["top5"].append(inference.host_rows(previous, run.mesh))
  merged = {name: _gather(np.concatenate(parts)) for name, parts in rows.items()}
  real = merged["index"] >= 0
  order = np.argsort(merged["index"][real], kind="stable")
  merged = {name: values[real][order] for name, values in merged.items()}
  if not np.array_equal(merged["index"], np.arange(len(source))):
    raise RuntimeError(f"Evaluation saw {len(merged['index'])} records of the {len(source)} in "
                       f"split {split!r} (some missing or repeated); this is a bug.")
  computed = {name: float(value) for name, value in totals.compute().items()}
  computed["num_examples"] = int(computed["num_examples"])
  return {**merged, "metrics": computed}


def evaluate(workdir: str, split: str = "test", checkpoint: str = "best",
             output_dir: str | None = None, batch_size: int = 0,
             confused_limit: int = 20) -> dict[str, Any]:
  """Evaluates `workdir`'s checkpoint on `split`, writes the report files, returns the report."""
  run = inference.load_run(workdir, checkpoint)
  config = run.config
  builder = datasets.open_dataset(config.dataset, config.data_dir, config.dataset_config,
                                  config.build_dataset_if_missing)
  if split not in builder.info.splits:
    raise EvaluationError(f"--split={split!r}: dataset {config.dataset!r} has splits "
                          f"{sorted(builder.info.splits)}.")
  batch_size = inference.round_up_batch(batch_size or config.eval_batch_size, run.mesh.size)
  outputs = predict_split(run, builder, split, batch_size)
  train_counts = train_class_counts(builder, datasets.get_spec(config.dataset).train_split,
                                    run.num_classes)
  report = longtail.summarize(outputs["label"], outputs["top5"], train_counts, run.class_names,
                              confused_limit)
  report = {"workdir": workdir, "checkpoint": run.checkpoint, "step": run.step, "split": split,
            "dataset": config.dataset, "model": config.model.name,
            "loss": outputs["metrics"]["loss"], **report}
  if output_dir is None:
    output_dir = os.path.join(workdir, "evaluation", f"{split}_step{run.step}")
  if jax.process_index() == 0:
    write_report(report, outputs, output_dir)
  report["output_dir"] = output_dir
  return report


def write_report(report: dict[str, Any], outputs: dict[str, Any], output_dir: str) -> None:
  """JSON, CSV and PNG files of an evaluation."""
  os.makedirs(output_dir, exist_ok=True)
  with open(os.path.join(output_dir, "evaluation.json"), "w", encoding="utf-8") as f:
    json.dump(report, f, indent=1, ensure_ascii=False)
  _write_csv(os.path.join(output_dir, "per_class.csv"), report["per_class"],
             ["class_id", "name", "train_count", "group", "examples", "top1", "top5"])
  _write_csv(os.path.join(output_dir, "confused_pairs.csv"), report["confused_pairs"],
             ["true_id", "true_name", "predicted_id", "predicted_name", "count",
              "fraction_of_true"])
  k = outputs["top5"].shape[1]
  with open(os.path.join(output_dir, "predictions.csv"), "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["index", "label"] + [f"top{i + 1}" for i in range(k)])
    for index, label, top in zip(outputs["index"], outputs["label"], outputs["top5"]):
      writer.writerow([int(index), int(label), *map(int, top)])
  plot_accuracy_vs_frequency(report, os.path.join(output_dir, "accuracy_vs_train_count.png"))
  plot_confusions(report, outputs["label"], outputs["top5"][:, 0],
                  os.path.join(output_dir, "confusions.png"))


def _write_csv(path: str, records: list[dict[str, Any]], fields: list[str]) -> None:
  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(records)


def binned_means(counts: np.ndarray, values: np.ndarray, bins: int = 12,
                 min_members: int = 3) -> tuple[list[float], list[float]]:
  """Geometric-mean count and mean value of classes in log-spaced count bins (>= min_members)."""
  edges = np.geomspace(counts.min(), counts.max() * 1.0001, bins + 1)
  which = np.digitize(counts, edges)
  centres, means = [], []
  for b in np.unique(which):
    members = which == b
    if members.sum() >= min_members:
      centres.append(float(np.exp(np.mean(np.log(counts[members])))))
      means.append(float(np.mean(values[members])))
  return centres, means


def plot_accuracy_vs_frequency(report: dict[str, Any], path: str) -> None:
  """Per-class top-1 (y) against training images (x, log scale), coloured by shot group."""
  classes = [c for c in report["per_class"] if c["examples"] > 0]
  fig, ax = plt.subplots(figsize=(8, 5))
  colours = {"many": "tab:blue", "medium": "tab:orange", "few": "tab:red"}
  for group in longtail.GROUPS:
    members = [c for c in classes if c["group"] == group]
    if members:
      counts = [max(c["train_count"], 1) for c in members]
      ax.scatter(counts, [100 * c["top1"] for c in members], s=12, alpha=0.6,
                 color=colours[group], label=f"{longtail.GROUP_TITLES[group]}: {len(members)}")
  for boundary in (longtail.FEW_SHOT_BELOW, longtail.MANY_SHOT_ABOVE):
    ax.axvline(boundary, color="grey", linestyle=":", linewidth=1)
  if len(classes) >= 20:  # A trend line once there are enough classes to average.
    centres, means = binned_means(np.array([max(c["train_count"], 1) for c in classes], float),
                                  np.array([100 * c["top1"] for c in classes]))
    ax.plot(centres, means, color="black", linewidth=1.5, label="mean over classes (log bins)")
  ax.set_xscale("log")
  ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
  ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
  ax.set_ylim(-3, 103)
  ax.set_xlabel("training images of the class")
  ax.set_ylabel("top-1 accuracy of the class (%)")
  ax.set_title(f"{report['model']} on {report['dataset']} {report['split']}: top-1 "
               f"{100 * report['top1']:.2f}%, mean per class "
               f"{100 * report['mean_class_top1']:.2f}%")
  ax.legend(loc="lower right", fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def confusion_classes(report: dict[str, Any], limit: int = CONFUSION_CLASSES) -> list[int]:
  """Class ids in the most confused pairs, in order of first appearance, at most `limit`."""
  chosen = []
  for pair in report["confused_pairs"]:
    for class_id in (pair["true_id"], pair["predicted_id"]):
      if class_id not in chosen and len(chosen) < limit:
        chosen.append(class_id)
  return chosen


def plot_confusions(report: dict[str, Any], labels: np.ndarray, predictions: np.ndarray,
                    path: str) -> None:
  """Row-normalised confusion matrix restricted to the most confused classes."""
  chosen = confusion_classes(report)
  fig, ax = plt.subplots(figsize=(2 + 0.45 * max(len(chosen), 4), 1.5 + 0.45 * max(len(chosen), 4)))
  if not chosen:
    ax.text(0.5, 0.5, "no mistakes", ha="center", va="center")
    ax.axis("off")
  else:
    position = np.full(len(report["per_class"]), -1)
    position[chosen] = np.arange(len(chosen))
    rows, cols = position[labels], position[predictions]
    both = (rows >= 0) & (cols >= 0)
    matrix = np.zeros((len(chosen), len(chosen)))
    np.add.at(matrix, (rows[both], cols[both]), 1)
    totals = np.array([report["per_class"][c]["examples"] for c in chosen], float)
    matrix = 100 * matrix / np.maximum(totals, 1)[:, None]
    image = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=100)
    names = [report["per_class"][c]["name"][:24] for c in chosen]
    ax.set_xticks(range(len(chosen)), names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(chosen)), names, fontsize=7)
    for (row, col), value in np.ndenumerate(matrix):
      if value >= 0.5:
        ax.text(col, row, f"{value:.0f}", ha="center", va="center", fontsize=6,
                color="white" if value > 50 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(image, ax=ax, label="% of the true class's examples", shrink=0.8)
  ax.set_title("Most confused classes", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _percent(value: float | None) -> str:
  return "-" if value is None else f"{100 * value:.2f}"


def format_summary(report: dict[str, Any], pairs: int = 5) -> str:
  """A compact text table of an evaluation report."""
  lines = [f"{report['workdir']}: {report['model']}, checkpoint step {report['step']}, "
           f"{report['dataset']} {report['split']}: {report['num_examples']} examples, "
           f"{report['classes_evaluated']}/{report['num_classes']} classes, loss "
           f"{report['loss']:.4f}",
           f"{'':24}{'classes':>8}{'examples':>10}{'top-1':>8}{'top-5':>8}{'class-avg top-1':>17}"]
  rows = [("all", {"classes": report["classes_evaluated"], "examples": report["num_examples"],
                   "top1": report["top1"], "top5": report["top5"],
                   "mean_class_top1": report["mean_class_top1"]})]
  rows += [(group["title"], group) for group in report["groups"].values()]
  for title, row in rows:
    lines.append(f"{title:24}{row['classes']:>8}{row['examples']:>10}{_percent(row['top1']):>8}"
                 f"{_percent(row['top5']):>8}{_percent(row['mean_class_top1']):>17}")
  if report["confused_pairs"]:
    lines.append("Most confused (count: true -> predicted):")
    for pair in report["confused_pairs"][:pairs]:
      lines.append(f"  {pair['count']:>5}: {pair['true_name']} -> {pair['predicted_name']}")
  return "\n".join(lines)


def define_flags() -> None:
  """The command line flags (defined only when run as a program: importing defines none)."""
  flags.DEFINE_string("workdir", None, "Training run directory.", required=True)
  flags.DEFINE_string("split", "test", "Split to evaluate.")
  flags.DEFINE_string("checkpoint", "best", "'best', 'latest' or a checkpoint step directory.")
  flags.DEFINE_string("output_dir", None,
                      "Where to write (default WORKDIR/evaluation/SPLIT_stepN).")
  flags.DEFINE_integer("batch_size", 0, "Global batch size (0: the run's eval_batch_size, rounded "
                       "up to a multiple of the device count).")
  flags.DEFINE_integer("confused_pairs", 20, "How many most-confused pairs to report.")
  flags.DEFINE_bool("distributed", None, "Call jax.distributed.initialize() (multi-host); default: "
                    "when the environment names a coordinator or --coordinator_address is set.")
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-process "
                      "runs without a cluster environment (as for training).")
  flags.DEFINE_integer("num_processes", None, "Processes in a multi-process run.")
  flags.DEFINE_integer("process_id", None, "This process's index (0-based).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  flag = flags.FLAGS
  if not flag["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Library INFO chatter would bury the summary.
  if inference.wants_distributed(flag.distributed, flag.coordinator_address):
    # Cross-process collectives of the CPU backend need gloo; GPUs and TPUs ignore this.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=flag.coordinator_address,
                               num_processes=flag.num_processes, process_id=flag.process_id)
  try:
    report = evaluate(flag.workdir, flag.split, flag.checkpoint, flag.output_dir, flag.batch_size,
                      flag.confused_pairs)
  except (FileNotFoundError, inference.CheckpointMismatch, EvaluationError) as error:
    raise app.UsageError(str(error)) from None
  if jax.process_index() == 0:
    print(format_summary(report))
    print(f"Wrote {report['output_dir']}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
