"""tools/speed_report.py: every figure with its goal and verdict, ratios last."""

import json
import os
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
  assert table["ViT-B/16 train step, jax/torch"] == ("0.90", ">= 1.00", "missed")
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


# --against: the interleaving, the ratio, the measured noise margin and the verdict.

_TRAIN = next(f for f in speed_report.FIGURES if f.label == "ViT-B/16 train step, jax/torch")
_MEMORY = next(f for f in speed_report.FIGURES if f.at_most)


def test_the_vit_b16_train_step_has_its_goal():
  assert (_TRAIN.goal, _TRAIN.at_most, _TRAIN.run) == (1.0, False, "vit_b16_train_memory")


def test_the_trees_alternate_which_runs_first():
  assert speed_report.schedule(["a", "b"], 3) == [
    (0, "a", "against"), (0, "a", "current"), (0, "b", "against"), (0, "b", "current"),
    (1, "a", "current"), (1, "a", "against"), (1, "b", "current"), (1, "b", "against"),
    (2, "a", "against"), (2, "a", "current"), (2, "b", "against"), (2, "b", "current"),
  ]  # fmt: skip


def test_the_spread_is_max_minus_min_over_the_median():
  assert speed_report.spread([0.9, 1.0, 1.2]) == pytest.approx(0.3)
  assert speed_report.spread([1.0]) == 0.0


def test_slower_by_more_than_the_noise_is_worse():
  # REV spread (0.98 - 0.94) / 0.96, this tree's (0.86 - 0.84) / 0.85: margin 4.2%, ratio 0.885.
  c = speed_report.compare(_TRAIN, [0.94, 0.96, 0.98], [0.84, 0.85, 0.86])
  assert c.against == 0.96 and c.current == 0.85
  assert c.ratio == pytest.approx(0.85 / 0.96) and c.margin == pytest.approx(0.04 / 0.96)
  assert c.verdict == "worse"
  # The same medians with noisier runs: the margin (0.3 / 0.96) covers the 11.5% drop.
  assert speed_report.compare(_TRAIN, [0.8, 0.96, 1.1], [0.84, 0.85, 0.86]).verdict == (
    "within noise"
  )
  assert speed_report.compare(_TRAIN, [0.84, 0.85, 0.86], [0.94, 0.96, 0.98]).verdict == "better"


def test_the_floor_on_the_margin_and_figures_where_less_is_better():
  same = [1.0, 1.0]
  assert speed_report.compare(_TRAIN, same, [0.97, 0.97]).verdict == "worse"
  assert speed_report.compare(_TRAIN, same, [0.97, 0.97], min_margin=0.05).verdict == (
    "within noise"
  )
  # Peak memory: more is worse.
  assert speed_report.compare(_MEMORY, [0.85, 0.86], [1.08, 1.09]).verdict == "worse"
  assert speed_report.compare(_MEMORY, [1.08, 1.09], [0.85, 0.86]).verdict == "better"
  missing = speed_report.compare(_TRAIN, [], [0.9, 0.91])
  assert (missing.ratio, missing.margin, missing.verdict) == (None, None, "")


def _fake_run(current_ratio: float, calls: list):
  """A stand-in for one tools/benchmark.py run: the ViT-B/16 runs' JSON, this tree's train-step
  ratio `current_ratio` (REV's 1.0), each with a little noise."""
  noise = iter([1.0, 1.01, 0.99, 1.005] * 4)

  def run(run, windows, json_path, tree=speed_report.REPO, extra=()):
    calls.append((run.name, tree, (tree / "tools" / "benchmark.py").exists(), extra))
    ratio = (current_ratio if tree == speed_report.REPO else 1.0) * next(noise)
    result = {"jax": {"platform": "cpu"}, "ratio_jax_over_torch": ratio}
    result["memory"] = {"ratio_jax_over_torch": 0.85}
    return result, f"ratio jax/torch: {ratio:.2f}"

  return run


def _our_worktrees() -> list[str]:
  """The worktrees speed_report made that are still registered (other sessions' come and go)."""
  listing = subprocess.run(
    ["git", "-C", str(ROOT), "worktree", "list", "--porcelain"],
    capture_output=True,
    text=True,
    check=True,
  ).stdout
  return [line for line in listing.splitlines() if "speed_report_" in line]


@pytest.mark.slow  # Starts git (a worktree of HEAD); the benchmark runs are fakes.
@pytest.mark.parametrize(("current_ratio", "status", "verdict"), [(0.8, 1, "worse"), (1.0, 0, "")])
def test_against_runs_both_trees_alternately_in_a_worktree_removed_after(
  monkeypatch, capsys, current_ratio, status, verdict
):
  calls = []
  monkeypatch.setattr(speed_report, "_run", _fake_run(current_ratio, calls))
  before = _our_worktrees()
  argv = ["--against=HEAD", "--figures=vit_b16_train_memory", "--repeats=2", "--benchmark_flags=-x"]
  assert speed_report.main(argv) == status
  assert not set(_our_worktrees()) - set(before)  # Its own worktree is gone.
  trees = [tree for _, tree, _, _ in calls]
  assert len(calls) == 4 and trees[1] == trees[2] == ROOT and trees[0] == trees[3] != ROOT
  assert all(exists and extra == ("-x",) for _, _, exists, extra in calls)
  table = capsys.readouterr().out.split("medians of 2 runs each:\n")[1]
  rows = {label: rest for label, *rest in _rows_of(table)}
  assert rows["ViT-B/16 train step peak host memory, jax/torch"] == [
    "0.85", "0.85", "1.000", "0.0%", "within noise"
  ]  # fmt: skip
  # In run order REV 1.0, this tree 1.01 x, this tree 0.99 x, REV 1.005: medians 1.0025 and x.
  value, current, ratio, margin, shown_verdict = rows["ViT-B/16 train step, jax/torch"]
  assert float(ratio) == pytest.approx(current_ratio / 1.0025, abs=1e-3)
  assert margin == "2.0%"
  assert shown_verdict == (verdict or "within noise")


def _rows_of(text):
  return [line.split(" | ") for line in text.splitlines() if line.count(" | ") == 5][2:]


def test_against_an_unknown_revision_or_one_repeat_is_a_usage_error(capsys):
  with pytest.raises(SystemExit) as stop:
    speed_report.main(["--against=no-such-revision-xyz", "--figures=pipeline"])
  assert stop.value.code == 2
  assert "names no commit" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    speed_report.main(["--against=HEAD", "--repeats=1"])
  assert "--repeats must be at least 2" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_against_head_on_a_tiny_figure(tmp_path):
  """Four real runs (ResNet-18 eval at 32 px, batch 2): HEAD's tree and this one, alternating."""
  before = _our_worktrees()
  done = subprocess.run(
    [
      sys.executable,
      str(ROOT / "tools" / "speed_report.py"),
      "--against=HEAD",
      "--figures=resnet18_eval",
      "--repeats=2",
      "--windows=1",
      "--benchmark_flags=--config.image_size=32 --config.batch_size=2 --predict_images=4",
      f"--json_out={tmp_path / 'speed.json'}",
    ],
    capture_output=True,
    text=True,
    check=False,
    timeout=1400,
    # One CPU device, as users run it (tests/conftest.py forces 8; batch 2 would not split).
    env={name: value for name, value in os.environ.items() if name != "XLA_FLAGS"},
  )
  assert done.returncode in (0, 1), done.stderr[-3000:]
  assert "Failed runs" not in done.stdout, done.stdout[-3000:]
  assert not set(_our_worktrees()) - set(before)  # Its own worktree is gone.
  rows = _rows_of(done.stdout.split("medians of 2 runs each:\n")[1])
  assert [label for label, *_ in rows] == [
    "ResNet-18 eval step, jax/torch",
    "ResNet-18 predict on a folder, jax/torch",
  ]
  for _, against, current, ratio, margin, verdict in rows:
    assert float(against) > 0 and float(current) > 0 and 0.25 < float(ratio) < 4.0
    assert margin.endswith("%") and verdict in ("worse", "better", "within noise")
  runs = json.loads((tmp_path / "speed.json").read_text())["runs"]
  # Each tree ran its own tools/benchmark.py (and so its own package: PYTHONPATH is the tree).
  scripts = {
    tree: {result["setup"]["command"].split()[0] for result in runs[tree]["resnet18_eval"]}
    for tree in ("against", "current")
  }
  assert scripts["current"] == {str(ROOT / "tools" / "benchmark.py")}
  (other,) = scripts["against"]
  assert other.endswith("/against/tools/benchmark.py") and not other.startswith(str(ROOT))
