"""grain input pipelines over TFDS ArrayRecord sources.

Train: an endless stream of per-process batches, reshuffled every epoch from the seed, with a
checkpointable iterator (so a resumed run sees exactly the batches it would have seen).
Eval: every example of the split exactly once; the last partial batch is padded and masked.
"""

import math
from typing import Any, Iterator, Sequence

import grain.python as grain
import jax
import numpy as np

from animesion_jax.data import preprocess


def per_process_batch_size(global_batch_size: int) -> int:
  if global_batch_size % jax.process_count():
    raise ValueError(f"Batch size {global_batch_size} is not divisible by the "
                     f"{jax.process_count()} processes.")
  return global_batch_size // jax.process_count()


class _ProcessSlice(grain.Sampler):
  """This process's slice of each global batch of a globally shuffled record stream.

  Every process shuffles the whole dataset with the same seed and takes rows
  [p*b, (p+1)*b) of each global batch (b = per-process batch). So P processes together see
  exactly the batches, augmentation draws included, that one process would see alone.
  """

  def __init__(self, num_records: int, seed: int, per_process_batch: int):
    self._global = grain.IndexSampler(num_records=num_records, shard_options=grain.NoSharding(),
                                      shuffle=True, num_epochs=None, seed=seed)
    self._batch = per_process_batch
    self._process, self._count = jax.process_index(), jax.process_count()

  def __getitem__(self, index: int) -> grain.RecordMetadata:
    step, row = divmod(index, self._batch)
    record = self._global[(step * self._count + self._process) * self._batch + row]
    return grain.RecordMetadata(index=index, record_key=record.record_key, rng=record.rng)

  def __repr__(self) -> str:
    return (f"ProcessSlice({self._global!r}, batch={self._batch}, "
            f"process={self._process}/{self._count})")


def train_loader(source: Sequence[Any], *, global_batch_size: int, image_size: int,
                 resize_margin: int, horizontal_flip: bool, seed: int,
                 workers: int = 0) -> grain.DataLoader:
  """Endless, per-epoch-shuffled, augmented uint8 batches: this process's part of each step.

  Iterate with `iter(loader)`; the iterator's `get_state()`/`set_state()` checkpoint its position.
  """
  batch_size = per_process_batch_size(global_batch_size)
  sampler = _ProcessSlice(len(source), seed, batch_size)
  operations = [
      preprocess.TrainPreprocess(image_size, resize_margin, horizontal_flip),
      grain.Batch(batch_size, drop_remainder=True),
  ]
  # The sampler already picks this process's rows, so the loader itself must not shard.
  return grain.DataLoader(data_source=source, sampler=sampler, operations=operations,
                          worker_count=workers, shard_options=grain.NoSharding())


def num_eval_batches(num_examples: int, global_batch_size: int) -> int:
  """Batches every process iterates (the same count everywhere, so collectives line up)."""
  per_process_examples = math.ceil(num_examples / jax.process_count())
  return max(1, math.ceil(per_process_examples / per_process_batch_size(global_batch_size)))


def eval_batches(source: Sequence[Any], *, global_batch_size: int, image_size: int,
                 workers: int = 0) -> Iterator[dict[str, np.ndarray]]:
  """Yields per-process batches with 'image', 'label', 'index' and 'mask' (1 real, 0 padding)."""
  batch_size = per_process_batch_size(global_batch_size)
  # A contiguous slice per process, read in order.
  start = len(source) * jax.process_index() // jax.process_count()
  stop = len(source) * (jax.process_index() + 1) // jax.process_count()
  batches = grain.MapDataset.source(source)[start:stop].map(
      preprocess.EvalPreprocess(image_size)).batch(batch_size).to_iter_dataset()
  if workers > 0:
    batches = batches.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  emitted = 0
  for batch in batches:
    yield _pad(batch, batch_size, image_size, first_index=start + emitted * batch_size)
    emitted += 1
  # Processes with fewer examples pad with empty batches so all run the same number of steps.
  for _ in range(num_eval_batches(len(source), global_batch_size) - emitted):
    yield _pad(None, batch_size, image_size, first_index=-1)


def _pad(batch: dict[str, np.ndarray] | None, batch_size: int, image_size: int,
         first_index: int) -> dict[str, np.ndarray]:
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
