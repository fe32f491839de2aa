"""Tests for tools/benchmark.py: a tiny end-to-end run and the pieces it reports from."""

import json
import pathlib
import re
import subprocess
import sys

from absl import app
from absl import flags
import jax
import pytest

# --compare=torch runs timm in this process: import it before anything can import tensorflow.
import timm  # noqa: F401  pylint: disable=unused-import
import torch  # noqa: F401  pylint: disable=unused-import

from animesion_jax import models
from tests import helpers

ROOT = pathlib.Path(__file__).resolve().parents[1]
_RATIO_LINE = re.compile(r"^ratio jax/torch: (\d+\.\d\d)$")
_EVAL_RATIO_LINE = re.compile(r"^ratio jax/torch eval step: (\d+\.\d\d)$")
_PREDICT_RATIO_LINE = re.compile(r"^ratio jax/torch predict: (\d+\.\d\d)$")
_ONNX_EVAL_RATIO_LINE = re.compile(r"^ratio jax/onnxruntime eval step: (\d+\.\d\d)$")
_ONNX_PREDICT_RATIO_LINE = re.compile(r"^ratio jax/onnxruntime predict: (\d+\.\d\d)$")
_MEMORY_RATIO_LINE = re.compile(r"^ratio jax/torch peak host memory: (\d+\.\d\d)$")


benchmark = helpers.load_tool("benchmark")


def _parsed_flags(*args: str, config_file: str = "quickstart.py") -> flags.FlagValues:
  """The tool's flags in a private FlagValues (other tools define --config globally)."""
  argv = ["benchmark", f"--config={ROOT / 'configs' / config_file}", *args]
  flag_values = flags.FlagValues()
  benchmark.define_flags(flag_values, argv)
  flag_values(argv)
  return flag_values


_TINY_VIT = (
  "--config.image_size=16",
  "--config.batch_size=8",
  "--config.model.patch_size=4",
  "--config.model.hidden_size=32",
  "--config.model.mlp_dim=64",
  "--config.model.num_heads=2",
  "--config.model.num_layers=2",
  "--windows=2",
  "--steps_per_window=2",
)


def test_main_tiny_vit_with_torch_and_pipeline(tmp_path, capsys):
  json_out = tmp_path / "bench.json"
  flag_values = _parsed_flags(
    *_TINY_VIT,
    "--compare=torch",
    "--pipeline",
    "--pipeline_jpeg_size=24",
    "--pipeline_records=16",
    "--pipeline_batches=3",
    "--pipeline_workers=0",
    f"--json_out={json_out}",
  )
  benchmark.main(["benchmark"], flag_values=flag_values)

  lines = capsys.readouterr().out.strip().splitlines()
  ratio_line = _RATIO_LINE.match(lines[-1])
  assert ratio_line, lines[-1]
  results = json.loads(json_out.read_text())
  jax_results, torch_results = results["jax"], results["torch"]
  assert jax_results["devices"] == jax.device_count() == 8  # conftest forces 8 CPU devices.
  assert len(jax_results["window_seconds"]) == len(torch_results["window_seconds"]) == 2
  for numbers in (jax_results, torch_results):
    assert all(seconds > 0 for seconds in numbers["window_seconds"])
    assert numbers["images_per_s"] == pytest.approx(8 * numbers["steps_per_s"])
    assert numbers["steps_per_s"] > 0 and numbers["first_step_s"] > 0
  assert jax_results["compile_s"] > 0
  # On CPU the step donates the parameters alone, and XLA copies no momentum buffer at its top
  # (donating the whole state, it copies every one: 4 bytes a parameter).
  assert jax_results["donated"] == "params" and "donated: params (" in "\n".join(lines)
  assert jax_results["step_copy_bytes"] < 0.1 * 4 * jax_results["params"]
  # Same model size on both sides: 2 blocks of width 32 on 16 patches of 4x4, 173 classes.
  assert jax_results["params"] == torch_results["params"] > 10_000
  assert torch_results["model"] == "timm VisionTransformer"
  assert torch_results["threads"] == benchmark.benchmark_input.cores()
  ratio = jax_results["images_per_s"] / torch_results["images_per_s"]
  assert float(ratio_line.group(1)) == pytest.approx(ratio, abs=0.006)
  assert results["ratio_jax_over_torch"] == pytest.approx(ratio)
  # XLA counts all 8 devices' shares of fwd+bwd: at least the analytic 3x-forward matmul count,
  # plus the elementwise work that matters at this tiny width.
  assert 1.0 <= (jax_results["flops_per_step_xla"] / jax_results["flops_per_step_analytic"]) < 2.0
  assert jax_results["peak_device_bytes"] is None and jax_results["mfu"] is None  # CPU.
  assert jax_results["host_max_rss_bytes_after_jax_setup"] > 2**20
  pipeline = results["pipeline"]
  assert pipeline["images"] == 3 * 8 and pipeline["images_per_s"] > 0
  assert pipeline["images_per_s_per_core"] == pipeline["images_per_s"]  # 0 workers: 1 core.
  assert 100 < pipeline["mean_record_bytes"] < 24 * 24 * 3
  assert "MFU n/a" in "\n".join(lines)


@pytest.mark.slow
def test_eval_mode_with_torch_and_memory(tmp_path, capsys):
  json_out = tmp_path / "eval.json"
  flag_values = _parsed_flags(
    *_TINY_VIT[:-2],
    "--windows=2",
    "--steps_per_window=1",
    "--mode=eval",
    "--compare=torch",
    "--memory",
    "--predict_images=12",
    "--pipeline_jpeg_size=24",
    f"--json_out={json_out}",
  )
  benchmark.main(["benchmark"], flag_values=flag_values)

  lines = capsys.readouterr().out.strip().splitlines()
  memory_line, eval_line, predict_line = (
    pattern.match(line)
    for pattern, line in zip(
      (_MEMORY_RATIO_LINE, _EVAL_RATIO_LINE, _PREDICT_RATIO_LINE), lines[-3:]
    )
  )
  assert memory_line and eval_line and predict_line, lines[-3:]
  results = json.loads(json_out.read_text())
  assert results["setup"]["mode"] == "eval"
  jax_results, torch_results = results["jax"], results["torch"]
  for numbers in (jax_results, torch_results):
    assert len(numbers["window_seconds"]) == 2 and all(s > 0 for s in numbers["window_seconds"])
    assert numbers["images_per_s"] == pytest.approx(8 * numbers["steps_per_s"])
    assert numbers["images_per_s"] > 0
  assert jax_results["params"] == torch_results["params"] > 10_000
  # The evaluation step is one forward pass: XLA's count is near the analytic forward FLOPs.
  assert 1.0 <= jax_results["flops_per_step_xla"] / jax_results["flops_per_step_analytic"] < 2.0
  ratio = jax_results["images_per_s"] / torch_results["images_per_s"]
  assert results["ratio_jax_over_torch"] == pytest.approx(ratio)
  assert float(eval_line.group(1)) == pytest.approx(ratio, abs=0.006)

  predict = results["predict"]
  assert predict["images"] == 12
  for name in ("jax", "torch"):
    assert len(predict[name]["window_seconds"]) == 2
    assert predict[name]["images_per_s"] > 0 and predict[name]["first_call_s"] > 0
  # The recognizer's predict function is built once: only the first pass compiles it.
  assert predict["jax"]["predict_fn_compile_s"] is None
  assert predict["jax"]["first_call_s"] > min(predict["jax"]["window_seconds"])
  ratio = predict["jax"]["images_per_s"] / predict["torch"]["images_per_s"]
  assert predict["ratio_jax_over_torch"] == pytest.approx(ratio)
  assert float(predict_line.group(1)) == pytest.approx(ratio, abs=0.006)

  memory = results["memory"]
  assert memory["mode"] == "eval"
  for name in ("jax", "torch"):
    numbers = memory[name]
    assert numbers["peak_rss_bytes"] >= numbers["max_rss_after_setup_bytes"]
    assert numbers["max_rss_after_setup_bytes"] >= numbers["rss_after_imports_bytes"] > 2**20
    assert numbers["peak_over_imports_bytes"] > 0
  # Fresh processes: the JAX one (no torch imported) peaks below this test process, which holds
  # torch, timm and JAX; a high-water mark inherited from this process would not.
  assert memory["jax"]["peak_rss_bytes"] < benchmark.benchmark_flax.max_rss_bytes()
  ratio = memory["jax"]["peak_rss_bytes"] / memory["torch"]["peak_rss_bytes"]
  assert memory["ratio_jax_over_torch"] == pytest.approx(ratio)
  assert float(memory_line.group(1)) == pytest.approx(ratio, abs=0.006)


def test_eval_mode_with_onnxruntime(tmp_path, capsys):
  json_out = tmp_path / "onnx.json"
  flag_values = _parsed_flags(
    *_TINY_VIT[:-2],
    "--windows=2",
    "--steps_per_window=1",
    "--mode=eval",
    "--compare=onnxruntime",
    "--predict_images=12",
    "--pipeline_jpeg_size=24",
    f"--json_out={json_out}",
  )
  benchmark.main(["benchmark"], flag_values=flag_values)

  lines = capsys.readouterr().out.strip().splitlines()
  eval_line = _ONNX_EVAL_RATIO_LINE.match(lines[-2])
  predict_line = _ONNX_PREDICT_RATIO_LINE.match(lines[-1])
  assert eval_line and predict_line, lines[-2:]
  results = json.loads(json_out.read_text())
  ort = results["onnxruntime"]
  assert len(ort["window_seconds"]) == 2 and ort["images_per_s"] > 0
  assert ort["images_per_s"] == pytest.approx(8 * ort["steps_per_s"])
  assert ort["model_bytes"] > 4 * results["jax"]["params"]  # float32 weights inside the file.
  assert ort["providers"] == ["CPUExecutionProvider"] and ort["export_s"] > 0
  ratio = results["jax"]["images_per_s"] / ort["images_per_s"]
  assert float(eval_line.group(1)) == pytest.approx(ratio, abs=0.006)
  predict = results["predict"]
  assert len(predict["onnxruntime"]["window_seconds"]) == 2
  ratio = predict["jax"]["images_per_s"] / predict["onnxruntime"]["images_per_s"]
  assert predict["ratio_jax_over_onnxruntime"] == pytest.approx(ratio)
  assert float(predict_line.group(1)) == pytest.approx(ratio, abs=0.006)


def test_onnxruntime_compares_inference_only():
  with pytest.raises(app.UsageError, match="--mode=eval"):
    benchmark.main(["benchmark"], flag_values=_parsed_flags("--compare=onnxruntime"))


def test_negative_predict_images_is_a_usage_error():
  with pytest.raises(app.UsageError, match="--predict_images"):
    benchmark.main(["benchmark"], flag_values=_parsed_flags("--mode=eval", "--predict_images=-1"))


@pytest.mark.slow
def test_command_line_imports_torch_before_tensorflow(tmp_path):
  # A fresh process: here conftest has imported torch first, which would hide a wrong order
  # (torch imported after tensorflow segfaults). --memory: the train step's probes, which start
  # this file again as a program, one process per framework.
  run = subprocess.run(
    [
      sys.executable,
      str(ROOT / "tools" / "benchmark.py"),
      f"--config={ROOT / 'configs' / 'quickstart.py'}",
      *_TINY_VIT[:-2],
      "--windows=1",
      "--steps_per_window=1",
      "--compare=torch",
      "--memory",
      "--json_out=train.json",
    ],
    capture_output=True,
    text=True,
    timeout=240,
    check=False,
    cwd=tmp_path,
  )
  assert run.returncode == 0, run.stderr[-3000:]
  lines = run.stdout.strip().splitlines()
  assert _RATIO_LINE.match(lines[-1]), run.stdout
  memory_line = _MEMORY_RATIO_LINE.match(lines[-2])
  assert memory_line, run.stdout
  memory = json.loads((tmp_path / "train.json").read_text())["memory"]
  assert memory["mode"] == "train"
  # The train step holds gradients and optimizer state: it peaks above the imports.
  assert (
    memory["jax"]["peak_over_imports_bytes"] > 0 and memory["torch"]["peak_over_imports_bytes"] > 0
  )
  ratio = memory["jax"]["peak_rss_bytes"] / memory["torch"]["peak_rss_bytes"]
  assert float(memory_line.group(1)) == pytest.approx(ratio, abs=0.006)


def test_bad_window_count_is_a_usage_error():
  with pytest.raises(app.UsageError, match="--windows"):
    benchmark.main(["benchmark"], flag_values=_parsed_flags(*_TINY_VIT[:-2], "--windows=0"))


@pytest.mark.parametrize(
  "name,image_size,gflops",
  [("vit_b16", 128, 11.27), ("vit_b16", 224, 35.1), ("vit_b32", 128, 2.98), ("vit_l16", 128, 39.8)],
)
def test_vit_flops_match_performance_doc(name, image_size, gflops):
  model = models.create_model(name, num_classes=1)
  assert benchmark.benchmark_flax.vit_forward_flops(model, image_size) / 1e9 == pytest.approx(
    gflops, rel=0.005
  )


def test_peak_flops_by_device_kind():
  assert benchmark.benchmark_flax.peak_flops("NVIDIA H200", "bfloat16") == 989e12
  assert benchmark.benchmark_flax.peak_flops("NVIDIA A100-SXM4-40GB", "float32") == 156e12
  assert benchmark.benchmark_flax.peak_flops("TPU v5 lite", "bfloat16") == 197e12
  assert benchmark.benchmark_flax.peak_flops("cpu", "float32") is None


def _flax_params(config):
  from animesion_jax.training import model_setup  # pylint: disable=g-import-not-at-top

  model = model_setup.build_model(config, num_classes=173)
  shapes = jax.eval_shape(
    lambda: model.init(
      jax.random.PRNGKey(0),
      jax.numpy.zeros((1, config.image_size, config.image_size, 3)),
      train=False,
    )
  )
  return model, models.count_params(shapes["params"])


@pytest.mark.parametrize(
  "config_file,expected_source",
  [("vit_b16.py", "pytorch_pretrained_vit.ViT('B_16')"), ("resnet18.py", "torchvision resnet18")],
)
def test_torch_reference_has_the_flax_model_size(config_file, expected_source):
  config = _parsed_flags("--config.image_size=32", config_file=config_file).config
  model, flax_params = _flax_params(config)
  torch_model, source = benchmark.benchmark_pytorch.torch_reference(model, config)
  assert source == expected_source
  assert sum(p.numel() for p in torch_model.parameters()) == flax_params


def test_torch_reference_refuses_models_without_one():
  config = _parsed_flags(config_file="shallow.py").config
  model, _ = _flax_params(config)
  with pytest.raises(ValueError, match="no PyTorch reference"):
    benchmark.benchmark_pytorch.torch_reference(model, config)


@pytest.mark.slow
def test_pipeline_only_over_a_tfds_dataset(tmp_path, capsys):
  json_out = tmp_path / "pipeline.json"
  flag_values = _parsed_flags(
    "--config.image_size=16",
    "--config.resize_margin=4",
    "--config.batch_size=8",
    f"--config.data_dir={helpers.synthetic_data_dir()}",
    "--config.dataset_config=small",
    "--notrain_step",
    "--pipeline",
    "--pipeline_dataset=synthetic_characters",
    "--pipeline_batches=4",
    "--pipeline_workers=0",
    f"--json_out={json_out}",
  )
  benchmark.main(["benchmark"], flag_values=flag_values)

  results = json.loads(json_out.read_text())
  assert "jax" not in results and "torch" not in results
  pipeline = results["pipeline"]
  assert pipeline["source"] == "TFDS synthetic_characters train (560 records)"
  assert pipeline["images"] == 4 * 8
  assert pipeline["images_per_s"] > 0 and pipeline["transform_loop_images_per_s"] > 0
  assert "img/s per core" in capsys.readouterr().out


def test_compare_needs_the_train_step():
  with pytest.raises(app.UsageError, match="--notrain_step"):
    benchmark.main(
      ["benchmark"], flag_values=_parsed_flags("--notrain_step", "--pipeline", "--compare=torch")
    )


def test_cpu_rate_of_windows_below_the_clock_tick_is_unknown():
  """A loader whose batches were buffered can take 0 CPU-seconds in a short window (the CI saw
  a ZeroDivisionError there): the rate is then unknown, not infinite."""
  per_cpu_second = benchmark.benchmark_input._per_cpu_second  # pylint: disable=protected-access
  assert per_cpu_second(10, [0.0, 0.0, 0.01]) is None
  assert per_cpu_second(10, [0.5, 0.25, 1.0]) == 20.0


def test_entry_copies_counts_the_top_level_copies_and_their_bytes():
  hlo = """HloModule m

%fused (p: f32[1000]) -> f32[1000] {
  %p = f32[1000]{0} parameter(0)
  ROOT %copy.9 = f32[1000]{0} copy(%p)
}

ENTRY %main (a: f32[2,3], b: s32[]) -> (f32[2,3], s32[], bf16[4]) {
  %a = f32[2,3]{1,0} parameter(0)
  %b = s32[] parameter(1)
  %copy.1 = f32[2,3]{1,0} copy(%a)
  %copy.2 = s32[] copy(%b)
  %c = bf16[4]{0} constant({1, 2, 3, 4})
  %copy.3 = bf16[4]{0} copy(%c)
  ROOT %t = (f32[2,3]{1,0}, s32[], bf16[4]{0}) tuple(%copy.1, %copy.2, %copy.3)
}
"""
  # 6 floats, one int, 4 bfloat16; the fused computation's copy is not at the top level.
  assert benchmark.benchmark_flax.entry_copies(hlo) == (3, 6 * 4 + 4 + 4 * 2)
