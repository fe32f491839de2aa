"""The batch job on a local Ray (one Ray for the module): predict's answers, error rows, re-runs.

Slow: starting Ray and its workers (each actor loads the run and compiles) takes tens of seconds.
"""

import csv
import os
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image
import pyarrow as pa
import pytest

from animesion_jax import organize
from animesion_jax import predict
from animesion_jax import recognizer
from animesion_jax.distributed import job
from animesion_jax.distributed import rows
from animesion_jax.distributed import sorting
from animesion_jax.inference import image_files
from animesion_jax.open_set import grouping
from tests import helpers
from tests import trained_run

pytestmark = pytest.mark.slow
ray = pytest.importorskip("ray")

_PICTURES = 20  # Readable pictures: test pictures, and a few of noise (answered unknown).
_NOISE = 4
_ACCEPT = 0.6  # Of known pictures named: some test pictures are answered unknown too.
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def local_ray():
  started = job.connect(None, num_cpus=2)
  yield
  if started:
    ray.shutdown()


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
  """Test pictures, a file that is not an image, and predict's answers for the pictures."""
  folder = tmp_path_factory.mktemp("collection") / "pictures"
  folder.mkdir()
  helpers.write_test_pictures(folder, _PICTURES - _NOISE)
  rng = np.random.default_rng(0)
  for i in range(_NOISE):
    side = 2 ** (1 + i % 4)  # Blocks of noise, from 2x2 to 16x16 over the picture.
    noise = Image.fromarray(rng.integers(0, 256, (side, side, 3), np.uint8))
    noise.resize((48, 48), Image.Resampling.NEAREST).save(folder / f"noise_{i}.png")
  (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
  run = recognizer.load_run(trained_run.tiny_trained_workdir(), accept=_ACCEPT)
  found, _ = image_files.find_images([str(folder)])
  results, errors = predict.predict_files(run, found, top_k=3, batch_size=8)
  embeddings = run.embed(np.stack([run.pixels(r["file"]) for r in results]))[1]
  return {"folder": folder, "results": results, "errors": errors, "embeddings": embeddings}


def _table(output_dir) -> pa.Table:
  return pa.concat_tables(rows.read_parts(rows.run_dir.resolve(output_dir)))


@pytest.fixture(scope="module")
def answered(local_ray, pictures, tmp_path_factory):
  """The batch job's output for the pictures (with embeddings), and its summary."""
  del local_ray
  out = tmp_path_factory.mktemp("answered") / "out"
  summary = job.run(
    trained_run.tiny_trained_workdir(),
    [str(pictures["folder"])],
    out,
    top_k=3,
    batch_size=8,
    embeddings=True,
    accept=_ACCEPT,
  )
  return out, summary


def test_answers_equal_predict_and_unreadable_file_is_a_row(answered, pictures):
  out, summary = answered
  assert (summary.listed, summary.answered, summary.errors) == (_PICTURES + 1, _PICTURES, 1)
  found = {r["file"]: r for r in _table(out).to_pylist()}
  assert len(found) == _PICTURES + 1
  broken = found.pop(os.path.abspath(pictures["folder"] / "broken.png"))
  assert broken["character"] is None and broken["confidence"] is None
  assert broken["error"].startswith("UnreadableImage: ")
  assert [e["file"] for e in pictures["errors"]] == [str(pictures["folder"] / "broken.png")]
  for i, expected in enumerate(pictures["results"]):
    row = found[os.path.abspath(expected["file"])]
    assert row["relative"] == expected["relative"]
    assert (row["character"], row["unknown"], row["closest"]) == (
      expected["character"],
      expected["unknown"],
      expected["closest"],
    )
    assert row["confidence"] == pytest.approx(expected["confidence"], abs=1e-4)
    assert row["names"] == [p["name"] for p in expected["predictions"]]
    np.testing.assert_allclose(
      row["probabilities"], [p["probability"] for p in expected["predictions"]], atol=1e-4
    )
    np.testing.assert_allclose(row["embedding"], pictures["embeddings"][i], atol=1e-4)
    assert row["error"] == "" and row["calibrated"] is True


def test_organize_from_batch_groups_as_organize_does(answered, pictures, tmp_path):
  run = recognizer.load_run(trained_run.tiny_trained_workdir(), accept=_ACCEPT)
  found, _ = image_files.find_images([str(pictures["folder"])])
  expected, _ = organize.organize(run, found)
  groups, errors = sorting.organize(answered[0], tmp_path / "sorted")
  assert errors == 1
  unknown = sum(g["count"] for g in groups if g["kind"] == "unknown")
  assert 3 <= unknown <= _PICTURES - 5, groups  # Both kinds are compared.
  assert sorted((g["name"], g["kind"], g["count"]) for g in groups) == sorted(
    (g["name"], g["kind"], len(g["pictures"])) for g in expected
  )
  with open(tmp_path / "sorted" / "groups.csv", newline="") as f:
    ours = {r["file"]: r["group"] for r in csv.DictReader(f)}
  theirs = {os.path.abspath(p["file"]): g["name"] for g in expected for p in g["pictures"]}
  assert ours.keys() == theirs.keys()
  files = sorted(ours)
  same = grouping.adjusted_rand_index([ours[f] for f in files], [theirs[f] for f in files])
  assert same == 1.0


def test_rerun_answers_only_new_pictures(local_ray, pictures, tmp_path):
  del local_ray
  folder = tmp_path / "pictures"
  shutil.copytree(pictures["folder"], folder)
  (folder / "broken.png").unlink()
  late = tmp_path / "late"
  late.mkdir()
  for name in ("00.png", "01.png", "02.png"):
    shutil.move(folder / name, late / name)
  out, workdir = tmp_path / "out", trained_run.tiny_trained_workdir()
  first = job.run(workdir, [str(folder)], out, batch_size=8)
  assert (first.answered, first.already_done) == (_PICTURES - 3, 0)
  again = job.run(workdir, [str(folder)], out, batch_size=8)
  assert (again.answered, again.already_done, again.parts) == (0, _PICTURES - 3, 0)
  assert again.ray_start_seconds == 0.0  # Nothing left: Ray is not even asked.
  for name in ("00.png", "01.png", "02.png"):
    shutil.move(late / name, folder / name)
  more = job.run(workdir, [str(folder)], out, batch_size=8)
  assert (more.answered, more.already_done) == (3, _PICTURES - 3)
  files = _table(out).column("file").to_pylist()
  assert sorted(files) == sorted(os.path.abspath(p) for p in folder.iterdir())
  with pytest.raises(rows.BatchOutputError, match="top_k=5.*top_k=3"):
    job.run(workdir, [str(folder)], out, batch_size=8, top_k=3)


@pytest.mark.e2e
def test_command_from_a_relative_workdir(pictures, tmp_path):
  """The README-level command, relative paths, its own local Ray (no address)."""
  workdir = shutil.copytree(trained_run.tiny_trained_workdir(), tmp_path / "runs" / "tiny")
  shutil.copytree(pictures["folder"], tmp_path / "pictures")
  command = [
    sys.executable,
    "-m",
    "animesion_jax.batch",
    f"--workdir={os.path.relpath(workdir, tmp_path)}",
    "--input=pictures",
    "--output_dir=answers",
    "--num_cpus=2",
  ]
  env = dict(os.environ, PYTHONPATH=_REPO)
  done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
  assert done.returncode == 0, done.stderr[-3000:]
  assert f"answered {_PICTURES}, 1 unreadable" in done.stdout
  again = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
  assert f"{_PICTURES + 1} already in answers; answered 0" in again.stdout, again.stderr[-2000:]
