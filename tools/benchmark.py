r"""Training speed of a config: steps/s, images/s, compile time, memory, MFU, input pipeline.

  python tools/benchmark.py --config=configs/vit_b16.py --config.image_size=128 \
      --config.batch_size=8 --windows=5 --steps_per_window=3 --compare=torch \
      --pipeline --json_out=/tmp/b16.json

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
"""

from collections.abc import Callable
import io
import json
import os
import platform
import resource
import statistics
import sys
import time
from typing import Any

from absl import app
from absl import flags
import jax
import ml_collections
from ml_collections import config_flags
import numpy as np
from PIL import Image
import psutil

from animesion_jax import config_validation
from animesion_jax import model_setup
from animesion_jax import models
from animesion_jax import sharding
from animesion_jax.data import datasets
from animesion_jax.data import pipeline
from animesion_jax.data import preprocess

# Peak dense matmul FLOP/s per device by device_kind substring: (bfloat16, float32). float32 uses
# the TF32 tensor-core rate on NVIDIA (XLA's default for f32 dots there) and the bf16 rate on TPU
# (default precision). Datasheet numbers; performance.md's ~790e12 for the H200 is a sustained rate.
PEAK_FLOPS = {
  "H200": (989e12, 494e12),
  "H100": (989e12, 494e12),
  "A100": (312e12, 156e12),
  "TPU v4": (275e12, 275e12),
  "TPU v5 lite": (197e12, 197e12),
  "TPU v5e": (197e12, 197e12),
  "TPU v5p": (459e12, 459e12),
  "TPU v6 lite": (918e12, 918e12),
}
RATIO_PREFIX = "ratio jax/torch: "
_RECORDED_ENVIRONMENT = ("XLA_FLAGS", "OMP_WAIT_POLICY", "OMP_NUM_THREADS")
_TORCHVISION_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


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
  flags.DEFINE_enum("compare", "", ["", "torch"], "Also time the PyTorch reference model.", **fv)
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
  flags.DEFINE_integer("pipeline_batches", 10, "Batches timed per window (after a warm-up).", **fv)
  flags.DEFINE_list(
    "pipeline_workers",
    ["-1"],
    "grain worker counts to time, e.g. 0,1,2 (-1: config.data_workers).",
    **fv,
  )
  flags.DEFINE_string("json_out", "", "Write every number to this JSON file.", **fv)
  flags.mark_flag_as_required("config", flag_values=flag_values)


def _cores() -> int:
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _max_rss_bytes() -> int:
  scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux.
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _median_speed(seconds: list[float], steps: int, batch: int) -> dict[str, Any]:
  per_step = statistics.median(seconds) / steps
  return {
    "window_seconds": seconds,
    "steps_per_s": 1.0 / per_step,
    "images_per_s": batch / per_step,
  }


def vit_forward_flops(model: Any, image_size: int) -> float:
  """Forward matmul FLOPs of one image through a ViT (performance.md's formula, any MLP width)."""
  patches = (image_size // model.patch_size) ** 2
  tokens, width = patches + 1, model.hidden_size
  layer = 8 * tokens * width**2 + 4 * tokens * width * model.mlp_dim + 4 * tokens**2 * width
  embed = 2 * patches * model.patch_size**2 * 3 * width
  return model.num_layers * layer + embed + 2 * width * model.num_classes


def peak_flops(device_kind: str, dtype: str) -> float | None:
  """Datasheet peak FLOP/s of one device, or None when unknown (CPUs)."""
  for name, (bf16, fp32) in PEAK_FLOPS.items():
    if name.lower() in device_kind.lower():
      return bf16 if dtype == "bfloat16" else fp32
  return None


def benchmark_jax(
  config: ml_collections.ConfigDict, num_classes: int, images: np.ndarray, labels: np.ndarray
) -> tuple[dict[str, Any], Callable]:
  """Builds, compiles and warms up the train step; returns its facts and a window timer."""
  # Not at the top: train imports tensorflow (through clu), and torch must be imported first.
  from animesion_jax import train  # pylint: disable=g-import-not-at-top

  config_validation.validate(config, num_devices=jax.device_count())
  mesh = sharding.create_mesh(fsdp_size=config.fsdp_size)
  setup = model_setup.create(config, num_classes, mesh, steps_per_epoch=1000, total_steps=10**6)
  per_process = slice(
    jax.process_index() * len(labels) // jax.process_count(),
    (jax.process_index() + 1) * len(labels) // jax.process_count(),
  )
  batch = sharding.to_global_batch(
    {"image": images[per_process], "label": labels[per_process]}, mesh
  )
  train_fn = train.jit_train_step(setup, config, mesh)
  start = time.perf_counter()
  compiled = train_fn.lower(setup.state, batch).compile()
  compile_s = time.perf_counter() - start
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # Older jax: one per program.
  params = models.count_params(setup.state.params)
  state = setup.state  # Donated by the first step.
  start = time.perf_counter()
  state, step_metrics = compiled(state, batch)
  jax.block_until_ready((state, step_metrics))
  first_step_s = time.perf_counter() - start

  def window(num_steps: int) -> float:
    nonlocal state
    start = time.perf_counter()
    for _ in range(num_steps):
      state, step_metrics = compiled(state, batch)
    jax.block_until_ready((state, step_metrics))
    return time.perf_counter() - start

  device = mesh.devices.flat[0]
  # cost_analysis describes one device's share of the SPMD program.
  xla_flops = (cost or {}).get("flops")
  analytic = (
    3 * vit_forward_flops(setup.model, config.image_size) * len(labels)
    if hasattr(setup.model, "hidden_size")
    else None
  )
  peaks = [
    stats.get("peak_bytes_in_use")
    for stats in (d.memory_stats() for d in mesh.local_devices)
    if stats
  ]
  facts = {
    "platform": device.platform,
    "device_kind": device.device_kind,
    "devices": mesh.size,
    "compile_s": compile_s,
    "first_step_s": first_step_s,
    "flops_per_step_xla": xla_flops * mesh.size if xla_flops else None,
    "flops_per_step_analytic": analytic,
    "peak_device_bytes": max(peaks) if peaks and None not in peaks else None,
    "host_max_rss_bytes_after_jax_setup": _max_rss_bytes(),
    "params": params,
    "model": setup.model,
  }
  return facts, window


def torch_reference(model: Any, config: ml_collections.ConfigDict) -> tuple[Any, str]:
  """The PyTorch model the original code trained, the same size as the Flax `model`."""
  name = config.model.name
  if name in _TORCHVISION_RESNETS:
    if model.base_width != 64:
      raise ValueError(
        f"--compare=torch needs config.model.base_width=64 (torchvision's); got {model.base_width}."
      )
    import torchvision  # pylint: disable=g-import-not-at-top

    return getattr(torchvision.models, name)(num_classes=model.num_classes), f"torchvision {name}"
  if not name.startswith("vit"):
    raise ValueError(
      f"--compare=torch supports ViTs and {_TORCHVISION_RESNETS}; "
      f"config.model.name={name!r} has no PyTorch reference."
    )
  if model.representation_size:
    raise ValueError(
      "--compare=torch needs config.model.representation_size=0 (the original "
      "fine-tuning models have no pre-logits layer)."
    )
  dims = {
    "patches": (model.patch_size, model.patch_size),
    "dim": model.hidden_size,
    "ff_dim": model.mlp_dim,
    "num_heads": model.num_heads,
    "num_layers": model.num_layers,
  }
  import pytorch_pretrained_vit  # pylint: disable=g-import-not-at-top

  for variant, spec in pytorch_pretrained_vit.configs.PRETRAINED_MODELS.items():
    same = all(spec["config"][key] == value for key, value in dims.items())
    if same and spec["config"]["dropout_rate"] == model.dropout_rate:
      torch_model = pytorch_pretrained_vit.ViT(
        variant, pretrained=False, image_size=config.image_size, num_classes=model.num_classes
      )
      return torch_model, f"pytorch_pretrained_vit.ViT('{variant}')"
  import timm.models.vision_transformer as timm_vit  # pylint: disable=g-import-not-at-top

  torch_model = timm_vit.VisionTransformer(
    img_size=config.image_size,
    patch_size=model.patch_size,
    num_classes=model.num_classes,
    embed_dim=model.hidden_size,
    depth=model.num_layers,
    num_heads=model.num_heads,
    mlp_ratio=model.mlp_dim / model.hidden_size,
    drop_rate=model.dropout_rate,
    proj_drop_rate=model.dropout_rate,
    attn_drop_rate=model.attention_dropout_rate,
  )
  return torch_model, "timm VisionTransformer"


def benchmark_torch(
  model: Any,
  config: ml_collections.ConfigDict,
  images: np.ndarray,
  labels: np.ndarray,
  on_gpu: bool,
) -> tuple[dict[str, Any], Callable]:
  """The PyTorch reference's train step, warmed up; returns its facts and a window timer."""
  import torch  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(_cores())
  device = torch.device("cuda" if on_gpu and torch.cuda.is_available() else "cpu")
  start = time.perf_counter()
  torch.manual_seed(config.seed)
  net, source = torch_reference(model, config)
  net = net.to(device).train()
  if config.optimizer == "sgd":
    optimizer = torch.optim.SGD(
      net.parameters(),
      lr=config.learning_rate,
      momentum=config.momentum,
      weight_decay=config.weight_decay,
    )
  else:
    optimizer = torch.optim.AdamW(
      net.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
  mean, std = (
    torch.tensor(v, device=device).view(1, 3, 1, 1)
    for v in preprocess.NORMALIZATIONS[config.normalization]
  )
  x_uint8 = torch.from_numpy(images).to(device)
  y = torch.from_numpy(labels.astype(np.int64)).to(device)
  autocast_dtype = torch.bfloat16 if config.dtype == "bfloat16" else None

  def step():
    # Normalised inside the step, as the JAX step does on the device.
    x = (x_uint8.permute(0, 3, 1, 2).float() / 255.0 - mean) / std
    with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
      loss = torch.nn.functional.cross_entropy(
        net(x).float(), y, label_smoothing=config.label_smoothing
      )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.grad_clip_norm > 0:
      torch.nn.utils.clip_grad_norm_(net.parameters(), config.grad_clip_norm)
    optimizer.step()
    return loss

  def window(num_steps: int) -> float:
    start = time.perf_counter()
    for _ in range(num_steps):
      loss = step()
    loss.item()  # Waits for the device, like block_until_ready.
    return time.perf_counter() - start

  setup_s = time.perf_counter() - start
  first_step_s = window(1)
  facts = {
    "model": source,
    "device": str(device),
    "threads": torch.get_num_threads(),
    "setup_s": setup_s,
    "first_step_s": first_step_s,
    "torch_version": torch.__version__,
    "params": sum(p.numel() for p in net.parameters()),
  }
  return facts, window


def generated_jpegs(count: int, size: int, num_classes: int, seed: int = 0) -> list[dict[str, Any]]:
  """Records like the TFDS sources' ({'image': JPEG bytes, 'label', 'file_name'}), in memory.

  Smooth colour fields with mild noise: a few KiB per 128-px JPEG, like small face crops.
  """
  rng = np.random.default_rng(seed)
  records = []
  for index in range(count):
    coarse = Image.fromarray(rng.integers(0, 256, (6, 6, 3), np.uint8))
    smooth = np.asarray(coarse.resize((size, size), Image.BICUBIC), np.float32)
    pixels = np.clip(smooth + rng.normal(0.0, 4.0, smooth.shape), 0, 255).astype(np.uint8)
    encoded = io.BytesIO()
    Image.fromarray(pixels).save(encoded, format="JPEG", quality=90)
    records.append(
      {
        "image": encoded.getvalue(),
        "label": index % num_classes,
        "file_name": f"{index:06d}.jpg".encode(),
      }
    )
  return records


def _pipeline_source(
  config: ml_collections.ConfigDict, fv: flags.FlagValues, num_classes: int
) -> tuple[Any, str, float | None]:
  if fv.pipeline_dataset == "jpeg":
    source = generated_jpegs(fv.pipeline_records, fv.pipeline_jpeg_size, num_classes)
    return (
      source,
      f"{len(source)} generated {fv.pipeline_jpeg_size}px JPEGs in memory",
      float(np.mean([len(r["image"]) for r in source])),
    )
  builder = datasets.open_dataset(
    fv.pipeline_dataset, config.data_dir, config.dataset_config, config.build_dataset_if_missing
  )
  source = datasets.data_source(builder, datasets.get_spec(fv.pipeline_dataset).train_split)
  return source, f"TFDS {fv.pipeline_dataset} train ({len(source)} records)", None


def _cpu_seconds() -> float:
  """CPU time so far of this process and its live children (the grain workers)."""
  me = psutil.Process()
  processes = [me] + me.children(recursive=True)
  total = 0.0
  for process in processes:
    try:
      times = process.cpu_times()
    except psutil.NoSuchProcess:
      continue
    total += times.user + times.system
  return total


def _transform_loop(source: Any, config: ml_collections.ConfigDict, count: int):
  """A timer of the per-image work alone (decode, resize, crop, flip) in a plain loop."""
  size, margin = config.image_size, config.resize_margin
  rng = np.random.default_rng(config.seed)

  def window() -> tuple[float, float]:
    out = np.empty((size, size, 3), np.uint8)
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    for index in range(count):
      pixels = preprocess.decode_resized(source[index % len(source)]["image"], size + margin)
      top, left = rng.integers(0, margin + 1, size=2)
      preprocess.crop_into(pixels, top, left, config.horizontal_flip and rng.random() < 0.5, out)
    return time.perf_counter() - start, _cpu_seconds() - cpu_start

  return window


def _wait_until_idle(limit_s: float = 10.0) -> None:
  """Waits until this process and its workers stop using CPU (the loaders' buffers are full)."""
  deadline = time.perf_counter() + limit_s
  before = _cpu_seconds()
  while time.perf_counter() < deadline:
    time.sleep(0.25)
    now = _cpu_seconds()
    if now - before < 0.01:
      return
    before = now


def _loader_window(batches, count: int, drain: int) -> tuple[float, float]:
  """Wall and CPU seconds of `count` batches, after taking the `drain` already buffered ones.

  Starts once every loader has refilled its buffers, so no loader's refill is charged to
  another's window (or to the plain loop's).
  """
  _wait_until_idle()
  for _ in range(drain):
    next(batches)
  start, cpu_start = time.perf_counter(), _cpu_seconds()
  for _ in range(count):
    next(batches)
  return time.perf_counter() - start, _cpu_seconds() - cpu_start


def benchmark_pipeline(
  config: ml_collections.ConfigDict, fv: flags.FlagValues, num_classes: int
) -> dict[str, Any]:
  """Images/s of pipeline.train_loader per worker count, and of the transform alone.

  Every loader is started first; then --windows rounds each time --pipeline_batches batches of
  every loader (after taking the batches its buffers filled while it waited) and the same
  number of images through the plain transform loop, so that a shared machine's load hits all
  alike. Speeds are medians over the rounds: wall-clock images/s, and images per CPU-second of
  the process and its workers (what a dedicated core would do, less sensitive to other load).
  """
  source, described, mean_bytes = _pipeline_source(config, fv, num_classes)
  counts = [config.data_workers if int(w) < 0 else int(w) for w in fv.pipeline_workers or ["-1"]]
  jitter = config.get("color_jitter", 0.0)
  iterators = {}
  for workers in counts:
    iterators[workers] = iter(
      pipeline.train_loader(
        source,
        global_batch_size=config.batch_size,
        image_size=config.image_size,
        resize_margin=config.resize_margin,
        horizontal_flip=config.horizontal_flip,
        seed=config.seed,
        workers=workers,
        color_jitter=jitter,
      )
    )
    next(iterators[workers])  # Starts the workers.
  images = fv.pipeline_batches * pipeline.per_process_batch_size(config.batch_size)
  plain = _transform_loop(source, config, images)
  measured = {workers: [] for workers in counts}
  plain_measured = []
  for _ in range(max(1, fv.windows)):
    for workers, batches in iterators.items():
      # Buffers: 2 batches in the reading thread, and per worker its own 2 plus 1 in transit.
      measured[workers].append(_loader_window(batches, fv.pipeline_batches, 3 + 4 * workers))
    _wait_until_idle()
    plain_measured.append(plain())
  for batches in iterators.values():
    batches.close()  # Stops the workers now rather than at interpreter exit.
  plain_per_s = images / statistics.median(wall for wall, _ in plain_measured)
  plain_per_cpu_s = images / statistics.median(cpu for _, cpu in plain_measured)
  runs = []
  for workers in counts:
    per_s = images / statistics.median(wall for wall, _ in measured[workers])
    per_cpu_s = images / statistics.median(cpu for _, cpu in measured[workers])
    cores = min(max(workers, 1), _cores())
    runs.append(
      {
        "workers": workers,
        "cores": cores,
        "images": images,
        "windows": measured[workers],
        "images_per_s": per_s,
        "images_per_s_per_core": per_s / cores,
        "images_per_cpu_s": per_cpu_s,
        "fraction_of_transform_loop": per_s / cores / plain_per_s,
        "cpu_fraction_of_transform_loop": per_cpu_s / plain_per_cpu_s,
      }
    )
  return {
    "source": described,
    "mean_record_bytes": mean_bytes,
    "color_jitter": jitter,
    "transform_loop_images_per_s": plain_per_s,
    "transform_loop_images_per_cpu_s": plain_per_cpu_s,
    "transform_loop_windows": plain_measured,
    "output": f"{config.image_size}px after resize to "
    f"{config.image_size + config.resize_margin}px, crop, flip",
    **runs[0],
    "runs": runs,
  }


def measure_training(config: ml_collections.ConfigDict, fv: flags.FlagValues) -> dict[str, Any]:
  """JAX (and, with --compare=torch, PyTorch) train-step speed, FLOPs and memory."""
  rng = np.random.default_rng(config.seed)
  size = config.image_size
  images = rng.integers(0, 256, (config.batch_size, size, size, 3), np.uint8)
  labels = rng.integers(0, fv.num_classes, (config.batch_size,)).astype(np.int32)
  jax_results, jax_window = benchmark_jax(config, fv.num_classes, images, labels)
  model = jax_results.pop("model")
  timers, results = {"jax": jax_window}, {"jax": jax_results}
  if fv.compare == "torch":
    results["torch"], timers["torch"] = benchmark_torch(
      model, config, images, labels, on_gpu=jax_results["platform"] == "gpu"
    )
  seconds = {name: [] for name in timers}
  for _ in range(fv.windows):  # Interleaved, so drifting machine load hits both alike.
    for name, window in timers.items():
      seconds[name].append(window(fv.steps_per_window))
  for name in timers:
    results[name].update(_median_speed(seconds[name], fv.steps_per_window, config.batch_size))
  jax_results["images_per_s_per_device"] = jax_results["images_per_s"] / jax_results["devices"]
  flops = jax_results["flops_per_step_xla"] or jax_results["flops_per_step_analytic"]
  peak = peak_flops(jax_results["device_kind"], config.dtype)
  jax_results["flops_source"] = (
    "xla cost_analysis"
    if jax_results["flops_per_step_xla"]
    else "analytic (performance.md)"
    if flops
    else None
  )
  jax_results["achieved_flops_per_s"] = flops * jax_results["steps_per_s"] if flops else None
  jax_results["peak_flops_per_device"] = peak
  jax_results["mfu"] = (
    flops * jax_results["steps_per_s"] / (peak * jax_results["devices"]) if flops and peak else None
  )
  if "torch" in results:
    results["ratio_jax_over_torch"] = jax_results["images_per_s"] / results["torch"]["images_per_s"]
  return results


def run_benchmark(config: ml_collections.ConfigDict, fv: flags.FlagValues) -> dict[str, Any]:
  """Every measurement the flags ask for, as one JSON-ready dictionary."""
  if fv.windows < 1 or fv.steps_per_window < 1:
    raise app.UsageError("--windows and --steps_per_window must be at least 1.")
  if not fv.train_step and (fv.compare or not fv.pipeline):
    raise app.UsageError(
      "--notrain_step measures only the input pipeline: add --pipeline and drop --compare."
    )
  if fv.compare == "torch":
    # Before anything imports tensorflow (tfds does, for --pipeline): the other order segfaults.
    import torch  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    import torchvision  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  load_before = os.getloadavg()
  results = measure_training(config, fv) if fv.train_step else {}
  if fv.pipeline:
    results["pipeline"] = benchmark_pipeline(config, fv, fv.num_classes)
  results["setup"] = {
    "model": config.model.name,
    "image_size": config.image_size,
    "batch_size": config.batch_size,
    "dtype": config.dtype,
    "optimizer": config.optimizer,
    "learning_rate": config.learning_rate,
    "windows": fv.windows,
    "steps_per_window": fv.steps_per_window,
    "num_classes": fv.num_classes,
    "cores": _cores(),
    "jax_version": jax.__version__,
    "python": platform.python_version(),
    "load_average_before": load_before,
    "load_average_after": os.getloadavg(),
    "host_max_rss_bytes_end": _max_rss_bytes(),
    "command": " ".join(sys.argv),
    "environment": {name: os.environ.get(name) for name in _RECORDED_ENVIRONMENT},
  }
  return results


def _fmt(value: float | None, scale: float = 1.0, spec: str = ".2f", unit: str = "") -> str:
  return "n/a" if value is None else f"{value / scale:{spec}}{unit}"


def format_report(results: dict[str, Any]) -> str:
  """A compact human-readable report; ends with the ratio line when torch was compared."""
  setup = results["setup"]
  lines = [
    f"{setup['model']} {setup['image_size']}px batch {setup['batch_size']} "
    f"{setup['dtype']} {setup['optimizer']} lr {setup['learning_rate']} | "
    f"{setup['cores']} cores, load {setup['load_average_before'][0]:.2f} -> "
    f"{setup['load_average_after'][0]:.2f}"
  ]
  if "jax" in results:
    jx = results["jax"]
    lines += [
      f"jax   {jx['params']:,} params on {jx['devices']} x {jx['device_kind']}: "
      f"{jx['steps_per_s']:.3f} steps/s, {jx['images_per_s']:.2f} img/s (median of "
      f"{setup['windows']} x {setup['steps_per_window']} steps); compile "
      f"{jx['compile_s']:.2f} s, first step {jx['first_step_s']:.2f} s",
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
  if "pipeline" in results:
    pl = results["pipeline"]
    lines.append(
      f"input {pl['source']} ({_fmt(pl['mean_record_bytes'], 1024, '.1f', ' KiB')} "
      f"each) -> {pl['output']}"
      + (f", colour jitter {pl['color_jitter']}" if pl["color_jitter"] else "")
      + f"; the transform alone, in a loop: "
      f"{pl['transform_loop_images_per_s']:.0f} img/s, "
      f"{pl['transform_loop_images_per_cpu_s']:.0f} per CPU-second"
    )
    for run in pl["runs"]:
      lines.append(
        f"      {run['workers']} workers: {run['images_per_s']:.0f} img/s = "
        f"{run['images_per_s_per_core']:.0f} img/s per core "
        f"({100 * run['fraction_of_transform_loop']:.0f}% of the transform alone); "
        f"{run['images_per_cpu_s']:.0f} per CPU-second "
        f"({100 * run['cpu_fraction_of_transform_loop']:.0f}%)"
      )
  if "torch" in results:
    lines.append(f"{RATIO_PREFIX}{results['ratio_jax_over_torch']:.2f}")
  return "\n".join(lines)


def main(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
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
  define_flags()
  app.run(main)
