"""Runs that never get stuck: random SIGKILLs, damaged checkpoints, best and latest on one step."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from animesion_jax import run_dir
from animesion_jax import sharding
from animesion_jax.training import checkpointing
from animesion_jax.training import loop
from animesion_jax.training import model_setup
from tests import helpers

# Trains in subprocesses or starts a server: not in the fast tier.
pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Evaluated every 4 steps (with a validation split, so every evaluation is a ranked checkpoint),
# periodic checkpoints every 5: best and latest fall on the same and on different steps.
OVERRIDES = dict(
  num_train_steps=24, eval_every_epochs=4 / 17, checkpoint_every_steps=5, log_every_steps=4
)


def _config():
  return helpers.tiny_config(**OVERRIDES)


def _params(workdir, which="latest"):
  config = _config()
  setup = model_setup.create(config, 28, sharding.create_mesh(), 17, config.num_train_steps)
  state, _, step = checkpointing.restore(run_dir.RunDir(workdir), setup.abstract_state, which)
  return step, state.params


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("straight")
  loop.train_and_evaluate(_config(), str(workdir))
  return workdir


def _start(cwd, workdir: str) -> subprocess.Popen:
  config_file = os.path.join(cwd, "kill_config.py")
  if not os.path.exists(config_file):
    with open(config_file, "w") as f:
      f.write(
        f"from tests import helpers\n\ndef get_config():\n"
        f"  return helpers.tiny_config(**{OVERRIDES!r})\n"
      )
  env = helpers.subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=8")
  return subprocess.Popen(
    [sys.executable, "-m", "animesion_jax.main", "--config=kill_config.py", f"--workdir={workdir}"],
    cwd=cwd,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )


def test_random_sigkills_then_restarts_finish_like_an_uninterrupted_run(tmp_path, straight_run):
  """Kills at seeded random moments (replayable: the seed is printed), restarting each time."""
  seed = int(os.environ.get("KILL_SEED", "20261130"))
  rng = np.random.default_rng(seed)
  kills, log = 0, []
  for attempt in range(8):
    process = _start(tmp_path, "runs/killed")  # A relative workdir, as users type it.
    if attempt < 4:
      delay = float(rng.uniform(3.0, 30.0))
      try:
        output = process.communicate(timeout=delay)[0]
      except subprocess.TimeoutExpired:
        process.kill()
        output = process.communicate()[0]
        kills += 1
        steps = (
          sorted(os.listdir(tmp_path / "runs/killed/checkpoints"))
          if (tmp_path / "runs/killed/checkpoints").exists()
          else []
        )
        log.append(f"attempt {attempt}: killed after {delay:.1f}s; on disk: {steps}")
        continue
    else:
      output = process.communicate(timeout=600)[0]
    assert process.returncode == 0, f"seed {seed}: " + "\n".join(log) + "\n" + output[-3000:]
    log.append(f"attempt {attempt}: finished")
    break
  print(f"seed {seed}, {kills} kills:\n" + "\n".join(log))
  workdir = tmp_path / "runs/killed"
  got = json.loads((workdir / "results.json").read_text())
  want = json.loads((straight_run / "results.json").read_text())
  for split in ("validation", "test"):
    assert got[split] == pytest.approx(want[split], abs=1e-6), (split, log)
  assert got["best"] == want["best"]
  _, resumed = _params(workdir)
  _, straight = _params(straight_run)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), resumed, straight)


def test_best_and_latest_kept_by_one_manager(straight_run):
  steps = checkpointing.step_dirs(run_dir.RunDir(straight_run))
  results = json.loads((straight_run / "results.json").read_text())
  best = results["best"]
  assert best["metric"] == checkpointing.BEST_METRIC and best["step"] in steps
  # keep_checkpoints=2 latest plus the best; the final step (24) is latest and evaluated.
  assert steps[-2:] == [20, 24], steps
  assert len(steps) <= 3
  path = checkpointing.resolve(run_dir.RunDir(straight_run), "best")
  assert path.name == str(best["step"])


def _truncate_an_array_file(step_dir) -> str:
  """Halves every OCDBT data file of the checkpoint's state (what a restore reads), as a
  half-copied bucket would leave them."""
  data_files = [p for p in (step_dir / "state" / "d").iterdir() if p.is_file()]
  assert data_files, list(step_dir.rglob("*"))
  for path in data_files:
    with open(path, "r+b") as f:
      f.truncate(path.stat().st_size // 2)
  return str(step_dir)


def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, straight_run, caplog):
  config = _config()
  config.halt_after_steps = 10
  loop.train_and_evaluate(config, str(tmp_path))  # Halts after step 10 (saved).
  assert checkpointing.step_dirs(run_dir.RunDir(tmp_path))[-1] == 10
  _truncate_an_array_file(tmp_path / "checkpoints" / "10")

  config.halt_after_steps = -1
  with caplog.at_level("WARNING"):
    results = loop.train_and_evaluate(config, str(tmp_path))
  warned = [r.getMessage() for r in caplog.records if " is damaged " in r.getMessage()]
  assert warned and str(tmp_path / "checkpoints" / "10") in warned[0], warned
  assert (tmp_path / checkpointing.DAMAGED_DIR).is_dir()
  want = json.loads((straight_run / "results.json").read_text())
  assert results["test"] == pytest.approx(want["test"], abs=1e-6)


def test_damaged_checkpoint_for_inference_names_it_and_the_others(tmp_path, straight_run):
  import shutil  # pylint: disable=g-import-not-at-top

  workdir = tmp_path / "copy"
  shutil.copytree(straight_run, workdir)
  _truncate_an_array_file(workdir / "checkpoints" / "24")
  config = _config()
  setup = model_setup.create(config, 28, sharding.create_mesh(), 17, config.num_train_steps)
  with pytest.raises(checkpointing.DamagedCheckpoint) as raised:
    checkpointing.restore(run_dir.RunDir(workdir), setup.abstract_state, "latest")
  message = str(raised.value)
  assert str(workdir / "checkpoints" / "24") in message
  assert str(workdir / "checkpoints" / "20") in message
  assert len(message.splitlines()) <= 3, message
