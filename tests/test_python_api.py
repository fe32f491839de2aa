"""animesion_jax.recognizer: the documented Python entry point (docs/python_api.md)."""

import contextlib
import io
import pathlib
import re

import numpy as np
import pytest

from animesion_jax import predict
from animesion_jax import recognizer
from animesion_jax.inference import image_files
from tests import helpers

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "python_api.md"


@pytest.fixture(scope="module")
def model(trained_workdir):
  return recognizer.load_run(trained_workdir, "latest")


@pytest.fixture(scope="module")
def pictures(trained_workdir, tmp_path_factory):
  """Four test-split images of the tiny run's dataset as PNG files."""
  return helpers.write_test_pictures(tmp_path_factory.mktemp("pictures"), 4)


def test_the_documented_example_runs_as_written(trained_workdir, pictures):
  (code,) = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)[:1]
  assert "from animesion_jax import load_run" in code and '"picture.png"' in code
  code = code.replace("runs/quickstart", trained_workdir)
  code = code.replace("picture.png", pictures[0])
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    exec(compile(code, str(DOC), "exec"), {})  # pylint: disable=exec-used
  lines = printed.getvalue().splitlines()
  best = recognizer.load_run(trained_workdir, "best")
  (expected,) = best.predict([pictures[0]], top_k=3)
  assert lines == [expected.describe()] + [
    f"{n}: {p:.1%}" for n, p in zip(expected.names, expected.probabilities)
  ]


def test_paths_pil_images_and_arrays_get_the_predict_command_answers(model, pictures):
  results, errors = predict.predict_files(
    model, [image_files.ImageFile(path, path) for path in pictures], top_k=3, batch_size=8
  )
  assert errors == []
  pil = [image_files.load_image(path) for path in pictures]
  inputs = [pictures[0], pil[1], np.asarray(pil[2]), np.asarray(pil[3].convert("RGBA"))]
  answers = model.predict(inputs, top_k=3, batch_size=3)  # Two batches, padded to 8 devices.
  assert [a.ranked() for a in answers] == [r["predictions"] for r in results]
  for answer in answers:
    assert answer.names == [model.class_names[i] for i in answer.class_ids]
    assert answer.probabilities == sorted(answer.probabilities, reverse=True)
    assert 0 < sum(answer.probabilities) <= 1 + 1e-6
  gray = model.predict([np.asarray(pil[0].convert("L"))], top_k=28)[0]
  assert sorted(gray.class_ids) == list(range(28))  # top_k = every class: all are ranked.
  assert sum(gray.probabilities) == pytest.approx(1, abs=1e-5)


def test_the_forward_function_is_built_once_and_shared(model, pictures):
  forward = model._forward  # pylint: disable=protected-access
  model.predict(pictures[:2], top_k=5, batch_size=8)
  compiled = forward._cache_size()  # pylint: disable=protected-access
  model.predict(pictures[2:], top_k=5, batch_size=8)  # Same shapes: nothing new to compile.
  predict.predict_files(  # The predict command's path: the same function, the same program.
    model, [image_files.ImageFile(p, p) for p in pictures], top_k=5, batch_size=8
  )
  assert model._forward is forward  # pylint: disable=protected-access
  assert forward._cache_size() == compiled  # pylint: disable=protected-access


def test_a_step_number_names_a_checkpoint_and_bad_images_are_refused(
  trained_workdir, model, tmp_path
):
  second = recognizer.load_run(trained_workdir, 2)
  assert second.step == 2 and second.checkpoint.endswith("checkpoints/2")
  with pytest.raises(TypeError, match=r"pass \[image\] for one"):
    model.predict("picture.png")
  with pytest.raises(ValueError, match="must be uint8 pixels"):
    model.predict([np.zeros((8, 8, 3), np.float32)])
  with pytest.raises(FileNotFoundError):
    model.predict([str(tmp_path / "missing.png")])
  (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
  with pytest.raises(image_files.UnreadableImage):
    model.predict([str(tmp_path / "broken.png")])
