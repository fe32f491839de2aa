"""Each workaround of animesion_jax/training/orbax_workarounds.py, pinned.

1. The structure-mismatch text: against the installed Orbax's real errors, so the test fails when
   Orbax changes the words (or the difference between a mismatch and damage) the check reads.
2. The late-read filter: against asyncio's real closed-loop error from call_soon_threadsafe; it
   fails when the filter is removed or stops recognising that report. Whether Orbax still makes
   late reads is timing-dependent (rare on a small checkpoint), so that direction is left to the
   slow test_predict.py::test_damaged_checkpoint_is_named_in_a_few_lines.
3. The immediate exit: the commands' user-error exit ends the process with os._exit after the
   message; it fails when the workaround is replaced by an ordinary exit (sys.exit).
"""

import asyncio
import os
import shutil
import sys
import types

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from animesion_jax.training import orbax_workarounds

_TREE = {"dense": {"kernel": np.ones((3, 4), np.float32), "bias": np.zeros((4,), np.float32)}}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """A checkpoint of `_TREE` written as checkpointing.Checkpoints writes one."""
  directory = tmp_path_factory.mktemp("orbax") / "checkpoints"
  manager = ocp.CheckpointManager(directory, item_names=("state",))
  manager.save(1, args=ocp.args.Composite(state=ocp.args.StandardSave(_TREE)))
  manager.wait_until_finished()
  manager.close()
  return directory


def _restore_error(directory, tree, sharded=True) -> BaseException:
  """The error of restoring `tree`'s shapes, as device arrays (as the loop's train state is) or
  without a sharding."""
  manager = ocp.CheckpointManager(
    directory,
    item_names=("state",),
    options=ocp.CheckpointManagerOptions(read_only=True, save_interval_steps=0, create=False),
  )
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device if sharded else None), tree
  )
  try:
    with pytest.raises(Exception) as raised:
      manager.restore(1, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
  finally:
    manager.close()
  return raised.value


_KERNEL, _BIAS = _TREE["dense"]["kernel"], _TREE["dense"]["bias"]


@pytest.mark.parametrize(
  "other, sharded",
  [
    ({"dense": {"kernel": _KERNEL, "bias": _BIAS, "scale": _BIAS}}, True),  # A parameter more.
    ({"dense": {"kernel": _KERNEL}}, True),  # A parameter less.
    ({"dense": {"kernel": np.ones((3, 5), np.float32), "bias": _BIAS}}, True),  # Another shape.
    ({"dense": {"kernel": _KERNEL, "bias": _BIAS, "scale": _BIAS}}, False),
  ],
  ids=["more", "fewer", "shape", "more_unsharded"],
)
def test_another_train_state_is_a_mismatch(saved, other, sharded):
  assert orbax_workarounds.is_structure_mismatch(_restore_error(saved, other, sharded))


def test_truncated_files_are_damage_not_a_mismatch(saved, tmp_path):
  damaged = tmp_path / "checkpoints"
  shutil.copytree(saved, damaged)
  for path in (damaged / "1" / "state" / "d").iterdir():  # The merged OCDBT data files, as a
    os.truncate(path, path.stat().st_size // 2)  # half-copied bucket leaves them.
  error = _restore_error(damaged, _TREE)
  assert isinstance(error, ValueError)  # The same type as a mismatch: only the words differ.
  assert not orbax_workarounds.is_structure_mismatch(error)


def test_only_late_reads_of_a_failed_restore_are_silenced(monkeypatch):
  """The unraisable hook drops the closed-loop reports of late reads and passes on the rest."""
  seen = []
  monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: seen.append(unraisable.exc_value))
  orbax_workarounds.silence_late_reads()
  orbax_workarounds.silence_late_reads()  # Installed once.
  loop = asyncio.new_event_loop()
  loop.close()

  def report(callback):
    try:
      callback()
    except BaseException as error:  # pylint: disable=broad-except
      sys.unraisablehook(
        types.SimpleNamespace(
          exc_type=type(error), exc_value=error, exc_traceback=error.__traceback__, object=None
        )
      )

  report(lambda: loop.call_soon_threadsafe(print))  # A late read: silenced.

  def unrelated():
    raise RuntimeError("Event loop is closed")  # Same words, not from the closed loop: reported.

  report(unrelated)
  report(lambda: 1 / 0)  # Anything else: reported.
  assert [str(error) for error in seen] == ["Event loop is closed", "division by zero"]


class _Exited(Exception):
  pass


def test_user_error_exit_skips_interpreter_shutdown(monkeypatch, capsys):
  """The commands' user-error exit ends the process with os._exit (no interpreter shutdown, so
  no late read runs), after the message and any pending output are flushed."""
  from animesion_jax.cli import common  # pylint: disable=g-import-not-at-top

  calls = []

  def fake_exit(status):
    calls.append((status, capsys.readouterr()))  # What had reached the streams by then.
    raise _Exited()

  monkeypatch.setattr(os, "_exit", fake_exit)
  print("before", end="")
  with pytest.raises(_Exited):  # Not SystemExit: sys.exit would run the shutdown.
    common.exit_with_user_error("program", FileNotFoundError("no such run"))
  ((status, streams),) = calls
  assert status == 1
  assert streams.out == "before" and streams.err == "program: no such run\n"
