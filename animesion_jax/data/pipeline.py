"""grain input pipelines over TFDS ArrayRecord sources.

Train: an endless stream of per-process batches, reshuffled every epoch from the seed, with a
checkpointable iterator (so a resumed run sees exactly the batches it would have seen). An epoch
is ceil(N / batch) steps, as the original's DataLoader (no drop_last): the last batch of an epoch
is short, so it is padded to the full size with repeats of its own examples and carries a
'mask' (1 real, 0 padding) that the train step uses to average over real examples only.
Eval: every example of the split exactly once; the last partial batch is padded and masked.

The train pipeline works a batch at a time: a step number goes in, the step's batch comes out,
its records read with one batched read and decoded in one plain loop. Its random draws (epoch
permutation, crop corners, flips, colour jitter) are functions of (seed, step) drawn for the
whole global batch, of which each process keeps its rows, so P processes together see exactly
the batches that one process would see alone.
"""

from collections.abc import Iterator, Sequence
import dataclasses
import functools
import math
from typing import Any

import grain.python as grain
import jax
import numpy as np

from animesion_jax.data import class_balanced
from animesion_jax.data import color_jitter as color_jitter_lib
from animesion_jax.data import preprocess

# Steps the train stream can run: far beyond any training run (the stream is "endless").
MAX_STEPS = 2**40
# Worker processes hand over arrays of at least this many bytes in shared memory, smaller ones
# pickled through the worker's pipe. A new shared-memory segment per array (create, register with
# the resource tracker, fault its pages in twice, unlink) cost a few milliseconds each: with
# grain's default (every array in shared memory) one worker decoded 57-73% as many pictures per
# CPU-second as a plain loop, with 32-picture batches at 128 px (1.5 MiB); through the pipe 95-99%.
# From about 4 MiB up, the pipe's extra copies cost more than a segment
# (docs/recipe_differences.md, "Input pipeline with workers").
MIN_SHARED_MEMORY_BYTES = 4 << 20


def per_process_batch_size(global_batch_size: int) -> int:
  if global_batch_size % jax.process_count():
    raise ValueError(
      f"Batch size {global_batch_size} is not divisible by the {jax.process_count()} processes."
    )
  return global_batch_size // jax.process_count()


def steps_per_epoch(num_examples: int, global_batch_size: int) -> int:
  """Train steps of one epoch: ceil(N / batch), the last one short (padded and masked)."""
  if num_examples < 1:
    raise ValueError("The training split is empty.")
  return math.ceil(num_examples / global_batch_size)


@functools.lru_cache(maxsize=2)
def epoch_order(num_records: int, seed: int, epoch: int) -> np.ndarray:
  return np.random.default_rng([seed, epoch, 0x5EED]).permutation(num_records)


@dataclasses.dataclass(frozen=True)
class TrainBatch(grain.MapTransform):
  """Step number -> this process's rows of that step's augmented global batch.

  The paper's augmentation (resize to S+margin, random SxS crop, random horizontal flip), then
  torchvision-style colour jitter when `color_jitter` > 0.
  """

  source: Sequence[Any]
  global_batch_size: int
  image_size: int
  resize_margin: int
  horizontal_flip: bool
  seed: int
  color_jitter: float = 0.0
  # Fixed here, in the main process: grain's worker processes have no jax.distributed.
  process_index: int = 0
  process_count: int = 1
  # Draw each row class-balanced (with replacement) instead of the epoch's permutation.
  sampler: class_balanced.ClassBalancedSampler | None = None

  def map(self, step: int) -> dict[str, np.ndarray]:
    num_records, batch = len(self.source), self.global_batch_size
    epoch, position = divmod(int(step), steps_per_epoch(num_records, batch))
    if self.sampler is not None:  # Every row real: no short last batch.
      real = self.sampler.sample(np.random.default_rng([self.seed, int(step), 0xBA1]), batch)
    else:
      real = epoch_order(num_records, self.seed, epoch)[position * batch : (position + 1) * batch]
    # Global rows: real examples, then repeats of them (padding; masked out of the loss).
    rows = np.arange(batch)
    indices = real[rows % len(real)]
    rng = np.random.default_rng([self.seed, epoch, position])
    corners = rng.integers(0, self.resize_margin + 1, size=(batch, 2))
    flips = rng.random(batch) < 0.5 if self.horizontal_flip else np.zeros(batch, bool)
    if self.color_jitter > 0:
      factors, jitter_order = color_jitter_lib.draw_parameters(rng, batch, self.color_jitter)
    # This process's rows.
    local = batch // self.process_count
    mine = slice(self.process_index * local, (self.process_index + 1) * local)
    records = _read(self.source, [int(i) for i in indices[mine]])
    size, big = self.image_size, self.image_size + self.resize_margin
    images = np.empty((local, size, size, 3), np.uint8)
    for row, (record, (top, left), flip) in enumerate(zip(records, corners[mine], flips[mine])):
      preprocess.crop_into(
        preprocess.decode_resized(record["image"], big), top, left, flip, images[row]
      )
    if self.color_jitter > 0:
      for row, (f, o) in enumerate(zip(factors[mine], jitter_order[mine])):
        images[row] = color_jitter_lib.jitter_uint8(images[row], f, o)
    return {
      "image": images,
      "label": np.asarray([r["label"] for r in records], np.int32),
      "mask": (rows[mine] < len(real)).astype(np.float32),
    }


def _read(source: Sequence[Any], indices: list[int]) -> list[Any]:
  """Records at `indices`: one batched read where the source offers it (ArrayRecord does)."""
  if hasattr(source, "__getitems__"):
    return list(source.__getitems__(indices))
  return [source[i] for i in indices]


def train_loader(
  source: Sequence[Any],
  *,
  global_batch_size: int,
  image_size: int,
  resize_margin: int,
  horizontal_flip: bool,
  seed: int,
  workers: int = 0,
  color_jitter: float = 0.0,
  class_balanced_labels: np.ndarray | None = None,
) -> grain.IterDataset:
  """Endless, per-epoch-shuffled, augmented uint8 batches: this process's part of each step.

  Batches hold 'image' (uint8), 'label' (int32) and 'mask' (float32, 0 on the padding rows of
  an epoch's last, short batch). Iterate with `iter(loader)`; the iterator's
  `get_state()`/`set_state()` checkpoint its position (grain.PyGrainCheckpointSave).
  With `class_balanced_labels` (the label of each record of `source`), each row is drawn
  class-balanced (class_balanced.py); an "epoch" is then just ceil(N / batch) steps.
  """
  per_process_batch_size(global_batch_size)  # Checks divisibility up front.
  color_jitter_lib.check_host_path(color_jitter)
  steps_per_epoch(len(source), global_batch_size)
  transform = TrainBatch(
    source,
    global_batch_size,
    image_size,
    resize_margin,
    horizontal_flip,
    seed,
    color_jitter,
    jax.process_index(),
    jax.process_count(),
    None
    if class_balanced_labels is None
    else class_balanced.ClassBalancedSampler.from_labels(class_balanced_labels),
  )
  # One background thread decodes the next batch while the caller uses this one (decoding
  # releases the GIL); more parallelism comes from worker processes.
  batches = (
    grain.MapDataset.range(MAX_STEPS)
    .map(transform)
    .to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2))
  )
  return prefetch_in_workers(batches, workers)


def prefetch_in_workers(batches: grain.IterDataset, workers: int) -> grain.IterDataset:
  """`batches` computed in `workers` processes (none: in this one), handed over as above."""
  if workers <= 0:
    return batches
  handover = grain.experimental.DatasetOptions(min_shm_size=MIN_SHARED_MEMORY_BYTES)
  batches = grain.experimental.WithOptionsIterDataset(batches, handover)
  return batches.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))


def num_eval_batches(num_examples: int, global_batch_size: int) -> int:
  """Batches every process iterates (the same count everywhere, so collectives line up)."""
  per_process_examples = math.ceil(num_examples / jax.process_count())
  return max(1, math.ceil(per_process_examples / per_process_batch_size(global_batch_size)))


def eval_batches(
  source: Sequence[Any], *, global_batch_size: int, image_size: int, workers: int = 0
) -> Iterator[dict[str, np.ndarray]]:
  """Yields per-process batches with 'image', 'label', 'index' and 'mask' (1 real, 0 padding)."""
  batch_size = per_process_batch_size(global_batch_size)
  # A contiguous slice per process, read in order.
  start = len(source) * jax.process_index() // jax.process_count()
  stop = len(source) * (jax.process_index() + 1) // jax.process_count()
  batches = (
    grain.MapDataset.source(source)[start:stop]
    .map(preprocess.EvalPreprocess(image_size))
    .batch(batch_size)
    .to_iter_dataset()
  )
  batches = prefetch_in_workers(batches, workers)
  emitted = 0
  for batch in batches:
    yield _pad(batch, batch_size, image_size, first_index=start + emitted * batch_size)
    emitted += 1
  # Processes with fewer examples pad with empty batches so all run the same number of steps.
  for _ in range(num_eval_batches(len(source), global_batch_size) - emitted):
    yield _pad(None, batch_size, image_size, first_index=-1)


def _pad(
  batch: dict[str, np.ndarray] | None, batch_size: int, image_size: int, first_index: int
) -> dict[str, np.ndarray]:
  """Pads a (possibly short or absent) batch to batch_size, adding 'index' and 'mask'."""
  count = 0 if batch is None else len(batch["label"])
  padded = {
    "image": np.zeros((batch_size, image_size, image_size, 3), np.uint8),
    "label": np.zeros((batch_size,), np.int32),
    "index": np.full((batch_size,), -1, np.int64),
    "mask": np.zeros((batch_size,), np.float32),
  }
  if count:
    padded["image"][:count] = batch["image"]
    padded["label"][:count] = batch["label"]
    padded["index"][:count] = np.arange(first_index, first_index + count)
    padded["mask"][:count] = 1.0
  return padded
