"""batch and organize --from_batch with gs:// pictures and output, on the Cloud Storage emulator.

The emulator and its environment come from tests/test_gcs.py; the commands run as users run
them, each starting its own local Ray, whose workers read the pictures through etils.epath.
"""

import os

import pytest

from tests import helpers
from tests import test_gcs
from tests import trained_run
from tests.test_gcs import emulator_env  # noqa: F401  pylint: disable=unused-import

pytestmark = test_gcs.pytestmark
pytest.importorskip("ray")

_PICTURES = 6


def test_batch_reads_and_writes_gs(emulator_env, tmp_path):  # noqa: F811
  local = tmp_path / "pictures"
  local.mkdir()
  helpers.write_test_pictures(local, _PICTURES)
  (local / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
  pictures, answers = f"gs://{test_gcs.BUCKET}/batch/pictures", f"gs://{test_gcs.BUCKET}/batch/out"
  upload = (
    "import os, sys\nfrom etils import epath\n"
    "for name in sorted(os.listdir(sys.argv[1])):\n"
    "  data = open(os.path.join(sys.argv[1], name), 'rb').read()\n"
    "  (epath.Path(sys.argv[2]) / name).write_bytes(data)\n"
  )
  test_gcs._run(["-c", upload, str(local), pictures], emulator_env, tmp_path)  # pylint: disable=protected-access
  command = [
    "-m",
    "animesion_jax.batch",
    f"--workdir={trained_run.tiny_trained_workdir()}",
    f"--input={pictures}",
    f"--output_dir={answers}",
    "--embeddings",
    "--num_cpus=2",
  ]
  out = test_gcs._run(command, emulator_env, tmp_path)  # pylint: disable=protected-access
  assert f"answered {_PICTURES}, 1 unreadable" in out, out
  again = test_gcs._run(command, emulator_env, tmp_path)  # pylint: disable=protected-access
  assert f"{_PICTURES + 1} pictures listed, {_PICTURES + 1} already in" in again, again
  files = test_gcs._listing(emulator_env, answers)  # pylint: disable=protected-access
  assert any(f.endswith("_batch.json") for f in files), files
  assert sum(1 for f in files if os.path.basename(f).startswith("part-")) >= 1, files
  sorted_out = test_gcs._run(  # pylint: disable=protected-access
    ["-m", "animesion_jax.organize", f"--from_batch={answers}", "--output_dir=sorted"],
    emulator_env,
    tmp_path,
  )
  assert f"{_PICTURES} pictures in" in sorted_out and "(1 unreadable)" in sorted_out, sorted_out
  assert (tmp_path / "sorted" / "groups.csv").read_text().count(pictures) == _PICTURES
