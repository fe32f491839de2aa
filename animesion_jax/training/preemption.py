"""Stopping a run cleanly: SIGTERM/SIGINT become a save at a step boundary, then exit 42.

Single process: a signal handler sets a flag the loop reads at every step. Multi-process (a TPU pod,
several GPU hosts): JAX's preemption sync point (`multihost_utils.reached_preemption_sync_point`,
the same one Orbax's PreemptionCheckpointingPolicy uses) picks one step at which every host saves,
however many of them received the notice; JAX's coordination service catches SIGTERM itself, so no
Python handler is installed for it there.
"""

import signal

from absl import logging
import jax

PREEMPTED_EXIT_CODE = 42  # Exit status after a signal-triggered save; rerun to resume.


class Preempted(SystemExit):
  """Raised after the checkpoint that a SIGTERM/SIGINT asked for is on disk."""

  def __init__(self, step: int):
    super().__init__(PREEMPTED_EXIT_CODE)
    self.step = step


class StopRequest:
  """Context manager: `should_stop(step)` is True on every process at the same step."""

  def __init__(self):
    self.requested = False
    self._previous = {}
    self._multi_process = jax.process_count() > 1

  def __enter__(self) -> "StopRequest":
    signals = (signal.SIGINT,) if self._multi_process else (signal.SIGTERM, signal.SIGINT)
    try:
      for sig in signals:
        self._previous[sig] = signal.signal(sig, self._handle)
    except ValueError:  # Not the main thread: signals are not ours to handle.
      pass
    return self

  def _handle(self, signum, frame) -> None:
    del frame
    if self._multi_process:  # Only this host got it: no step all hosts agree on. Stop hard.
      raise KeyboardInterrupt
    logging.warning("Received signal %d: saving a checkpoint at the next step.", signum)
    self.requested = True

  def should_stop(self, step: int) -> bool:
    """A collective on multi-process runs: call it at every step on every process."""
    if not self._multi_process:
      return self.requested
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

    try:
      return multihost_utils.reached_preemption_sync_point(step)
    except RuntimeError:  # The preemption service is disabled (jax_enable_preemption_service).
      return False

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
