"""The one place that knows the files of a training run.

  run = RunDir("runs/quickstart")      # relative, ~, absolute or gs://bucket/runs/quickstart
  run.save_config(config); run.append_metrics({...}); run.checkpoints_dir; run.load_results()

Layout under the run directory:
  config.json                  the run's config (written at start)
  class_names.json             class names, index = class id (for predict and the web page)
  metrics.jsonl                train/validation/test metrics, one JSON object per line
  results.json                 the final metrics of a completed run
  checkpoints/<step>/          Orbax checkpoints (state, data-iterator position, metadata)
  events.out.tfevents.*        TensorBoard summaries
  calibration.json             temperature, unknown threshold, open-set metrics (`calibrate`)
  calibration.npz              class prototypes of the training embeddings and the no-character
                               pictures' embeddings (arrays of calibration.json)
  gallery/                     characters enrolled without retraining (`enroll`)
  evaluation/<split>_step<N>/  outputs of `animesion_jax.evaluate`
  predictions/                 outputs of `animesion_jax.predict`
Every path goes through etils.epath, so a gs:// run directory works like a local one.
"""

import json
import os
from typing import Any

from etils import epath
import jax
import ml_collections

CONFIG_FILE = "config.json"
CLASS_NAMES_FILE = "class_names.json"
METRICS_FILE = "metrics.jsonl"
RESULTS_FILE = "results.json"
CHECKPOINTS_DIR = "checkpoints"
CALIBRATION_FILE = "calibration.json"
CALIBRATION_ARRAYS_FILE = "calibration.npz"
GALLERY_DIR = "gallery"


def write_atomic(path: epath.Path, data: bytes) -> None:
  """Writes `data` to `path` so that readers see the old file or the new one, never a part.

  Locally: a temporary file in the same directory, then a rename; object stores (gs://) replace
  whole objects anyway.
  """
  path.parent.mkdir(parents=True, exist_ok=True)
  if "://" in os.fspath(path):
    path.write_bytes(data)
    return
  temporary = path.parent / f".{path.name}.{os.getpid()}.tmp"
  with open(temporary, "wb") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(temporary, path)


def resolve(path: str | os.PathLike) -> epath.Path:
  """A user-typed path (relative, `~`, absolute or `gs://...`) as an absolute epath.Path.

  Orbax and tensorstore accept only absolute local paths, and a relative path must keep meaning
  the directory the user typed it in even if the process changes directory later.
  """
  text = os.fspath(path)
  if not text:
    raise ValueError("An empty path was given.")
  if "://" in text:
    return epath.Path(text)
  return epath.Path(os.path.abspath(os.path.expanduser(text)))


class RunDir:
  """Every file of one training run, under one directory."""

  def __init__(self, path: str | os.PathLike):
    self.path = resolve(path)

  def __repr__(self) -> str:
    return f"RunDir({os.fspath(self.path)!r})"

  def __str__(self) -> str:
    return os.fspath(self.path)

  @property
  def config_file(self) -> epath.Path:
    return self.path / CONFIG_FILE

  @property
  def class_names_file(self) -> epath.Path:
    return self.path / CLASS_NAMES_FILE

  @property
  def metrics_file(self) -> epath.Path:
    return self.path / METRICS_FILE

  @property
  def results_file(self) -> epath.Path:
    return self.path / RESULTS_FILE

  @property
  def checkpoints_dir(self) -> epath.Path:
    return self.path / CHECKPOINTS_DIR

  def exists(self) -> bool:
    """True if this is a training run directory (it holds config.json)."""
    return self.config_file.exists()

  def evaluation_dir(self, split: str, step: int) -> epath.Path:
    return self.path / "evaluation" / f"{split}_step{step}"

  def predictions_dir(self) -> epath.Path:
    return self.path / "predictions"

  # Writers: only process 0 writes run files (every process computes the same content).

  def save_config(self, config: ml_collections.ConfigDict) -> None:
    if jax.process_index() == 0:
      self.path.mkdir(parents=True, exist_ok=True)
      self.config_file.write_text(config.to_json_best_effort(indent=2, sort_keys=True))

  def load_config(self) -> ml_collections.ConfigDict:
    """The config the run was trained with, as saved at its start."""
    if not self.config_file.exists():
      raise FileNotFoundError(
        f"{self.config_file} not found: {self.path} is not a training run directory."
      )
    return ml_collections.ConfigDict(json.loads(self.config_file.read_text()))

  def save_class_names(self, names: list[str]) -> None:
    if jax.process_index() == 0:
      self.path.mkdir(parents=True, exist_ok=True)
      self.class_names_file.write_text(
        json.dumps(list(names), indent=0, ensure_ascii=False), encoding="utf-8"
      )

  def load_class_names(self) -> list[str] | None:
    """The class names (index = class id), or None if the run has none."""
    if not self.class_names_file.exists():
      return None
    names = json.loads(self.class_names_file.read_text(encoding="utf-8"))
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
      raise ValueError(f"{self.class_names_file} should hold a JSON list of class-name strings.")
    return names

  def append_metrics(self, record: dict[str, Any]) -> None:
    if jax.process_index() == 0:
      self.path.mkdir(parents=True, exist_ok=True)
      line = json.dumps(record) + "\n"
      if "://" in os.fspath(self.path):  # Object stores cannot append: rewrite the object.
        old = self.metrics_file.read_text() if self.metrics_file.exists() else ""
        self.metrics_file.write_text(old + line)
      else:
        with self.metrics_file.open("a") as f:
          f.write(line)

  def drop_metrics_after(self, step: int) -> None:
    """Forgets metric lines of steps after `step` (a resumed run trains and logs them again)."""
    if jax.process_index() == 0 and self.metrics_file.exists():
      kept = [r for r in self.read_metrics() if r.get("step", 0) <= step]
      if len(kept) < len(self.read_metrics()):
        self.metrics_file.write_text("".join(json.dumps(r) + "\n" for r in kept))

  def read_metrics(self) -> list[dict[str, Any]]:
    if not self.metrics_file.exists():
      return []
    return [json.loads(line) for line in self.metrics_file.read_text().splitlines() if line.strip()]

  def save_results(self, results: dict[str, Any]) -> None:
    if jax.process_index() == 0:
      self.results_file.write_text(json.dumps(results, indent=2, default=str))

  def load_results(self) -> dict[str, Any]:
    if not self.results_file.exists():
      raise FileNotFoundError(f"{self.results_file} not found: the run has not completed.")
    return json.loads(self.results_file.read_text())
