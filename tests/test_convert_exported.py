"""Tests for the exported checkpoint format (source 'animesion') and the CLI."""

import json
import pathlib
import subprocess
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from animesion_jax import convert
from animesion_jax.models import resnet
from animesion_jax.models import shallow
from animesion_jax.models import vit

_ROOT = pathlib.Path(__file__).resolve().parents[1]
_TINY_VIT = dict(patch_size=8, hidden_size=32, mlp_dim=64, num_heads=2, num_layers=2)


def logits_of(model, variables, x):
  """Eval-mode logits, jitted: op-by-op dispatch is slow on a shared CPU."""
  return np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x))


def _random_variables(model, size, seed=0):
  """Random values in the shapes `model.init` creates (variances positive).

  Shapes come from jax.eval_shape: compiling init is slow on a shared CPU.
  """
  shapes = jax.eval_shape(
    lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False)
  )
  rng = np.random.default_rng(seed)

  def random(path, leaf):
    value = 0.3 * rng.normal(size=leaf.shape).astype(np.float32)
    return 1 + np.abs(value) if path[-1].key == "var" else value

  return jax.tree_util.tree_map_with_path(random, flax.core.unfreeze(shapes))


def _images(size, n=2, seed=1):
  return np.random.default_rng(seed).normal(size=(n, size, size, 3)).astype(np.float32)


def _flat(tree):
  return flax.traverse_util.flatten_dict(tree, sep="/")


def _assert_same_variables(a, b):
  assert set(a) == set(b)
  for collection in a:
    flat_a, flat_b = _flat(a[collection]), _flat(b[collection])
    assert set(flat_a) == set(flat_b)
    for key in flat_a:
      np.testing.assert_array_equal(flat_a[key], flat_b[key])


def _summary(size):
  return {
    "source": "test",
    "input": "memory",
    "image_size": size,
    "dropped": [],
    "resized": [],
    "reinitialised": [],
    "notes": [],
  }


@pytest.mark.parametrize(
  "model, size",
  [
    (vit.VisionTransformer(num_classes=5, representation_size=8, **_TINY_VIT), 32),
    (resnet.ResNet(num_classes=5, stage_sizes=(1, 1, 1, 1), block="bottleneck", base_width=8), 32),
    (shallow.ShallowNet(num_classes=5, channels=(4, 8), hidden=16), 32),
  ],
)
def test_save_then_load_restores_model_and_variables(tmp_path, model, size):
  variables = _random_variables(model, size)
  convert.save(tmp_path / "out", model, variables, _summary(size))

  spec = json.loads((tmp_path / "out" / "model.json").read_text())
  assert spec["class"] == type(model).__name__ and spec["image_size"] == size
  assert json.loads((tmp_path / "out" / "conversion.json").read_text()) == (_summary(size))
  conversion = convert.load_with_summary("animesion", tmp_path / "out")

  # Equal module and equal variables: the same network.
  assert conversion.model == model
  _assert_same_variables(conversion.variables, variables)
  assert conversion.summary["image_size"] == size
  assert conversion.summary["num_params"] == sum(
    v.size for v in _flat(variables["params"]).values()
  )


def test_reload_applies_the_same_fine_tuning_semantics(tmp_path):
  model = vit.VisionTransformer(num_classes=5, representation_size=8, **_TINY_VIT)
  variables = _random_variables(model, 32)
  convert.save(tmp_path / "out", model, variables, _summary(32))

  conversion = convert.load_with_summary(
    "animesion", tmp_path / "out", convert.Target(num_classes=3, image_size=48)
  )

  new_model, new_variables, summary = conversion
  assert new_model.num_classes == 3 and new_model.representation_size is None
  params = _flat(new_variables["params"])
  assert params["head/kernel"].shape == (32, 3) and not np.any(params["head/kernel"])
  posemb = "Transformer/posembed_input/pos_embedding"
  np.testing.assert_allclose(
    params[posemb],
    convert.conversion.resize_pos_embedding(np.asarray(_flat(variables["params"])[posemb]), 6),
    atol=0,
  )
  assert [d["key"] for d in summary["dropped"]] == ["pre_logits/kernel", "pre_logits/bias"]
  logits = logits_of(new_model, new_variables, _images(48))
  assert logits.shape == (2, 3) and not np.any(logits)  # Zero head.


def test_resnet_reload_with_new_classes_keeps_batch_stats(tmp_path):
  model = resnet.ResNet(num_classes=5, stage_sizes=(1, 1, 1, 1), base_width=8)
  variables = _random_variables(model, 32)
  convert.save(tmp_path / "out", model, variables, _summary(32))
  conversion = convert.load_with_summary(
    "animesion", tmp_path / "out", convert.Target(num_classes=2, image_size=64)
  )
  assert conversion.model.num_classes == 2
  _assert_same_variables(
    {"batch_stats": conversion.variables["batch_stats"]}, {"batch_stats": variables["batch_stats"]}
  )
  assert not np.any(conversion.variables["params"]["fc"]["kernel"])
  assert conversion.summary["image_size"] == 64
  assert any("do not depend" in n for n in conversion.summary["notes"])


def test_shallow_net_refuses_a_new_image_size(tmp_path):
  model = shallow.ShallowNet(num_classes=5, channels=(4, 8), hidden=16)
  convert.save(tmp_path / "out", model, _random_variables(model, 32), _summary(32))
  with pytest.raises(convert.ConversionError, match="tied to the image size"):
    convert.load("animesion", tmp_path / "out", image_size=64)
  new_model, variables = convert.load("animesion", tmp_path / "out", num_classes=4)
  assert new_model.num_classes == 4
  assert variables["params"]["fc2"]["kernel"].shape == (16, 4)


def test_model_spec_round_trip_keeps_every_field():
  models = [
    vit.VisionTransformer(
      num_classes=7, dtype=jnp.bfloat16, gelu_approximate=False, dropout_rate=0.1, **_TINY_VIT
    ),
    resnet.ResNet(num_classes=3, stage_sizes=(3, 8, 36, 3), block="bottleneck", base_width=16),
    shallow.ShallowNet(num_classes=2, channels=(6, 16, 32)),
  ]
  for model in models:
    spec = convert.model_spec(model)
    assert json.loads(json.dumps(spec)) == spec
    assert convert.model_from_spec(spec) == model
  assert convert.model_spec(models[0])["fields"]["dtype"] == "bfloat16"
  assert convert.model_from_spec(convert.model_spec(models[0])).dtype == (jnp.bfloat16)
  with pytest.raises(convert.ConversionError, match="Unknown model class"):
    convert.model_from_spec({"class": "LeNet", "fields": {}})
  with pytest.raises(convert.ConversionError, match="do not fit ResNet"):
    convert.model_from_spec({"class": "ResNet", "fields": {"depth": 18}})


def test_loading_something_else_as_exported_fails_clearly(tmp_path):
  with pytest.raises(convert.ConversionError, match="needs model.json"):
    convert.load("animesion", tmp_path)


def test_save_refuses_variables_that_do_not_fit(tmp_path):
  model = vit.VisionTransformer(num_classes=5, **_TINY_VIT)
  variables = _random_variables(model, 32)
  with pytest.raises(convert.ConversionError, match="pos_embedding"):
    convert.save(tmp_path / "out", model, variables, _summary(48))
  assert not (tmp_path / "out" / "model.json").exists()


def _run_cli(*args):
  return subprocess.run(
    [sys.executable, str(_ROOT / "tools" / "convert_checkpoint.py"), *args],
    capture_output=True,
    text=True,
    cwd=_ROOT,
    timeout=300,
    check=False,
  )


@pytest.mark.slow
def test_cli_writes_a_checkpoint_that_loads_directly(tmp_path):
  model = vit.VisionTransformer(num_classes=5, representation_size=32, **_TINY_VIT)
  params = _flat(_random_variables(model, 32)["params"])
  np.savez(tmp_path / "vit.npz", **{k: np.asarray(v) for k, v in params.items()})

  result = _run_cli(
    "--source=vit_npz",
    f"--input={tmp_path / 'vit.npz'}",
    f"--output={tmp_path / 'out'}",
    "--num_classes=3",
    "--image_size=48",
  )

  assert result.returncode == 0, result.stderr
  out = result.stdout
  assert "architecture:   VisionTransformer(num_classes=3, patch_size=8" in out
  assert "parameters:     24,643" in out
  assert "dropped:        pre_logits/kernel (32, 32)" in out
  assert (
    "resized:        Transformer/posembed_input/pos_embedding (1, 17, 32) -> (1, 37, 32)"
  ) in out
  assert "re-initialised: head/kernel (32, 5) -> (32, 3) (zeros)" in out
  direct_model, direct = convert.load("vit_npz", tmp_path / "vit.npz", num_classes=3, image_size=48)
  exported_model, exported = convert.load("animesion", tmp_path / "out")
  assert exported_model == direct_model
  _assert_same_variables(exported, direct)

  failed = _run_cli(
    "--source=pytorch_vit", f"--input={tmp_path / 'vit.npz'}", f"--output={tmp_path / 'bad'}"
  )
  assert failed.returncode != 0
  assert "convert_checkpoint:" in failed.stderr
  assert "not a torch checkpoint" in failed.stderr


@pytest.mark.slow
def test_cli_exports_a_training_run(trained_workdir, tmp_path):
  """--source=run: the trained model, its class names and normalisation, typed relative."""
  from animesion_jax import recognizer  # pylint: disable=g-import-not-at-top
  from tests import trained_run  # pylint: disable=g-import-not-at-top

  trained_run.copy_of_trained_workdir(tmp_path / "runs" / "tiny")
  result = subprocess.run(
    [
      sys.executable,
      str(_ROOT / "tools" / "convert_checkpoint.py"),
      "--source=run",
      "--input=runs/tiny",
      "--output=exported",
      "--checkpoint=latest",
    ],
    capture_output=True,
    text=True,
    cwd=tmp_path,
    timeout=300,
    check=False,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"written:        {tmp_path / 'exported'}" in result.stdout
  assert "unchanged:      every tensor carried over as is" in result.stdout
  assert f"step 4 of the training run {tmp_path / 'runs' / 'tiny'}" in result.stdout

  run = recognizer.load_run(tmp_path / "runs" / "tiny", "latest")
  exported = recognizer.load_checkpoint(
    tmp_path / "exported", "animesion", tmp_path / "exported" / "class_names.json"
  )
  assert exported.class_names == run.class_names and len(run.class_names) == 28
  assert exported.config.normalization == run.config.normalization
  assert exported.config.image_size == run.config.image_size == 16
  x = np.random.default_rng(0).normal(size=(4, 16, 16, 3)).astype(np.float32)
  np.testing.assert_allclose(
    logits_of(exported.model, exported.variables, x),
    logits_of(run.model, run.variables, x),
    rtol=1e-5,
    atol=1e-5,
  )

  missing = subprocess.run(
    [
      sys.executable,
      str(_ROOT / "tools" / "convert_checkpoint.py"),
      "--source=run",
      "--input=runs/none",
      "--output=out",
    ],
    capture_output=True,
    text=True,
    cwd=tmp_path,
    timeout=300,
    check=False,
  )
  assert missing.returncode != 0
  assert missing.stderr == (
    f"convert_checkpoint: Checkpoint {tmp_path / 'runs' / 'none'} does not exist.\n"
  )
  not_a_run = subprocess.run(
    [
      sys.executable,
      str(_ROOT / "tools" / "convert_checkpoint.py"),
      "--source=run",
      "--input=runs",
      "--output=out",
    ],
    capture_output=True,
    text=True,
    cwd=tmp_path,
    timeout=300,
    check=False,
  )
  assert not_a_run.returncode != 0
  assert f"{tmp_path / 'runs'} is neither a training run directory" in not_a_run.stderr
