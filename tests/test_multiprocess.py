"""Two JAX processes on localhost (CPU, gloo) train exactly like one process."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from animesion_jax.training import loop
from animesion_jax.training import preemption
from tests import helpers

# Several JAX processes: not in the fast tier.
pytestmark = pytest.mark.multiprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
  with socket.socket() as sock:
    sock.bind(("localhost", 0))
    return sock.getsockname()[1]


def _train_losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [(r["step"], r["loss"]) for r in map(json.loads, f) if r["split"] == "train"]


def _start_two(tmp_path, overrides, workdir):
  config_file = tmp_path / "two_process_config.py"
  config_file.write_text(
    "from tests import helpers\n\n"
    f"def get_config():\n  return helpers.tiny_config(**{overrides!r})\n"
  )
  port = _free_port()
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  return [
    subprocess.Popen(
      [
        sys.executable,
        "-m",
        "animesion_jax.main",
        f"--config={config_file}",
        f"--workdir={workdir}",
        f"--coordinator_address=localhost:{port}",
        "--num_processes=2",
        f"--process_id={index}",
      ],
      cwd=REPO,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for index in range(2)
  ]


def test_two_processes_match_one_process(tmp_path):
  # The last step is evaluated (with a validation split, so it is a ranked checkpoint) and is a
  # periodic checkpoint step too: both saves fall on step 4, in one collective save.
  overrides = dict(num_train_steps=4, log_every_steps=1, checkpoint_every_steps=2)
  workdir = tmp_path / "two"
  processes = _start_two(tmp_path, overrides, workdir)
  outputs = [p.communicate(timeout=400)[0] for p in processes]
  codes = [process.returncode for process in processes]
  assert codes == [0, 0], "\n\n".join(
    f"process {i} (exit {code}):\n{output[-3000:]}"
    for i, (code, output) in enumerate(zip(codes, outputs))
  )

  # One process with the same 8 devices in total.
  results = loop.train_and_evaluate(helpers.tiny_config(**overrides), str(tmp_path / "one"))
  two = _train_losses(workdir)
  one = _train_losses(tmp_path / "one")
  assert [s for s, _ in two] == [s for s, _ in one] == [1, 2, 3, 4]
  np.testing.assert_allclose([loss for _, loss in two], [loss for _, loss in one], rtol=1e-5)
  written = json.loads((workdir / "results.json").read_text())
  assert written["test"]["num_examples"] == results["test"]["num_examples"] == 224
  assert abs(written["test"]["top1"] - results["test"]["top1"]) < 1e-6
  # Checkpoints were written collectively: one step directory with both processes' data state.
  data_files = os.listdir(workdir / "checkpoints" / "4" / "data")
  assert sorted(f for f in data_files if f.startswith("process_")) == [
    "process_0-of-2.json",
    "process_1-of-2.json",
  ]


def test_sigterm_to_one_process_saves_the_same_step_on_both(tmp_path):
  """A preemption notice reaching one host: JAX's sync point picks one step; both save it."""
  overrides = dict(
    num_train_steps=3000, log_every_steps=5000, checkpoint_every_steps=5000, eval_every_epochs=5000
  )
  workdir = tmp_path / "preempted"
  processes = _start_two(tmp_path, overrides, workdir)
  deadline = time.time() + 300
  while time.time() < deadline and not (workdir / "config.json").exists():
    time.sleep(0.5)
  time.sleep(15)  # Somewhere in training (compilation included).
  processes[1].send_signal(signal.SIGTERM)
  outputs = [p.communicate(timeout=300)[0] for p in processes]
  codes = [p.returncode for p in processes]
  assert codes == [preemption.PREEMPTED_EXIT_CODE] * 2, (
    codes,
    outputs[0][-2000:],
    outputs[1][-2000:],
  )
  saved = [int(n) for n in os.listdir(workdir / "checkpoints") if n.isdigit()]
  assert len(saved) == 1 and 0 < saved[0] < 3000, saved
  data_files = os.listdir(workdir / "checkpoints" / str(saved[0]) / "data")
  assert sorted(f for f in data_files if f.startswith("process_")) == [
    "process_0-of-2.json",
    "process_1-of-2.json",
  ]
