"""Shot boundaries, found while the frames stream by: hard cuts and fades through black.

  detector = shots.ShotDetector()
  for frame in frames:
    if detector.update(frame.time, frame.pixels):   # True: this frame starts a new shot
      ...
  detector.finish(end_time)                         # detector.shots: [Shot], in order

Every frame is reduced to a 32x18 thumbnail divided by its mean brightness, so a fade (every
pixel scaled towards black) leaves it unchanged. A frame's score is the share of thumbnail cells
that changed (by more than `cell_change` of the mean brightness) since the previous frame, at
the best alignment of the two within a few cells (a pan or a tilt moves the picture; a cut
replaces it): a cut scores most of the picture, a character's movement or a new drawing of one
the part it covers. A cut is a score of at least `min_score` that is also `ratio` times the mean
of the frames before it in the shot (sustained change, such as a zoom, scores high on every
frame). Frames darker than `dark_level` are not scored: a stretch of them ends the shot, and the
next one starts when the picture comes back, the boundary placed in the middle of the dark
stretch.
"""

import collections
import dataclasses

import numpy as np

THUMBNAIL = (32, 18)  # (width, height) of the compared thumbnails.
SHIFTS = (3, 1)  # Alignments tried: up to this many cells sideways, and up and down.


@dataclasses.dataclass(frozen=True)
class Shot:
  index: int
  start: float  # Seconds.
  end: float  # Seconds (the next shot's start, or the end of the video).

  def to_json(self) -> dict:
    return {"shot": self.index, "start": round(self.start, 3), "end": round(self.end, 3)}


def features(pixels: np.ndarray) -> tuple[np.ndarray, float]:
  """(thumbnail divided by its mean brightness, mean brightness 0-255)."""
  import cv2  # pylint: disable=g-import-not-at-top

  small = cv2.resize(pixels, THUMBNAIL, interpolation=cv2.INTER_AREA).astype(np.float32)
  brightness = float(small.mean())
  return small / max(brightness, 1.0), brightness


def changed_share(a: np.ndarray, b: np.ndarray, cell_change: float) -> float:
  """The least share of cells that differ by more than `cell_change` between thumbnails `a`
  and `b` over the alignments within SHIFTS."""
  height, width = a.shape[:2]
  best = 1.0
  for dy in range(-SHIFTS[1], SHIFTS[1] + 1):
    for dx in range(-SHIFTS[0], SHIFTS[0] + 1):
      part_a = a[max(dy, 0) : height + min(dy, 0), max(dx, 0) : width + min(dx, 0)]
      part_b = b[max(-dy, 0) : height + min(-dy, 0), max(-dx, 0) : width + min(-dx, 0)]
      share = float((np.abs(part_a - part_b).mean(axis=2) > cell_change).mean())
      best = min(best, share)
  return best


class ShotDetector:
  """Streams frames in and says where shots start (see the module docstring)."""

  def __init__(
    self,
    min_score: float = 0.35,
    ratio: float = 2.0,
    cell_change: float = 0.1,
    window: int = 8,
    dark_level: float = 20.0,
    min_shot: float = 0.3,
  ):
    """
    Args:
      min_score: the smallest frame score (share of the picture changed) that can be a cut.
      cell_change: how much a cell must change to count, as a share of the mean brightness.
      ratio: a cut scores at least this many times the mean of the `window` frames before it.
      window: frames in that mean.
      dark_level: mean brightness (0-255) below which a frame is dark (part of a fade).
      min_shot: seconds: no cut this soon after the previous boundary.
    """
    self.min_score, self.ratio, self.cell_change = min_score, ratio, cell_change
    self.dark_level, self.min_shot = dark_level, min_shot
    self._recent = collections.deque(maxlen=window)
    self._previous = None  # Normalised thumbnail of the previous bright frame.
    self._dark_since = None  # Time of the first frame of the current dark stretch.
    self._starts = []  # Start time of every shot so far.
    self.shots: list[Shot] = []  # Filled in by `finish`.
    self.dark = False  # Whether the last frame given was dark.

  @property
  def shot_index(self) -> int:
    """The index of the shot the last frame given belongs to."""
    return max(len(self._starts) - 1, 0)

  def update(self, time: float, pixels: np.ndarray) -> bool:
    """Whether the frame at `time` starts a new shot (never the first frame)."""
    normalised, brightness = features(pixels)
    if not self._starts:
      self._starts.append(0.0)
    self.dark = brightness < self.dark_level
    if self.dark:
      if self._dark_since is None:
        self._dark_since = time
      return False
    if self._dark_since is not None:  # The picture comes back after a dark stretch.
      dark_start, self._dark_since = self._dark_since, None
      had_picture, self._previous = self._previous is not None, normalised
      self._recent.clear()
      if had_picture:
        return self._start((dark_start + time) / 2)
      return False
    before, self._previous = self._previous, normalised
    if before is None:
      return False
    score = changed_share(normalised, before, self.cell_change)
    usual = float(np.mean(self._recent)) if self._recent else 0.0
    self._recent.append(score)
    if score >= self.min_score and score >= self.ratio * usual:
      if time - self._starts[-1] >= self.min_shot:
        self._recent.clear()
        return self._start(time)
    return False

  def _start(self, time: float) -> bool:
    self._starts.append(time)
    return True

  def finish(self, end: float) -> list[Shot]:
    """The shots, the last one ending at `end` (seconds)."""
    starts = self._starts or [0.0]
    ends = [*starts[1:], max(end, starts[-1])]
    self.shots = [Shot(i, s, e) for i, (s, e) in enumerate(zip(starts, ends))]
    return self.shots
