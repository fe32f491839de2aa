"""The batch output's pure parts, without Ray: rows, part files, the done set, decoding, globs."""

import json
import os

import numpy as np
from PIL import Image
import pytest

from animesion_jax import batch
from animesion_jax.data import preprocess
from animesion_jax.distributed import job
from animesion_jax.distributed import rows
from animesion_jax.inference import image_files
from animesion_jax.open_set import answering
from tests import test_requirements


def _answer(name="Asuna", unknown=False):
  ranked = (answering.Ranked(1, 3, name, 0.75), answering.Ranked(2, 0, "Kirito", 0.125))
  return answering.Answer(
    character=None if unknown else name,
    unknown=unknown,
    confidence=0.75,
    closest=name,
    enrolled=False,
    calibrated=True,
    top_k=ranked,
  )


def test_rows_round_trip_through_a_part_file(tmp_path):
  out = rows.run_dir.resolve(tmp_path / "out")
  made = [
    rows.answer_row("/p/a.png", "p/a.png", _answer(), np.array([0.6, 0.8])),
    rows.answer_row("/p/b.png", "p/b.png", _answer("Eren", unknown=True), np.array([1.0, 0.0])),
    rows.error_row("/p/c.png", "p/c.png", "UnreadableImage: cut short", embeddings=True),
  ]
  rows.write_part(rows.to_table(made, embeddings=True), rows.part_path(out, "job", 0))
  assert [p.name for p in out.iterdir()] == ["part-job-000000.parquet"]  # No temporary left.
  read = next(rows.read_parts(out)).to_pylist()
  assert read[0] | {"embedding": None} == {
    "file": "/p/a.png",
    "relative": "p/a.png",
    "character": "Asuna",
    "unknown": False,
    "confidence": 0.75,
    "closest": "Asuna",
    "enrolled": False,
    "calibrated": True,
    "names": ["Asuna", "Kirito"],
    "class_ids": [3, 0],
    "probabilities": [0.75, 0.125],
    "note": "",
    "error": "",
    "embedding": None,
  }
  np.testing.assert_allclose(read[0]["embedding"], [0.6, 0.8], rtol=1e-7)
  assert (read[1]["character"], read[1]["unknown"], read[1]["closest"]) == (None, True, "Eren")
  assert read[2]["error"] == "UnreadableImage: cut short"
  assert read[2]["character"] is None and read[2]["confidence"] is None
  assert rows.schema(False).names == rows.schema(True).names[:-1]


def test_done_set_and_pending_skip_what_the_parts_hold(tmp_path):
  out = rows.run_dir.resolve(tmp_path)
  assert rows.done_files(out / "missing") == set()
  for index, names in enumerate([["a", "b"], ["c"]]):
    made = [rows.error_row(f"/p/{n}.png", f"{n}.png", "x", False) for n in names]
    rows.write_part(rows.to_table(made, False), rows.part_path(out, "first", index))
  # What a write cut short leaves (run_dir.write_atomic's temporary) is not a part.
  (tmp_path / ".part-first-000002.parquet.123.tmp").write_bytes(b"half")
  (tmp_path / "_batch.json").write_text("{}")
  assert rows.done_files(out) == {"/p/a.png", "/p/b.png", "/p/c.png"}
  files = [image_files.ImageFile(f"/p/{n}.png", n) for n in ["d", "a", "e", "d", "c"]]
  assert [f.relative for f in rows.pending(files, rows.done_files(out))] == ["d", "e"]


def test_an_output_of_another_run_is_refused(tmp_path):
  out = rows.run_dir.resolve(tmp_path)
  info = {"workdir": "/runs/a", "top_k": 5, "embeddings": False, "accept": None}
  rows.check_info(out, info)
  assert json.loads((tmp_path / "_batch.json").read_text()) == info
  rows.check_info(out, dict(info))  # The same command continues.
  with pytest.raises(rows.BatchOutputError, match=r"workdir='/runs/a'.*workdir='/runs/b'"):
    rows.check_info(out, info | {"workdir": "/runs/b"})


def test_decode_gives_predicts_pixels_and_errors(tmp_path):
  pixels = np.random.default_rng(0).integers(0, 255, (40, 30, 4), np.uint8)
  Image.fromarray(pixels).save(tmp_path / "rgba.png")
  (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
  files = np.array([str(tmp_path / n) for n in ["rgba.png", "broken.jpg", "missing.png"]], object)
  decoded = job.decode_batch({"file": files, "relative": files}, image_size=16)
  expected = preprocess.resize_square(image_files.load_image(files[0], min_size=16), 16)
  np.testing.assert_array_equal(decoded["pixels"][0], np.asarray(expected))
  assert decoded["pixels"].shape == (3, 16, 16, 3)
  assert decoded["error"][0] == ""
  assert decoded["error"][1].startswith("UnreadableImage: ")
  assert decoded["error"][2].startswith("FileNotFoundError: ")


def test_actor_plan_one_per_gpu_else_one_per_node():
  assert job.actor_plan({"CPU": 16, "GPU": 4}, nodes=2, actors=None) == (4, 1.0)
  assert job.actor_plan({"CPU": 16}, nodes=3, actors=None) == (3, 0.0)
  assert job.actor_plan({"CPU": 2}, nodes=1, actors=2) == (2, 0.0)


def test_globs_expand_locally(tmp_path):
  for name in ["b.png", "a.png", "c.jpg"]:
    (tmp_path / name).write_bytes(b"")
  assert batch.expand(str(tmp_path / "*.png")) == [str(tmp_path / n) for n in ["a.png", "b.png"]]
  assert batch.expand(str(tmp_path)) == [str(tmp_path)]
  nothing = str(tmp_path / "*.gif")
  assert batch.expand(nothing) == [nothing]  # Reported as missing, as predict reports it.


def test_base_install_does_not_pull_ray():
  lists = test_requirements._setup_lists()  # pylint: disable=protected-access
  assert not any(r.startswith("ray") for r in lists["INSTALL_REQUIRES"])
  assert any(r.startswith("ray[data]") for r in lists["RAY_REQUIRES"])
  assert os.path.basename(job.__file__) == "job.py"
  assert "ray" not in dir(job)  # Ray is imported when a job starts, not with the module.


def test_blocks_are_written_as_parts_of_at_least_part_rows(tmp_path):
  out = rows.run_dir.resolve(tmp_path)
  blocks = []
  for b in range(5):
    made = [rows.answer_row(f"/p/{b}-{i}.png", "x", _answer(), None) for i in range(2)]
    made.append(rows.error_row(f"/p/{b}-bad.png", "x", f"UnreadableImage: {b}", False))
    blocks.append(rows.to_table(made, False))
  blocks.insert(2, rows.to_table([], False))  # An empty block writes nothing.
  summary = job.Summary(15, 0, 0, 0, 0, 0.0, 0.0, 0.0, [])
  written = []
  job._write_parts(blocks, out, 4, summary, lambda path, n: written.append(n), 0.0)  # pylint: disable=protected-access
  assert written == [6, 6, 3]
  assert [p.name.endswith(f"-{i:06d}.parquet") for i, p in enumerate(rows.part_files(out))] == [
    True
  ] * 3
  assert (summary.answered, summary.errors, summary.parts) == (10, 5, 3)
  assert summary.unreadable[0] == ("/p/0-bad.png", "UnreadableImage: 0")
  assert len(rows.done_files(out)) == 15
