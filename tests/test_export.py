"""animesion_jax.export: ONNX and StableHLO files that compute what JAX computes, and model.json."""

import dataclasses
import json
import pathlib
import subprocess
import sys

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import onnxruntime
import pytest

from animesion_jax import models
from animesion_jax import recognizer
from animesion_jax import run_dir
from animesion_jax import sharding
from animesion_jax.export import formats
from animesion_jax.export import model_json
from tests import helpers
from tests import trained_run

ROOT = pathlib.Path(__file__).resolve().parents[1]
_CLASSES = 7
_TINY_VIT = {"hidden_size": 32, "mlp_dim": 64, "num_heads": 2, "num_layers": 2}
_INTERMEDIATE = {**_TINY_VIT, "head_type": "intermediate_features"}
# name -> (model, overrides, image size): tiny members of every family the paper used.
FAMILIES = {
  "vit_b16": ("vit_b16", _TINY_VIT, 32),
  "vit_b32": ("vit_b32", _TINY_VIT, 64),
  "vit_l16": ("vit_l16", _TINY_VIT, 32),
  "vit_l32": ("vit_l32", _TINY_VIT, 64),
  "vit_b16_intermediate": ("vit_b16", _INTERMEDIATE, 32),
  "vit_b32_intermediate": ("vit_b32", _INTERMEDIATE, 64),
  "vit_l16_intermediate": ("vit_l16", _INTERMEDIATE, 32),
  "vit_l32_intermediate": ("vit_l32", _INTERMEDIATE, 64),
  "resnet18": ("resnet18", {"base_width": 4}, 32),
  "resnet50": ("resnet50", {"base_width": 2}, 32),
  # ResNet-50's bottleneck blocks at ResNet-50's full depth above; 152's depth only costs time.
  "resnet152": ("resnet152", {"base_width": 2, "stage_sizes": (2, 2, 2, 2)}, 32),
  "shallow": ("shallow", {"channels": (4, 8), "hidden": 16}, 32),
}


def _random_variables(model, size, seed=0):
  """Every leaf random (a fresh init has a zero head), so every parameter shows in the logits."""
  abstract = jax.eval_shape(
    lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False)
  )
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    if path[-1] == "var":
      return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
    if len(leaf.shape) > 1:
      return (rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))).astype(np.float32)
    offset = 1.0 if path[-1] == "scale" else 0.0
    return (offset + 0.1 * rng.normal(size=leaf.shape)).astype(np.float32)

  flat = flax.traverse_util.flatten_dict(abstract)
  return flax.traverse_util.unflatten_dict({path: fill(path, leaf) for path, leaf in flat.items()})


def tiny_run(family: str) -> recognizer.Recognizer:
  """A LoadedRun of the tiny `family` model with random variables (no training run)."""
  name, overrides, size = FAMILIES[family]
  model = models.create_model(name, _CLASSES, **overrides)
  config = ml_collections.ConfigDict(
    {
      "image_size": size,
      "normalization": models.family_of(model).normalization,
      "model": {"name": name},
      "dtype": "float32",
    }
  )
  return recognizer.Recognizer(
    config=config,
    model=model,
    variables=_random_variables(model, size),
    class_names=[f"character {i}" for i in range(_CLASSES)],
    mesh=sharding.create_mesh(jax.local_devices()),
    checkpoint=f"(random {family})",
  )


def _images(run, count, seed=1):
  size = run.config.image_size
  return np.random.default_rng(seed).normal(size=(count, size, size, 3)).astype(np.float32)


def _jax_logits(run, images):
  return np.asarray(jax.jit(lambda x: run.model.apply(run.variables, x, train=False))(images))


def _assert_parity(got, expected):
  assert got.shape == expected.shape and got.dtype == np.float32
  assert np.abs(got - expected).max() <= 1e-4, np.abs(got - expected).max()
  np.testing.assert_array_equal(got.argmax(axis=1), expected.argmax(axis=1))
  assert np.ptp(expected) > 0.1  # Logits that differ across classes: the check has teeth.


def check_onnx(run, folder):
  contents = formats.export(run, "onnx", folder)
  session = onnxruntime.InferenceSession(
    str(folder / contents["files"]["model"]), providers=["CPUExecutionProvider"]
  )
  (model_input,), (model_output,) = session.get_inputs(), session.get_outputs()
  assert (model_input.name, model_output.name) == ("images", "logits")
  assert model_input.shape[1:] == [run.config.image_size, run.config.image_size, 3]
  for count in (1, 3):  # The batch dimension is dynamic.
    images = _images(run, count)
    _assert_parity(session.run(None, {"images": images})[0], _jax_logits(run, images))
  return contents


def check_stablehlo(run, folder):
  contents = formats.export(run, "stablehlo", folder)
  logits = formats.load_stablehlo(folder)
  for count in (1, 3):
    images = _images(run, count)
    _assert_parity(np.asarray(logits(images)), _jax_logits(run, images))
  return contents


def test_tiny_vit_exports_agree_with_jax_and_model_json_has_the_contract(tmp_path):
  run = tiny_run("vit_b16")
  contents = check_onnx(run, tmp_path / "onnx")
  assert json.loads((tmp_path / "onnx" / "model.json").read_text()) == contents
  assert contents["format"] == "onnx" and contents["files"] == {"model": "model.onnx"}
  spec = contents["input"]
  assert spec["size"] == [32, 32] and spec["layout"] == "NHWC" and spec["dtype"] == "float32"
  assert (spec["scale"], spec["mean"], spec["std"]) == (255.0, [0.5] * 3, [0.5] * 3)
  assert spec["resize"]["method"] == "bilinear" and spec["resize"]["library"] == "Pillow"
  assert contents["output"]["shape"] == ["batch", _CLASSES]
  assert contents["class_names"] == run.class_names
  assert "calibration" not in contents  # No run directory, so no calibration.
  assert contents["source"]["model"] == "vit_b16" and contents["source"]["step"] is None
  assert contents["source"]["checkpoint"] == "(random vit_b16)"

  hlo = check_stablehlo(run, tmp_path / "hlo")
  assert hlo["files"]["model"] == "model.stablehlo"
  assert hlo["files"]["platforms"] == "cpu,cuda,tpu"
  assert hlo["input"] == contents["input"] and hlo["class_names"] == contents["class_names"]


def test_a_cosine_head_exports_agree_with_jax(tmp_path):
  run = tiny_run("vit_b16")
  model = run.model.clone(head="cosine")
  run = dataclasses.replace(run, model=model, variables=_random_variables(model, 32))
  check_onnx(run, tmp_path / "onnx")
  check_stablehlo(run, tmp_path / "hlo")


def test_resnet_contract_has_imagenet_statistics(tmp_path):
  contents = model_json.contract(tiny_run("resnet18"), "onnx", {"model": "model.onnx"})
  assert contents["input"]["mean"] == [0.485, 0.456, 0.406]
  assert contents["input"]["std"] == [0.229, 0.224, 0.225]


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_exports_to_onnx_and_stablehlo(family, tmp_path):
  run = tiny_run(family)
  check_onnx(run, tmp_path / "onnx")
  check_stablehlo(run, tmp_path / "hlo")


def test_bfloat16_runs_export_in_float32(tmp_path):
  run = tiny_run("shallow")
  run = dataclasses.replace(run, model=run.model.clone(dtype=jnp.bfloat16))
  model, _ = formats.float32_model_and_variables(run)
  assert model.dtype == jnp.float32
  images = _images(run, 2)
  exported = np.asarray(formats.exported_stablehlo(run, ["cpu"])[0].call(run.variables, images))
  float32_logits = np.asarray(model.apply(run.variables, images, train=False))
  assert np.abs(exported - float32_logits).max() <= 1e-5


def test_missing_jax2onnx_says_how_to_install(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "jax2onnx", None)  # `import jax2onnx` raises ImportError.
  with pytest.raises(formats.MissingExporter, match=r"--no-deps jax2onnx=="):
    formats.export(tiny_run("shallow"), "onnx", tmp_path)


def _run_export(cwd, *args):
  env = helpers.subprocess_env()
  return subprocess.run(
    [sys.executable, "-m", "animesion_jax.export", *args],
    cwd=cwd,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
    check=False,
  )


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_command_line_from_a_relative_workdir(trained_workdir, tmp_path):
  trained_run.copy_of_trained_workdir(tmp_path / "runs" / "quickstart")
  # The run's own calibration (fitted for this checkpoint: exports carry only one that fits).
  calibration = json.loads((tmp_path / "runs" / "quickstart" / "calibration.json").read_text())
  run = run_dir.RunDir(tmp_path / "runs" / "quickstart")
  for format_name, output_dir, model_file in (
    ("onnx", "exported", "model.onnx"),
    ("stablehlo", "exported_hlo", "model.stablehlo"),
  ):
    result = _run_export(
      tmp_path,
      "--workdir=runs/quickstart",
      f"--format={format_name}",
      f"--output_dir={output_dir}/",
      "--checkpoint=latest",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Largest |logit difference| against JAX" in result.stdout
    difference = float(result.stdout.strip().rsplit(" ", 1)[-1])
    assert difference <= 1e-4
    assert (tmp_path / output_dir / model_file).stat().st_size > 1000
    contents = json.loads((tmp_path / output_dir / "model.json").read_text())
    assert contents["class_names"] == run.load_class_names()
    assert contents["calibration"] == calibration
    assert contents["source"]["run"] == str(run.path)
    assert contents["source"]["step"] == trained_run.TRAIN_STEPS
    assert contents["source"]["fingerprint"] == calibration["provenance"]["fingerprint"]
    assert contents["input"]["size"] == [16, 16]


@pytest.mark.slow
def test_command_line_needs_a_model_and_an_output_dir(tmp_path):
  result = _run_export(tmp_path, "--format=onnx", "--output_dir=out")
  assert result.returncode != 0 and "Give --workdir=RUN" in result.stderr
  result = _run_export(tmp_path, "--workdir=nowhere", "--format=onnx", "--output_dir=out")
  assert result.returncode == 1
  assert "nowhere" in result.stderr and "not a training run directory" in result.stderr
  assert not (tmp_path / "out").exists()  # Nothing written for a bad run.


def test_one_jax2onnx_pin_everywhere():
  """CI, the docs and the exporter's message install the jax2onnx release the tests ran with."""
  import importlib.metadata  # pylint: disable=g-import-not-at-top

  line = f"pip install --no-deps jax2onnx=={importlib.metadata.version('jax2onnx')}"
  assert line in (ROOT / ".ci" / "run").read_text()
  assert line in (ROOT / "docs" / "export.md").read_text()
  assert line in formats._INSTALL_HINT  # pylint: disable=protected-access
  setup = (ROOT / "setup.py").read_text()
  assert line in setup and '"export": EXPORT_REQUIRES' in setup


def tiny_detector() -> recognizer.Recognizer:
  """A freshly initialised tiny CenterNet head detector as the export sees a detector run."""
  model = models.create_model("centernet", 1, widths=(4, 4, 8, 8), head_width=4)
  config = ml_collections.ConfigDict(
    {
      "task": "detect",
      "image_size": 32,
      "normalization": "imagenet",
      "model": {"name": "centernet"},
      "dtype": "float32",
      "detection": {"score_threshold": 0.4, "max_detections": 32},
    }
  )
  return recognizer.Recognizer(
    config=config,
    model=model,
    variables=_random_variables(model, 32),
    class_names=["head"],
    mesh=sharding.create_mesh(jax.local_devices()),
    checkpoint="(random centernet)",
  )


def test_a_head_detector_exports_its_heads_and_how_to_decode_them(tmp_path):
  run = tiny_detector()
  contents = formats.export(run, "onnx", tmp_path)
  session = onnxruntime.InferenceSession(
    str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"]
  )
  assert [o.name for o in session.get_outputs()] == ["heads"]
  for count in (1, 3):
    images = _images(run, count)
    got, expected = session.run(None, {"images": images})[0], _jax_logits(run, images)
    assert got.shape == expected.shape == (count, 8, 8, 5) and got.dtype == np.float32
    assert np.abs(got - expected).max() <= 1e-4, np.abs(got - expected).max()
    assert np.ptp(expected[..., 0]) > 0.1  # Heatmaps that vary: the check has teeth.
  assert contents["output"]["shape"] == ["batch", 8, 8, 5]
  assert contents["input"]["resize"]["aspect"] == "letterbox"
  assert contents["input"]["mean"] == [0.485, 0.456, 0.406]
  detection = contents["detection"]
  assert (detection["stride"], detection["score_threshold"], detection["max_detections"]) == (
    4,
    0.4,
    32,
  )
  assert detection["box_format"] == "[x, y, w, h] in the picture's pixels"
  assert contents["class_names"] == ["head"]
  hlo = formats.export(run, "stablehlo", tmp_path / "hlo")
  images = _images(run, 2)
  got = np.asarray(formats.load_stablehlo(tmp_path / "hlo")(images))
  assert np.abs(got - _jax_logits(run, images)).max() <= 1e-4
  assert hlo["detection"] == detection and hlo["input"] == contents["input"]
