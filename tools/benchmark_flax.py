"""tools/benchmark.py's JAX side: the train step, the evaluation step and predict on a config's
model, timed in windows between device synchronisations, with FLOPs and the devices' peak rates.
"""

from collections.abc import Callable
import re
import resource
import sys
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from animesion_jax import models
from animesion_jax import recognizer
from animesion_jax import sharding
from animesion_jax.training import config_validation
from animesion_jax.training import evaluation
from animesion_jax.training import model_setup

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


def max_rss_bytes() -> int:
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


_COPY = re.compile(r"^\s*(?:ROOT )?%\S+ = (\w+)\[([\d,]*)\]\S* copy\(", re.MULTILINE)
_BYTES = {"f32": 4, "s32": 4, "u32": 4, "bf16": 2, "f16": 2, "pred": 1, "u8": 1, "s8": 1}


def entry_copies(hlo_text: str) -> tuple[int, int]:
  """(copies, their bytes) in the entry computation of an optimized HLO module's text: what XLA
  copies at the top level of a step (every donated momentum buffer, when it cannot update in
  place; docs/recipe_differences.md)."""
  entry = hlo_text[hlo_text.find("\nENTRY") :]
  entry = entry[: entry.find("\n}")]
  copies = _COPY.findall(entry)
  size = sum(
    _BYTES.get(dtype, 4) * int(np.prod([int(n) for n in dims.split(",") if n]))
    for dtype, dims in copies
  )
  return len(copies), size


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
    "host_max_rss_bytes_after_jax_setup": max_rss_bytes(),
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
  from animesion_jax.training import jit_step  # pylint: disable=g-import-not-at-top

  config_validation.validate(config, num_devices=jax.device_count())
  mesh = sharding.create_mesh(fsdp_size=config.fsdp_size)
  setup = model_setup.create(config, num_classes, mesh, steps_per_epoch=1000, total_steps=10**6)
  batch = _global_batch(images, labels, mesh)
  batch.pop("mask")
  train_fn = jit_step.jit_train_step(setup, config, mesh)
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

  copies, copy_bytes = entry_copies(compiled.as_text())
  facts.update(
    compile_s=compile_s,
    first_step_s=first_step_s,
    donated=jit_step.donated(config) or "nothing",
    step_copies=copies,
    step_copy_bytes=copy_bytes,
  )
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


def jax_predict_timer(
  config: ml_collections.ConfigDict, model: Any, variables: Any, mesh: Any, files: list[Any]
) -> tuple[Callable[[], float], None]:
  """A timer of predict.predict_files over `files` (a Recognizer of the benchmarked model).

  The recognizer's predict function is built once and compiles on the first pass only (the
  warm-up), so no per-pass compile time is returned.
  """
  from animesion_jax import predict  # pylint: disable=g-import-not-at-top

  run = recognizer.Recognizer(
    config=config,
    model=model,
    variables=variables,
    class_names=[f"class {i}" for i in range(model.num_classes)],
    mesh=mesh,
    checkpoint="(random initialisation)",
  )
  batch_size = sharding.round_up_batch(config.batch_size, mesh.size)

  def window() -> float:
    start = time.perf_counter()
    results, errors = predict.predict_files(run, files, batch_size=batch_size)
    if errors or len(results) != len(files):
      raise RuntimeError(f"predict_files classified {len(results)} of {len(files)}: {errors}")
    return time.perf_counter() - start

  return window, None


def random_batch(config: ml_collections.ConfigDict, num_classes: int):
  """One random uint8 image batch and its labels (the same in every process of a run)."""
  rng = np.random.default_rng(config.seed)
  size = config.image_size
  images = rng.integers(0, 256, (config.batch_size, size, size, 3), np.uint8)
  return images, rng.integers(0, num_classes, (config.batch_size,)).astype(np.int32)


def add_flops(jax_results: dict[str, Any], dtype: str) -> None:
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
