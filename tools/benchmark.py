r"""Speed of a config: train or eval steps/s, images/s, compile time, memory, MFU, input pipeline.

  python tools/benchmark.py --config=configs/vit_b16.py --config.image_size=128 \
      --config.batch_size=8 --windows=5 --steps_per_window=3 --compare=torch \
      --pipeline --json_out=/tmp/b16.json
  python tools/benchmark.py --config=configs/resnet18.py --config.image_size=128 \
      --config.batch_size=32 --mode=eval --compare=torch --memory

The model is built by model_setup.create on a mesh of every device and trained on one random
uint8 batch placed with sharding.to_global_batch, so the model numbers exclude the input
pipeline. Speed is the median over --windows timed windows of --steps_per_window steps (the
devices are synchronised only at window ends), measured after compilation and one warm-up step.

--compare=torch trains the PyTorch model the original Animesion code used (pytorch_pretrained_vit
ViT, timm's ViT for sizes it lacks, torchvision ResNets) with the same size, batch, image size and
optimizer, in this process, its windows interleaved with JAX's so that both see the same load on a
shared machine. The last line printed is then `ratio jax/torch: X.XX` (images per second).
On a machine whose cores other processes also use, torch's OpenMP threads spin-wait for each
other and can run several times slower than one thread; OMP_WAIT_POLICY=PASSIVE in the
environment avoids that (the JSON records it, with XLA_FLAGS).

--pipeline times the grain train loader (decode, resize, random crop, flip) over either
generated JPEGs (--pipeline_dataset=jpeg, no TFDS needed) or a built TFDS dataset (its name; the
data_dir and builder config come from the config), for each --pipeline_workers count (e.g. 0,1,2),
and reports images/s per worker core next to the same per-image work in a plain loop.

--mode=eval times the evaluation step instead (evaluation.make_eval_fn on freshly initialised
variables, no optimizer state) and predict.predict_files over a temporary folder of
--predict_images generated JPEGs; --compare=torch runs the same PyTorch model in inference mode
(model.eval(), torch.no_grad()) on the batch and on the folder (Pillow and torchvision decoding in
a thread pool of predict's size). The last lines are `ratio jax/torch eval step: X.XX` and
`ratio jax/torch predict: X.XX`. --compare=onnxruntime instead exports the model to ONNX
(animesion_jax.export, which needs jax2onnx) and times onnxruntime on the same batch (normalise,
forward, top-1) and tools/onnx_predict.py on the same folder; the last lines are then
`ratio jax/onnxruntime eval step: X.XX` and `ratio jax/onnxruntime predict: X.XX`.

--memory measures the peak host memory (RSS high-water) of the step in the chosen mode, building
and running it in a fresh process per framework so that one's peak cannot hide the other's; with
--compare=torch, `ratio jax/torch peak host memory: X.XX` precedes the speed ratios.
"""

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from typing import Any

from absl import app
from absl import flags
import benchmark_flax  # tools/ siblings: this script's directory is on sys.path.
import benchmark_input
import benchmark_pytorch
import jax
import ml_collections
from ml_collections import config_flags
import psutil

from animesion_jax.cli import xla_flags
from animesion_jax.inference import image_files
from animesion_jax.training import model_setup

RATIO_PREFIX = "ratio jax/torch: "  # The train step's speed ratio: the last line in --mode=train.
# --mode=eval's last lines: the evaluation step's and predict's speed ratios.
EVAL_RATIO_PREFIX = "ratio jax/torch eval step: "
PREDICT_RATIO_PREFIX = "ratio jax/torch predict: "
# --mode=eval --compare=onnxruntime's last lines.
ONNX_EVAL_RATIO_PREFIX = "ratio jax/onnxruntime eval step: "
ONNX_PREDICT_RATIO_PREFIX = "ratio jax/onnxruntime predict: "
MEMORY_RATIO_PREFIX = "ratio jax/torch peak host memory: "
_PROBE_ARGUMENT = "--internal_memory_probe"  # measure_memory's child: this file REQUEST.json.
_PROBE_PREFIX = "MEMORY "
_RECORDED_ENVIRONMENT = ("XLA_FLAGS", "OMP_WAIT_POLICY", "OMP_NUM_THREADS")


def define_flags(
  flag_values: flags.FlagValues = flags.FLAGS, argv: list[str] | None = None
) -> None:
  """Defines the tool's flags in `flag_values` (tests pass a private set and its argv).

  `argv` (default sys.argv) is where the config flag looks for its --config.FIELD overrides.
  """
  fv = {"flag_values": flag_values}
  config_flags.DEFINE_config_file(
    "config", None, "Training config file (with overrides).", lock_config=True, sys_argv=argv, **fv
  )
  flags.DEFINE_integer("windows", 5, "Timed windows; speeds are their median.", **fv)
  flags.DEFINE_integer("steps_per_window", 3, "Train steps in each timed window.", **fv)
  flags.DEFINE_integer("num_classes", 173, "Classifier width (moeImouto 173, DAF:re 3263).", **fv)
  flags.DEFINE_enum(
    "compare",
    "",
    ["", "torch", "onnxruntime"],
    "Also time the PyTorch reference model, or (--mode=eval) the ONNX export in onnxruntime.",
    **fv,
  )
  flags.DEFINE_enum(
    "mode",
    "train",
    ["train", "eval"],
    "train: the train step. eval: the evaluation step and predict on a folder of JPEGs.",
    **fv,
  )
  flags.DEFINE_integer(
    "predict_images", 0, "--mode=eval: JPEGs in the predict folder (0: 4 batches).", **fv
  )
  flags.DEFINE_bool(
    "memory",
    False,
    "Also measure peak host memory (RSS) of the step, one fresh process per framework.",
    **fv,
  )
  flags.DEFINE_bool(
    "train_step",
    True,
    "Time the train step (--notrain_step --pipeline: only the input pipeline).",
    **fv,
  )
  flags.DEFINE_bool("pipeline", False, "Also time the grain input pipeline.", **fv)
  flags.DEFINE_string(
    "pipeline_dataset",
    "jpeg",
    "'jpeg' (generated JPEGs held in memory) or a "
    "built TFDS dataset name (its data_dir/config from the config).",
    **fv,
  )
  flags.DEFINE_integer("pipeline_jpeg_size", 128, "Side of the generated JPEGs, in pixels.", **fv)
  flags.DEFINE_integer("pipeline_records", 512, "Number of generated JPEGs.", **fv)
  flags.DEFINE_integer(
    "pipeline_batches",
    50,
    "Batches timed per window (after a warm-up). CPU time is read in 10 ms ticks: at 32 pictures "
    "a batch, 10 batches took 6-9 ticks (+-15%), 50 take 30-40.",
    **fv,
  )
  flags.DEFINE_list(
    "pipeline_workers",
    ["-1"],
    "grain worker counts to time, e.g. 0,1,2 (-1: config.data_workers).",
    **fv,
  )
  flags.DEFINE_string("json_out", "", "Write every number to this JSON file.", **fv)
  flags.mark_flag_as_required("config", flag_values=flag_values)


def _median_speed(seconds: list[float], steps: int, batch: int) -> dict[str, Any]:
  per_step = statistics.median(seconds) / steps
  return {
    "window_seconds": seconds,
    "steps_per_s": 1.0 / per_step,
    "images_per_s": batch / per_step,
  }


def measure_training(config: ml_collections.ConfigDict, fv: flags.FlagValues) -> dict[str, Any]:
  """JAX (and, with --compare=torch, PyTorch) train-step speed and FLOPs."""
  images, labels = benchmark_flax.random_batch(config, fv.num_classes)
  jax_results, jax_window = benchmark_flax.benchmark_jax(config, fv.num_classes, images, labels)
  model = jax_results.pop("model")
  timers, results = {"jax": jax_window}, {"jax": jax_results}
  if fv.compare == "torch":
    results["torch"], timers["torch"] = benchmark_pytorch.benchmark_torch(
      model, config, images, labels, on_gpu=jax_results["platform"] == "gpu"
    )
    results["torch"].pop("net")
  seconds = {name: [] for name in timers}
  for _ in range(fv.windows):  # Interleaved, so drifting machine load hits both alike.
    for name, window in timers.items():
      seconds[name].append(window(fv.steps_per_window))
  for name in timers:
    results[name].update(_median_speed(seconds[name], fv.steps_per_window, config.batch_size))
  benchmark_flax.add_flops(jax_results, config.dtype)
  if "torch" in results:
    results["ratio_jax_over_torch"] = jax_results["images_per_s"] / results["torch"]["images_per_s"]
  return results


def measure_eval(config: ml_collections.ConfigDict, fv: flags.FlagValues) -> dict[str, Any]:
  """Evaluation-step and predict speeds of JAX (and, with --compare=torch, of PyTorch).

  Rounds interleave every timer: each framework's --steps_per_window evaluation steps, then each
  framework's pass over a temporary folder of --predict_images generated JPEGs.
  """
  images, labels = benchmark_flax.random_batch(config, fv.num_classes)
  model, variables, mesh = benchmark_flax.jax_eval_setup(config, fv.num_classes)
  jax_results, jax_window = benchmark_flax.benchmark_jax_eval(
    config, model, variables, mesh, images, labels
  )
  jax_results.pop("model")
  timers, results = {"jax": jax_window}, {"jax": jax_results}
  count = fv.predict_images or 4 * config.batch_size
  with tempfile.TemporaryDirectory(prefix="benchmark_predict_") as folder:
    for record in benchmark_input.generated_jpegs(count, fv.pipeline_jpeg_size, fv.num_classes):
      with open(os.path.join(folder, record["file_name"].decode()), "wb") as f:
        f.write(record["image"])
    files, _ = image_files.find_images([folder])
    predictors, compile_s = {}, {}
    predictors["jax"], compile_s["jax"] = benchmark_flax.jax_predict_timer(
      config, model, variables, mesh, files
    )
    if fv.compare == "torch":
      results["torch"], timers["torch"] = benchmark_pytorch.benchmark_torch(
        model, config, images, labels, on_gpu=jax_results["platform"] == "gpu", train=False
      )
      net = results["torch"].pop("net")
      predictors["torch"] = benchmark_pytorch.torch_predict_timer(
        net, config, files, _predict_workers()
      )
    if fv.compare == "onnxruntime":
      import benchmark_onnx  # pylint: disable=g-import-not-at-top  (needs the export extra)

      ort_model, export_facts = benchmark_onnx.onnx_model(config, model, variables, mesh)
      results["onnxruntime"], timers["onnxruntime"] = benchmark_onnx.benchmark_onnx_eval(
        ort_model, images, labels
      )
      results["onnxruntime"].update(export_facts)
      predictors["onnxruntime"] = benchmark_onnx.onnx_predict_timer(ort_model, files, config, mesh)
    first = {name: predictor() for name, predictor in predictors.items()}  # Warm-up.
    seconds = {name: [] for name in timers}
    predict_seconds = {name: [] for name in predictors}
    for _ in range(fv.windows):
      for name, window in timers.items():
        seconds[name].append(window(fv.steps_per_window))
      for name, predictor in predictors.items():
        predict_seconds[name].append(predictor())
  for name in timers:
    results[name].update(_median_speed(seconds[name], fv.steps_per_window, config.batch_size))
  benchmark_flax.add_flops(jax_results, config.dtype)
  results["predict"] = {
    "images": count,
    "jpeg_size": fv.pipeline_jpeg_size,
    **{
      name: {
        "first_call_s": first[name],
        "predict_fn_compile_s": compile_s.get(name),
        "window_seconds": predict_seconds[name],
        "images_per_s": count / statistics.median(predict_seconds[name]),
      }
      for name in predictors
    },
  }
  for other in ("torch", "onnxruntime"):
    if other in results:
      results[f"ratio_jax_over_{other}"] = (
        jax_results["images_per_s"] / results[other]["images_per_s"]
      )
      predicted = results["predict"]
      predicted[f"ratio_jax_over_{other}"] = (
        predicted["jax"]["images_per_s"] / predicted[other]["images_per_s"]
      )
  return results


def _predict_workers() -> int:
  """predict.predict_files' default decode threads."""
  return min(16, (os.cpu_count() or 2) + 2)


def memory_probe(request: dict[str, Any]) -> dict[str, Any]:
  """Host memory of one framework's step, alone in this process (run by measure_memory).

  Builds the model, compiles (JAX), warms up and runs --steps_per_window steps of the train or
  eval step, and returns the RSS after imports and the RSS high-water marks.
  """
  framework, train = request["framework"], request["mode"] == "train"
  if framework == "torch":
    import torch  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    import torchvision  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  rss_after_imports = psutil.Process().memory_info().rss
  config = ml_collections.ConfigDict(request["config"])
  images, labels = benchmark_flax.random_batch(config, request["num_classes"])
  if framework == "torch":
    model = model_setup.build_model(config, request["num_classes"])
    _, window = benchmark_pytorch.benchmark_torch(
      model, config, images, labels, on_gpu=request["platform"] == "gpu", train=train
    )
  elif train:
    _, window = benchmark_flax.benchmark_jax(config, request["num_classes"], images, labels)
  else:
    model, variables, mesh = benchmark_flax.jax_eval_setup(config, request["num_classes"])
    _, window = benchmark_flax.benchmark_jax_eval(config, model, variables, mesh, images, labels)
  after_setup = benchmark_flax.max_rss_bytes()
  window(request["steps"])
  return {
    "rss_after_imports_bytes": rss_after_imports,
    "max_rss_after_setup_bytes": after_setup,
    "peak_rss_bytes": benchmark_flax.max_rss_bytes(),
    "peak_over_imports_bytes": benchmark_flax.max_rss_bytes() - rss_after_imports,
    "steps": request["steps"],
  }


def measure_memory(
  config: ml_collections.ConfigDict, fv: flags.FlagValues, platform_name: str
) -> dict[str, Any]:
  """Peak host RSS of the JAX step and of the PyTorch step, each in a fresh process.

  One process per framework, so one's high-water mark cannot hide the other's. Each process also
  imports this tool (hence jax, but no JAX computation in the PyTorch process).
  """
  frameworks = ["jax", "torch"] if fv.compare == "torch" else ["jax"]
  results = {"mode": fv.mode}
  for framework in frameworks:
    request = {
      "framework": framework,
      "mode": fv.mode,
      "config": config.to_dict(),
      "num_classes": fv.num_classes,
      "steps": fv.steps_per_window,
      "platform": platform_name,
    }
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
      json.dump(request, f)
    try:
      run = subprocess.run(
        [sys.executable, os.path.abspath(__file__), _PROBE_ARGUMENT, f.name],
        capture_output=True,
        text=True,
        check=False,
      )
    finally:
      os.unlink(f.name)
    lines = [line for line in run.stdout.splitlines() if line.startswith(_PROBE_PREFIX)]
    if run.returncode != 0 or not lines:
      raise RuntimeError(
        f"The {framework} memory probe failed (exit {run.returncode}):\n{run.stderr[-3000:]}"
      )
    results[framework] = json.loads(lines[-1][len(_PROBE_PREFIX) :])
  if "torch" in results:
    results["ratio_jax_over_torch"] = (
      results["jax"]["peak_rss_bytes"] / results["torch"]["peak_rss_bytes"]
    )
  return results


def run_benchmark(config: ml_collections.ConfigDict, fv: flags.FlagValues) -> dict[str, Any]:
  """Every measurement the flags ask for, as one JSON-ready dictionary."""
  if fv.windows < 1 or fv.steps_per_window < 1:
    raise app.UsageError("--windows and --steps_per_window must be at least 1.")
  if not fv.train_step and (fv.compare or fv.memory or not fv.pipeline):
    raise app.UsageError(
      "--notrain_step measures only the input pipeline: add --pipeline and drop --compare "
      "and --memory."
    )
  if fv.predict_images < 0:
    raise app.UsageError(f"--predict_images={fv.predict_images} must be at least 0.")
  if fv.compare == "onnxruntime" and fv.mode != "eval":
    raise app.UsageError("--compare=onnxruntime times inference: add --mode=eval.")
  if fv.compare == "torch":
    # Before anything imports tensorflow (tfds does, for --pipeline): the other order segfaults.
    import torch  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    import torchvision  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  load_before = os.getloadavg()
  results = {}
  if fv.train_step:
    results = (measure_eval if fv.mode == "eval" else measure_training)(config, fv)
  if fv.memory:
    results["memory"] = measure_memory(config, fv, results["jax"]["platform"])
  if fv.pipeline:
    results["pipeline"] = benchmark_input.benchmark_pipeline(config, fv, fv.num_classes)
  results["setup"] = {
    "mode": fv.mode,
    "model": config.model.name,
    "image_size": config.image_size,
    "batch_size": config.batch_size,
    "dtype": config.dtype,
    "optimizer": config.optimizer,
    "learning_rate": config.learning_rate,
    "windows": fv.windows,
    "steps_per_window": fv.steps_per_window,
    "num_classes": fv.num_classes,
    "cores": benchmark_input.cores(),
    "jax_version": jax.__version__,
    "python": platform.python_version(),
    "load_average_before": load_before,
    "load_average_after": os.getloadavg(),
    "host_max_rss_bytes_end": benchmark_flax.max_rss_bytes(),
    "command": " ".join(sys.argv),
    "environment": {name: os.environ.get(name) for name in _RECORDED_ENVIRONMENT},
  }
  return results


def _fmt(value: float | None, scale: float = 1.0, spec: str = ".2f", unit: str = "") -> str:
  return "n/a" if value is None else f"{value / scale:{spec}}{unit}"


def format_report(results: dict[str, Any]) -> str:
  """A compact human-readable report; ends with the ratio lines when torch was compared."""
  setup = results["setup"]
  evaluating = setup["mode"] == "eval"
  step = "eval step" if evaluating else f"{setup['optimizer']} lr {setup['learning_rate']}"
  lines = [
    f"{setup['model']} {setup['image_size']}px batch {setup['batch_size']} "
    f"{setup['dtype']} {step} | "
    f"{setup['cores']} cores, load {setup['load_average_before'][0]:.2f} -> "
    f"{setup['load_average_after'][0]:.2f}"
  ]
  if "jax" in results:
    jx = results["jax"]
    lines += [
      f"jax   {jx['params']:,} params on {jx['devices']} x {jx['device_kind']}: "
      f"{jx['steps_per_s']:.3f} steps/s, {jx['images_per_s']:.2f} img/s (median of "
      f"{setup['windows']} x {setup['steps_per_window']} steps); compile "
      f"{jx['compile_s']:.2f} s, first step {jx['first_step_s']:.2f} s"
      + (
        ""
        if evaluating
        else f"; donated: {jx.get('donated', 'n/a')} ({jx.get('step_copies')} copies, "
        f"{_fmt(jx.get('step_copy_bytes'), 2**20, '.0f', ' MiB')} at the top of the step)"
      ),
      f"      FLOPs/step {_fmt(jx['flops_per_step_xla'], 1e9, '.1f', ' G')} (xla), "
      f"{_fmt(jx['flops_per_step_analytic'], 1e9, '.1f', ' G')} (analytic); achieved "
      f"{_fmt(jx['achieved_flops_per_s'], 1e12, '.3f', ' TFLOP/s')}; MFU "
      f"{_fmt(jx['mfu'], 0.01, '.1f', '%')} (peak "
      f"{_fmt(jx['peak_flops_per_device'], 1e12, '.0f', ' TFLOP/s')} per device)",
      f"      peak device memory {_fmt(jx['peak_device_bytes'], 2**20, '.0f', ' MiB')}; host "
      f"process max RSS (not device memory) after JAX set-up "
      f"{jx['host_max_rss_bytes_after_jax_setup'] / 2**20:.0f} MiB",
    ]
  if "torch" in results:
    tr = results["torch"]
    lines.append(
      f"torch {tr['params']:,} params, {tr['model']} on {tr['device']} "
      f"({tr['threads']} threads): {tr['steps_per_s']:.3f} steps/s, "
      f"{tr['images_per_s']:.2f} img/s; first step {tr['first_step_s']:.2f} s"
    )
  if "onnxruntime" in results:
    ort = results["onnxruntime"]
    lines.append(
      f"onnxruntime {ort['version']} ({ort['model_bytes'] / 2**20:.0f} MiB ONNX file, exported "
      f"in {ort['export_s']:.1f} s): {ort['steps_per_s']:.3f} steps/s, "
      f"{ort['images_per_s']:.2f} img/s; first step {ort['first_step_s']:.2f} s"
    )
  if "pipeline" in results:
    pl = results["pipeline"]
    lines.append(
      f"input {pl['source']} ({_fmt(pl['mean_record_bytes'], 1024, '.1f', ' KiB')} "
      f"each) -> {pl['output']}"
      + (f", colour jitter {pl['color_jitter']}" if pl["color_jitter"] else "")
      + f"; the transform alone, in a loop: "
      f"{pl['transform_loop_images_per_s']:.0f} img/s, "
      f"{_fmt(pl['transform_loop_images_per_cpu_s'], spec='.0f')} per CPU-second"
    )
    for run in pl["runs"]:
      lines.append(
        f"      {run['workers']} workers: {run['images_per_s']:.0f} img/s = "
        f"{run['images_per_s_per_core']:.0f} img/s per core "
        f"({100 * run['fraction_of_transform_loop']:.0f}% of the transform alone); "
        f"{_fmt(run['images_per_cpu_s'], spec='.0f')} per CPU-second "
        f"({_fmt(run['cpu_fraction_of_transform_loop'], 0.01, '.0f', '%')}"
        + (
          f"; {_fmt(run['cpu_fraction_of_loops_at_once'], 0.01, '.0f', '%')} of "
          f"{run['cores']} plain loops at once)"
          if run.get("cpu_fraction_of_loops_at_once")
          else ")"
        )
      )
  if "predict" in results:
    pr = results["predict"]
    for name in ("jax", "torch", "onnxruntime"):
      if name in pr:
        compile_s = pr[name]["predict_fn_compile_s"]
        lines.append(
          f"{name:5} predict on {pr['images']} {pr['jpeg_size']}px JPEGs in a folder: "
          f"{pr[name]['images_per_s']:.2f} img/s (median of {setup['windows']} passes; "
          f"first pass {pr[name]['first_call_s']:.2f} s"
          + (f"; each pass compiles the predict function, {compile_s:.2f} s)" if compile_s else ")")
        )
  if "memory" in results:
    memory = results["memory"]
    for name in ("jax", "torch"):
      if name in memory:
        mb = {key: value / 2**20 for key, value in memory[name].items() if key.endswith("bytes")}
        lines.append(
          f"{name:5} peak host RSS of the {memory['mode']} step, own process: "
          f"{mb['peak_rss_bytes']:.0f} MiB ({mb['rss_after_imports_bytes']:.0f} after imports, "
          f"{mb['max_rss_after_setup_bytes']:.0f} after set-up; "
          f"{mb['peak_over_imports_bytes']:.0f} above imports)"
        )
    if "ratio_jax_over_torch" in memory:
      lines.append(f"{MEMORY_RATIO_PREFIX}{memory['ratio_jax_over_torch']:.2f}")
  if "torch" in results and evaluating:
    lines.append(f"{EVAL_RATIO_PREFIX}{results['ratio_jax_over_torch']:.2f}")
    lines.append(f"{PREDICT_RATIO_PREFIX}{results['predict']['ratio_jax_over_torch']:.2f}")
  elif "torch" in results:
    lines.append(f"{RATIO_PREFIX}{results['ratio_jax_over_torch']:.2f}")
  if "onnxruntime" in results:
    lines.append(f"{ONNX_EVAL_RATIO_PREFIX}{results['ratio_jax_over_onnxruntime']:.2f}")
    lines.append(
      f"{ONNX_PREDICT_RATIO_PREFIX}{results['predict']['ratio_jax_over_onnxruntime']:.2f}"
    )
  return "\n".join(lines)


def main(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  xla_flags.apply_default_flags()  # Before the backend starts (the memory probes inherit it).
  config = flag_values["config"].value
  try:
    results = run_benchmark(config, flag_values)
  except (ValueError, FileNotFoundError) as error:  # Bad config or flags, or an unbuilt dataset.
    raise app.UsageError(str(error)) from None
  if flag_values.json_out:
    with open(flag_values.json_out, "w", encoding="utf-8") as f:
      json.dump(results, f, indent=2)
  print(format_report(results), flush=True)


if __name__ == "__main__":
  if sys.argv[1:2] == [_PROBE_ARGUMENT]:
    with open(sys.argv[2], encoding="utf-8") as request_file:
      print(_PROBE_PREFIX + json.dumps(memory_probe(json.load(request_file))), flush=True)
  else:
    define_flags()
    app.run(main)
