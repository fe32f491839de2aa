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
`ratio jax/torch predict: X.XX`.

--memory measures the peak host memory (RSS high-water) of the step in the chosen mode, building
and running it in a fresh process per framework so that one's peak cannot hide the other's; with
--compare=torch, `ratio jax/torch peak host memory: X.XX` precedes the speed ratios.
"""

import collections
from collections.abc import Callable
import concurrent.futures
import io
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
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
from animesion_jax import evaluation
from animesion_jax import image_files
from animesion_jax import inference
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
RATIO_PREFIX = "ratio jax/torch: "  # The train step's speed ratio: the last line in --mode=train.
# --mode=eval's last lines: the evaluation step's and predict's speed ratios.
EVAL_RATIO_PREFIX = "ratio jax/torch eval step: "
PREDICT_RATIO_PREFIX = "ratio jax/torch predict: "
MEMORY_RATIO_PREFIX = "ratio jax/torch peak host memory: "
_PROBE_ARGUMENT = "--internal_memory_probe"  # measure_memory's child: this file REQUEST.json.
_PROBE_PREFIX = "MEMORY "
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
  """This process's resident-memory high-water mark.

  Linux: VmHWM, which starts afresh at exec (ru_maxrss would carry over the parent's peak into a
  child process). Elsewhere ru_maxrss (bytes on macOS).
  """
  try:
    with open("/proc/self/status", encoding="ascii") as status:
      for line in status:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
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


def _jax_facts(
  compiled: Any, mesh: Any, model: Any, params: Any, images: int, image_size: int, passes: int
) -> dict[str, Any]:
  """What a compiled step tells about itself and the devices (FLOPs, memory, parameters).

  `passes`: forward-pass equivalents per image for the analytic ViT FLOPs (3 to train, 1 to eval).
  """
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # Older jax: one per program.
  device = mesh.devices.flat[0]
  # cost_analysis describes one device's share of the SPMD program.
  xla_flops = (cost or {}).get("flops")
  peaks = [
    stats.get("peak_bytes_in_use")
    for stats in (d.memory_stats() for d in mesh.local_devices)
    if stats
  ]
  return {
    "platform": device.platform,
    "device_kind": device.device_kind,
    "devices": mesh.size,
    "flops_per_step_xla": xla_flops * mesh.size if xla_flops else None,
    "flops_per_step_analytic": passes * vit_forward_flops(model, image_size) * images
    if hasattr(model, "hidden_size")
    else None,
    "peak_device_bytes": max(peaks) if peaks and None not in peaks else None,
    "host_max_rss_bytes_after_jax_setup": _max_rss_bytes(),
    "params": models.count_params(params),
    "model": model,
  }


def _global_batch(images: np.ndarray, labels: np.ndarray, mesh: Any) -> dict[str, jax.Array]:
  """This process's share of the batch, placed with sharding.to_global_batch (mask all ones)."""
  rows = slice(
    jax.process_index() * len(labels) // jax.process_count(),
    (jax.process_index() + 1) * len(labels) // jax.process_count(),
  )
  local = {
    "image": images[rows],
    "label": labels[rows],
    "mask": np.ones(len(labels), np.float32)[rows],
  }
  return sharding.to_global_batch(local, mesh)


def benchmark_jax(
  config: ml_collections.ConfigDict, num_classes: int, images: np.ndarray, labels: np.ndarray
) -> tuple[dict[str, Any], Callable]:
  """Builds, compiles and warms up the train step; returns its facts and a window timer."""
  # Not at the top: train imports tensorflow (through clu), and torch must be imported first.
  from animesion_jax import train  # pylint: disable=g-import-not-at-top

  config_validation.validate(config, num_devices=jax.device_count())
  mesh = sharding.create_mesh(fsdp_size=config.fsdp_size)
  setup = model_setup.create(config, num_classes, mesh, steps_per_epoch=1000, total_steps=10**6)
  batch = _global_batch(images, labels, mesh)
  batch.pop("mask")
  train_fn = train.jit_train_step(setup, config, mesh)
  start = time.perf_counter()
  compiled = train_fn.lower(setup.state, batch).compile()
  compile_s = time.perf_counter() - start
  facts = _jax_facts(
    compiled, mesh, setup.model, setup.state.params, len(labels), config.image_size, passes=3
  )
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

  facts.update(compile_s=compile_s, first_step_s=first_step_s)
  return facts, window


def jax_eval_setup(config: ml_collections.ConfigDict, num_classes: int) -> tuple[Any, Any, Any]:
  """(model, variables, mesh): freshly initialised variables placed as inference places them."""
  config_validation.validate(config, num_devices=jax.device_count())
  mesh = sharding.create_mesh(fsdp_size=config.fsdp_size)
  model = model_setup.build_model(config, num_classes)
  dummy = jax.numpy.zeros((1, config.image_size, config.image_size, 3), jax.numpy.float32)
  init = lambda: model.init(jax.random.PRNGKey(config.seed), dummy, train=False)
  shardings = sharding.state_shardings(jax.eval_shape(init), mesh)
  return model, jax.jit(init, out_shardings=shardings)(), mesh


def benchmark_jax_eval(
  config: ml_collections.ConfigDict,
  model: Any,
  variables: Any,
  mesh: Any,
  images: np.ndarray,
  labels: np.ndarray,
) -> tuple[dict[str, Any], Callable]:
  """The evaluation step (evaluation.make_eval_fn), compiled and warmed up, and a window timer."""
  eval_fn = evaluation.make_eval_fn(model, config.normalization)
  batch = _global_batch(images, labels, mesh)
  start = time.perf_counter()
  compiled = eval_fn.lower(variables, batch).compile()
  compile_s = time.perf_counter() - start
  facts = _jax_facts(
    compiled, mesh, model, variables["params"], len(labels), config.image_size, passes=1
  )

  def window(num_steps: int) -> float:
    start = time.perf_counter()
    for _ in range(num_steps):
      outputs = compiled(variables, batch)
    jax.block_until_ready(outputs)
    return time.perf_counter() - start

  facts.update(compile_s=compile_s, first_step_s=window(1))
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
  train: bool = True,
) -> tuple[dict[str, Any], Callable]:
  """The PyTorch reference's train step (or, train=False, its evaluation step in inference mode:
  model.eval() under torch.no_grad(), loss and top-5), warmed up; its facts and a window timer.
  """
  import torch  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(_cores())
  device = torch.device("cuda" if on_gpu and torch.cuda.is_available() else "cpu")
  start = time.perf_counter()
  torch.manual_seed(config.seed)
  net, source = torch_reference(model, config)
  net = net.to(device).train(train)
  if not train:
    optimizer = None
  elif config.optimizer == "sgd":
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
  x_uint8 = torch.from_numpy(images).to(device)
  y = torch.from_numpy(labels.astype(np.int64)).to(device)
  autocast_dtype = torch.bfloat16 if config.dtype == "bfloat16" else None
  normalize = _torch_normalizer(config.normalization, device)

  def forward():
    # Normalised inside the step, as the JAX step does on the device.
    with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
      return net(normalize(x_uint8)).float()

  def step():
    if optimizer is None:
      with torch.no_grad():
        logits = forward()
        loss = torch.nn.functional.cross_entropy(logits, y)
        return loss + logits.topk(min(5, logits.shape[-1]))[1][:, 0].sum()
    loss = torch.nn.functional.cross_entropy(forward(), y, label_smoothing=config.label_smoothing)
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
    "net": net,
  }
  return facts, window


def _torch_normalizer(normalization: str, device: Any) -> Callable:
  """uint8 NHWC tensor -> normalised float NCHW tensor, as preprocess.normalize does."""
  import torch  # pylint: disable=g-import-not-at-top

  mean, std = (
    torch.tensor(v, device=device).view(1, 3, 1, 1)
    for v in preprocess.NORMALIZATIONS[normalization]
  )
  return lambda x: (x.permute(0, 3, 1, 2).float() / 255.0 - mean) / std


def jax_predict_timer(
  config: ml_collections.ConfigDict, model: Any, variables: Any, mesh: Any, files: list[Any]
) -> tuple[Callable[[], float], float]:
  """A timer of predict.predict_files over `files` (a LoadedRun of the benchmarked model), and
  the seconds its predict function takes to compile (predict_files compiles it on every call).
  """
  from animesion_jax import predict  # pylint: disable=g-import-not-at-top

  run = inference.LoadedRun(
    config=config,
    model=model,
    variables=variables,
    class_names=[f"class {i}" for i in range(model.num_classes)],
    mesh=mesh,
    checkpoint="(random initialisation)",
  )
  # predict_files makes (and so compiles) its predict function on every call: timed here alone.
  batch_size = inference.round_up_batch(config.batch_size, mesh.size)
  size = config.image_size
  images = np.zeros((batch_size, size, size, 3), np.uint8)
  start = time.perf_counter()
  inference.make_predict_fn(run, 5).lower(
    variables, sharding.to_global_batch({"image": images}, mesh)["image"]
  ).compile()
  compile_s = time.perf_counter() - start

  def window() -> float:
    start = time.perf_counter()
    results, errors = predict.predict_files(run, files, batch_size=batch_size)
    if errors or len(results) != len(files):
      raise RuntimeError(f"predict_files classified {len(results)} of {len(files)}: {errors}")
    return time.perf_counter() - start

  return window, compile_s


def torch_predict_timer(
  net: Any, config: ml_collections.ConfigDict, files: list[Any], workers: int
) -> Callable[[], float]:
  """Seconds to classify `files` with the PyTorch model as a PyTorch script would.

  Pillow decode and torchvision's Resize (bilinear) in a thread pool of predict's size, the next
  batch decoding while the model runs; model.eval() under torch.no_grad(), softmax, top-5.
  """
  import torch  # pylint: disable=g-import-not-at-top
  from torchvision.transforms import functional  # pylint: disable=g-import-not-at-top

  size, batch_size = config.image_size, config.batch_size
  device = next(net.parameters()).device
  normalize = _torch_normalizer(config.normalization, device)

  def load(file: Any) -> Any:
    with Image.open(file.path) as image:
      image = functional.resize(image.convert("RGB"), [size, size])
    return functional.pil_to_tensor(image).permute(1, 2, 0)  # uint8 HWC.

  def window() -> float:
    start, classified = time.perf_counter(), 0
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
      queue, pending = iter(files), collections.deque()
      while True:
        while len(pending) < 2 * batch_size and (file := next(queue, None)) is not None:
          pending.append(pool.submit(load, file))
        if not pending:
          break
        batch = torch.stack(
          [pending.popleft().result() for _ in range(min(batch_size, len(pending)))]
        )
        with torch.no_grad():
          logits = net(normalize(batch.to(device))).float()
          probabilities, _ = logits.softmax(-1).topk(min(5, logits.shape[-1]))
        classified += len(probabilities.cpu())
    if classified != len(files):
      raise RuntimeError(f"Classified {classified} of {len(files)} images.")
    return time.perf_counter() - start

  return window


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


def _random_batch(config: ml_collections.ConfigDict, num_classes: int):
  """One random uint8 image batch and its labels (the same in every process of a run)."""
  rng = np.random.default_rng(config.seed)
  size = config.image_size
  images = rng.integers(0, 256, (config.batch_size, size, size, 3), np.uint8)
  return images, rng.integers(0, num_classes, (config.batch_size,)).astype(np.int32)


def _add_flops(jax_results: dict[str, Any], dtype: str) -> None:
  """Achieved FLOP/s and MFU from the measured speed."""
  jax_results["images_per_s_per_device"] = jax_results["images_per_s"] / jax_results["devices"]
  flops = jax_results["flops_per_step_xla"] or jax_results["flops_per_step_analytic"]
  peak = peak_flops(jax_results["device_kind"], dtype)
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


def measure_training(config: ml_collections.ConfigDict, fv: flags.FlagValues) -> dict[str, Any]:
  """JAX (and, with --compare=torch, PyTorch) train-step speed and FLOPs."""
  images, labels = _random_batch(config, fv.num_classes)
  jax_results, jax_window = benchmark_jax(config, fv.num_classes, images, labels)
  model = jax_results.pop("model")
  timers, results = {"jax": jax_window}, {"jax": jax_results}
  if fv.compare == "torch":
    results["torch"], timers["torch"] = benchmark_torch(
      model, config, images, labels, on_gpu=jax_results["platform"] == "gpu"
    )
    results["torch"].pop("net")
  seconds = {name: [] for name in timers}
  for _ in range(fv.windows):  # Interleaved, so drifting machine load hits both alike.
    for name, window in timers.items():
      seconds[name].append(window(fv.steps_per_window))
  for name in timers:
    results[name].update(_median_speed(seconds[name], fv.steps_per_window, config.batch_size))
  _add_flops(jax_results, config.dtype)
  if "torch" in results:
    results["ratio_jax_over_torch"] = jax_results["images_per_s"] / results["torch"]["images_per_s"]
  return results


def measure_eval(config: ml_collections.ConfigDict, fv: flags.FlagValues) -> dict[str, Any]:
  """Evaluation-step and predict speeds of JAX (and, with --compare=torch, of PyTorch).

  Rounds interleave every timer: each framework's --steps_per_window evaluation steps, then each
  framework's pass over a temporary folder of --predict_images generated JPEGs.
  """
  images, labels = _random_batch(config, fv.num_classes)
  model, variables, mesh = jax_eval_setup(config, fv.num_classes)
  jax_results, jax_window = benchmark_jax_eval(config, model, variables, mesh, images, labels)
  jax_results.pop("model")
  timers, results = {"jax": jax_window}, {"jax": jax_results}
  count = fv.predict_images or 4 * config.batch_size
  with tempfile.TemporaryDirectory(prefix="benchmark_predict_") as folder:
    for record in generated_jpegs(count, fv.pipeline_jpeg_size, fv.num_classes):
      with open(os.path.join(folder, record["file_name"].decode()), "wb") as f:
        f.write(record["image"])
    files, _ = image_files.find_images([folder])
    predictors, compile_s = {}, {}
    predictors["jax"], compile_s["jax"] = jax_predict_timer(config, model, variables, mesh, files)
    if fv.compare == "torch":
      results["torch"], timers["torch"] = benchmark_torch(
        model, config, images, labels, on_gpu=jax_results["platform"] == "gpu", train=False
      )
      net = results["torch"].pop("net")
      predictors["torch"] = torch_predict_timer(net, config, files, _predict_workers())
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
  _add_flops(jax_results, config.dtype)
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
  if "torch" in results:
    results["ratio_jax_over_torch"] = jax_results["images_per_s"] / results["torch"]["images_per_s"]
    predicted = results["predict"]
    predicted["ratio_jax_over_torch"] = (
      predicted["jax"]["images_per_s"] / predicted["torch"]["images_per_s"]
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
  images, labels = _random_batch(config, request["num_classes"])
  if framework == "torch":
    model = model_setup.build_model(config, request["num_classes"])
    _, window = benchmark_torch(
      model, config, images, labels, on_gpu=request["platform"] == "gpu", train=train
    )
  elif train:
    _, window = benchmark_jax(config, request["num_classes"], images, labels)
  else:
    model, variables, mesh = jax_eval_setup(config, request["num_classes"])
    _, window = benchmark_jax_eval(config, model, variables, mesh, images, labels)
  after_setup = _max_rss_bytes()
  window(request["steps"])
  return {
    "rss_after_imports_bytes": rss_after_imports,
    "max_rss_after_setup_bytes": after_setup,
    "peak_rss_bytes": _max_rss_bytes(),
    "peak_over_imports_bytes": _max_rss_bytes() - rss_after_imports,
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
    results["pipeline"] = benchmark_pipeline(config, fv, fv.num_classes)
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
  if "predict" in results:
    pr = results["predict"]
    for name in ("jax", "torch"):
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
  if sys.argv[1:2] == [_PROBE_ARGUMENT]:
    with open(sys.argv[2], encoding="utf-8") as request_file:
      print(_PROBE_PREFIX + json.dumps(memory_probe(json.load(request_file))), flush=True)
  else:
    define_flags()
    app.run(main)
