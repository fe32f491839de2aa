"""Fault injection: preemption signals, SIGKILL mid-checkpoint, NaN batches, bad configs."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import ml_collections
import numpy as np
import pytest

from animesion_jax import run_dir
from animesion_jax import sharding
from animesion_jax.training import checkpointing
from animesion_jax.training import config_validation
from animesion_jax.training import loop
from animesion_jax.training import model_setup
from animesion_jax.training import preemption
from tests import helpers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _latest_params(workdir, config):
  setup = model_setup.create(config, 28, sharding.create_mesh(), 17, config.num_train_steps)
  state, _, step = checkpointing.restore(run_dir.RunDir(workdir), setup.abstract_state, "latest")
  return step, state


def _partial_writes(directory):
  return [n for n in os.listdir(directory) if "orbax-checkpoint-tmp" in n]


def _assert_same_params(a, b):
  jax.tree.map(
    lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-6),
    a.params,
    b.params,
  )


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
  """An uninterrupted 8-step run to compare the interrupted ones with."""
  workdir = tmp_path_factory.mktemp("straight")
  config = helpers.tiny_config(num_train_steps=8, checkpoint_every_steps=100)
  loop.train_and_evaluate(config, str(workdir))
  return workdir, config


def _signal_before_batch(monkeypatch, signum, at_call):
  """Sends `signum` to this process when the loop fetches its `at_call`-th batch."""
  original = sharding.to_global_batch
  calls = {"n": 0}

  def fetch(local_batch, mesh):
    calls["n"] += 1
    if len(local_batch["image"]) == 32 and calls["n"] == at_call:  # A train batch.
      os.kill(os.getpid(), signum)
    return original(local_batch, mesh)

  monkeypatch.setattr(sharding, "to_global_batch", fetch)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_then_resume_matches(tmp_path, monkeypatch, straight_run, signum):
  straight_dir, config = straight_run
  stop_at = int(np.random.default_rng(int(signum)).integers(2, 7))  # A random step in 2..6.
  _signal_before_batch(monkeypatch, signum, stop_at)
  with pytest.raises(preemption.Preempted) as stopped:
    loop.train_and_evaluate(config, str(tmp_path))
  assert stopped.value.code == preemption.PREEMPTED_EXIT_CODE
  # The signal arrives while the batch of step `stop_at` is fetched: that step runs, then it saves.
  assert stopped.value.step == stop_at
  assert (tmp_path / "checkpoints" / str(stop_at)).is_dir()
  assert not (tmp_path / "results.json").exists()
  monkeypatch.undo()

  results = loop.train_and_evaluate(config, str(tmp_path))
  assert results["steps"] == 8
  _, resumed = _latest_params(tmp_path, config)
  _, straight = _latest_params(straight_dir, config)
  _assert_same_params(resumed, straight)
  want = json.loads((straight_dir / "results.json").read_text())
  got = json.loads((tmp_path / "results.json").read_text())
  for split in ("validation", "test"):
    assert got[split] == pytest.approx(want[split], abs=1e-6)


@pytest.mark.slow
def test_sigkill_during_checkpoint_write_resumes_from_last_complete(tmp_path, straight_run):
  straight_dir, config = straight_run
  config_file = tmp_path / "kill_config.py"
  config_file.write_text(
    "from tests import helpers\n\n"
    "def get_config():\n"
    "  return helpers.tiny_config(num_train_steps=8, checkpoint_every_steps=1)\n"
  )
  workdir = tmp_path / "run"
  process = subprocess.Popen(
    [sys.executable, "-m", "animesion_jax.main", f"--config={config_file}", f"--workdir={workdir}"],
    cwd=REPO,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
    env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"},
  )
  latest = workdir / "checkpoints"
  deadline = time.time() + 240
  killed_mid_write = False
  while time.time() < deadline and process.poll() is None:
    # Kill as soon as a write is in progress after at least one checkpoint completed.
    if latest.exists():
      names = os.listdir(latest)
      if any(n.isdigit() for n in names) and any("tmp" in n for n in names):
        process.kill()
        killed_mid_write = True
        break
    time.sleep(0.001)
  process.wait()
  assert killed_mid_write, "the run finished before a checkpoint write could be interrupted"
  assert _partial_writes(latest), "SIGKILL should leave a partial write"
  last_complete = max(int(n) for n in os.listdir(latest) if n.isdigit())

  checkpoints = checkpointing.Checkpoints(run_dir.RunDir(workdir))
  assert checkpoints.incomplete and checkpoints.latest_step() == last_complete
  checkpoints.close()
  results = loop.train_and_evaluate(config, str(workdir))
  assert results["steps"] == 8
  assert not _partial_writes(latest)
  _, resumed = _latest_params(workdir, config)
  _, straight = _latest_params(straight_dir, config)
  _assert_same_params(resumed, straight)


def _nan_in_batch(monkeypatch, at_call):
  original = sharding.to_global_batch
  calls = {"n": 0}

  def fetch(local_batch, mesh):
    if len(local_batch["image"]) == 32:  # A train batch (eval batches hold 64).
      calls["n"] += 1
      if calls["n"] == at_call:
        local_batch = {**local_batch, "image": local_batch["image"].astype(np.float32)}
        local_batch["image"][0, 0, 0, 0] = np.nan
    return original(local_batch, mesh)

  monkeypatch.setattr(sharding, "to_global_batch", fetch)


@pytest.mark.slow
def test_nan_batch_stops_run_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
  config = helpers.tiny_config(num_train_steps=8, checkpoint_every_steps=2, log_every_steps=2)
  _nan_in_batch(monkeypatch, at_call=4)  # The batch of step 3 (0-based).
  with pytest.raises(loop.NonFiniteLoss, match=r"at step 3\b") as error:
    loop.train_and_evaluate(config, str(tmp_path))
  assert str(tmp_path / "checkpoints" / "2") in str(error.value)
  step, state = _latest_params(tmp_path, config)
  assert step == 2
  assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(state.params))


@pytest.mark.slow
def test_nan_batch_skipped_when_configured(tmp_path, monkeypatch):
  config = helpers.tiny_config(num_train_steps=6, skip_nonfinite_steps=True)
  _nan_in_batch(monkeypatch, at_call=2)
  results = loop.train_and_evaluate(config, str(tmp_path))
  assert results["steps"] == 6 and np.isfinite(results["test"]["loss"])
  _, state = _latest_params(tmp_path, config)
  assert int(state.nonfinite_steps) == 1 and int(state.first_nonfinite_step) == 1
  assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(state.params))


def _set(config, dotted, value):
  node = config
  *parents, leaf = dotted.split(".")
  for parent in parents:
    node = node[parent]
  node[leaf] = value  # The test configs are not locked, so unknown fields can be added.
  return config


@pytest.mark.parametrize(
  "dotted, value, message",
  [
    ("learning_rat", 0.1, r"Unknown config fields \['config.learning_rat'\]"),
    ("batch_size", "64", r"config.batch_size='64' should be of type int"),
    ("learning_rate", "0.1", r"config.learning_rate='0.1' should be of type float"),
    ("image_size", 18, r"config.image_size=18 is not divisible by the patch size 4"),
    (
      "batch_size",
      20,
      r"config.batch_size=20 must be a positive multiple of the device count \(8\)",
    ),
    ("model.hidden_sise", 8, r"config.model has a field that model 'vit_tiny' does not take"),
    ("init_from.source", "vit_npz", r"config.init_from.path='/nonexistent.npz' does not exist"),
  ],
)
def test_bad_config_message(tmp_path, dotted, value, message):
  # Not type-safe, like a config rebuilt from JSON, so a wrong type reaches the validator.
  config = ml_collections.ConfigDict(helpers.tiny_config().to_dict(), type_safe=False)
  if dotted.startswith("init_from"):
    config.init_from.path = "/nonexistent.npz"
  _set(config, dotted, value)
  with pytest.raises(config_validation.ConfigError, match=message):
    loop.train_and_evaluate(config, str(tmp_path))
  assert not (tmp_path / "checkpoints").exists()


def test_dataset_not_built_names_the_build_command(tmp_path):
  config = helpers.tiny_config(data_dir=str(tmp_path / "empty"), build_dataset_if_missing=False)
  with pytest.raises(FileNotFoundError, match="tfds build tfds_builders/synthetic_characters"):
    loop.train_and_evaluate(config, str(tmp_path / "run"))


@pytest.mark.slow
def test_resume_with_incompatible_config_names_the_difference(tmp_path):
  loop.train_and_evaluate(helpers.tiny_config(num_train_steps=2), str(tmp_path))
  changed = helpers.tiny_config(num_train_steps=4)
  changed.model.hidden_size = 48
  with pytest.raises(
    config_validation.ConfigError, match=r"config.model.hidden_size: 32 in the run, now 48"
  ):
    loop.train_and_evaluate(changed, str(tmp_path))
