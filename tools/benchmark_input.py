"""tools/benchmark.py --pipeline: the grain train loader's images/s per worker core, next to the same
per-image work in a plain loop, over generated JPEGs or a built TFDS dataset.
"""

import concurrent.futures
import io
import multiprocessing
import os
import statistics
import time
from typing import Any

from absl import flags
import ml_collections
import numpy as np
from PIL import Image
import psutil

from animesion_jax.data import datasets
from animesion_jax.data import pipeline
from animesion_jax.data import preprocess


def cores() -> int:
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


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


def _plain_loop_in_a_process(
  source: list[Any], config_values: dict[str, Any], count: int, start_together: Any
) -> float:
  """Pictures per CPU-second of the plain transform loop in a child process: a warm-up window,
  then (once every sibling is warm too) the timed one."""
  config = ml_collections.ConfigDict(config_values)
  window = _transform_loop(source, config, count)
  window()
  start_together.wait()
  wall, cpu = window()
  return count / cpu if cpu > 0 else count / wall


def concurrent_plain_loops(
  source: Any, config: ml_collections.ConfigDict, processes: int, count: int
) -> float | None:
  """Mean pictures per CPU-second of `processes` plain loops run at once, one per process.

  The fair reference for that many workers: cores that work at the same time share caches and
  memory bandwidth (two loops at once each did ~84% of one alone on this project's 2-core
  machine). None for a TFDS source (its records are not copied into the child processes).
  """
  if not isinstance(source, list):
    return None
  fields = ("image_size", "resize_margin", "horizontal_flip", "seed")
  values = {name: config[name] for name in fields}
  context = multiprocessing.get_context("spawn")
  # The children start at different times (each imports this tool): a barrier lines up their
  # timed windows, so that they really run at once.
  with (
    context.Manager() as manager,
    concurrent.futures.ProcessPoolExecutor(processes, mp_context=context) as pool,
  ):
    start_together = manager.Barrier(processes)
    futures = [
      pool.submit(_plain_loop_in_a_process, source, values, count, start_together)
      for _ in range(processes)
    ]
    rates = [future.result() for future in futures]
  return statistics.mean(rates)


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


def _per_cpu_second(images: int, cpu_seconds: list[float]) -> float | None:
  """Images per CPU-second; None when the windows were shorter than the CPU clock's tick (10 ms).

  (A loader whose batches were already buffered can take no CPU time in a short window.)
  """
  median = statistics.median(cpu_seconds)
  return images / median if median > 0 else None


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
  plain_per_cpu_s = _per_cpu_second(images, [cpu for _, cpu in plain_measured])
  at_once = {
    n: concurrent_plain_loops(source, config, n, max(images, 1000))
    for n in sorted({min(max(workers, 1), cores()) for workers in counts} - {1})
  }
  runs = []
  for workers in counts:
    per_s = images / statistics.median(wall for wall, _ in measured[workers])
    per_cpu_s = _per_cpu_second(images, [cpu for _, cpu in measured[workers]])
    used = min(max(workers, 1), cores())
    runs.append(
      {
        "workers": workers,
        "cores": used,
        "images": images,
        "windows": measured[workers],
        "images_per_s": per_s,
        "images_per_s_per_core": per_s / used,
        "images_per_cpu_s": per_cpu_s,
        "fraction_of_transform_loop": per_s / used / plain_per_s,
        "cpu_fraction_of_transform_loop": (
          per_cpu_s / plain_per_cpu_s if per_cpu_s and plain_per_cpu_s else None
        ),
        # Against as many plain loops at once as cores in use (None for one core, or TFDS data).
        "cpu_fraction_of_loops_at_once": (
          per_cpu_s / at_once[used] if per_cpu_s and at_once.get(used) else None
        ),
      }
    )
  return {
    "source": described,
    "mean_record_bytes": mean_bytes,
    "color_jitter": jitter,
    "transform_loop_images_per_s": plain_per_s,
    "transform_loop_images_per_cpu_s": plain_per_cpu_s,
    "transform_loop_windows": plain_measured,
    # Pictures per CPU-second of each of N plain loops run at once, by N (N > 1).
    "transform_loops_at_once_images_per_cpu_s": at_once,
    "output": f"{config.image_size}px after resize to "
    f"{config.image_size + config.resize_margin}px, crop, flip",
    **runs[0],
    "runs": runs,
  }
