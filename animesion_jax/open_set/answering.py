"""Answers that can say "unknown", and name enrolled characters, for a loaded model.

  answerer = open_set.for_run(run, accept=None, store=None)   # calibration + gallery of the run
  answers = answerer.answer(logits, embeddings, top_k=5)      # logits, embeddings: run.embed

A loaded recognizer carries its answerer (recognizer.Recognizer.answerer, `with_open_set`).

Every answer holds "character" (the accepted name, or None), "unknown", the calibrated
"confidence" of the closest name, "closest", "enrolled" (the name comes from the gallery),
"calibrated" and the classifier's top-k "predictions". Without a calibration (a run trained
before calibration existed) every picture gets its top-1 name, uncalibrated, and `note` says how
to calibrate. Fitting is in open_set_fit.py (embeddings of the training split give the class
prototypes, the validation split the rest; the numbers are animesion_jax/open_set/calibration.py's).
"""

import dataclasses
import io
import json
import os
from typing import Any

from etils import epath
import jax
import numpy as np

from animesion_jax import run_dir
from animesion_jax.open_set import calibration as calibration_lib
from animesion_jax.open_set import gallery as gallery_lib

UNCALIBRATED_NOTE = (
  "uncalibrated: no picture is answered 'unknown' (run python -m animesion_jax.calibrate "
  "--workdir=RUN to fit the threshold)"
)


class OpenSetError(ValueError):
  """A bad open-set request (e.g. an --accept outside (0, 1])."""


# What the CLIs report as a message, without a traceback.
USER_ERRORS = (OpenSetError, gallery_lib.GalleryError)


def provenance(run: Any) -> dict[str, Any]:
  """What a calibration or gallery belongs to: model, checkpoint step (or file), classes."""
  return {
    "model": str(run.config.model.name),
    "step": run.step,
    "checkpoint": None if run.step is not None else os.path.basename(str(run.checkpoint)),
    "num_classes": int(run.num_classes),
  }


def store_dir(run: Any, given: str | os.PathLike | None = None) -> epath.Path | None:
  """Where a model's calibration and gallery live: `given`, else the run directory."""
  if given:
    return run_dir.resolve(given)
  return run.workdir.path if run.workdir is not None else None


def save_calibration(fitted: calibration_lib.Calibration, directory: epath.Path) -> None:
  """calibration.json and calibration.npz (its arrays), each written atomically (process 0)."""
  if jax.process_index() != 0:
    return
  buffer = io.BytesIO()
  np.savez(
    buffer,
    prototypes=np.asarray(fitted.prototypes, np.float32),
    no_character=np.asarray(fitted.no_character, np.float32),
  )
  run_dir.write_atomic(directory / run_dir.CALIBRATION_ARRAYS_FILE, buffer.getvalue())
  text = json.dumps(fitted.to_json(), indent=1, ensure_ascii=False)
  run_dir.write_atomic(directory / run_dir.CALIBRATION_FILE, text.encode("utf-8"))


def load_calibration(
  directory: epath.Path | None, expected: dict[str, Any]
) -> tuple[calibration_lib.Calibration | None, str]:
  """(calibration, "") or (None, why there is none usable)."""
  if directory is None or not (directory / run_dir.CALIBRATION_FILE).exists():
    return None, UNCALIBRATED_NOTE
  path = directory / run_dir.CALIBRATION_FILE
  try:
    record = json.loads(path.read_text(encoding="utf-8"))
    with (directory / run_dir.CALIBRATION_ARRAYS_FILE).open("rb") as f:
      arrays = dict(np.load(io.BytesIO(f.read())))
    fitted = calibration_lib.Calibration.from_json(
      record, arrays["prototypes"], arrays.get("no_character")
    )
  except (OSError, ValueError, KeyError, TypeError) as error:  # Partial or foreign files.
    return None, (
      f"uncalibrated: {path} (with {run_dir.CALIBRATION_ARRAYS_FILE}) cannot be read ({error}); "
      "calibrate again (python -m animesion_jax.calibrate)"
    )
  found = fitted.provenance
  differ = [k for k in expected if found.get(k) != expected[k]]
  if differ:
    return None, (
      f"uncalibrated: {path} was fitted for "
      + ", ".join(f"{k}={found.get(k)!r}" for k in differ)
      + " but this model has "
      + ", ".join(f"{k}={expected[k]!r}" for k in differ)
      + "; calibrate this checkpoint (python -m animesion_jax.calibrate)"
    )
  return fitted, ""


@dataclasses.dataclass
class Answerer:
  """Turns logits and embeddings into answers: known names, enrolled names or unknown."""

  class_names: list[str]
  calibration: calibration_lib.Calibration | None = None
  gallery: gallery_lib.Gallery | None = None
  accept: float | None = None  # Overrides the calibration's share of known pictures accepted.
  note: str = ""  # Why answers are uncalibrated (empty when calibrated).
  directory: epath.Path | None = None  # Where the calibration and gallery are kept (store_dir).

  @property
  def threshold(self) -> float | None:
    if self.calibration is None:
      return None
    if self.accept is None:
      return self.calibration.threshold
    return self.calibration.threshold_at(self.accept)

  @property
  def names(self) -> list[str]:
    """Every name this model can answer: its classes, then enrolled characters."""
    enrolled = self.gallery.names if self.gallery is not None else []
    return list(self.class_names) + [n for n in enrolled if n not in self.class_names]

  def answer(self, logits: np.ndarray, embeddings: np.ndarray, top_k: int = 5) -> list[dict]:
    cal = self.calibration
    temperature = cal.temperature if cal is not None else 1.0
    probabilities = calibration_lib.softmax(logits, temperature)
    k = min(top_k, probabilities.shape[1])
    top = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    accepted = np.ones(len(logits), bool)
    if cal is not None:
      scores = calibration_lib.score(cal.score, logits, embeddings, cal.prototypes, cal.temperature)
      accepted = (scores >= self.threshold) & ~cal.no_character_rejects(embeddings)
    enrolled_best, enrolled_probability, enrolled_ok = self._enrolled(embeddings)
    answers = []
    for i in range(len(logits)):
      predictions = [
        {
          "rank": r + 1,
          "class_id": int(c),
          "name": self.class_names[int(c)],
          "probability": float(probabilities[i, c]),
        }
        for r, c in enumerate(top[i])
      ]
      closest, confidence, ok, enrolled = (
        predictions[0]["name"],
        predictions[0]["probability"],
        bool(accepted[i]),
        False,
      )
      if enrolled_best is not None and enrolled_best[i] is not None:
        closest, confidence, ok, enrolled = (
          enrolled_best[i],
          float(enrolled_probability[i]),
          bool(enrolled_ok[i]),
          True,
        )
      answers.append(
        {
          "character": closest if ok else None,
          "unknown": not ok,
          "confidence": confidence,
          "closest": closest,
          "enrolled": enrolled,
          "calibrated": cal is not None,
          "predictions": predictions,
        }
      )
    return answers

  def _enrolled(self, embeddings: np.ndarray):
    """Per picture: the enrolled name closer than every known class prototype (or None), its
    calibrated probability, and whether it passes the threshold of a character enrolled from
    that many pictures and the no-character rule."""
    cal, gallery = self.calibration, self.gallery
    if cal is None or gallery is None or not gallery.characters:
      return None, None, None
    every = np.concatenate([cal.prototypes, gallery.prototypes()])
    cosines = np.asarray(embeddings, np.float64) @ every.T.astype(np.float64)
    probabilities = calibration_lib.softmax(cosines * cal.cosine_scale)
    best = cosines.argmax(axis=1)
    known = len(cal.prototypes)
    names = gallery.names
    accept = self.accept or cal.accept
    # Each character's threshold fits how many pictures it was enrolled from.
    thresholds = np.array(
      [cal.enrolled_threshold(gallery.characters[n].count, accept) for n in names]
    )
    best_names = [names[b - known] if b >= known else None for b in best]
    picked = probabilities[np.arange(len(best)), best]
    passes = cosines[np.arange(len(best)), best] >= np.where(
      best >= known, thresholds[np.maximum(best - known, 0)], np.inf
    )
    if cal.no_character_margin is not None and cal.no_character is not None:
      gap = calibration_lib.no_character_rule(embeddings, every, cal.no_character)
      passes &= gap <= cal.no_character_margin
    return best_names, picked, passes


def for_run(
  run: Any, accept: float | None = None, store: str | os.PathLike | None = None
) -> Answerer:
  """The answerer of a loaded model: its calibration and gallery, from `store_dir`.

  Raises:
    gallery.GalleryMismatch: the gallery was made with another model or checkpoint.
  """
  if accept is not None and not 0.0 < accept <= 1.0:
    raise OpenSetError(f"--accept={accept} must be in (0, 1] (the share of known pictures named).")
  directory = store_dir(run, store)
  expected = provenance(run)
  fitted, note = load_calibration(directory, expected)
  gallery = None
  if directory is not None:
    gallery = gallery_lib.load(directory / run_dir.GALLERY_DIR, expected)
  if gallery is not None and gallery.characters and fitted is None:
    note += "; enrolled characters need a calibration and are not answered"
  return Answerer(list(run.class_names), fitted, gallery, accept, note, directory)


def describe(answer: dict[str, Any]) -> str:
  """'NAME' or 'unknown (closest: NAME 23%)', as the table and the page show answers."""
  if answer["unknown"]:
    return f"unknown (closest: {answer['closest']} {100 * answer['confidence']:.0f}%)"
  return answer["character"] + (" (enrolled)" if answer["enrolled"] else "")
