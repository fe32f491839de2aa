"""tools/speed_report.py: every figure with its goal and verdict, ratios last."""

import pathlib
import subprocess
import sys

import pytest

from tests import helpers

ROOT = pathlib.Path(__file__).resolve().parents[1]


speed_report = helpers.load_tool("speed_report")

# The keys tools/benchmark.py writes (tests/test_benchmark.py checks them on real runs).
_RESULTS = {
  "resnet18_train": {"jax": {"platform": "cpu"}, "ratio_jax_over_torch": 0.93},
  "resnet18_eval": {"ratio_jax_over_torch": 1.03, "predict": {"ratio_jax_over_torch": 0.98}},
  "vit_b16_eval": {"ratio_jax_over_torch": 1.2, "predict": {"ratio_jax_over_torch": 1.1}},
  "vit_b16_train_memory": {"ratio_jax_over_torch": 0.9, "memory": {"ratio_jax_over_torch": 0.85}},
  "pipeline": {
    "pipeline": {
      "runs": [
        {"cpu_fraction_of_transform_loop": 1.02},
        {"cpu_fraction_of_transform_loop": 0.9},
        {"cpu_fraction_of_transform_loop": 0.7, "cpu_fraction_of_loops_at_once": 0.83},
      ]
    }
  },
}


def _rows(text):
  return [line.split(" | ") for line in text.splitlines() if line.count(" | ") == 3][2:]


def test_every_figure_with_its_goal_and_verdict_ratios_last():
  chosen = [run.name for run in speed_report.RUNS]
  rows = _rows(speed_report.summary(_RESULTS, chosen, "cpu"))
  table = {label: (value, goal, verdict) for label, value, goal, verdict in rows}
  assert len(rows) == len(speed_report.FIGURES) == 11
  assert table["ResNet-18 train step, jax/torch"] == ("0.93", ">= 0.90", "met")
  assert table["ResNet-18 predict on a folder, jax/torch"] == ("0.98", ">= 1.00", "missed")
  assert table["ViT-B/16 train step peak host memory, jax/torch"] == ("0.85", "<= 1.00", "met")
  assert table["ViT-B/16 train step, jax/torch"] == ("0.90", "", "")
  assert table["pipeline, 2 workers: per CPU-second, of the plain loop"] == (
    "70%",
    ">= 85%",
    "missed",
  )
  assert table["pipeline, 0 workers: per CPU-second, of the plain loop"][2] == "met"
  assert table["pipeline, 2 workers: per CPU-second, of 2 plain loops at once"] == ("83%", "", "")
  # Fractions first, the jax/torch ratios last.
  kinds = ["ratio" if "jax/torch" in label else "fraction" for label, *_ in rows]
  assert kinds == ["fraction"] * 4 + ["ratio"] * 7


def test_a_failed_run_reads_n_a_and_a_cpu_says_the_gpu_figures_were_not_run():
  text = speed_report.summary(
    {"pipeline": _RESULTS["pipeline"]}, ["pipeline", "resnet18_eval"], "cpu"
  )
  table = {label: value for label, value, _, _ in _rows(text)}
  assert table["ResNet-18 eval step, jax/torch"] == "n/a"
  assert len(table) == 6  # Four pipeline figures, two from the failed run; none of the others.
  assert "GPU figures" in text.splitlines()[-1] and "not run" in text.splitlines()[-1]
  assert "GPU figures" not in speed_report.summary(_RESULTS, ["pipeline"], "gpu")


def test_unknown_figures_are_a_usage_error(capsys):
  with pytest.raises(SystemExit) as stop:
    speed_report.main(["--figures=pipeline,resnet19"])
  assert stop.value.code == 2
  assert "unknown --figures ['resnet19']" in capsys.readouterr().err


@pytest.mark.slow
def test_the_pipeline_figures_from_a_real_run(tmp_path):
  done = subprocess.run(
    [
      sys.executable,
      str(ROOT / "tools" / "speed_report.py"),
      "--figures=pipeline",
      "--windows=1",
      f"--json_out={tmp_path / 'speed.json'}",
    ],
    capture_output=True,
    text=True,
    check=False,
    timeout=280,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  rows = _rows(done.stdout)
  plain = ("0 workers", "1 worker", "2 workers")
  assert [label for label, *_ in rows] == [
    *(f"pipeline, {n}: per CPU-second, of the plain loop" for n in plain),
    "pipeline, 2 workers: per CPU-second, of 2 plain loops at once",
  ]
  assert rows[-1][1].endswith("%") and rows[-1][2:] == ["", ""]
  for _, value, goal, verdict in rows[:3]:
    assert value.endswith("%") and 10 <= int(value[:-1]) <= 300
    assert goal == ">= 85%" and verdict in ("met", "missed")
  assert (tmp_path / "speed.json").exists()
