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
from typing import Any

from absl import app
from absl import flags
from etils import epath

from animesion_jax import run_dir
from animesion_jax.inference import plots


def read_metrics(path: str | os.PathLike) -> dict[str, dict[str, list[float]]]:
  """{split: {'epoch': [...], 'step': [...], 'loss': [...], 'top1': [...], 'top5': [...]}}.

  Records are sorted by step; a repeated (split, step) keeps its last record. Metrics a split
  did not log (train has no top-5) are left out.
  """
  path = epath.Path(path)
  if not path.exists():
    raise FileNotFoundError(
      f"{path} not found: is this a training run directory, and has it logged anything yet?"
    )
  latest: dict[tuple[str, int], dict[str, Any]] = {}
  for number, line in enumerate(path.read_text().splitlines(), 1):
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
    lambda: collections.defaultdict(list)
  )
  for (split, step), record in sorted(latest.items(), key=lambda item: item[0][1]):
    curve = curves[split]
    curve["step"].append(step)
    curve["epoch"].append(float(record["epoch"]))
    for name in ("loss", "top1", "top5"):
      if record.get(name) is not None:
        curve[name].append(float(record[name]))
  return {split: dict(curve) for split, curve in curves.items()}


def _run_title(run: run_dir.RunDir) -> str:
  """'model on dataset' from the run's config.json, else the folder name."""
  try:
    config = run.load_config()
    return f"{config.model.name} on {config.dataset}"
  except (FileNotFoundError, AttributeError, ValueError):
    return run.path.name


def plot_run(workdir: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> list[str]:
  """Plots `workdir`'s curves (to OUT_DIR, default WORKDIR/plots); returns the written paths."""
  run = run_dir.RunDir(workdir)
  curves = read_metrics(run.metrics_file)
  if not curves:
    raise ValueError(f"{run.metrics_file} holds no metrics yet.")
  out = run_dir.resolve(out_dir) if out_dir else run.path / "plots"
  return [os.fspath(path) for path in plots.training_curves(curves, out, _run_title(run))]


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
