"""A gs:// run directory, end to end, against a local Cloud Storage emulator the test starts.

Each storage client is pointed at the emulator the documented way: etils.epath through fsspec/gcsfs
(STORAGE_EMULATOR_HOST; EPATH_USE_TF=false so epath does not pick TensorFlow's GCS client, which
has no emulator setting), tensorstore under Orbax (TENSORSTORE_GCS_HTTP_URL), and TensorBoard's
event writer (fsspec, the same STORAGE_EMULATOR_HOST).
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
from PIL import Image
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = "animesion-test"

pytestmark = pytest.mark.skipif(
  shutil.which("gcp-storage-emulator") is None
  and not os.path.exists(os.path.join(os.path.dirname(sys.executable), "gcp-storage-emulator")),
  reason="gcp-storage-emulator is installed by the test extras",
)


def _free_port() -> int:
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


@pytest.fixture(scope="module")
def emulator_env():
  port = _free_port()
  executable = shutil.which("gcp-storage-emulator") or os.path.join(
    os.path.dirname(sys.executable), "gcp-storage-emulator"
  )
  server = subprocess.Popen(
    [
      executable,
      "start",
      "--host=127.0.0.1",
      f"--port={port}",
      "--in-memory",
      f"--default-bucket={BUCKET}",
    ],
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )
  deadline = time.time() + 60
  while time.time() < deadline:
    with socket.socket() as sock:
      if sock.connect_ex(("127.0.0.1", port)) == 0:
        break
    time.sleep(0.2)
  url = f"http://127.0.0.1:{port}"
  env = {
    **os.environ,
    "STORAGE_EMULATOR_HOST": url,
    "TENSORSTORE_GCS_HTTP_URL": url,
    "EPATH_USE_TF": "false",
    "GOOGLE_CLOUD_PROJECT": "test",
    "PYTHONPATH": REPO,
    "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
  }
  yield env
  server.terminate()
  server.wait(timeout=30)


def _run(argv, env, cwd, expect=0) -> str:
  process = subprocess.run(
    [sys.executable, *argv],
    cwd=cwd,
    env=env,
    text=True,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    timeout=900,
  )
  assert process.returncode == expect, f"{argv}\n{process.stdout[-4000:]}"
  return process.stdout


def _listing(env, prefix: str) -> list[str]:
  script = (
    "import sys\nfrom etils import epath\n"
    f"print('\\n'.join(sorted(str(p) for p in epath.Path({prefix!r}).rglob('*'))))\n"
  )
  return _run(["-c", script], env, REPO).split()


def test_gs_workdir_trains_resumes_evaluates_and_predicts(emulator_env, tmp_path):
  workdir = f"gs://{BUCKET}/runs/tiny"
  (tmp_path / "gcs_config.py").write_text(
    "from tests import helpers\n\ndef get_config():\n"
    "  return helpers.tiny_config(num_train_steps=4, checkpoint_every_steps=2,\n"
    "                             halt_after_steps=2)\n"
  )
  train = ["-m", "animesion_jax.main", "--config=gcs_config.py", f"--workdir={workdir}"]
  _run(train, emulator_env, tmp_path)  # Halts after 2 steps, checkpoint saved.
  files = _listing(emulator_env, workdir)
  assert f"{workdir}/checkpoints/2" in files, files
  assert not any(f.endswith("results.json") for f in files)
  out = _run([*train, "--config.halt_after_steps=-1"], emulator_env, tmp_path)  # Resumes.
  assert "Resumed from" in out and "at step 2" in out, out[-3000:]
  files = _listing(emulator_env, workdir)
  for name in ("config.json", "class_names.json", "metrics.jsonl", "results.json", "checkpoints/4"):
    assert f"{workdir}/{name}" in files, (name, files)
  assert any("events.out.tfevents" in f for f in files), files

  _run(["-m", "animesion_jax.evaluate", f"--workdir={workdir}"], emulator_env, tmp_path)
  assert any(f"{workdir}/evaluation/" in f for f in _listing(emulator_env, workdir))
  pictures = tmp_path / "pictures"
  pictures.mkdir()
  Image.fromarray(np.full((20, 20, 3), 120, np.uint8)).save(pictures / "a.png")
  out = _run(
    ["-m", "animesion_jax.predict", f"--workdir={workdir}", "pictures/"], emulator_env, tmp_path
  )
  assert "1 predictions for 1 of 1 images" in out, out
  assert any(f"{workdir}/predictions/" in f for f in _listing(emulator_env, workdir))
  results = json.loads(
    _run(
      [
        "-c",
        f"from etils import epath; print(epath.Path({workdir + '/results.json'!r}).read_text())",
      ],
      emulator_env,
      tmp_path,
    )
  )
  assert results["steps"] == 4 and results["test"]["num_examples"] == 224
