"""Boxes linked into tracks within a shot, by overlap (IoU) with each track's last box.

  linker = tracking.Linker(min_iou=0.3, max_missed=2)
  ids = linker.link(time, boxes)     # a track per box: an existing one or a new one
  linker.hold(time)                  # a near-duplicate frame: the tracks seen last stay on screen
  finished = linker.close_all()      # at a cut, and at the end

A track remembers the sum of its frames' logits and embeddings (one answer per track comes from
their mean, see timeline.py), the frame it was answered most surely in (its thumbnail), and each
frame's own answer (for measuring per-frame naming against track naming).
"""

import dataclasses

import numpy as np


def iou(a, b) -> float:
  """Intersection over union of two [left, top, right, bottom] boxes."""
  width = min(a[2], b[2]) - max(a[0], b[0])
  height = min(a[3], b[3]) - max(a[1], b[1])
  if width <= 0 or height <= 0:
    return 0.0
  inter = width * height
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
  return inter / union if union > 0 else 0.0


@dataclasses.dataclass
class Track:
  id: int
  shot: int
  first: float  # Time of the first frame it is in (seconds).
  last: float  # Time of the last frame it is in (held near-duplicate frames included).
  box: list[int]  # Its latest box.
  frames: int = 0  # Frames answered (near-duplicates not counted).
  logits_sum: np.ndarray | None = None
  embedding_sum: np.ndarray | None = None
  best_confidence: float = -1.0
  best_time: float = 0.0
  best_box: list[int] | None = None
  thumbnail: np.ndarray | None = None  # uint8 RGB crop at the best frame.
  per_frame: list[tuple[float, list[int], str | None]] = dataclasses.field(default_factory=list)

  def add(self, time, box, logits, embedding, answer, thumbnail) -> None:
    """One answered frame: its logits, embedding, the frame's own answer and its crop."""
    self.frames += 1
    self.logits_sum = logits if self.logits_sum is None else self.logits_sum + logits
    self.embedding_sum = embedding if self.embedding_sum is None else self.embedding_sum + embedding
    self.per_frame.append((time, list(box), answer.character))
    if answer.confidence > self.best_confidence:
      self.best_confidence, self.best_time, self.best_box = answer.confidence, time, list(box)
      self.thumbnail = thumbnail

  def mean_outputs(self) -> tuple[np.ndarray, np.ndarray]:
    """(mean logits, mean embedding re-normalised to unit length) of its frames."""
    logits = self.logits_sum / self.frames
    embedding = self.embedding_sum / self.frames
    return logits, embedding / max(float(np.linalg.norm(embedding)), 1e-12)


class Linker:
  """Greedy IoU linking of each frame's boxes to the tracks of the current shot."""

  def __init__(self, min_iou: float = 0.3, max_missed: int = 2):
    """
    Args:
      min_iou: the least overlap with a track's last box for a box to continue it.
      max_missed: a track ends after this many answered frames in a row without its box.
    """
    self.min_iou, self.max_missed = min_iou, max_missed
    self.shot = 0
    self._next_id = 0
    self._active: list[tuple[Track, int]] = []  # (track, frames missed in a row)
    self._seen_last: list[Track] = []  # The tracks of the last answered frame.
    self.finished: list[Track] = []  # Tracks that ended (taken by `take_finished`).

  def link(self, time: float, boxes: list[list[int]]) -> list[Track]:
    """The track of each box (in order): the free track it overlaps most, else a new one."""
    pairs = sorted(
      (
        (iou(track.box, box), t, b)
        for t, (track, _) in enumerate(self._active)
        for b, box in enumerate(boxes)
      ),
      reverse=True,
    )
    chosen: dict[int, int] = {}  # box -> active track index
    used = set()
    for overlap, t, b in pairs:
      if overlap < self.min_iou:
        break
      if t not in used and b not in chosen:
        chosen[b] = t
        used.add(t)
    result, still = [], []
    for t, (track, missed) in enumerate(self._active):
      if t in used:
        still.append((track, 0))
      elif missed + 1 > self.max_missed:
        self.finished.append(track)
      else:
        still.append((track, missed + 1))
    for b, box in enumerate(boxes):
      if b in chosen:
        track = self._active[chosen[b]][0]
        track.last, track.box = time, list(box)
      else:
        track = Track(self._next_id, self.shot, time, time, list(box))
        self._next_id += 1
        still.append((track, 0))
      result.append(track)
    self._active = still
    self._seen_last = result
    return result

  @property
  def next_id(self) -> int:
    """The id the next new track gets."""
    return self._next_id

  def on_screen(self) -> list[Track]:
    """The tracks of the last answered frame."""
    return list(self._seen_last)

  def hold(self, time: float) -> None:
    """A frame like the last answered one: its tracks are still on screen at `time`."""
    for track in self._seen_last:
      track.last = time

  def close_all(self, next_shot: int | None = None) -> None:
    """Ends every track (a cut, or the end); later boxes belong to `next_shot`."""
    self.finished.extend(track for track, _ in self._active)
    self._active, self._seen_last = [], []
    if next_shot is not None:
      self.shot = next_shot

  def take_finished(self) -> list[Track]:
    finished, self.finished = self.finished, []
    return finished
