"""Where a run's numbers go: TensorBoard, metrics.jsonl and the log, plus progress and ETA.

One writer fans every record out (TensorBoard through TensorBoard's own TF-free event writer, which
reaches gs:// through fsspec), so the run path never imports TensorFlow. Only process 0 writes.
"""

from collections.abc import Iterator
import contextlib
import os
import sys
import time
import types
from typing import Any

from absl import logging
import jax

# TensorBoard's writer imports TensorFlow whenever it is installed unless the `notf` marker module
# exists (TensorBoard's own switch); its stub then writes locally and to gs:// through fsspec.
sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
from tensorboard.compat.proto import event_pb2  # noqa: E402  pylint: disable=g-import-not-at-top
from tensorboard.compat.proto import summary_pb2  # noqa: E402  pylint: disable=g-import-not-at-top
from tensorboard.summary.writer import event_file_writer  # noqa: E402  pylint: disable=g-import-not-at-top

from animesion_jax import run_dir as run_dir_lib  # noqa: E402


class Summaries:
  """Writes scalars of one run to TensorBoard event files and to metrics.jsonl."""

  def __init__(self, run: run_dir_lib.RunDir):
    self.run = run
    self._events = None
    if jax.process_index() == 0:
      run.path.mkdir(parents=True, exist_ok=True)
      self._events = event_file_writer.EventFileWriter(os.fspath(run.path), flush_secs=30)

  def write(self, step: int, split: str, values: dict[str, float], **extra: Any) -> None:
    """One record: TensorBoard scalars `<split>_<name>` and one metrics.jsonl line."""
    if self._events is None:
      return
    summary = summary_pb2.Summary(
      value=[
        summary_pb2.Summary.Value(tag=f"{split}_{name}", simple_value=float(value))
        for name, value in values.items()
      ]
    )
    self._events.add_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))
    self.run.append_metrics({"step": step, **extra, "split": split, **values})

  def flush(self) -> None:
    if self._events is not None:
      self._events.flush()

  def close(self) -> None:
    if self._events is not None:
      self._events.close()
      self._events = None


class Progress:
  """Training speed, time to go and time spent evaluating (shaped like clu's ReportProgress)."""

  def __init__(self, total_steps: int, start_step: int, batch_size: int):
    self.total_steps = total_steps
    self.batch_size = batch_size
    self._window_start, self._window_step = time.time(), start_step
    self.eval_seconds = 0.0

  def rate(self, step: int) -> tuple[float, float]:
    """(images/s since the last call, seconds to go at that rate); starts a new window."""
    elapsed = time.time() - self._window_start
    rate = (step - self._window_step) * self.batch_size / max(elapsed, 1e-9)
    eta = (self.total_steps - step) * self.batch_size / max(rate, 1e-9)
    self._window_start, self._window_step = time.time(), step
    return rate, eta

  @contextlib.contextmanager
  def evaluating(self) -> Iterator[None]:
    """Counts the time inside as evaluation, not training (the next rate window skips it)."""
    start = time.time()
    try:
      yield
    finally:
      spent = time.time() - start
      self.eval_seconds += spent
      self._window_start += spent

  def log(self, step: int, epoch: float, train: dict[str, float]) -> float:
    """Logs the progress line of a log step; returns the images/s."""
    rate, eta = self.rate(step)
    logging.info(
      "step %d/%d epoch %.2f | %.1f img/s | loss %.4f %s lr %.3g | %s to go (%s evaluating so far)",
      step,
      self.total_steps,
      epoch,
      rate,
      train["loss"],
      # A classifier's top-1; the detector's loss terms.
      " ".join(f"{k} {train[k]:.4f}" for k in ("top1", "heatmap", "size", "offset") if k in train),
      train.get("learning_rate", float("nan")),
      format_seconds(eta),
      format_seconds(self.eval_seconds),
    )
    return rate


def format_seconds(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"
