r"""Every speed figure the project holds itself to, in one run, with its goal; ratios last.

  python tools/speed_report.py --json_out=speed.json      # ~10 minutes on 2 CPU cores
  python tools/speed_report.py --figures=pipeline,resnet18_eval --windows=3
  python tools/speed_report.py --against=HEAD --figures=resnet18_eval --repeats=3

Each figure is one tools/benchmark.py run in its own process (so one framework's threads, memory
high-water mark or XLA flags never leak into another's), with OMP_WAIT_POLICY=PASSIVE unless the
environment sets it (torch's spinning OpenMP threads otherwise slow it several times on a shared
machine). Each run's own report is printed as it finishes; then a table of the figures against
their goals, the ratio rows last.

--against=REV times the same figures for another commit too, checked out in a temporary `git
worktree add --detach` (removed afterwards), each tree running its own tools/benchmark.py with
its own package (PYTHONPATH is the tree; no code crosses trees). The runs alternate between the
trees, --repeats times each (REV, this tree, this tree, REV, ...: a steady change in the load
weighs on both alike), and a second table shows each figure's median in both trees, their ratio
(this tree over REV) and a verdict: `worse` when this tree is further from the goal's side than
the noise margin, which is the larger relative spread (max - min over median) of either tree's
repeated runs (at least --min_margin). The exit status is then 1. Before a change lands:

  python tools/speed_report.py --against=main --figures=vit_b16_train_memory --repeats=2

On a machine without a GPU the GPU figures (ViT-B/16 bf16 MFU, ResNet-18 device-resident
images/s, the DAF:re-size device cache) are reported as not run: tools/device_check.sh measures
them on an accelerator box.
"""

import argparse
import dataclasses
import json
import os
import pathlib
import shlex
import statistics
import subprocess
import sys
import tempfile
from typing import Any

REPO = pathlib.Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Run:
  """One tools/benchmark.py run (its arguments, after --windows)."""

  name: str
  arguments: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Figure:
  """One number read from a run's JSON, with its goal (`value >= goal`, or `<=` when `at_most`)."""

  label: str
  run: str
  # Keys into the run's JSON, outermost first; an int indexes a list.
  path: tuple[str | int, ...]
  goal: float | None
  at_most: bool = False
  # Shown as a percentage (fractions) rather than with two decimals (ratios).
  percent: bool = False

  @property
  def is_ratio(self) -> bool:
    return not self.percent


_RESNET = ("--config=configs/resnet18.py", "--config.image_size=128", "--config.batch_size=32")
_VIT = ("--config=configs/vit_b16.py", "--config.image_size=128", "--config.batch_size=8")
RUNS = (
  Run("resnet18_train", (*_RESNET, "--compare=torch")),
  Run("resnet18_eval", (*_RESNET, "--mode=eval", "--compare=torch")),
  Run("vit_b16_eval", (*_VIT, "--mode=eval", "--compare=torch")),
  Run("vit_b16_train_memory", (*_VIT, "--compare=torch", "--memory", "--steps_per_window=2")),
  Run("pipeline", (*_RESNET, "--notrain_step", "--pipeline", "--pipeline_workers=0,1,2")),
)
FIGURES = (
  Figure("pipeline, 0 workers: per CPU-second, of the plain loop", "pipeline",
         ("pipeline", "runs", 0, "cpu_fraction_of_transform_loop"), 0.85, percent=True),
  Figure("pipeline, 1 worker: per CPU-second, of the plain loop", "pipeline",
         ("pipeline", "runs", 1, "cpu_fraction_of_transform_loop"), 0.85, percent=True),
  Figure("pipeline, 2 workers: per CPU-second, of the plain loop", "pipeline",
         ("pipeline", "runs", 2, "cpu_fraction_of_transform_loop"), 0.85, percent=True),
  Figure("pipeline, 2 workers: per CPU-second, of 2 plain loops at once", "pipeline",
         ("pipeline", "runs", 2, "cpu_fraction_of_loops_at_once"), None, percent=True),
  Figure("ResNet-18 train step, jax/torch", "resnet18_train", ("ratio_jax_over_torch",), 0.9),
  Figure("ResNet-18 eval step, jax/torch", "resnet18_eval", ("ratio_jax_over_torch",), 1.0),
  Figure("ResNet-18 predict on a folder, jax/torch", "resnet18_eval",
         ("predict", "ratio_jax_over_torch"), 1.0),
  Figure("ViT-B/16 eval step, jax/torch", "vit_b16_eval", ("ratio_jax_over_torch",), 1.0),
  Figure("ViT-B/16 predict on a folder, jax/torch", "vit_b16_eval",
         ("predict", "ratio_jax_over_torch"), 1.0),
  Figure("ViT-B/16 train step, jax/torch", "vit_b16_train_memory",
         ("ratio_jax_over_torch",), 1.0),
  Figure("ViT-B/16 train step peak host memory, jax/torch", "vit_b16_train_memory",
         ("memory", "ratio_jax_over_torch"), 1.0, at_most=True),
)  # fmt: skip
GPU_FIGURES = (
  "ViT-B/16 bf16 batch 1024 MFU >= 35%",
  "ResNet-18 device-resident >= 25,000 img/s",
  "DAF:re-size device cache filled in < 2 minutes",
)


def read(results: dict[str, Any], path: tuple[str | int, ...]) -> float | None:
  """The number at `path` in `results`, or None where a run or key is missing."""
  value: Any = results
  for key in path:
    try:
      value = value[key]
    except (KeyError, IndexError, TypeError):
      return None
  return value


def _shown(figure: Figure, value: float | None) -> str:
  if value is None:
    return "n/a"
  return f"{100 * value:.0f}%" if figure.percent else f"{value:.2f}"


def _verdict(figure: Figure, value: float | None) -> str:
  if figure.goal is None or value is None:
    return ""
  met = value <= figure.goal if figure.at_most else value >= figure.goal
  return "met" if met else "missed"


def summary(results: dict[str, dict[str, Any]], chosen: list[str], platform: str) -> str:
  """The table of the `chosen` runs' figures (n/a where a run failed) with goals and verdicts,
  fractions first and ratios last, then what became of the GPU figures."""
  rows = sorted((f for f in FIGURES if f.run in chosen), key=lambda f: f.is_ratio)
  lines = ["figure | value | goal | verdict", "--- | ---: | ---: | ---"]
  for figure in rows:
    value = read(results.get(figure.run, {}), figure.path)
    goal = (
      ""
      if figure.goal is None
      else ("<= " if figure.at_most else ">= ") + _shown(figure, figure.goal)
    )
    lines.append(f"{figure.label} | {_shown(figure, value)} | {goal} | {_verdict(figure, value)}")
  if platform != "gpu":
    lines.append(
      f"GPU figures ({'; '.join(GPU_FIGURES)}): not run, this machine's JAX platform is "
      f"{platform}; tools/device_check.sh measures them on an accelerator box."
    )
  return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class Comparison:
  """One figure in two trees: medians over the repeated runs, ratio, noise margin, verdict."""

  against: float | None
  current: float | None
  # current / against (None where either is missing).
  ratio: float | None
  # The larger relative spread of either tree's runs (at least the floor asked for).
  margin: float | None
  # 'worse', 'better' or 'within noise' ('' where a value is missing).
  verdict: str


def spread(values: list[float]) -> float:
  """(max - min) / median of repeated measurements of one figure in one tree (0 for one)."""
  middle = statistics.median(values)
  return (max(values) - min(values)) / abs(middle) if middle else 0.0


def compare(
  figure: Figure, against: list[float], current: list[float], min_margin: float = 0.0
) -> Comparison:
  """The figure's values in REV's runs and this tree's: worse when this tree's median is on the
  far side of the goal (lower, or higher for an `at_most` figure) by more than the margin."""
  if not against or not current:
    return Comparison(
      statistics.median(against) if against else None,
      statistics.median(current) if current else None,
      None,
      None,
      "",
    )
  before, now = statistics.median(against), statistics.median(current)
  margin = max(spread(against), spread(current), min_margin)
  ratio = now / before if before else None
  if ratio is None:
    verdict = ""
  elif abs(ratio - 1.0) <= margin:
    verdict = "within noise"
  else:
    verdict = "worse" if (ratio > 1.0) == figure.at_most else "better"
  return Comparison(before, now, ratio, margin, verdict)


def schedule(names: list[str], repeats: int) -> list[tuple[int, str, str]]:
  """(repeat, run name, 'against' or 'current') in the order to run them: for each repeat and
  run, both trees back to back, REV first on even repeats and this tree first on odd ones."""
  order = []
  for repeat in range(repeats):
    trees = ("against", "current") if repeat % 2 == 0 else ("current", "against")
    order += [(repeat, name, tree) for name in names for tree in trees]
  return order


def comparison_table(
  runs: dict[str, dict[str, list[dict[str, Any]]]], chosen: list[str], rev: str, min_margin: float
) -> tuple[str, bool]:
  """The figures of the `chosen` runs, REV against this tree; and whether any is worse.

  `runs[tree][run name]` holds that tree's results of the run, one per repeat that succeeded.
  """
  lines = [
    f"figure | {rev} | this tree | ratio | noise margin | verdict",
    "--- | ---: | ---: | ---: | ---: | ---",
  ]
  worse = False
  for figure in sorted((f for f in FIGURES if f.run in chosen), key=lambda f: f.is_ratio):
    values = {
      tree: [
        v
        for v in (read(result, figure.path) for result in runs[tree].get(figure.run, []))
        if v is not None
      ]
      for tree in ("against", "current")
    }
    c = compare(figure, values["against"], values["current"], min_margin)
    worse |= c.verdict == "worse"
    ratio = "n/a" if c.ratio is None else f"{c.ratio:.3f}"
    margin = "n/a" if c.margin is None else f"{100 * c.margin:.1f}%"
    lines.append(
      f"{figure.label} | {_shown(figure, c.against)} | {_shown(figure, c.current)} | {ratio} | "
      f"{margin} | {c.verdict}"
    )
  return "\n".join(lines), worse


def _run(
  run: Run, windows: int, json_path: str, tree: pathlib.Path = REPO, extra: tuple[str, ...] = ()
) -> tuple[dict[str, Any] | None, str]:
  """One tools/benchmark.py run of `tree` (its own script and package), in a fresh process."""
  env = {**os.environ}
  env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
  env["PYTHONPATH"] = os.pathsep.join([str(tree), *filter(None, [env.get("PYTHONPATH")])])
  command = [
    sys.executable,
    str(tree / "tools" / "benchmark.py"),
    f"--windows={windows}",
    *run.arguments,
    *extra,
    f"--json_out={json_path}",
  ]
  done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True, check=False)
  if done.returncode != 0:
    return None, f"{run.name} failed (exit {done.returncode}):\n{done.stderr[-3000:]}"
  with open(json_path, encoding="utf-8") as f:
    return json.load(f), done.stdout.strip()


def _commit(rev: str) -> str | None:
  """The commit `rev` names in this repository, or None."""
  done = subprocess.run(
    ["git", "-C", str(REPO), "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
    capture_output=True,
    text=True,
    check=False,
  )
  return done.stdout.strip() or None


def _platform(results: dict[str, dict[str, Any]]) -> str:
  for result in results.values():
    platform = read(result, ("jax", "platform"))
    if platform:
      return platform
  import jax  # pylint: disable=g-import-not-at-top  # No model run said (only the pipeline ran).

  return jax.default_backend()


def _report_against(args, chosen: list[str], extra: tuple[str, ...], commit: str) -> int:
  """Runs the chosen figures in REV's worktree and this tree, alternating; prints both tables."""
  runs = {"against": {}, "current": {}}
  failed = []
  with tempfile.TemporaryDirectory(prefix="speed_report_") as folder:
    worktree = pathlib.Path(folder) / "against"
    added = subprocess.run(
      ["git", "-C", str(REPO), "worktree", "add", "--detach", str(worktree), commit],
      capture_output=True,
      text=True,
      check=False,
    )
    if added.returncode != 0:
      print(f"git worktree add of {args.against} failed:\n{added.stderr}", file=sys.stderr)
      return 1
    trees = {"against": worktree, "current": REPO}
    try:
      for step, (repeat, name, tree) in enumerate(schedule(chosen, args.repeats)):
        run = next(r for r in RUNS if r.name == name)
        label = f"{name} [{args.against if tree == 'against' else 'this tree'}, {repeat + 1}]"
        print(f"## {label}: tools/benchmark.py {' '.join(run.arguments + extra)}", flush=True)
        json_path = os.path.join(folder, f"{step}.json")
        result, report = _run(run, args.windows, json_path, trees[tree], extra)
        print(report + "\n", flush=True)
        if result is None:
          failed.append(label)
        else:
          runs[tree].setdefault(name, []).append(result)
    finally:
      subprocess.run(
        ["git", "-C", str(REPO), "worktree", "remove", "--force", str(worktree)],
        capture_output=True,
        check=False,
      )
  if args.json_out:
    with open(args.json_out, "w", encoding="utf-8") as f:
      json.dump({"against": args.against, "commit": commit, "runs": runs}, f, indent=2)
  latest = {name: results[-1] for name, results in runs["current"].items()}
  print(f"This tree ({args.repeats} runs each; the last run's values):", flush=True)
  print(summary(latest, chosen, _platform(latest)) + "\n", flush=True)
  table, worse = comparison_table(runs, chosen, args.against, args.min_margin)
  print(f"Against {args.against} ({commit[:12]}), medians of {args.repeats} runs each:")
  print(table, flush=True)
  if failed:
    print(f"Failed runs: {', '.join(failed)}", flush=True)
  return 1 if failed or worse else 0


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  names = [run.name for run in RUNS]
  parser.add_argument("--figures", default=",".join(names), help=f"Runs to do, of {names}.")
  parser.add_argument("--windows", type=int, default=7, help="Timed windows per run (medians).")
  parser.add_argument("--json_out", default="", help="Write every run's JSON here, by run.")
  parser.add_argument(
    "--against", default="", help="Also time this commit (a git revision), interleaved."
  )
  parser.add_argument(
    "--repeats", type=int, default=3, help="--against: runs of each figure in each tree (>= 2)."
  )
  parser.add_argument(
    "--min_margin",
    type=float,
    default=0.0,
    help="--against: the least noise margin, a fraction (the measured spread when larger).",
  )
  parser.add_argument(
    "--benchmark_flags",
    default="",
    help="Flags added to every tools/benchmark.py run, e.g. '--config.image_size=32'.",
  )
  args = parser.parse_args(argv)
  chosen = [name for name in args.figures.split(",") if name]
  unknown = sorted(set(chosen) - set(names))
  if unknown:
    parser.error(f"unknown --figures {unknown}; choose from {names}")
  extra = tuple(shlex.split(args.benchmark_flags))
  if args.against:
    commit = _commit(args.against)
    if commit is None:
      parser.error(f"--against={args.against!r} names no commit of {REPO}")
    if args.repeats < 2:
      parser.error("--repeats must be at least 2: the noise margin is the spread of repeats")
    return _report_against(args, chosen, extra, commit)
  results, failed = {}, []
  with tempfile.TemporaryDirectory(prefix="speed_report_") as folder:
    for run in (run for run in RUNS if run.name in chosen):
      print(f"## {run.name}: tools/benchmark.py {' '.join(run.arguments + extra)}", flush=True)
      result, report = _run(
        run, args.windows, os.path.join(folder, f"{run.name}.json"), REPO, extra
      )
      print(report + "\n", flush=True)
      if result is None:
        failed.append(run.name)
        continue
      results[run.name] = result
  if args.json_out:
    with open(args.json_out, "w", encoding="utf-8") as f:
      json.dump(results, f, indent=2)
  print(summary(results, chosen, _platform(results)), flush=True)
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
