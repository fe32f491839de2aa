"""Orbax checkpoints of a run: the latest few (state + data iterator + metadata) and the best.

Layout under the workdir:
  config.json              the run's config (written at start)
  class_names.json         the dataset's class names, index = class id (for predict)
  checkpoints/<step>/      latest checkpoints: state, data iterator position, metadata
  best/<step>/             the best checkpoint by the selection metric: state, metadata
Orbax writes each step to a temporary directory and renames it when complete, so a process
killed mid-write leaves the previous checkpoints intact.
"""

import json
import os
from typing import Any

from absl import logging
from etils import epath
import grain.python as grain
import jax
import ml_collections
import orbax.checkpoint as ocp

LATEST_DIR = "checkpoints"
BEST_DIR = "best"
CONFIG_FILE = "config.json"
CLASS_NAMES_FILE = "class_names.json"


class RunCheckpoints:
  """The latest and best checkpoints of one run directory."""

  def __init__(self, workdir: str, keep: int = 2):
    self.workdir = epath.Path(workdir)
    self.incomplete = incomplete_checkpoints(self.workdir)
    for path in self.incomplete:
      logging.warning("Ignoring %s: a checkpoint write that never finished (the process was "
                      "killed while saving); it is deleted.", path)
    options = dict(create=True, cleanup_tmp_directories=True)
    self.latest = ocp.CheckpointManager(
        self.workdir / LATEST_DIR,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, **options),
        item_names=("state", "data", "meta"))
    self.best = ocp.CheckpointManager(
        self.workdir / BEST_DIR,
        options=ocp.CheckpointManagerOptions(max_to_keep=1, **options),
        item_names=("state", "meta"))

  @staticmethod
  def has_checkpoints(workdir: str) -> bool:
    latest = epath.Path(workdir) / LATEST_DIR
    return latest.exists() and any(p.name.isdigit() for p in latest.iterdir())

  def latest_step(self) -> int | None:
    return self.latest.latest_step()

  def save_latest(self, step: int, state: Any, data_iterator: Any, meta: dict[str, Any]) -> None:
    args = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
    if data_iterator is not None:
      args["data"] = grain.PyGrainCheckpointSave(data_iterator)
    self.latest.save(step, args=ocp.args.Composite(**args), force=True)

  def save_best(self, step: int, state: Any, meta: dict[str, Any]) -> None:
    self.best.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)

  def restore_latest(self, abstract_state: Any, data_iterator: Any) -> tuple[Any, dict[str, Any]]:
    """Restores the newest complete checkpoint into `abstract_state`'s shapes and shardings.

    The data iterator is moved to the saved position in place.
    """
    step = self.latest.latest_step()
    args = {"state": ocp.args.StandardRestore(abstract_state), "meta": ocp.args.JsonRestore()}
    if data_iterator is not None:
      args["data"] = grain.PyGrainCheckpointRestore(data_iterator)
    restored = self.latest.restore(step, args=ocp.args.Composite(**args))
    return restored["state"], restored["meta"]

  def wait(self) -> None:
    """Blocks until pending asynchronous writes are on disk."""
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self) -> None:
    self.latest.close()
    self.best.close()


def incomplete_checkpoints(workdir: epath.Path) -> list[epath.Path]:
  """Temporary directories of checkpoint writes that were interrupted."""
  found = []
  for sub in (LATEST_DIR, BEST_DIR):
    if (workdir / sub).exists():
      found += [p for p in (workdir / sub).iterdir() if ".orbax-checkpoint-tmp" in p.name]
  return sorted(found)


def restore_state(workdir: str, abstract_state: Any, which: str = "best") -> tuple[Any, dict, int]:
  """Loads the state of a run's 'best' or 'latest' checkpoint, or of a checkpoint directory.

  Returns (state, metadata, step). Falls back from 'best' to 'latest' when a run never evaluated.
  """
  workdir = epath.Path(workdir)
  if which in ("best", "latest"):
    candidates = [BEST_DIR, LATEST_DIR] if which == "best" else [LATEST_DIR]
    for sub in candidates:
      manager = ocp.CheckpointManager(workdir / sub, item_names=("state", "meta"))
      step = manager.latest_step()
      if step is not None:
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
        manager.close()
        return restored["state"], restored["meta"], step
      manager.close()
    raise FileNotFoundError(f"No checkpoint in {workdir / candidates[0]} or "
                            f"{workdir / LATEST_DIR}: has this run saved one yet?")
  path = epath.Path(which)
  manager = ocp.CheckpointManager(path.parent, item_names=("state", "meta"))
  restored = manager.restore(int(path.name), args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
  manager.close()
  return restored["state"], restored["meta"], int(path.name)


def save_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True))


# Fields that shape the parameters or their meaning; a resumed run must keep them.
RESUME_CRITICAL_FIELDS = ("dataset", "dataset_config", "image_size", "model")
# Set from the init_from checkpoint at every start (see model_setup), so never a mismatch.
_FROM_CHECKPOINT = ("model.gelu_approximate", "model.layer_norm_epsilon")


def config_differences(saved: ml_collections.ConfigDict,
                       current: ml_collections.ConfigDict) -> list[str]:
  """'field: saved -> current' for each resume-critical field that changed."""
  saved_flat = _flatten(saved.to_dict())
  current_flat = _flatten(current.to_dict())
  differences = []
  for key in sorted(set(saved_flat) | set(current_flat)):
    if key in _FROM_CHECKPOINT and saved.init_from.source:
      continue
    if key.split(".")[0] in RESUME_CRITICAL_FIELDS and saved_flat.get(key) != current_flat.get(key):
      differences.append(f"config.{key}: {saved_flat.get(key)!r} in the run, now "
                         f"{current_flat.get(key)!r}")
  return differences


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
  return flat


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run was trained with (as saved at its start)."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: {workdir} is not a training run directory.")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def save_class_names(workdir: str, names: list[str]) -> None:
  """Writes the class names (index = class id) so predictions can be named without the dataset."""
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, CLASS_NAMES_FILE), "w", encoding="utf-8") as f:
      json.dump(list(names), f, indent=0, ensure_ascii=False)


def load_class_names(workdir: str) -> list[str] | None:
  """The class names saved by `save_class_names`, or None if the run has none."""
  path = os.path.join(workdir, CLASS_NAMES_FILE)
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    names = json.load(f)
  if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
    raise ValueError(f"{path} should hold a JSON list of class-name strings.")
  return names
