"""gs:// runs against a local Cloud Storage emulator that the test starts itself.

Every client is pointed at it the documented way: etils.epath through fsspec/gcsfs
(STORAGE_EMULATOR_HOST; EPATH_USE_TF=false, since TensorFlow's GCS client has no emulator setting),
TensorBoard's event writer (fsspec, the same variable) and tensorstore under Orbax
(TENSORSTORE_GCS_HTTP_URL). The emulator is gcp-storage-emulator with Cloud Storage's generation
preconditions added (tests/gcs_emulator.py), which tensorstore needs for its checkpoint writes.

Not covered: a gs:// TFDS data_dir. ArrayRecord's reader has its own C++ Cloud Storage client with
no emulator setting (it looks for metadata.google.internal credentials and never reaches the
emulator), so the records themselves cannot be read from the emulator.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
from PIL import Image
import pytest

from tests import helpers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = "animesion-test"

# Starts the Cloud Storage emulator and trains in subprocesses: not in the fast tier.
pytestmark = [
  pytest.mark.slow,
  pytest.mark.skipif(
    shutil.which("gcp-storage-emulator") is None
    and not os.path.exists(os.path.join(os.path.dirname(sys.executable), "gcp-storage-emulator")),
    reason="gcp-storage-emulator is installed by the test extras",
  ),
]


def _free_port() -> int:
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


@pytest.fixture(scope="module")
def emulator_env():
  port = _free_port()
  server = subprocess.Popen(
    [sys.executable, "-m", "tests.gcs_emulator", str(port), BUCKET],
    cwd=REPO,
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
  env = helpers.subprocess_env(
    STORAGE_EMULATOR_HOST=url,
    TENSORSTORE_GCS_HTTP_URL=url,
    EPATH_USE_TF="false",
    GOOGLE_CLOUD_PROJECT="test",
    XLA_FLAGS="--xla_force_host_platform_device_count=2",
  )
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
  """Every path under `prefix` (epath's rglob refuses gs://: walk with iterdir)."""
  script = (
    "import sys\nfrom etils import epath\n"
    "def walk(p):\n"
    "  for c in p.iterdir():\n"
    "    print(c)\n"
    "    if c.is_dir():\n"
    "      walk(c)\n"
    f"walk(epath.Path({prefix!r}))\n"
  )
  return [word for word in _run(["-c", script], env, REPO).split() if word.startswith("gs://")]


def test_run_files_and_summaries_land_in_a_gs_run_directory(emulator_env, tmp_path):
  """RunDir and the TensorBoard writer: config, class names, metrics, results, events."""
  script = """
import json, sys
import ml_collections
from animesion_jax import run_dir
from animesion_jax.training import summaries
run = run_dir.RunDir(sys.argv[1])
config = ml_collections.ConfigDict({"model": {"name": "vit_tiny"}, "seed": 3})
run.save_config(config)
run.save_class_names(["miku", "rin"])
writer = summaries.Summaries(run)
writer.write(1, "train", {"loss": 2.5}, epoch=0.5)
writer.write(2, "validation", {"top1": 0.75}, epoch=1.0)
writer.close()
run.drop_metrics_after(1)
run.save_results({"steps": 2})
print(json.dumps({"config": run.load_config().seed, "names": run.load_class_names(),
                  "metrics": run.read_metrics(), "results": run.load_results()}))
"""
  workdir = f"gs://{BUCKET}/runs/files"
  out = _run(["-c", script, workdir], emulator_env, tmp_path)
  read_back = json.loads(out.strip().splitlines()[-1])
  assert read_back["config"] == 3 and read_back["names"] == ["miku", "rin"]
  assert read_back["metrics"] == [{"step": 1, "epoch": 0.5, "split": "train", "loss": 2.5}]
  assert read_back["results"] == {"steps": 2}
  files = _listing(emulator_env, workdir)
  for name in ("config.json", "class_names.json", "metrics.jsonl", "results.json"):
    assert f"{workdir}/{name}" in files, (name, files)
  assert any("events.out.tfevents" in f for f in files), files


def test_predict_writes_its_outputs_to_gs(trained_workdir, emulator_env, tmp_path):

  workdir = trained_workdir
  pictures = tmp_path / "pictures"
  pictures.mkdir()
  Image.fromarray(np.full((20, 20, 3), 120, np.uint8)).save(pictures / "a.png")
  output = f"gs://{BUCKET}/predictions"
  out = _run(
    ["-m", "animesion_jax.predict", f"--workdir={workdir}", f"--output_dir={output}", "pictures/"],
    emulator_env,
    tmp_path,
  )
  assert "1 predictions for 1 of 1 images" in out, out
  files = _listing(emulator_env, output)
  assert any(f.endswith("predictions.json") for f in files), files


def _train_argv(workdir: str, steps: int) -> list[str]:
  from tests import helpers  # pylint: disable=g-import-not-at-top

  tiny = {
    "data_dir": helpers.synthetic_data_dir(),
    "dataset_config": "small",
    "image_size": 16,
    "resize_margin": 4,
    "model.patch_size": 4,
    "model.hidden_size": 32,
    "model.mlp_dim": 64,
    "model.num_heads": 2,
    "model.num_layers": 1,
    "batch_size": 32,
    "eval_batch_size": 64,
    "log_every_steps": 2,
    "checkpoint_every_steps": 2,
    "num_train_steps": steps,
  }
  return [
    "-m",
    "animesion_jax.main",
    f"--config={REPO}/configs/quickstart.py",
    *(f"--config.{key}={value}" for key, value in tiny.items()),
    f"--workdir={workdir}",
  ]


def _results(env, path: str) -> dict:
  script = (
    f"import json\nfrom etils import epath\n"
    f"print(json.dumps(json.loads(epath.Path({path!r}).read_text())))"
  )
  return json.loads(_run(["-c", script], env, REPO).strip().splitlines()[-1])


def test_train_resume_evaluate_predict_in_a_gs_workdir(emulator_env, tmp_path):
  """A run whose workdir is gs://: checkpoints through tensorstore, resumed, then read back."""
  workdir = f"gs://{BUCKET}/runs/whole"
  _run(_train_argv(workdir, 4), emulator_env, tmp_path)
  out = _run(_train_argv(workdir, 8), emulator_env, tmp_path)
  assert f"Resumed from {workdir}/checkpoints at step 4." in out, out
  _run(_train_argv("runs/straight", 8), emulator_env, tmp_path)  # The same run, local, unbroken.
  resumed = _results(emulator_env, f"{workdir}/results.json")
  straight = json.loads((tmp_path / "runs/straight/results.json").read_text())
  assert resumed["steps"] == straight["steps"] == 8 and resumed["completed"], resumed
  for split in ("validation", "test"):
    for metric, value in straight[split].items():
      assert resumed[split][metric] == pytest.approx(value, abs=1e-6), (split, metric)
  files = _listing(emulator_env, workdir)
  steps = sorted(int(f.rsplit("/", 1)[1]) for f in files if re.fullmatch(r".*/checkpoints/\d+", f))
  # Saved: 2, 4, 6, 8. Kept: the latest two (keep=2) and the best by validation top-1 (evaluated
  # at 4 and 8); step 2's was deleted from the bucket.
  assert 2 not in steps and {6, 8} <= set(steps) <= {4, 6, 8}, files

  out = _run(
    ["-m", "animesion_jax.evaluate", f"--workdir={workdir}", "--checkpoint=latest"],
    emulator_env,
    tmp_path,
  )
  assert f"Wrote {workdir}/evaluation/test_step8" in out, out
  evaluation = _results(emulator_env, f"{workdir}/evaluation/test_step8/evaluation.json")
  assert evaluation["top1"] == pytest.approx(straight["test"]["top1"], abs=1e-6), evaluation

  pictures = tmp_path / "pictures"
  pictures.mkdir()
  Image.fromarray(np.full((20, 20, 3), 90, np.uint8)).save(pictures / "b.png")
  out = _run(
    ["-m", "animesion_jax.predict", f"--workdir={workdir}", "pictures/"], emulator_env, tmp_path
  )
  assert "1 predictions for 1 of 1 images" in out, out


_ENROLMENTS = 20  # Per writer.
_ENROL_MANY = """
import sys
import time
import numpy as np
from animesion_jax.open_set import gallery
directory, who, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
time.sleep(max(0.0, start - time.time()))  # Both writers start together, once imported.
for i in range(int(sys.argv[4])):
  embedding = np.random.default_rng(i).normal(size=(1, 4))
  gallery.enroll(directory, {"fingerprint": "f"}, f"{who}-{i}", embedding, [f"{i}.png"], [])
"""


def test_two_writers_of_one_gs_gallery_both_land(emulator_env):
  directory = f"gs://{BUCKET}/race/gallery"
  start = time.time() + 15
  writers = [
    subprocess.Popen(
      [sys.executable, "-c", _ENROL_MANY, directory, who, str(start), str(_ENROLMENTS)],
      cwd=REPO,
      env=emulator_env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for who in ("first", "second")
  ]
  for writer in writers:
    output = writer.communicate(timeout=300)[0]
    assert writer.returncode == 0, output[-3000:]
  script = (
    "import sys\nfrom animesion_jax.open_set import gallery\n"
    "print(' '.join(gallery.load(sys.argv[1], {'fingerprint': 'f'}).names))"
  )
  names = _run(["-c", script, directory], emulator_env, REPO).splitlines()[-1].split()
  expected = [f"{who}-{i}" for who in ("first", "second") for i in range(_ENROLMENTS)]
  assert names == sorted(expected)  # Last writer wins would lose some.
