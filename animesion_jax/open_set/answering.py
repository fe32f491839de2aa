"""Answers that can say "unknown", and name enrolled characters, for a loaded model.

  answerer = open_set.for_run(run, accept=None, store=None)   # calibration + gallery of the run
  answers = answerer.answer(logits, embeddings, top_k=5)      # [Answer], from run.embed's rows

A loaded recognizer carries its answerer (recognizer.Recognizer.answerer, `with_open_set`).

Every answer is an `Answer` (the accepted name or None, unknown, the calibrated confidence of
the closest name, closest, enrolled, calibrated, the classifier's top-k, box, note), made by
`decide`, which holds the whole accept / reject / enrolled rule. Without a calibration (a run trained
before calibration existed) every picture gets its top-1 name, uncalibrated, and `note` says how
to calibrate. Fitting is in fitting.py (embeddings of the training split give the class
prototypes, the validation split the rest; the numbers are animesion_jax/open_set/calibration.py's).
"""

from collections.abc import Sequence
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


# How an unknown answer begins wherever it is shown (`Answer.describe`, the web page).
UNKNOWN_TEXT = "unknown (not sure enough to name"
# Beside the top-k of an unknown answer (predict's table, the web page).
GUESSES_NOTE = "guesses among the known characters only; none was sure enough to name"


class OpenSetError(ValueError):
  """A bad open-set request (e.g. an --accept outside (0, 1])."""


# What the CLIs report as a message, without a traceback.
USER_ERRORS = (OpenSetError, gallery_lib.GalleryError)


def provenance(run: Any) -> dict[str, Any]:
  """What a calibration or gallery belongs to: the fingerprint of the checkpoint's parameters
  as answered (recognizer.Recognizer.fingerprint), and, checked where a stored one has no
  fingerprint, the model, checkpoint step (or file), classes and the tau-normalisation of the
  classifier (recognizer.load_run). See gallery.provenance_differences."""
  return {
    "fingerprint": getattr(run, "fingerprint", None),
    "model": str(run.config.model.name),
    "step": run.step,
    "checkpoint": None if run.step is not None else os.path.basename(str(run.checkpoint)),
    "num_classes": int(run.num_classes),
    "tau_norm": float(getattr(run, "tau_norm", 0.0)),
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
  differ = gallery_lib.provenance_differences(found, expected)
  if differ:
    return None, (
      f"uncalibrated: {path} was fitted for "
      + ", ".join(f"{k}={gallery_lib.stored(found, k)!r}" for k in differ)
      + " but this model has "
      + ", ".join(f"{k}={expected.get(k)!r}" for k in differ)
      + "; calibrate this checkpoint (python -m animesion_jax.calibrate)"
    )
  return fitted, ""


@dataclasses.dataclass(frozen=True)
class Ranked:
  """One row of the classifier's calibrated top-k (rank 1 first)."""

  rank: int
  class_id: int
  name: str
  probability: float


@dataclasses.dataclass(frozen=True)
class Answer:
  """The answer about one picture (or one box in it): every consumer returns or serialises this.

  predict's JSON and CSV, evaluate's open-set numbers, the web page, organize, the export's
  predictor and `Recognizer.predict` all come from `decide`, the one decision rule.
  """

  # The name answered (a known class or an enrolled character), or None: the picture is unknown.
  character: str | None
  # True when no name passes the rule (then `character` is None).
  unknown: bool
  # Calibrated probability of `closest` (the softmax at the calibration's temperature).
  confidence: float
  # The nearest name, known or enrolled, also when the answer is unknown.
  closest: str
  # Whether `closest` is an enrolled character (from the gallery).
  enrolled: bool
  # Whether a calibration decided (False: every picture gets its top-1 name; see `note`).
  calibrated: bool
  # The classifier's top-k over its known classes, calibrated, best first.
  top_k: tuple[Ranked, ...]
  # Where in the picture: [left, top, right, bottom] in pixels; None for the whole picture.
  box: tuple[int, int, int, int] | None = None
  # Why the answer is limited (e.g. uncalibrated, no face found); empty when nothing to say.
  note: str = ""

  @property
  def names(self) -> list[str]:
    return [r.name for r in self.top_k]

  @property
  def probabilities(self) -> list[float]:
    return [r.probability for r in self.top_k]

  @property
  def class_ids(self) -> list[int]:
    return [r.class_id for r in self.top_k]

  def ranked(self) -> list[dict[str, Any]]:
    """[{'rank', 'class_id', 'name', 'probability'}] (predict's JSON rows)."""
    return [dataclasses.asdict(r) for r in self.top_k]

  def to_json(self) -> dict[str, Any]:
    """The answer's fields as predict's JSON and the web page's API write them."""
    return {
      "character": self.character,
      "unknown": self.unknown,
      "confidence": self.confidence,
      "closest": self.closest,
      "enrolled": self.enrolled,
      "calibrated": self.calibrated,
      "predictions": self.ranked(),
      "box": list(self.box) if self.box is not None else None,
      "note": self.note,
    }

  @classmethod
  def from_json(cls, record: dict[str, Any]) -> "Answer":
    """The answer `to_json` wrote (predict's predictions.json rows)."""
    box = record.get("box")
    return cls(
      character=record["character"],
      unknown=bool(record["unknown"]),
      confidence=float(record["confidence"]),
      closest=record["closest"],
      enrolled=bool(record["enrolled"]),
      calibrated=bool(record["calibrated"]),
      top_k=tuple(Ranked(**row) for row in record["predictions"]),
      box=tuple(int(v) for v in box) if box is not None else None,
      note=record.get("note") or "",
    )

  def describe(self) -> str:
    """'NAME', 'NAME (enrolled)' or 'unknown (not sure enough to name; nearest: NAME)', as the
    table and the page show answers.

    An unknown answer shows no percentage: the classifier's probability of its nearest name is
    often high for pictures it must refuse (91% for random noise), and next to 'unknown' it
    reads as a confident name. The top-k of an unknown answer are guesses among the known
    characters only (predict's table puts them in parentheses, the page under "guesses").
    """
    if self.unknown:
      return f"{UNKNOWN_TEXT}; nearest: {self.closest})"
    return self.character + (" (enrolled)" if self.enrolled else "")


def decide(
  logits: np.ndarray,
  embeddings: np.ndarray,
  class_names: Sequence[str],
  calibration: calibration_lib.Calibration | None = None,
  gallery: gallery_lib.Gallery | None = None,
  *,
  accept: float | None = None,
  top_k: int = 5,
  note: str = "",
) -> list[Answer]:
  """The whole accept / reject / enrolled rule, for a batch of a model's outputs.

  1. Top-k: softmax of the logits at the calibration's temperature (1 when uncalibrated).
  2. Known name: accepted when the calibration's score (calibration.score) reaches its threshold
     (at `accept`, the share of known pictures named, when given) and the no-character rule
     does not reject the embedding. Uncalibrated: always accepted (the top-1 name).
  3. Enrolled name: when an enrolled prototype is nearer (cosine) than every known class
     prototype, it replaces the known name; accepted when the cosine reaches the threshold of a
     character enrolled from that many pictures and the no-character margin holds.
  Pictures added to a known class (`enroll --refine`) move its prototype (`refined`) before
  steps 2 and 3; they make no second, enrolled copy of it. No picture: no answer.
  """
  if not len(logits):  # No picture (e.g. an empty folder): embeddings may be shaped (0, 0).
    return []
  cal = refined(calibration, gallery, class_names)
  temperature = cal.temperature if cal is not None else 1.0
  probabilities = calibration_lib.softmax(logits, temperature)
  k = min(top_k, probabilities.shape[1])
  top = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
  accepted = np.ones(len(logits), bool)
  if cal is not None:
    threshold = cal.threshold if accept is None else cal.threshold_at(accept)
    scores = calibration_lib.score(cal.score, logits, embeddings, cal.prototypes, cal.temperature)
    accepted = (scores >= threshold) & ~cal.no_character_rejects(embeddings)
  enrolled_name, enrolled_probability, enrolled_ok = _nearest_enrolled(
    embeddings, cal, gallery, accept, class_names
  )
  answers = []
  for i in range(len(logits)):
    ranked = tuple(
      Ranked(r + 1, int(c), class_names[int(c)], float(probabilities[i, c]))
      for r, c in enumerate(top[i])
    )
    closest, confidence, ok, enrolled = ranked[0].name, ranked[0].probability, accepted[i], False
    if enrolled_name is not None and enrolled_name[i] is not None:
      closest, confidence = enrolled_name[i], float(enrolled_probability[i])
      ok, enrolled = enrolled_ok[i], True
    answers.append(
      Answer(
        character=closest if ok else None,
        unknown=not ok,
        confidence=float(confidence),
        closest=closest,
        enrolled=enrolled,
        calibrated=cal is not None,
        top_k=ranked,
        note=note,
      )
    )
  return answers


def enrolled_names(gallery: gallery_lib.Gallery | None, class_names: Sequence[str]) -> list[str]:
  """The gallery's new characters (names the model's classes do not have), in name order."""
  if gallery is None:
    return []
  known = set(class_names)
  return [n for n in gallery.names if n not in known]


def refined(
  cal: calibration_lib.Calibration | None,
  gallery: gallery_lib.Gallery | None,
  class_names: Sequence[str],
) -> calibration_lib.Calibration | None:
  """The calibration with the prototypes of known classes that `enroll --refine` added pictures
  to (gallery entries under a known class's name) moved by those pictures.

  A refined prototype is the normalised weighted sum of the class's training prototype and the
  added pictures' embeddings, the prototype weighing as many pictures as it was made from
  (`class_counts`; as many as were added for calibrations without them). The class keeps its
  name and the classifier's rule: nothing becomes a second, enrolled copy of it.
  """
  if cal is None or gallery is None or cal.prototypes is None:
    return cal
  rows = {n: i for i, n in enumerate(class_names)}
  added = [n for n in gallery.names if n in rows]
  if not added:
    return cal
  prototypes = np.asarray(cal.prototypes, np.float64).copy()
  for name in added:
    character, row = gallery.characters[name], rows[name]
    if character.sum.shape != prototypes.shape[1:]:
      continue  # Another model's embeddings (the gallery check refuses those first).
    weight = cal.class_counts[row] if len(cal.class_counts) == len(prototypes) else character.count
    moved = weight * prototypes[row] + character.sum
    prototypes[row] = moved / max(float(np.linalg.norm(moved)), 1e-12)
  return dataclasses.replace(cal, prototypes=prototypes.astype(np.float32))


def _nearest_enrolled(
  embeddings: np.ndarray,
  cal: calibration_lib.Calibration | None,
  gallery: gallery_lib.Gallery | None,
  accept: float | None,
  class_names: Sequence[str],
):
  """Per picture: the enrolled name nearer than every known class prototype (or None), its
  calibrated probability, and whether it passes the threshold of a character enrolled from that
  many pictures and the no-character rule. (None, None, None) without enrolled characters."""
  names = enrolled_names(gallery, class_names)
  if cal is None or not names:
    return None, None, None
  enrolled = np.stack([gallery.characters[n].prototype for n in names])
  every = np.concatenate([cal.prototypes, enrolled])
  cosines = np.asarray(embeddings, np.float64) @ every.T.astype(np.float64)
  probabilities = calibration_lib.softmax(cosines * cal.cosine_scale)
  best = cosines.argmax(axis=1)
  known = len(cal.prototypes)
  # Each character's threshold fits how many pictures it was enrolled from.
  thresholds = np.array(
    [cal.enrolled_threshold(gallery.characters[n].count, accept or cal.accept) for n in names]
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


@dataclasses.dataclass(frozen=True)
class Answerer:
  """A model's class names, calibration and gallery: turns its outputs into answers (`decide`).

  Frozen: enrolment builds a new answerer (`with_gallery`) and swaps it in, so that a request
  answering at the same time sees either the old gallery or the new one, never a mix.
  """

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

  def with_gallery(self, gallery: gallery_lib.Gallery | None) -> "Answerer":
    return dataclasses.replace(self, gallery=gallery)

  def answer(self, logits: np.ndarray, embeddings: np.ndarray, top_k: int = 5) -> list[Answer]:
    return decide(
      logits,
      embeddings,
      self.class_names,
      self.calibration,
      self.gallery,
      accept=self.accept,
      top_k=top_k,
      note=self.note,
    )


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
  if directory is None or not (
    (directory / run_dir.CALIBRATION_FILE).exists()
    or (directory / run_dir.GALLERY_DIR / gallery_lib.GALLERY_FILE).exists()
  ):
    return Answerer(list(run.class_names), None, None, accept, UNCALIBRATED_NOTE, directory)
  expected = provenance(run)  # Fingerprints the parameters: only where something is stored.
  fitted, note = load_calibration(directory, expected)
  gallery = gallery_lib.load(directory / run_dir.GALLERY_DIR, expected)
  if gallery is not None and gallery.characters and fitted is None:
    note += "; enrolled characters need a calibration and are not answered"
  return Answerer(list(run.class_names), fitted, gallery, accept, note, directory)
