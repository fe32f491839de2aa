"""The run path works with TensorFlow not installed, and never even tries to import it.

Each command runs in a subprocess whose `sitecustomize` makes `tensorflow` look absent (its
import finder answers None, exactly as for a package that is not installed) and records every
`import tensorflow` (not mere `importlib.util.find_spec` checks, as etils.epath makes to pick a
backend for gs:// paths; they import nothing). Dataset build (Python API), training, evaluation, prediction, conversion
and the benchmark must succeed there, with no attempt recorded: so on a machine where TensorFlow
*is* installed (Colab, a GPU box), they do not import it either and it never grabs the GPU.
"""

import json
import pathlib
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from tests import helpers

REPO = pathlib.Path(__file__).resolve().parents[1]

CONFIG = """
from tests import helpers

def get_config():
  return helpers.tiny_config(num_train_steps=4, eval_every_epochs=1)
"""


@pytest.fixture(scope="module")
def no_tf(tmp_path_factory):
  """Runs a command with TensorFlow unimportable; returns (run, attempts file, scratch dir)."""
  root = tmp_path_factory.mktemp("no_tf")
  (root / "site").mkdir()
  (root / "site" / "sitecustomize.py").write_text(
    helpers.hiding_sitecustomize("tensorflow", "NO_TF_ATTEMPTS")
  )
  attempts = root / "attempts.txt"
  env = helpers.subprocess_env(
    root / "site",
    NO_TF_ATTEMPTS=str(attempts),
    # Its own session directory: the synthetic dataset is built here, without TensorFlow.
    ANIMESION_JAX_TEST_SESSION_DIR=str(root / "session"),
    XLA_FLAGS="--xla_force_host_platform_device_count=2",
  )

  def run(*args: str) -> str:
    result = subprocess.run(
      [sys.executable, *args], cwd=root, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr[-4000:]}"
    return result.stdout + result.stderr

  return run, attempts, root


def test_blocker_makes_tensorflow_unimportable(no_tf):
  run, attempts, _ = no_tf
  out = run(
    "-c",
    "import importlib.util\n"
    "assert importlib.util.find_spec('tensorflow') is None\n"
    "try:\n  import tensorflow\nexcept ModuleNotFoundError as e:\n  print('absent:', e)\n",
  )
  assert "absent: No module named 'tensorflow'" in out
  assert "tensorflow" in attempts.read_text()
  attempts.unlink()


@pytest.mark.slow
def test_train_evaluate_predict_convert_benchmark_without_tensorflow(no_tf):
  run, attempts, root = no_tf
  (root / "config.py").write_text(CONFIG)
  # Relative paths, typed as a user would, from the scratch directory.
  run("-m", "animesion_jax.main", "--config=config.py", "--workdir=run")
  results = json.loads((root / "run" / "results.json").read_text())
  assert results["steps"] == 4 and results["test"]["num_examples"] == 224

  run("-m", "animesion_jax.evaluate", "--workdir=run", "--output_dir=eval")
  evaluation = json.loads((root / "eval" / "evaluation.json").read_text())
  assert evaluation["num_examples"] == 224 and 0 <= evaluation["top1"] <= 1

  Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 30, 3), np.uint8)).save(
    root / "picture.png"
  )
  run(
    "-m", "animesion_jax.predict", "--workdir=run", "--output_dir=pred", "--top_k=3", "picture.png"
  )
  predictions = json.loads((root / "pred" / "predictions.json").read_text())
  assert predictions["step"] == 4 and not predictions["errors"]
  assert len(predictions["results"]) == 1
  assert predictions["results"][0]["file"].endswith("picture.png")

  run(
    str(REPO / "tools" / "convert_checkpoint.py"),
    "--source=run",
    "--input=run",
    "--output=exported",
  )
  assert (root / "exported" / "model.json").exists()

  run(
    str(REPO / "tools" / "benchmark.py"),
    "--config=config.py",
    "--windows=1",
    "--steps_per_window=1",
    "--pipeline",
    "--pipeline_dataset=synthetic_characters",
    "--pipeline_batches=2",
    "--pipeline_workers=0",
    "--json_out=bench.json",
  )
  bench = json.loads((root / "bench.json").read_text())
  assert bench["jax"]["images_per_s"] > 0 and bench["jax"]["platform"] == "cpu"

  tried = attempts.read_text() if attempts.exists() else ""
  assert not tried, f"TensorFlow imports attempted on the run path:\n{tried}"
