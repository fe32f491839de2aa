"""Shot boundaries, found while the frames stream by: hard cuts and fades through black.

  detector = shots.ShotDetector()
  for frame in frames:
    if detector.update(frame.time, frame.pixels):   # True: this frame starts a new shot
      ...
  detector.finish(end_time)                         # detector.shots: [Shot], in order

Every frame is reduced to a 32x18 thumbnail divided by its mean brightness, so a fade (every
pixel scaled towards black) leaves it unchanged. A frame's score is half the L1 distance between
its chromaticity histogram and the previous frame's plus their mean absolute pixel difference.
A cut is a score above `min_score` that is also `ratio` times the mean score of the frames
before it in the shot (a pan or fast motion scores high on every frame, a cut on one). Frames
darker than `dark_level` are not scored: a stretch of them ends the shot, and the next one
starts when the picture comes back, the boundary placed in the middle of the dark stretch.
"""

import collections
import dataclasses

import numpy as np

THUMBNAIL = (32, 18)  # (width, height) of the compared thumbnails.
_BINS = 8  # Chromaticity histogram: 8 x 8 bins of r / (r + g + b), g / (r + g + b).


@dataclasses.dataclass(frozen=True)
class Shot:
  index: int
  start: float  # Seconds.
  end: float  # Seconds (the next shot's start, or the end of the video).

  def to_json(self) -> dict:
    return {"shot": self.index, "start": round(self.start, 3), "end": round(self.end, 3)}


def features(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
  """(brightness-normalised thumbnail, chromaticity histogram, mean brightness 0-255)."""
  import cv2  # pylint: disable=g-import-not-at-top

  small = cv2.resize(pixels, THUMBNAIL, interpolation=cv2.INTER_AREA).astype(np.float32)
  brightness = float(small.mean())
  normalised = small / max(brightness, 1.0)
  total = small.sum(axis=2) + 1e-3
  r = np.minimum((small[..., 0] / total * _BINS).astype(np.int32), _BINS - 1)
  g = np.minimum((small[..., 1] / total * _BINS).astype(np.int32), _BINS - 1)
  histogram = np.bincount((r * _BINS + g).ravel(), minlength=_BINS * _BINS).astype(np.float32)
  return normalised, histogram / histogram.sum(), brightness


class ShotDetector:
  """Streams frames in and says where shots start (see the module docstring)."""

  def __init__(
    self,
    min_score: float = 0.3,
    ratio: float = 3.0,
    window: int = 8,
    dark_level: float = 20.0,
    min_shot: float = 0.3,
  ):
    """
    Args:
      min_score: the smallest frame score that can be a cut.
      ratio: a cut scores at least this many times the mean of the `window` frames before it.
      window: frames in that mean.
      dark_level: mean brightness (0-255) below which a frame is dark (part of a fade).
      min_shot: seconds: no cut this soon after the previous boundary.
    """
    self.min_score, self.ratio, self.dark_level, self.min_shot = (
      min_score,
      ratio,
      dark_level,
      min_shot,
    )
    self._recent = collections.deque(maxlen=window)
    self._previous = None  # (normalised thumbnail, histogram) of the previous bright frame.
    self._dark_since = None  # Time of the first frame of the current dark stretch.
    self._last_time = None
    self._starts = []  # Start time of every shot so far.
    self.shots: list[Shot] = []  # Filled in by `finish`.
    self.dark = False  # Whether the last frame given was dark.
    self.scores: list[tuple[float, float]] = []  # (time, score) of the recent frames, for tuning.

  @property
  def shot_index(self) -> int:
    """The index of the shot the last frame given belongs to."""
    return max(len(self._starts) - 1, 0)

  def update(self, time: float, pixels: np.ndarray) -> bool:
    """Whether the frame at `time` starts a new shot (never the first frame)."""
    normalised, histogram, brightness = features(pixels)
    previous_time, self._last_time = self._last_time, time
    if not self._starts:
      self._starts.append(0.0)
    self.dark = brightness < self.dark_level
    if self.dark:
      if self._dark_since is None:
        self._dark_since = time
      return False
    if self._dark_since is not None:  # The picture comes back after a dark stretch.
      dark_start, self._dark_since = self._dark_since, None
      had_picture, self._previous = self._previous is not None, (normalised, histogram)
      self._recent.clear()
      if had_picture:
        return self._start((dark_start + time) / 2)
      return False
    if self._previous is None:
      self._previous = (normalised, histogram)
      return False
    before, before_histogram = self._previous
    self._previous = (normalised, histogram)
    score = 0.5 * float(np.abs(histogram - before_histogram).sum()) + float(
      np.abs(normalised - before).mean()
    )
    self.scores = self.scores[-200:] + [(time, score)]
    usual = float(np.mean(self._recent)) if self._recent else 0.0
    self._recent.append(score)
    del previous_time
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
