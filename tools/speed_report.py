r"""Every speed figure the project holds itself to, in one run, with its goal; ratios last.

  python tools/speed_report.py --json_out=speed.json      # ~10 minutes on 2 CPU cores
  python tools/speed_report.py --figures=pipeline,resnet18_eval --windows=3

Each figure is one tools/benchmark.py run in its own process (so one framework's threads, memory
high-water mark or XLA flags never leak into another's), with OMP_WAIT_POLICY=PASSIVE unless the
environment sets it (torch's spinning OpenMP threads otherwise slow it several times on a shared
machine). Each run's own report is printed as it finishes; then a table of the figures against
their goals, the ratio rows last.

On a machine without a GPU the GPU figures (ViT-B/16 bf16 MFU, ResNet-18 device-resident
images/s, the DAF:re-size device cache) are reported as not run: tools/device_check.sh measures
them on an accelerator box.
"""

import argparse
import dataclasses
import json
import os
import pathlib
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
         ("ratio_jax_over_torch",), None),
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


def _run(run: Run, windows: int, json_path: str) -> tuple[dict[str, Any] | None, str]:
  env = {**os.environ}
  env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
  command = [
    sys.executable,
    str(REPO / "tools" / "benchmark.py"),
    f"--windows={windows}",
    *run.arguments,
    f"--json_out={json_path}",
  ]
  done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=False)
  if done.returncode != 0:
    return None, f"{run.name} failed (exit {done.returncode}):\n{done.stderr[-3000:]}"
  with open(json_path, encoding="utf-8") as f:
    return json.load(f), done.stdout.strip()


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  names = [run.name for run in RUNS]
  parser.add_argument("--figures", default=",".join(names), help=f"Runs to do, of {names}.")
  parser.add_argument("--windows", type=int, default=7, help="Timed windows per run (medians).")
  parser.add_argument("--json_out", default="", help="Write every run's JSON here, by run.")
  args = parser.parse_args(argv)
  chosen = [name for name in args.figures.split(",") if name]
  unknown = sorted(set(chosen) - set(names))
  if unknown:
    parser.error(f"unknown --figures {unknown}; choose from {names}")
  results, failed, platform = {}, [], None
  with tempfile.TemporaryDirectory(prefix="speed_report_") as folder:
    for run in (run for run in RUNS if run.name in chosen):
      print(f"## {run.name}: tools/benchmark.py {' '.join(run.arguments)}", flush=True)
      result, report = _run(run, args.windows, os.path.join(folder, f"{run.name}.json"))
      print(report + "\n", flush=True)
      if result is None:
        failed.append(run.name)
        continue
      results[run.name] = result
      platform = read(result, ("jax", "platform")) or platform
  if args.json_out:
    with open(args.json_out, "w", encoding="utf-8") as f:
      json.dump(results, f, indent=2)
  if platform is None:  # No model run said; ask JAX (only the pipeline was timed).
    import jax  # pylint: disable=g-import-not-at-top

    platform = jax.default_backend()
  print(summary(results, chosen, platform), flush=True)
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
