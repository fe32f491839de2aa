"""tools/onnx_predict.py: predict's pictures, table and files from an ONNX export, without JAX."""

import csv
import io
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from animesion_jax import predict
from animesion_jax import recognizer
from animesion_jax.data import datasets
from animesion_jax.export import formats
from animesion_jax.inference import crops
from animesion_jax.inference import image_files
from tests import helpers

ROOT = pathlib.Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "onnx_predict.py"


onnx_predict = helpers.load_tool("onnx_predict")


def _pictures(folder: pathlib.Path, base: Image.Image) -> None:
  """One picture of every kind predict handles, made from `base` (RGB)."""
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "sub").mkdir(exist_ok=True)
  base.save(folder / "plain.png")
  base.resize((900, 700)).save(folder / "big.jpg", quality=90)  # Decoded with draft, shrunk.
  base.resize((7, 5)).save(folder / "sub" / "tiny.bmp")  # Enlarged.
  rgba = base.convert("RGBA")
  rgba.putalpha(Image.linear_gradient("L").resize(base.size))
  rgba.save(folder / "sub" / "alpha.png")
  base.convert("P", palette=Image.Palette.ADAPTIVE).save(folder / "palette.gif")
  base.convert("L").save(folder / "gray.webp", lossless=True)
  sixteen = (np.asarray(base.convert("L"), np.uint16) * 257).astype(np.uint16)
  Image.fromarray(sixteen).save(folder / "sixteen.tif")
  exif = Image.Exif()
  exif[0x0112] = 6  # Rotate 90 degrees clockwise to display.
  base.resize((60, 30)).save(folder / "rotated.jpg", exif=exif.tobytes())
  (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")


def _base_picture() -> Image.Image:
  rng = np.random.default_rng(3)
  return Image.fromarray(rng.integers(0, 256, (48, 40, 3), np.uint8))


@pytest.mark.parametrize("size", [16, 224])
def test_pixels_and_file_order_are_predicts(tmp_path, size):
  _pictures(tmp_path / "art", _base_picture())
  inputs = [str(tmp_path / "art"), str(tmp_path / "art" / "plain.png"), str(tmp_path / "none")]
  expected_files, expected_problems = image_files.find_images(inputs)
  files, problems = onnx_predict.find_images(inputs)
  assert files == [(f.path, f.relative) for f in expected_files]
  assert problems == expected_problems
  compared = 0
  for file in expected_files:
    try:
      (crop,) = crops.file_crops(file, size)
    except image_files.UnreadableImage as error:
      with pytest.raises(onnx_predict.UnreadableImage) as raised:
        onnx_predict.load_pixels(file.path, size)
      assert str(raised.value) == str(error)
      continue
    pixels = onnx_predict.load_pixels(file.path, size)
    assert pixels.shape == (size, size, 3) and pixels.dtype == np.uint8
    np.testing.assert_array_equal(pixels, crop.pixels, err_msg=file.path)
    compared += 1
  assert compared == len(expected_files) - 1  # All but corrupt.png.


def test_normalisation_and_top_k_are_predicts():
  contract = {
    "input": {"scale": 255.0, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
  }
  pixels = np.random.default_rng(0).integers(0, 256, (2, 4, 4, 3), np.uint8)
  import jax  # pylint: disable=g-import-not-at-top

  from animesion_jax.data import preprocess  # pylint: disable=g-import-not-at-top

  expected = np.asarray(preprocess.normalize(pixels, "imagenet"))
  np.testing.assert_allclose(onnx_predict.normalize(pixels, contract), expected, atol=1e-6)
  logits = np.array([[0.0, 2.0, 2.0, -1.0], [5.0, 1.0, 3.0, 3.0]], np.float32)
  probabilities, ids = onnx_predict.top_k(logits, 3)
  expected_p, expected_ids = jax.lax.top_k(jax.nn.softmax(logits), 3)
  np.testing.assert_array_equal(ids, np.asarray(expected_ids))  # Ties: the lower class id first.
  np.testing.assert_allclose(probabilities, np.asarray(expected_p), rtol=1e-6)


def _csv_rows(path):
  return list(csv.reader(io.StringIO(pathlib.Path(path).read_text(encoding="utf-8"))))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_same_table_and_files_as_predict_without_jax(trained_workdir, tmp_path):
  # onnx_predict applies no calibration: compared with predict's uncalibrated answers.
  run = recognizer.load_run(trained_workdir, "latest", read_open_set=False)
  formats.export(run, "onnx", tmp_path / "export")
  builder = datasets.open_dataset("synthetic_characters", run.config.data_dir, "small")
  source = datasets.data_source(builder, "test")
  folder = tmp_path / "pictures"
  _pictures(folder, Image.open(io.BytesIO(source[0]["image"])).convert("RGB"))
  helpers.write_test_pictures(folder, 10, start=1, prefix="test_")
  inputs = [str(folder), str(tmp_path / "missing.png")]

  files, problems = image_files.find_images(inputs)
  results, errors = predict.predict_files(run, files, top_k=3, batch_size=8)
  errors = [{"file": given, "error": problem} for given, problem in problems] + errors
  predict.write_outputs(results, errors, run, tmp_path / "expected")
  assert len(results) == len(files) - 1 == 18 and len(errors) == 2

  (tmp_path / "site").mkdir()
  (tmp_path / "site" / "sitecustomize.py").write_text(
    helpers.hiding_sitecustomize("jax", attempts_env="JAX_IMPORTS")
  )
  attempts = tmp_path / "jax_imports.txt"
  attempts.write_text("")
  output_dir = tmp_path / "got"
  tool = subprocess.run(
    [sys.executable, str(TOOL), str(tmp_path / "export"), *inputs]
    + ["--top_k=3", "--batch_size=5", f"--output_dir={output_dir}"],
    env={**os.environ, "PYTHONPATH": str(tmp_path / "site"), "JAX_IMPORTS": str(attempts)},
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
  )
  assert tool.returncode == 0, tool.stderr[-3000:]
  assert attempts.read_text() == ""  # Nothing so much as tried to import JAX.
  expected_lines = [
    f"Skipping {tmp_path / 'missing.png'}: no such file or folder",
    predict.format_table(results),
    *(f"Could not read {e['file']}: {e['error']}" for e in errors),
    f"18 predictions for 18 of 19 images; wrote {output_dir}",
  ]
  assert tool.stdout == "\n".join(expected_lines) + "\n"

  expected = json.loads((tmp_path / "expected" / "predictions.json").read_text())
  got = json.loads((output_dir / "predictions.json").read_text())
  assert expected.pop("calibration").startswith("uncalibrated")
  assert got.pop("calibration") == onnx_predict.UNCALIBRATED
  for result in expected["results"]:
    result["confidence"] = pytest.approx(result["confidence"], abs=1e-5)
    for p in result["predictions"]:
      p["probability"] = pytest.approx(p["probability"], abs=1e-5)
  assert got == expected
  expected_rows, got_rows = (
    _csv_rows(d / "predictions.csv") for d in (tmp_path / "expected", output_dir)
  )
  approximate = (9, 12)  # probability, confidence
  keep = lambda row: [v for i, v in enumerate(row) if i not in approximate]  # noqa: E731
  assert [keep(r) for r in got_rows] == [keep(r) for r in expected_rows]
  assert got_rows[0][9] == "probability" and got_rows[0][12] == "confidence"
  for got_row, expected_row in zip(got_rows[1:], expected_rows[1:]):
    for i in approximate:
      assert float(got_row[i]) == pytest.approx(float(expected_row[i]), abs=2e-6)


def test_a_stablehlo_export_is_refused(tmp_path):
  (tmp_path / "model.json").write_text(json.dumps({"format": "stablehlo"}))
  with pytest.raises(ValueError, match="stablehlo export, not ONNX"):
    onnx_predict.Model(str(tmp_path))
