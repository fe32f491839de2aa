"""Micro-batching: requests from many clients share one device call, behind a bounded queue.

Each request submits the crops of one picture (a few faces, or the whole picture) and gets a
future. One worker thread owns the device: it takes the oldest waiting request, gathers more for
at most `max_wait_s` (or until `max_batch` crops), pads the batch to one of a few fixed sizes (so
the jitted function compiles once per size, at start-up) and resolves every future. When
`queue_size` requests are already waiting, `submit` raises QueueFull at once (the server answers
503 with Retry-After) rather than letting waits grow without bound.
"""

from collections.abc import Callable
import concurrent.futures
import queue
import threading
import time

from absl import logging
import numpy as np

# images uint8 [B, S, S, 3] -> (top-k probabilities [B, k], top-k class ids [B, k]).
PredictFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


class QueueFull(RuntimeError):
  """Too many requests are waiting; try again shortly."""


def batch_sizes(max_batch: int, multiple: int) -> list[int]:
  """Padded batch sizes: `multiple` times powers of 4, then max_batch rounded up to `multiple`.

  Few sizes keep start-up compilation short; padding wastes at most 3/4 of a device call.
  """
  top = max(multiple, -(-max_batch // multiple) * multiple)
  sizes, size = [], multiple
  while size < top:
    sizes.append(size)
    size *= 4
  return sizes + [top]


class MicroBatcher:
  """Batches crops from concurrent requests onto one predict function."""

  def __init__(
    self,
    predict: PredictFn,
    image_shape: tuple[int, int, int],
    *,
    max_batch: int = 32,
    max_wait_s: float = 0.01,
    queue_size: int = 64,
    multiple: int = 1,
  ):
    """Starts the worker thread.

    Args:
      predict: the batched model call (blocking; runs only on the worker thread).
      image_shape: (S, S, 3) of one crop.
      max_batch: most crops per device call; one request may hold up to this many.
      max_wait_s: longest the oldest request waits for others to join its batch.
      queue_size: requests that may wait; more raise QueueFull.
      multiple: batches are padded to multiples of this (the device count).
    """
    if max_batch < 1 or queue_size < 1 or max_wait_s < 0:
      raise ValueError(
        f"max_batch={max_batch} and queue_size={queue_size} must be >= 1 and "
        f"max_wait_s={max_wait_s} >= 0."
      )
    self._predict = predict
    self.image_shape = tuple(image_shape)
    self.max_batch = max_batch
    self.max_wait_s = max_wait_s
    self.queue_size = queue_size
    self.sizes = batch_sizes(max_batch, multiple)
    self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
    self._carry = None  # A request that did not fit the previous batch; goes first in the next.
    self._stop = threading.Event()
    self.batches = 0  # Device calls made (for /healthz and tests).
    self.crops = 0  # Crops classified.
    self._thread = threading.Thread(target=self._work, name="micro-batcher", daemon=True)
    self._thread.start()

  def warm_up(self) -> None:
    """Compiles every padded batch size now rather than during the first requests."""
    for size in self.sizes:
      self._predict(np.zeros((size, *self.image_shape), np.uint8))

  @property
  def waiting(self) -> int:
    return self._queue.qsize()

  def submit(self, crops: np.ndarray) -> concurrent.futures.Future:
    """Queues uint8 crops [n, S, S, 3]; the future gives (probabilities [n, k], ids [n, k]).

    Raises:
      QueueFull: the queue is full (nothing was queued).
      ValueError: wrong crop shape or more than max_batch crops.
    """
    if (
      crops.ndim != 4
      or tuple(crops.shape[1:]) != self.image_shape
      or not (1 <= len(crops) <= self.max_batch)
    ):
      raise ValueError(
        f"Expected 1 to {self.max_batch} crops of shape {self.image_shape}, got {crops.shape}."
      )
    future = concurrent.futures.Future()
    try:
      self._queue.put_nowait((crops, future))
    except queue.Full:
      raise QueueFull(f"{self._queue.maxsize} pictures are already waiting.") from None
    return future

  def close(self) -> None:
    """Stops the worker after the batch in progress; waiting requests fail."""
    self._stop.set()
    self._thread.join(timeout=10)
    while True:
      try:
        _, future = self._queue.get_nowait()
      except queue.Empty:
        break
      if future.set_running_or_notify_cancel():
        future.set_exception(RuntimeError("The server is shutting down."))

  def _next(self, timeout: float | None):
    if self._carry is not None:
      item, self._carry = self._carry, None
      return item
    return self._queue.get(timeout=timeout)

  def _gather(self) -> list[tuple[np.ndarray, concurrent.futures.Future]]:
    """The oldest request plus those that arrive within max_wait_s and fit max_batch."""
    try:
      first = self._next(timeout=0.1)
    except queue.Empty:
      return []
    items, count = [first], len(first[0])
    deadline = time.monotonic() + self.max_wait_s
    while count < self.max_batch:
      try:
        item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
      except queue.Empty:
        break
      if count + len(item[0]) > self.max_batch:
        self._carry = item
        break
      items.append(item)
      count += len(item[0])
    return items

  def _work(self) -> None:
    while not self._stop.is_set():
      # Requests whose client went away were cancelled; the rest can no longer be.
      items = [item for item in self._gather() if item[1].set_running_or_notify_cancel()]
      if not items:
        continue
      images = np.concatenate([crops for crops, _ in items])
      size = next(s for s in self.sizes if s >= len(images))
      padded = np.zeros((size, *self.image_shape), np.uint8)
      padded[: len(images)] = images
      try:
        probabilities, class_ids = self._predict(padded)
      except Exception as error:  # pylint: disable=broad-exception-caught
        # The request fails with the error (a 500 for it), the worker keeps serving.
        logging.exception("Prediction failed for a batch of %d crops.", len(images))
        for _, future in items:
          future.set_exception(error)
        continue
      self.batches += 1
      self.crops += len(images)
      start = 0
      for crops, future in items:
        future.set_result(
          (probabilities[start : start + len(crops)], class_ids[start : start + len(crops)])
        )
        start += len(crops)
