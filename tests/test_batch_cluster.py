"""The batch job on a real two-node Ray cluster on this machine, and with an actor killed.

Two raylets on loopback (ray.cluster_utils.Cluster: separate node processes, one object store
each); the job joins it as `--ray_address` would. Slow: the cluster and its actors take tens of
seconds to start.
"""

import os
import signal
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from animesion_jax import predict
from animesion_jax import recognizer
from animesion_jax.distributed import job
from animesion_jax.distributed import rows
from animesion_jax.inference import image_files
from tests import helpers
from tests import trained_run

pytestmark = pytest.mark.slow
ray = pytest.importorskip("ray")
cluster_utils = pytest.importorskip("ray.cluster_utils")
psutil = pytest.importorskip("psutil")

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PICTURES = 48


@pytest.fixture(scope="module")
def two_nodes():
  # The nodes' workers import this checkout (on a real cluster: the installed package), also
  # for a driver that joins from another process.
  before = os.environ.get("PYTHONPATH")
  os.environ["PYTHONPATH"] = _REPO
  cluster = cluster_utils.Cluster(
    initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False}
  )
  cluster.add_node(num_cpus=2)
  cluster.wait_for_nodes()
  ray.init(address=cluster.address, runtime_env={"env_vars": {"PYTHONPATH": _REPO}})
  yield cluster
  ray.shutdown()
  cluster.shutdown()
  if before is None:
    del os.environ["PYTHONPATH"]
  else:
    os.environ["PYTHONPATH"] = before


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
  folder = tmp_path_factory.mktemp("cluster") / "pictures"
  folder.mkdir()
  helpers.write_test_pictures(folder, _PICTURES)
  run = recognizer.load_run(trained_run.tiny_trained_workdir())
  found, _ = image_files.find_images([str(folder)])
  results, _ = predict.predict_files(run, found, top_k=5, batch_size=8)
  return folder, {os.path.abspath(r["file"]): r for r in results}


def _check(out, expected):
  table = pa.concat_tables(rows.read_parts(rows.run_dir.resolve(out)))
  files = table.column("file").to_pylist()
  assert sorted(files) == sorted(expected)  # Every picture, each once.
  for row in table.to_pylist():
    want = expected[row["file"]]
    assert (row["character"], row["unknown"]) == (want["character"], want["unknown"])
    assert row["confidence"] == pytest.approx(want["confidence"], abs=1e-4)
    np.testing.assert_allclose(
      row["probabilities"], [p["probability"] for p in want["predictions"]], atol=1e-4
    )


def test_two_nodes_one_actor_each(two_nodes, pictures, tmp_path):
  del two_nodes
  assert sum(1 for node in ray.nodes() if node["Alive"]) == 2
  assert job.actor_plan(ray.cluster_resources(), 2, None) == (2, 0.0)
  folder, expected = pictures
  summary = job.run(
    trained_run.tiny_trained_workdir(), [str(folder)], tmp_path, batch_size=8, part_rows=16
  )
  assert (summary.answered, summary.errors, summary.parts) == (_PICTURES, 0, _PICTURES // 16)
  _check(tmp_path, expected)


def test_the_command_joins_a_cluster_by_address(two_nodes, pictures, tmp_path):
  folder, expected = pictures
  command = [
    sys.executable,
    "-m",
    "animesion_jax.batch",
    f"--workdir={trained_run.tiny_trained_workdir()}",
    f"--input={folder}",
    "--output_dir=answers",
    f"--ray_address={two_nodes.address}",
  ]
  env = dict(os.environ, PYTHONPATH=_REPO)
  done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
  assert done.returncode == 0, done.stderr[-3000:]
  assert f"answered {_PICTURES}, 0 unreadable" in done.stdout, done.stdout
  _check(tmp_path / "answers", expected)
  assert sum(1 for node in ray.nodes() if node["Alive"]) == 2  # The cluster outlives the job.


def _answering_actors() -> list[psutil.Process]:
  """This test's own Ray actor processes that answer (their title names the Answering class)."""
  found = []
  for child in psutil.Process().children(recursive=True):
    try:
      if "Answering" in " ".join(child.cmdline()):
        found.append(child)
    except psutil.Error:
      continue
  return found


def test_an_actor_killed_mid_run_loses_and_repeats_nothing(two_nodes, pictures, tmp_path):
  del two_nodes
  folder, expected = pictures
  killed = []

  def kill_one_actor(path, count):
    del path, count
    if not killed:
      actors = _answering_actors()
      assert actors, "no answering actor process found"
      os.kill(actors[0].pid, signal.SIGKILL)
      killed.append(actors[0].pid)

  summary = job.run(
    trained_run.tiny_trained_workdir(),
    [str(folder)],
    tmp_path,
    batch_size=4,
    part_rows=1,
    on_part=kill_one_actor,
  )
  assert killed and summary.answered == _PICTURES
  _check(tmp_path, expected)
