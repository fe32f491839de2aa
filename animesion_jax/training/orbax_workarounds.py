"""Every workaround for a behaviour of Orbax, in one place.

Each one names the Orbax behaviour it covers; tests/test_orbax_workarounds.py pins each (see
there which way). Remove one only when its test shows Orbax no longer behaves that way.

1. `is_structure_mismatch`: a restore into a tree of another structure or shape raises a plain
   ValueError, like a damaged file does; only its text tells the two apart. A mismatch means
   another model or optimizer wrote the checkpoint (report it); damage means fall back to the
   previous checkpoint.
2. `silence_late_reads`: after a failed restore, Orbax's asyncio loop is closed while tensorstore
   still finishes the other arrays' reads; each finished read reports to the closed loop
   (RuntimeError "Event loop is closed", raised in call_soon_threadsafe) through
   sys.unraisablehook: dozens of harmless tracebacks under the real message.
3. `exit_now`: the same late reads may still be scheduled when a command exits after reporting
   the failed restore; an ordinary interpreter shutdown runs them and prints their tracebacks.
   The commands' user-error exit ends the process at once instead (nothing is being written).
"""

import os
import sys
from typing import Any, NoReturn

# 1. The error text of a structure or shape mismatch.


def is_structure_mismatch(error: BaseException) -> bool:
  """Whether a restore failed because the saved tree differs from the one asked for (not
  because the files are damaged)."""
  text = str(error)
  first_line = text.split("\n")[0].lower()
  return isinstance(error, ValueError) and (
    "tree structures do not match" in text  # Keys differ (sharded targets, as the loop's).
    or first_line.startswith("structure mismatch")  # Keys differ (targets without sharding).
    or "shape" in first_line  # "Requested shape: ... is not compatible with the stored shape".
  )


# 2. Late reads of a failed restore, reported to a closed event loop.


def is_late_read(unraisable: Any) -> bool:
  """Whether a sys.unraisablehook report is a late read reaching Orbax's closed loop."""
  if not isinstance(unraisable.exc_value, RuntimeError):
    return False
  if str(unraisable.exc_value) != "Event loop is closed":
    return False
  frame = unraisable.exc_traceback
  while frame is not None:
    if frame.tb_frame.f_code.co_name == "call_soon_threadsafe":
      return True
    frame = frame.tb_next
  return False


def silence_late_reads() -> None:
  """Keeps late reads (`is_late_read`) off stderr; every other report passes on. Idempotent."""
  previous = sys.unraisablehook
  if getattr(previous, "silences_late_reads", False):
    return

  def hook(unraisable: Any) -> None:
    if not is_late_read(unraisable):
      previous(unraisable)

  hook.silences_late_reads = True
  sys.unraisablehook = hook


# 3. Late reads still scheduled at interpreter shutdown.


def exit_now(status: int) -> NoReturn:
  """Flushes stdout and stderr and ends the process at once, skipping interpreter shutdown."""
  sys.stderr.flush()
  sys.stdout.flush()
  os._exit(status)  # pylint: disable=protected-access
