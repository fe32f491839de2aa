"""The README's own commands, verbatim, from a fresh copy of the repository, with relative paths.

The quick-start command line is read from README.md (not copied here; the web page and the paper
smoke lines from docs/serve.md and docs/reproduce_paper.md): its training part runs in a
new copy of the project, exactly as a newcomer types it, then evaluate, predict and plot_run run on
that run with the relative paths the README shows, and `tools/reproduce_paper.py --smoke` runs with
its default output folder.
"""

import json
import os
import re
import shlex
import signal
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from tests import readme_commands

# Every test here runs the real command lines (trains, starts a server): the e2e tier.
# The module's quick-start training (its fixture) is charged to the first test's time limit.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1500)]


@pytest.fixture(scope="module")
def quickstart_run(fresh_copy):
  copy, env = fresh_copy
  (line,) = readme_commands.readme_commands("## Quick start")
  install, train_command = [part.strip() for part in line.split("&&")]
  assert install.startswith("pip install -e .")  # Done already: the suite runs installed.
  output = readme_commands.run(train_command, copy, env)
  print(output[-3000:])  # The README shows an abridged copy of this (pytest -s shows it).
  workdir = re.search(r"--workdir=(\S+)", train_command).group(1)
  assert not os.path.isabs(workdir), "the README shows a relative workdir"
  return copy, env, workdir, output


def test_quickstart_command_trains_to_the_readme_accuracy(quickstart_run):
  copy, _, workdir, output = quickstart_run
  results = json.loads((copy / workdir / "results.json").read_text())
  assert results["completed"] and results["steps"] == 4 * 158  # ceil(10080 / 64) per epoch
  # The README promises about 95% test top-1 (28 classes, deterministic run).
  assert results["test"]["top1"] > 0.90, results["test"]
  assert results["test"]["num_examples"] == 840
  assert "test top1" in output or "test:" in output


def test_evaluate_predict_and_plots_with_relative_paths(quickstart_run):
  copy, env, workdir, _ = quickstart_run
  evaluate, predict, plot = readme_commands.readme_commands("Then, on that run")
  assert f"--workdir={workdir}" in evaluate and f"--workdir={workdir}" in predict
  out = readme_commands.run(evaluate, copy, env)
  assert "top-1" in out.lower() or "top1" in out.lower(), out
  reports = list((copy / workdir / "evaluation").glob("test_step*/*.json"))
  assert reports, os.listdir(copy / workdir)

  pictures = copy / "my_pictures"  # The folder the README's predict line names.
  pictures.mkdir()
  rng = np.random.default_rng(0)
  for index in range(3):
    Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(
      pictures / f"picture{index}.png"
    )
  out = readme_commands.run(predict, copy, env)
  assert "3 predictions for 3 of 3 images" in out, out
  assert (copy / workdir / "predictions").is_dir()

  readme_commands.run(plot, copy, env)
  assert list((copy / workdir / "plots").glob("*.png"))


def test_web_page_command_serves_the_quickstart_run(quickstart_run):
  """The README's serve line and its curl lines, verbatim, on the quick-start run."""
  copy, env, workdir, _ = quickstart_run
  (line,) = readme_commands.readme_commands("# Web page", "docs/serve.md")
  install, serve = [part.strip() for part in line.split("&&")]
  assert install == "pip install -e '.[demo]'"  # The test extras include the demo ones.
  assert f"--workdir={workdir}" in serve
  argv = shlex.split(serve)
  server = subprocess.Popen(
    [sys.executable, *argv[1:]],
    cwd=copy,
    env=env,
    text=True,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
  )
  try:
    ready = ""
    while "Serving" not in ready:
      ready = server.stdout.readline()
      assert ready or server.poll() is None, "the server exited before serving"
    assert "at http://127.0.0.1:8000/" in ready, ready
    Image.fromarray(np.full((48, 48, 3), 90, np.uint8)).save(copy / "art.png")
    predict_line, health_line = readme_commands.readme_commands(
      "The API, beside the page:", "docs/serve.md"
    )
    answer = json.loads(
      subprocess.run(
        shlex.split(predict_line), cwd=copy, text=True, capture_output=True, timeout=120, check=True
      ).stdout
    )
    assert len(answer["faces"]) == 1 and len(answer["faces"][0]["top5"]) == 5, answer
    health = json.loads(
      subprocess.run(
        shlex.split(health_line), cwd=copy, text=True, capture_output=True, timeout=60, check=True
      ).stdout
    )
    assert health["status"] == "ok", health
  finally:
    server.send_signal(signal.SIGINT)  # "Ctrl+C stops".
    output = server.communicate(timeout=60)[0]
  assert server.returncode == 0, output[-2000:]


def test_reproduce_paper_smoke_default_output_folder(fresh_copy, paper_smoke):
  """docs/reproduce_paper.md's smoke line, verbatim (run once per session by conftest)."""
  copy, _ = fresh_copy
  assert paper_smoke == copy / "runs" / "paper" / "smoke"
  written = list(paper_smoke.rglob("results.json"))
  assert written, "the smoke run wrote no results under its default runs/paper folder"


def test_video_command_indexes_an_episode(quickstart_run):
  """docs/video.md's line, verbatim, on the quick-start run and an episode drawn where it says."""
  from tfds_builders.synthetic_characters import episodes  # pylint: disable=g-import-not-at-top

  copy, env, workdir, _ = quickstart_run
  (command,) = readme_commands.readme_commands("# Who appears when", "docs/video.md")
  assert f"--workdir={workdir}" in command and command.split()[3] == "episode.mp4"
  truth = episodes.render(episodes.scripted(), str(copy / "episode.mp4"))
  out = readme_commands.run(command, copy, env)
  assert "1 videos, 7 appearances" in out, out
  index = copy / re.search(r"--output_dir=(\S+)", command).group(1)
  record = json.loads((index / "timeline.json").read_text())
  assert [s["start"] for s in record["shots"]] == pytest.approx(
    [s["start"] for s in truth["shots"]], abs=0.1
  )
  named = [a["character"] for a in record["appearances"]]
  # The trained characters of the scripted episode, in order (the fourth track is a character no
  # trained class has: any answer).
  assert [n for i, n in enumerate(named) if i != 4] == [
    "kuro_long",
    "hikari_twintails",
    "kuro_long",
    "sora_spiky",
    "kuro_long",
    "hikari_twintails",
  ]
  assert (index / "index.html").is_file() and (index / "timeline.csv").is_file()
