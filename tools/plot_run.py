r"""Plots a training run's curves from its metrics.jsonl.

  python tools/plot_run.py --workdir=runs/b16_dafre [--out_dir=DIR]

Writes, under --out_dir (default WORKDIR/plots):
  loss.png       loss per epoch: train (as logged), validation and test
  accuracy.png   top-1 (solid) and top-5 (dashed) accuracy per epoch, same splits
A resumed run may log a step twice; the later record wins.
"""

import collections
import json
import os
from typing import Any, Sequence

from absl import app
from absl import flags
import matplotlib

matplotlib.use("Agg")  # Files only; no display needed.
from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

METRICS_FILE = "metrics.jsonl"  # Written by animesion_jax/train.py.
SPLIT_STYLE = {"train": ("tab:blue", None), "validation": ("tab:orange", "o"),
               "test": ("tab:green", "s")}


def read_metrics(path: str) -> dict[str, dict[str, list[float]]]:
  """{split: {'epoch': [...], 'step': [...], 'loss': [...], 'top1': [...], 'top5': [...]}}.

  Records are sorted by step; a repeated (split, step) keeps its last record. Metrics a split
  did not log (train has no top-5) are left out.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: is this a training run directory, and has it "
                            "logged anything yet?")
  latest: dict[tuple[str, int], dict[str, Any]] = {}
  with open(path) as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        # The last line of a run killed mid-write may be cut short; skip it, keep the rest.
        print(f"Skipping unreadable line {number} of {path}.")
        continue
      latest[(record["split"], int(record["step"]))] = record
  curves: dict[str, dict[str, list[float]]] = collections.defaultdict(
      lambda: collections.defaultdict(list))
  for (split, step), record in sorted(latest.items(), key=lambda item: item[0][1]):
    curve = curves[split]
    curve["step"].append(step)
    curve["epoch"].append(float(record["epoch"]))
    for name in ("loss", "top1", "top5"):
      if record.get(name) is not None:
        curve[name].append(float(record[name]))
  return {split: dict(curve) for split, curve in curves.items()}


def _ordered(splits: Sequence[str]) -> list[str]:
  return sorted(splits, key=lambda s: (list(SPLIT_STYLE).index(s) if s in SPLIT_STYLE else 99, s))


def plot_curves(curves: dict[str, dict[str, list[float]]], out_dir: str,
                title: str = "") -> list[str]:
  """Writes loss.png and accuracy.png; returns their paths."""
  os.makedirs(out_dir, exist_ok=True)
  paths = []
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for split in _ordered(curves):
    colour, marker = SPLIT_STYLE.get(split, ("black", "x"))
    curve = curves[split]
    if curve.get("loss"):
      ax.plot(curve["epoch"], curve["loss"], color=colour, marker=marker, markersize=4,
              label=split)
  ax.set_xlabel("epoch")
  ax.set_ylabel("cross-entropy loss")
  ax.set_title(f"{title} loss".strip())
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  paths.append(os.path.join(out_dir, "loss.png"))
  fig.savefig(paths[-1], dpi=120)
  plt.close(fig)

  fig, ax = plt.subplots(figsize=(7, 4.5))
  for split in _ordered(curves):
    colour, marker = SPLIT_STYLE.get(split, ("black", "x"))
    curve = curves[split]
    for name, line, fill in (("top1", "-", colour), ("top5", "--", "none")):
      if len(curve.get(name, [])) == len(curve["epoch"]):
        ax.plot(curve["epoch"], [100 * v for v in curve[name]], color=colour, linestyle=line,
                marker=marker, markersize=4, markerfacecolor=fill,
                label=f"{split} {name.replace('top', 'top-')}")
  ax.set_xlabel("epoch")
  ax.set_ylabel("accuracy (%)")
  ax.set_ylim(0, 100)
  ax.set_title(f"{title} accuracy".strip())
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  paths.append(os.path.join(out_dir, "accuracy.png"))
  fig.savefig(paths[-1], dpi=120)
  plt.close(fig)
  return paths


def _run_title(workdir: str) -> str:
  """'model on dataset' from the run's config.json, else the folder name."""
  try:
    with open(os.path.join(workdir, "config.json")) as f:
      config = json.load(f)
    return f"{config['model']['name']} on {config['dataset']}"
  except (OSError, KeyError, ValueError):
    return os.path.basename(os.path.normpath(workdir))


def plot_run(workdir: str, out_dir: str | None = None) -> list[str]:
  """Plots `workdir`'s curves; returns the written paths."""
  curves = read_metrics(os.path.join(workdir, METRICS_FILE))
  if not curves:
    raise ValueError(f"{os.path.join(workdir, METRICS_FILE)} holds no metrics yet.")
  return plot_curves(curves, out_dir or os.path.join(workdir, "plots"), _run_title(workdir))


def define_flags() -> None:
  flags.DEFINE_string("workdir", None, "Training run directory.", required=True)
  flags.DEFINE_string("out_dir", None, "Where to write the PNGs (default WORKDIR/plots).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  try:
    paths = plot_run(flags.FLAGS.workdir, flags.FLAGS.out_dir)
  except (FileNotFoundError, ValueError) as error:
    raise app.UsageError(str(error)) from None
  print("Wrote " + ", ".join(paths))


if __name__ == "__main__":
  define_flags()
  app.run(main)
