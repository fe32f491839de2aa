"""The run path works without OpenCV, as on a bare accelerator box whose carry limit leaves out its
60 MB wheel (tools/device_check.sh): Pillow and numpy decode, resize and flip instead.

Each command runs in a subprocess whose `sitecustomize` makes `cv2` look absent (its import finder
answers None, as for a package that is not installed).
"""

import io
import json
import pathlib
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from animesion_jax.data import preprocess
from tests import helpers

REPO = pathlib.Path(__file__).resolve().parents[1]

CONFIG = """
from tests import helpers

def get_config():
  return helpers.tiny_config(num_train_steps=4)
"""

# Runs without OpenCV: the same preprocessing of the pictures given on the command line.
PREPROCESS = """
import json, sys
import numpy as np
from animesion_jax.data import preprocess
assert preprocess.cv2 is None
out = {}
for path in sys.argv[1:]:
  encoded = open(path, "rb").read()
  resized = {str(s): preprocess.decode_resized(encoded, s).tolist() for s in (24, 48, 96)}
  pixels = preprocess.decode_resized(encoded, 48)
  flipped = np.zeros((40, 40, 3), np.uint8)
  preprocess.crop_into(pixels, 3, 5, True, flipped)
  out[path] = {"resized": resized, "flipped": flipped.tolist()}
print(json.dumps(out))
"""


def _env(root: pathlib.Path) -> dict[str, str]:
  (root / "site").mkdir(exist_ok=True)
  (root / "site" / "sitecustomize.py").write_text(helpers.hiding_sitecustomize("cv2"))
  return helpers.subprocess_env(root / "site", XLA_FLAGS="--xla_force_host_platform_device_count=2")


def _run(argv, env, cwd) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, *argv], env=env, cwd=cwd, capture_output=True, text=True, timeout=600
  )


def _pictures(directory: pathlib.Path) -> list[str]:
  rng = np.random.default_rng(7)
  smooth = np.kron(rng.integers(0, 256, (8, 10, 3)), np.ones((8, 8, 1))).astype(np.uint8)
  paths = []
  for name, fmt in (("a.jpg", "JPEG"), ("b.png", "PNG")):
    buffer = io.BytesIO()
    Image.fromarray(smooth).save(buffer, fmt)
    (directory / name).write_bytes(buffer.getvalue())
    paths.append(str(directory / name))
  return paths


def test_preprocessing_matches_opencv_within_one_grey_level(tmp_path):
  assert preprocess.cv2 is not None, "the test extras install OpenCV"
  paths = _pictures(tmp_path)
  done = _run(["-c", PREPROCESS, *paths], _env(tmp_path), tmp_path)
  assert done.returncode == 0, done.stderr[-3000:]
  without = json.loads(done.stdout.strip().splitlines()[-1])
  for path in paths:
    encoded = pathlib.Path(path).read_bytes()
    for size in (24, 48, 96):  # Shrinking, same size as decoded (64x80 -> 48 both), enlarging.
      with_cv2 = preprocess.decode_resized(encoded, size).astype(int)
      difference = np.abs(np.asarray(without[path]["resized"][str(size)]) - with_cv2)
      assert difference.max() <= 1, (path, size, difference.max())
    pixels = preprocess.decode_resized(encoded, 48)
    flipped = np.zeros((40, 40, 3), np.uint8)
    preprocess.crop_into(pixels, 3, 5, True, flipped)
    difference = np.abs(np.asarray(without[path]["flipped"]) - flipped.astype(int))
    assert difference.max() <= 1, (path, difference.max())
    np.testing.assert_array_equal(flipped, pixels[3:43, 5:45][:, ::-1])


@pytest.mark.slow
def test_train_and_predict_without_opencv(tmp_path):
  env = _env(tmp_path)
  (tmp_path / "tiny.py").write_text(CONFIG)
  done = _run(["-m", "animesion_jax.main", "--config=tiny.py", "--workdir=run"], env, tmp_path)
  assert done.returncode == 0, done.stderr[-3000:]
  results = json.loads((tmp_path / "run" / "results.json").read_text())
  assert results["steps"] == 4 and results["completed"], results
  _pictures(tmp_path)
  done = _run(["-m", "animesion_jax.predict", "--workdir=run", "a.jpg", "b.png"], env, tmp_path)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "2 predictions for 2 of 2 images" in done.stdout, done.stdout

  # Host colour jitter needs OpenCV: refused before anything is built, with what to do instead.
  done = _run(
    [
      "-m",
      "animesion_jax.main",
      "--config=tiny.py",
      "--config.color_jitter=0.1",
      "--workdir=jitter",
    ],
    env,
    tmp_path,
  )
  assert done.returncode != 0
  assert "pip install opencv-python-headless, or set data_on_device=True" in done.stderr, (
    done.stderr[-3000:]
  )
  assert not (tmp_path / "jitter" / "checkpoints").exists()


@pytest.mark.slow
def test_device_jitter_needs_no_opencv(tmp_path):
  env = _env(tmp_path)
  (tmp_path / "tiny.py").write_text(CONFIG)
  done = _run(
    [
      "-m",
      "animesion_jax.main",
      "--config=tiny.py",
      "--config.color_jitter=0.1",
      "--config.data_on_device=True",
      "--workdir=run",
    ],
    env,
    tmp_path,
  )
  assert done.returncode == 0, done.stderr[-3000:]
