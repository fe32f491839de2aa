"""tools/plot_run.py: reading metrics.jsonl (resumed runs, cut-off lines) and the PNG curves."""

import json
import pathlib
import subprocess
import sys

from PIL import Image
import pytest

from tests import helpers

ROOT = pathlib.Path(__file__).resolve().parents[1]


plot_run = helpers.load_tool("plot_run")


def _write_run(workdir: pathlib.Path) -> None:
  records = [
    {"step": 10, "epoch": 0.5, "split": "train", "loss": 3.0, "top1": 0.10},
    {"step": 20, "epoch": 1.0, "split": "train", "loss": 2.5, "top1": 0.20},
    {
      "step": 20,
      "epoch": 1.0,
      "split": "validation",
      "loss": 2.6,
      "top1": 0.25,
      "top5": 0.5,
      "num_examples": 112,
    },
    {
      "step": 20,
      "epoch": 1.0,
      "split": "test",
      "loss": 2.7,
      "top1": 0.22,
      "top5": 0.45,
      "num_examples": 224,
    },
    # The run was preempted after step 20 and resumed from step 10: steps 20 are logged again.
    {"step": 20, "epoch": 1.0, "split": "train", "loss": 2.4, "top1": 0.21},
    {
      "step": 20,
      "epoch": 1.0,
      "split": "validation",
      "loss": 2.55,
      "top1": 0.26,
      "top5": 0.52,
      "num_examples": 112,
    },
    {"step": 30, "epoch": 1.5, "split": "train", "loss": 2.0, "top1": 0.30},
    {
      "step": 40,
      "epoch": 2.0,
      "split": "validation",
      "loss": 2.1,
      "top1": 0.40,
      "top5": 0.7,
      "num_examples": 112,
    },
  ]
  lines = [json.dumps(r) for r in records] + ['{"step": 50, "epoch": 2.5, "spl']  # Cut short.
  (workdir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
  (workdir / "config.json").write_text(
    json.dumps({"model": {"name": "vit_b16"}, "dataset": "dafre"})
  )


def test_read_metrics_keeps_the_last_record_of_a_step(tmp_path, capsys):
  _write_run(tmp_path)
  curves = plot_run.read_metrics(tmp_path / "metrics.jsonl")
  assert sorted(curves) == ["test", "train", "validation"]
  assert curves["train"]["step"] == [10, 20, 30]
  assert curves["train"]["loss"] == [3.0, 2.4, 2.0]  # Step 20's later record wins.
  assert curves["train"]["epoch"] == [0.5, 1.0, 1.5]
  assert "top5" not in curves["train"]
  assert curves["validation"]["top1"] == [0.26, 0.40]
  assert curves["validation"]["top5"] == [0.52, 0.7]
  assert curves["test"]["loss"] == [2.7]
  assert "Skipping unreadable line 9" in capsys.readouterr().out


def test_plot_run_writes_both_figures(tmp_path):
  _write_run(tmp_path)
  paths = plot_run.plot_run(str(tmp_path))
  assert [pathlib.Path(p).name for p in paths] == ["loss.png", "accuracy.png"]
  for path in paths:
    assert pathlib.Path(path).parent == tmp_path / "plots"
    with Image.open(path) as image:
      assert image.format == "PNG"
      assert image.size == (840, 540)  # 7 x 4.5 inches at 120 dpi.
      # Curves were drawn: the figure is not a blank canvas.
      assert len(image.convert("RGB").getcolors(maxcolors=100000)) > 50


def test_missing_or_empty_metrics_are_clear_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="metrics.jsonl not found"):
    plot_run.plot_run(str(tmp_path))
  (tmp_path / "metrics.jsonl").write_text("")
  with pytest.raises(ValueError, match="holds no metrics yet"):
    plot_run.plot_run(str(tmp_path))


@pytest.mark.slow
def test_command_line(tmp_path):
  _write_run(tmp_path)
  # Importing the plotting modules selects no matplotlib backend (nor loads pyplot).
  imported = subprocess.run(
    [
      sys.executable,
      "-c",
      "import sys; import matplotlib; backend = matplotlib.rcParams."
      "_get('backend'); from animesion_jax import evaluate, predict; from animesion_jax.inference import plots; "
      "assert matplotlib.rcParams._get('backend') == backend, backend; "
      "assert 'matplotlib.pyplot' not in sys.modules; print('clean')",
    ],
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert imported.stdout == "clean\n", imported.stderr
  # Relative paths, typed in the directory above the run.
  done = subprocess.run(
    [
      sys.executable,
      str(ROOT / "tools" / "plot_run.py"),
      f"--workdir={tmp_path.name}",
      f"--out_dir={tmp_path.name}/figures",
    ],
    capture_output=True,
    text=True,
    timeout=120,
    cwd=tmp_path.parent,
  )
  assert done.returncode == 0, done.stderr
  assert done.stdout.splitlines()[-1] == (
    f"Wrote {tmp_path / 'figures' / 'loss.png'}, {tmp_path / 'figures' / 'accuracy.png'}"
  )
