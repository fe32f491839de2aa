"""Orbax checkpoints of a run: ONE CheckpointManager under `<run>/checkpoints/`.

Orbax policies make every decision:
  preservation  the latest `keep` checkpoints, plus the best by validation top-1 (only runs whose
                dataset has a validation split carry that metric; no model is chosen on test)
  save          every K steps and every M minutes (decided on process 0 and broadcast); the loop
                forces a save at each evaluation (carrying its metrics), at a stop signal (on
                multi-host runs: JAX's preemption sync point, see preemption.py), a halt and the end.
Orbax writes each step to a temporary directory and renames it when complete, so a process killed
mid-write leaves the previous checkpoints intact; a damaged complete checkpoint (a truncated or
missing array file) is moved aside and the previous one is used.
"""

import time
from typing import Any

from absl import logging
from etils import epath
import flax
import grain.python as grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from animesion_jax import config_schema
from animesion_jax import run_dir as run_dir_lib
from animesion_jax.training import orbax_workarounds

BEST_METRIC = "validation_top1"  # The checkpoint metric that ranks checkpoints (higher is better).
DAMAGED_DIR = "damaged_checkpoints"  # Where damaged checkpoints are moved, beside checkpoints/.


class DamagedCheckpoint(RuntimeError):
  """A checkpoint's files are incomplete or unreadable (the message names it and the others)."""


class IncompatibleCheckpoint(RuntimeError):
  """A readable checkpoint whose arrays do not fit the train state the config builds."""


def _step_args(state: Any, data_iterator: Any, meta: dict[str, Any]) -> ocp.args.Composite:
  args = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
  if data_iterator is not None:
    args["data"] = grain.PyGrainCheckpointSave(data_iterator)
  return ocp.args.Composite(**args)


def _restore_args(abstract_state: Any, data_iterator: Any = None) -> ocp.args.Composite:
  args = {"state": ocp.args.StandardRestore(abstract_state), "meta": ocp.args.JsonRestore()}
  if data_iterator is not None:
    args["data"] = grain.PyGrainCheckpointRestore(data_iterator)
  return ocp.args.Composite(**args)


# Orbax writes a checkpoint's metrics to disk (so a restarted run still knows which checkpoint is
# best) only when the manager ranks checkpoints; the preservation policy above decides what is kept.
_RANKED = dict(best_fn=lambda metrics: metrics[BEST_METRIC], best_mode="max")


def _reader(directory: epath.Path) -> ocp.CheckpointManager:
  """A read-only manager of a checkpoints directory (for inference)."""
  return ocp.CheckpointManager(
    directory,
    item_names=("state", "data", "meta"),
    # Saving and creating are off already, which spares two of Orbax's read-only warnings.
    options=ocp.CheckpointManagerOptions(
      read_only=True, save_interval_steps=0, create=False, **_RANKED
    ),
  )


def _first_line(error: BaseException) -> str:
  text = str(error).strip().splitlines()
  return f"{type(error).__name__}: {text[0][:300] if text else ''}"


class Checkpoints:
  """The checkpoints of one training run (latest N plus the best), for saving and resuming."""

  def __init__(
    self,
    run: run_dir_lib.RunDir,
    *,
    keep: int = 2,
    every_steps: int = 0,
    every_minutes: float = 0.0,
  ):
    self.run = run
    directory = run.checkpoints_dir
    # Orbax's own temporary step folders: writes that never finished (cleaned up below).
    self.incomplete = (
      sorted(directory / name for name in ocp.step.tmp_checkpoints(directory))
      if directory.is_dir()
      else []
    )
    for path in self.incomplete:
      logging.warning(
        "Ignoring %s: a checkpoint write that never finished (the process was "
        "killed while saving); it is deleted.",
        path,
      )
    # Preemption is not a policy here: preemption.StopRequest asks JAX's sync point once per step
    # and the loop then forces the save (asking twice per step would double that query).
    save_policies = []
    if every_steps > 0:
      save_policies.append(checkpoint_managers.FixedIntervalPolicy(every_steps))
    if every_minutes > 0:
      save_policies.append(
        checkpoint_managers.ContinuousCheckpointingPolicy(
          minimum_interval_secs=max(1, int(60 * every_minutes))
        )
      )
    self.periodic = bool(save_policies)  # Any periodic save at all (else only forced ones).
    preservation = checkpoint_managers.AnyPreservationPolicy(
      [
        checkpoint_managers.LatestN(n=keep),
        checkpoint_managers.BestN(
          get_metric_fn=lambda metrics: metrics[BEST_METRIC],
          n=1,
          keep_checkpoints_without_metrics=False,
        ),
      ]
    )
    self.manager = ocp.CheckpointManager(
      run.checkpoints_dir,
      options=ocp.CheckpointManagerOptions(
        create=True,
        cleanup_tmp_directories=True,
        save_decision_policy=checkpoint_managers.AnySavePolicy(save_policies),
        preservation_policy=preservation,
        **_RANKED,
      ),
      item_names=("state", "data", "meta"),
    )

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def should_save(self, step: int) -> bool:
    """Whether a save policy asks for `step` (a collective on multi-process runs: every process
    asks at every step; time-based answers come from process 0)."""
    return self.periodic and self.manager.should_save(step)

  def save(
    self,
    step: int,
    state: Any,
    data_iterator: Any,
    meta: dict[str, Any],
    *,
    metrics: dict[str, float] | None = None,
  ) -> bool:
    """Saves `step` (with the metrics that rank it, if any); False if it is already saved."""
    if step in self.manager.all_steps():
      return False  # Already on disk (e.g. the final step right after a periodic save).
    return self.manager.save(
      step, args=_step_args(state, data_iterator, meta), metrics=metrics, force=True
    )

  def restore_newest(self, abstract_state: Any, data_iterator: Any) -> tuple[Any, dict, int] | None:
    """Restores the newest readable checkpoint; None when there is none.

    A damaged one is moved to `DAMAGED_DIR` with a warning and the previous one is tried.
    The data iterator is moved to the saved position in place.
    """
    orbax_workarounds.silence_late_reads()
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        restored = self.manager.restore(step, args=_restore_args(abstract_state, data_iterator))
      except Exception as error:  # pylint: disable=broad-except  # Any unreadable file.
        # Readable, but another model or optimizer wrote it.
        if orbax_workarounds.is_structure_mismatch(error):
          raise IncompatibleCheckpoint(
            f"Checkpoint {self.run.checkpoints_dir / str(step)} holds a different train state "
            "than this code and config build (written by another version of animesion_jax or "
            f"another model/optimizer setting): {_first_line(error)}\nUse another --workdir."
          ) from None
        moved = self._move_damaged(step)
        logging.warning(
          "Checkpoint %s is damaged (%s); moved it to %s and trying the previous one.",
          self.run.checkpoints_dir / str(step),
          _first_line(error),
          moved,
        )
        continue
      return restored["state"], dict(restored["meta"]), step
    return None

  def _move_damaged(self, step: int) -> epath.Path:
    target = self.run.path / DAMAGED_DIR / f"{step}-{int(time.time())}"
    if jax.process_index() == 0:
      target.parent.mkdir(parents=True, exist_ok=True)
      (self.run.checkpoints_dir / str(step)).rename(target)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

      multihost_utils.sync_global_devices(f"animesion_damaged_checkpoint_{step}")
    self.manager.reload()
    return target

  def best(self) -> dict[str, Any] | None:
    """{'metric', 'value', 'step'} of the best kept checkpoint, or None without metrics."""
    step = self.manager.best_step()
    metrics = self.manager.metrics(step) if step is not None else None
    if not metrics or BEST_METRIC not in metrics:
      return None
    return {"metric": BEST_METRIC, "value": metrics[BEST_METRIC], "step": step}

  def wait(self) -> None:
    """Blocks until pending asynchronous writes are on disk."""
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


def step_dirs(run: run_dir_lib.RunDir) -> list[int]:
  """Steps of the complete checkpoints of a run, oldest first."""
  return sorted(ocp.step.checkpoint_steps(run.checkpoints_dir))


def resolve(run: run_dir_lib.RunDir, which: str = "best") -> epath.Path:
  """The checkpoint step directory `which` names: 'best', 'latest' or a path.

  'best' is the checkpoint with the best validation top-1 when the run kept one (runs on a
  dataset without a validation split keep none: then it is the latest, the final model).
  """
  if which in ("best", "latest"):
    if not step_dirs(run):
      raise FileNotFoundError(
        f"No checkpoint under {run.checkpoints_dir}: has this run saved one yet?"
      )
    manager = _reader(run.checkpoints_dir)
    try:
      step = manager.best_step() if which == "best" else None  # None: nothing ranked.
      if step is None:
        step = manager.latest_step()
    finally:
      manager.close()
    return run.checkpoints_dir / str(step)
  path = run_dir_lib.resolve(which)
  if not path.is_dir() or not path.name.isdigit():
    raise FileNotFoundError(
      f"--checkpoint={which!r}: expected 'best', 'latest' or a checkpoint step directory such "
      f"as {run.checkpoints_dir / '1000'}."
    )
  return path


def restore(
  run: run_dir_lib.RunDir, abstract_state: Any, which: str = "best"
) -> tuple[Any, dict[str, Any], int]:
  """Loads the state of a run's checkpoint for inference: (state, metadata, step).

  Raises:
    FileNotFoundError: the run has no checkpoint (or `which` names none).
    DamagedCheckpoint: the checkpoint's files are incomplete; the message names it and lists the
      run's other checkpoints.
  """
  path = resolve(run, which)
  manager = _reader(path.parent)
  orbax_workarounds.silence_late_reads()
  try:
    restored = manager.restore(int(path.name), args=_restore_args(abstract_state))
  except Exception as error:  # pylint: disable=broad-except  # Any unreadable file.
    if orbax_workarounds.is_structure_mismatch(error):
      raise IncompatibleCheckpoint(
        f"{path} does not hold the train state this config builds: {_first_line(error)}"
      ) from None
    others = [str(path.parent / str(s)) for s in manager.all_steps() if s != int(path.name)]
    raise DamagedCheckpoint(
      f"Checkpoint {path} is damaged or incomplete ({_first_line(error)}).\n"
      + (
        f"Other checkpoints of this run: {', '.join(others)} (pass one with --checkpoint)."
        if others
        else "The run has no other checkpoint."
      )
    ) from None
  finally:
    manager.close()
  return restored["state"], dict(restored["meta"]), int(path.name)


def shape_mismatches(expected: Any, actual: Any) -> list[str]:
  """'path: model SHAPE, checkpoint SHAPE' for every array whose shape differs (or is missing)."""
  flat_expected = flax.traverse_util.flatten_dict(dict(expected), sep="/") if expected else {}
  flat_actual = flax.traverse_util.flatten_dict(dict(actual), sep="/") if actual else {}
  problems = []
  for key in sorted(set(flat_expected) | set(flat_actual)):
    want = tuple(flat_expected[key].shape) if key in flat_expected else None
    have = tuple(flat_actual[key].shape) if key in flat_actual else None
    if want != have:
      problems.append(f"{key}: model {want}, checkpoint {have}")
  return problems


def saved_shape_mismatches(checkpoint: epath.Path, abstract_state: Any) -> list[str]:
  """`shape_mismatches` of a checkpoint step directory's saved variables against a train state.

  Reads only the arrays' metadata; an unreadable checkpoint gives [] (its restore names the damage).
  """
  orbax_workarounds.silence_late_reads()
  try:
    saved = ocp.StandardCheckpointHandler().metadata(checkpoint / "state")
  except Exception:  # pylint: disable=broad-except  # Unreadable: restore names the damage.
    return []
  expected = {c: getattr(abstract_state, c) or {} for c in ("params", "batch_stats")}
  actual = {c: saved.get(c) or {} for c in ("params", "batch_stats")}
  return shape_mismatches(expected, actual)


# Fields that shape the parameters or their meaning; a resumed run must keep them.
RESUME_CRITICAL_FIELDS = ("dataset", "dataset_config", "image_size", "model")
# Set from the init_from checkpoint at every start (see model_setup), so never a mismatch.
_FROM_CHECKPOINT = ("model.layer_norm_epsilon",)


def config_differences(
  saved: ml_collections.ConfigDict, current: ml_collections.ConfigDict
) -> list[str]:
  """'field: saved -> current' for each resume-critical field that changed.

  A field one of them lacks (a run from before the field existed) counts as its schema default
  (e.g. config.model.head 'linear').
  """
  defaults = flax.traverse_util.flatten_dict(config_schema.get_base_config().to_dict(), sep=".")
  saved_flat, current_flat = (
    {**defaults, **flax.traverse_util.flatten_dict(c.to_dict(), sep=".")} for c in (saved, current)
  )
  differences = []
  for key in sorted(set(saved_flat) | set(current_flat)):
    if key in _FROM_CHECKPOINT and saved.init_from.source:
      continue
    before, now = saved_flat.get(key), current_flat.get(key)
    before, now = (list(v) if isinstance(v, tuple) else v for v in (before, now))
    if key.split(".")[0] in RESUME_CRITICAL_FIELDS and before != now:
      differences.append(f"config.{key}: {before!r} in the run, now {now!r}")
  return differences
