r"""Compares evaluations of several runs: a markdown table and one bar chart of the shot groups.

  python tools/compare_runs.py runs/lt_softmax runs/lt_balanced \
      runs/lt_softmax/evaluation/test_step776_tau1 [--split=test] [--output=compare_runs.png]

Each RUN is a training run directory (its newest evaluation of --split by `evaluate`, without
tau-normalisation), an evaluation directory, or an evaluation.json. Prints, per run: the
training loss (and tau of a tau-normalised classifier), overall top-1, class-balanced top-1,
the many-, medium- and few-shot groups' class-average top-1, and overall top-5 (percent).
Writes one bar chart of overall, balanced and the three groups (--output).
"""

import json
import os
import re
from typing import Any

from absl import app
from absl import flags
from etils import epath

from animesion_jax import run_dir
from animesion_jax.inference import plots

COLUMNS = ("overall", "balanced", "many", "medium", "few", "top-5")


def evaluation_file(given: str | os.PathLike, split: str = "test") -> epath.Path:
  """The evaluation.json that RUN names (see the module docstring).

  Raises:
    FileNotFoundError: nothing evaluated there; says which command makes one.
  """
  path = run_dir.resolve(given)
  if path.name == "evaluation.json" and path.exists():
    return path
  if (path / "evaluation.json").exists():
    return path / "evaluation.json"
  pattern = re.compile(rf"{re.escape(split)}_step(\d+)")
  found = []
  if (path / "evaluation").is_dir():
    for child in (path / "evaluation").iterdir():
      match = pattern.fullmatch(child.name)
      if match and (child / "evaluation.json").exists():
        found.append((int(match.group(1)), child / "evaluation.json"))
  if not found:
    raise FileNotFoundError(
      f"{given}: no evaluation.json, and no {split}_stepN evaluation under {path / 'evaluation'}. "
      f"Run: python -m animesion_jax.evaluate --workdir={given} --split={split}"
    )
  return max(found)[1]


def _label(report: dict[str, Any], path: epath.Path) -> str:
  """The run folder's name, plus tau for a tau-normalised classifier."""
  workdir = report.get("workdir") or str(path.parent)
  label = epath.Path(workdir).name
  if report.get("tau_norm"):
    label += f" tau={report['tau_norm']:g}"
  return label


def row(report: dict[str, Any]) -> dict[str, float | None]:
  """Column -> accuracy in percent (None where a group has no classes)."""
  percent = lambda value: None if value is None else 100 * value
  groups = report["groups"]
  return {
    "overall": percent(report["top1"]),
    "balanced": percent(report["mean_class_top1"]),
    "many": percent(groups["many"]["mean_class_top1"]),
    "medium": percent(groups["medium"]["mean_class_top1"]),
    "few": percent(groups["few"]["mean_class_top1"]),
    "top-5": percent(report["top5"]),
  }


def markdown_table(labels: list[str], reports: list[dict[str, Any]]) -> str:
  """A markdown table of the runs; group titles from the first report."""
  groups = reports[0]["groups"]
  titles = {
    "overall": "overall top-1",
    "balanced": "class-balanced top-1",
    "many": groups["many"]["title"],
    "medium": groups["medium"]["title"],
    "few": groups["few"]["title"],
    "top-5": "top-5",
  }
  lines = [
    "| run | loss | " + " | ".join(titles[c] for c in COLUMNS) + " |",
    "|---|---|" + "---:|" * len(COLUMNS),
  ]
  for label, report in zip(labels, reports):
    values = row(report)
    cells = ["-" if values[c] is None else f"{values[c]:.1f}" for c in COLUMNS]
    lines.append(
      f"| {label} | {report.get('training_loss', 'softmax')} | " + " | ".join(cells) + " |"
    )
  return "\n".join(lines)


def compare(
  runs: list[str], split: str = "test", output: str | os.PathLike = "compare_runs.png"
) -> str:
  """Reads the runs' evaluations, writes the bar chart to `output`, returns the table."""
  paths = [evaluation_file(run, split) for run in runs]
  reports = [json.loads(path.read_text(encoding="utf-8")) for path in paths]
  labels = [_label(report, path) for report, path in zip(reports, paths)]
  shots = {json.dumps(report.get("shot_groups"), sort_keys=True) for report in reports}
  if len(shots) > 1:
    raise ValueError(
      f"The evaluations use different shot groups ({sorted(shots)}); evaluate them again with "
      "the same --many_shot_above and --few_shot_below."
    )
  rows = [row(report) for report in reports]
  bars = {c: [r[c] for r in rows] for c in COLUMNS if c != "top-5"}
  plots.method_comparison(labels, bars, run_dir.resolve(output))
  return markdown_table(labels, reports)


def main(argv):
  if len(argv) < 2:
    raise app.UsageError("Give one or more run directories or evaluation directories.")
  try:
    table = compare(argv[1:], flags.FLAGS.split, flags.FLAGS.output)
  except (FileNotFoundError, ValueError, KeyError) as error:
    raise SystemExit(f"compare_runs: {error}") from None
  print(table)
  print(f"Wrote {run_dir.resolve(flags.FLAGS.output)}")


if __name__ == "__main__":
  flags.DEFINE_string("split", "test", "Which evaluation of a run directory to read.")
  flags.DEFINE_string("output", "compare_runs.png", "Where to write the bar chart.")
  app.run(main)
