"""The train input pipeline: epochs with a short last batch, exact resume, process slices,
augmentation distribution, and the fast decoder's agreement with Pillow."""

import io
import os
import time

import jax
import numpy as np
from PIL import Image
import pytest

from animesion_jax.data import pipeline
from animesion_jax.data import preprocess


class _CoordinateSource:
  """PNG records whose pixels tell where they came from: row y holds y in channel 0, column x
  holds x in channel 1, channel 2 holds the record index (label = index)."""

  def __init__(self, count: int, size: int):
    ys, xs = np.mgrid[0:size, 0:size]
    self.records = []
    for index in range(count):
      pixels = np.stack([ys, xs, np.full_like(xs, index)], axis=-1).astype(np.uint8)
      buffer = io.BytesIO()
      Image.fromarray(pixels).save(buffer, format="PNG")
      self.records.append({"image": buffer.getvalue(), "label": index})

  def __len__(self):
    return len(self.records)

  def __getitem__(self, index):
    return self.records[index]


def _loader(source, **overrides):
  kwargs = dict(global_batch_size=32, image_size=16, resize_margin=4, horizontal_flip=True, seed=3)
  kwargs.update(overrides)
  return pipeline.train_loader(source, **kwargs)


def test_steps_per_epoch_counts_the_short_last_batch():
  assert pipeline.steps_per_epoch(11_452, 1024) == 12  # moeImouto's train split at batch 1024.
  assert pipeline.steps_per_epoch(1024, 1024) == 1
  assert pipeline.steps_per_epoch(1025, 1024) == 2
  assert pipeline.steps_per_epoch(5, 64) == 1
  with pytest.raises(ValueError, match="empty"):
    pipeline.steps_per_epoch(0, 64)


def test_every_epoch_sees_every_example_once_and_pads_its_last_batch():
  source = _CoordinateSource(count=100, size=20)
  batches = iter(_loader(source))
  orders = []
  for _ in range(2):  # Two epochs of ceil(100 / 32) = 4 steps.
    real = []
    for step in range(4):
      batch = next(batches)
      assert batch["image"].shape == (32, 16, 16, 3) and batch["image"].dtype == np.uint8
      np.testing.assert_array_equal(batch["image"][:, 0, 0, 2], batch["label"])
      mask = batch["mask"]
      assert mask.dtype == np.float32
      assert mask.sum() == (32 if step < 3 else 100 - 3 * 32)
      # Real rows first; padding rows repeat this batch's real examples.
      np.testing.assert_array_equal(mask, np.arange(32) < mask.sum())
      assert set(batch["label"][mask == 0]) <= set(batch["label"][mask == 1])
      real.extend(batch["label"][mask == 1].tolist())
    assert sorted(real) == list(range(100))
    orders.append(real)
  assert orders[0] != orders[1]  # Reshuffled every epoch.


def test_resumed_iterator_continues_exactly():
  source = _CoordinateSource(count=40, size=20)
  batches = iter(_loader(source, global_batch_size=16, color_jitter=0.1))
  for _ in range(3):
    next(batches)
  state = batches.get_state()
  expected = [next(batches) for _ in range(4)]  # Crosses an epoch boundary (3 steps each).
  resumed = iter(_loader(source, global_batch_size=16, color_jitter=0.1))
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    for key in ("image", "label", "mask"):
      np.testing.assert_array_equal(got[key], want[key])


def test_processes_take_their_rows_of_the_same_global_batches(monkeypatch):
  source = _CoordinateSource(count=50, size=20)
  alone = [b for _, b in zip(range(4), iter(_loader(source, color_jitter=0.1)))]
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  parts = []
  for process in range(2):
    monkeypatch.setattr(jax, "process_index", lambda process=process: process)
    parts.append([b for _, b in zip(range(4), iter(_loader(source, color_jitter=0.1)))])
  for step in range(4):
    for key in ("image", "label", "mask"):
      np.testing.assert_array_equal(
        np.concatenate([parts[0][step][key], parts[1][step][key]]), alone[step][key]
      )


def test_crop_and_flip_distribution():
  source = _CoordinateSource(count=64, size=20)
  batches = iter(_loader(source))
  corners, flips = [], []
  for _ in range(50):
    batch = next(batches)
    for image in batch["image"]:
      flipped = image[0, 0, 1] > image[0, -1, 1]
      columns = image[0, :, 1][::-1] if flipped else image[0, :, 1]
      top, left = int(image[0, 0, 0]), int(columns[0])
      np.testing.assert_array_equal(columns, np.arange(left, left + 16))  # A real 16 px crop.
      np.testing.assert_array_equal(image[:, 0, 0], np.arange(top, top + 16))
      corners.append((top, left))
      flips.append(flipped)
  corners = np.asarray(corners)  # 1600 draws.
  assert abs(np.mean(flips) - 0.5) < 0.05
  for axis in range(2):  # Uniform over the 5 offsets of a 4 px margin.
    counts = np.bincount(corners[:, axis], minlength=5) / len(corners)
    assert len(counts) == 5 and np.all(np.abs(counts - 0.2) < 0.04), counts
  # Top and left are drawn independently.
  assert abs(np.corrcoef(corners[:, 0], corners[:, 1])[0, 1]) < 0.1


def test_no_flip_when_turned_off():
  batch = next(iter(_loader(_CoordinateSource(count=32, size=20), horizontal_flip=False)))
  assert np.all(batch["image"][:, 0, 0, 1] < batch["image"][:, 0, -1, 1])


def test_bad_settings_fail_up_front():
  source = _CoordinateSource(count=8, size=20)
  with pytest.raises(ValueError, match="color_jitter"):
    _loader(source, color_jitter=0.7)
  with pytest.raises(ValueError, match="empty"):
    _loader(_CoordinateSource(count=0, size=20))


def _encoded(pixels: np.ndarray, fmt: str, **kwargs) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format=fmt, **kwargs)
  return buffer.getvalue()


def _smooth_image(rng, size, mode="RGB"):
  coarse = Image.fromarray(rng.integers(0, 256, (5, 5, 3), np.uint8)).resize(
    (size, size), Image.BICUBIC
  )
  return np.asarray(coarse.convert(mode))


@pytest.mark.parametrize(
  "source_size, target", [(128, 160), (100, 160), (160, 160), (200, 160), (320, 128)]
)
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_fast_decode_matches_pillow(source_size, target, fmt):
  rng = np.random.default_rng(source_size)
  encoded = _encoded(_smooth_image(rng, source_size), fmt)
  want = np.asarray(preprocess.resize_square(preprocess.decode_rgb(encoded), target), np.int32)
  got = preprocess.decode_resized(encoded, target)
  assert got.shape == (target, target, 3) and got.dtype == np.uint8
  # Same-size and shrinking: identical; enlarging: OpenCV's rounding, at most one level.
  assert np.abs(got.astype(np.int32) - want).max() <= (1 if source_size < target else 0)


@pytest.mark.parametrize(
  "mode, fmt",
  [("L", "JPEG"), ("L", "PNG"), ("RGBA", "PNG"), ("P", "PNG"), ("RGB", "GIF"), ("RGB", "BMP")],
)
def test_other_modes_and_formats_decode_to_rgb_as_pillow(mode, fmt):
  pixels = _smooth_image(np.random.default_rng(1), 48, mode)
  encoded = _encoded(pixels, fmt)
  want = np.asarray(preprocess.decode_rgb(encoded))
  np.testing.assert_array_equal(preprocess.decode_resized(encoded, 48), want)


def test_undecodable_bytes_raise_pillows_error():
  with pytest.raises(Exception, match="cannot identify image file"):
    preprocess.decode_resized(b"\xff\xd8 not really a jpeg", 16)


def test_worker_processes_give_the_same_batches():
  from absl import flags  # pylint: disable=g-import-not-at-top

  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()  # grain's workers read their absl flags.
  source = _CoordinateSource(count=40, size=20)
  want = [b for _, b in zip(range(3), iter(_loader(source, global_batch_size=16)))]
  batches = iter(_loader(source, global_batch_size=16, workers=1))
  got = [next(batches) for _ in range(3)]
  batches.close()
  for g, w in zip(got, want):
    for key in ("image", "label", "mask"):
      np.testing.assert_array_equal(g[key], w[key])


def _new_shared_memory(before: set[str], loader) -> set[str]:
  """Shared-memory segments (Python names them psm_*) while `loader`'s worker fills its buffers.

  Looks for 3 s (the worker refills 2 batches in its thread, 1 in hand, 1 sent), until the first
  segment if one comes. (A worker's queues also leave semaphores, sem.*, in /dev/shm.)
  """
  batches = iter(loader)
  next(batches)
  during, deadline = set(), time.monotonic() + 3
  while not during and time.monotonic() < deadline:
    time.sleep(0.1)
    during = {name for name in set(os.listdir("/dev/shm")) - before if name.startswith("psm_")}
  batches.close()
  return during


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="needs Linux's /dev/shm")
def test_workers_hand_small_batches_over_by_pipe_and_large_ones_in_shared_memory():
  from absl import flags  # pylint: disable=g-import-not-at-top

  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  source = _CoordinateSource(count=200, size=20)
  before = set(os.listdir("/dev/shm"))
  # 16 x 16 x 16 x 3 bytes: far below MIN_SHARED_MEMORY_BYTES.
  assert not _new_shared_memory(before, _loader(source, global_batch_size=16, workers=1))
  # 96 x 128 x 128 x 3 bytes = 4.5 MiB: one segment per buffered batch's images.
  big = _loader(source, global_batch_size=96, image_size=128, workers=1)
  assert 96 * 128 * 128 * 3 > pipeline.MIN_SHARED_MEMORY_BYTES
  assert len(_new_shared_memory(before, big)) >= 1
