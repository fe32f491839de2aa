"""grain input pipelines of pictures with head boxes (synthetic_scenes), for the detector.

As data/pipeline.py for crops: the train stream maps a step number to that step's batch (so the
iterator's position is checkpointable and a resumed run sees the same batches), each epoch a
seeded permutation, the short last batch padded and masked. A picture is letterboxed into the
square input (detection/boxes.py): in training at a random zoom in [min_zoom, 1] and a random
place, flipped at random; its boxes follow. Batches hold 'image' uint8 [B, S, S, 3], 'boxes'
float32 [B, K, 4] (input pixels), 'box_mask' float32 [B, K] and 'mask' float32 [B].
"""

from collections.abc import Iterator, Sequence
import dataclasses
import io
from typing import Any

import grain.python as grain
import jax
import numpy as np
from PIL import Image

from animesion_jax.data import pipeline
from animesion_jax.detection import boxes as boxes_lib


def decode(record: dict[str, Any]) -> tuple[Image.Image, np.ndarray, np.ndarray]:
  """(picture, boxes [K, 4] in its pixels, labels [K]) of a synthetic_scenes record."""
  picture = Image.open(io.BytesIO(record["image"]))
  picture.load()
  objects = record["objects"]
  boxes = np.asarray(objects["box"], np.float32).reshape(-1, 4)
  labels = np.asarray(objects["label"], np.int64).reshape(-1)
  return picture, boxes, labels


def _padded(boxes: np.ndarray, max_boxes: int) -> tuple[np.ndarray, np.ndarray]:
  """Boxes [max_boxes, 4] (the largest kept when there are more) and their mask."""
  if len(boxes) > max_boxes:
    boxes = boxes[np.argsort(-boxes[:, 2] * boxes[:, 3])[:max_boxes]]
  out = np.zeros((max_boxes, 4), np.float32)
  out[: len(boxes)] = boxes
  mask = np.zeros((max_boxes,), np.float32)
  mask[: len(boxes)] = 1.0
  return out, mask


@dataclasses.dataclass(frozen=True)
class SceneBatch(grain.MapTransform):
  """Step number -> this process's rows of that step's augmented global batch."""

  source: Sequence[Any]
  global_batch_size: int
  image_size: int
  max_boxes: int
  min_zoom: float
  horizontal_flip: bool
  seed: int
  process_index: int = 0
  process_count: int = 1

  def map(self, step: int) -> dict[str, np.ndarray]:
    num_records, batch = len(self.source), self.global_batch_size
    epoch, position = divmod(int(step), pipeline.steps_per_epoch(num_records, batch))
    real = pipeline.epoch_order(num_records, self.seed, epoch)[
      position * batch : (position + 1) * batch
    ]
    rows = np.arange(batch)
    indices = real[rows % len(real)]
    rng = np.random.default_rng([self.seed, epoch, position, 0xB0C5])
    zooms = rng.uniform(self.min_zoom, 1.0, batch)
    offsets = rng.random((batch, 2))
    flips = rng.random(batch) < 0.5 if self.horizontal_flip else np.zeros(batch, bool)
    local = batch // self.process_count
    mine = slice(self.process_index * local, (self.process_index + 1) * local)
    side = self.image_size
    out = {
      "image": np.empty((local, side, side, 3), np.uint8),
      "boxes": np.zeros((local, self.max_boxes, 4), np.float32),
      "box_mask": np.zeros((local, self.max_boxes), np.float32),
      "mask": (rows[mine] < len(real)).astype(np.float32),
    }
    for row, i in enumerate(range(mine.start, mine.stop)):
      picture, boxes, _ = decode(self.source[int(indices[i])])
      image, placement = boxes_lib.letterbox(picture, side, zooms[i], tuple(offsets[i]))
      boxes = placement.to_input(boxes)
      if flips[i]:
        image = image[:, ::-1]
        boxes[:, 0] = side - boxes[:, 0] - boxes[:, 2]
      out["image"][row] = image
      out["boxes"][row], out["box_mask"][row] = _padded(boxes, self.max_boxes)
    return out


def train_loader(
  source: Sequence[Any],
  *,
  global_batch_size: int,
  image_size: int,
  max_boxes: int,
  min_zoom: float,
  horizontal_flip: bool,
  seed: int,
  workers: int = 0,
) -> grain.IterDataset:
  """Endless augmented batches of this process (iterate with `iter`; checkpointable)."""
  pipeline.per_process_batch_size(global_batch_size)
  pipeline.steps_per_epoch(len(source), global_batch_size)
  transform = SceneBatch(
    source,
    global_batch_size,
    image_size,
    max_boxes,
    min_zoom,
    horizontal_flip,
    seed,
    jax.process_index(),
    jax.process_count(),
  )
  batches = (
    grain.MapDataset.range(pipeline.MAX_STEPS)
    .map(transform)
    .to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2))
  )
  return pipeline.prefetch_in_workers(batches, workers)


@dataclasses.dataclass
class EvalBatch:
  """Letterboxed pictures and what maps detections back onto them."""

  images: np.ndarray  # uint8 [B, S, S, 3]; rows past `count` are padding.
  count: int
  placements: list[boxes_lib.Placement]
  sizes: list[tuple[int, int]]  # (width, height) of each picture.
  boxes: list[np.ndarray]  # Ground truth [K, 4] in picture pixels.
  labels: list[np.ndarray]  # Ground truth characters [K].
  indices: list[int]  # Record indices in the source.


def eval_batches(source: Sequence[Any], *, batch_size: int, image_size: int) -> Iterator[EvalBatch]:
  """Every picture of `source` once, in order, in batches of `batch_size` (the last padded)."""
  for start in range(0, len(source), batch_size):
    indices = list(range(start, min(start + batch_size, len(source))))
    batch = EvalBatch(
      np.zeros((batch_size, image_size, image_size, 3), np.uint8), len(indices), [], [], [], [], []
    )
    for row, index in enumerate(indices):
      picture, boxes, labels = decode(source[index])
      batch.images[row], placement = boxes_lib.letterbox(picture, image_size)
      batch.placements.append(placement)
      batch.sizes.append((picture.width, picture.height))
      batch.boxes.append(boxes)
      batch.labels.append(labels)
      batch.indices.append(index)
    yield batch
