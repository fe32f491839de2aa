"""Frames of a video file, one at a time (OpenCV's FFmpeg backend), with what failed to decode.

  report = decoding.DecodeReport()
  for frame in decoding.frames("episode.mkv", report):   # raises NotAVideo before any frame
    frame.index, frame.time, frame.pixels                   # uint8 RGB (H, W, 3)
  report.gaps                                               # [(start s, end s, why)]

Only one frame is held at a time, so memory does not grow with the video's length. A file that
stops decoding early (truncated) or skips frames (a damaged stretch) is read as far as it
decodes; the missing stretches are in `report.gaps`.
"""

from collections.abc import Iterator
import dataclasses
import os

import numpy as np

# Failed reads in a row after which the rest of the file is given up (a damaged stretch is
# usually skipped by FFmpeg after a few packets; a truncated file fails every read).
MAX_FAILED_READS = 25
# A timestamp step longer than this many frame intervals is reported as a gap.
GAP_FRAMES = 1.5


class NotAVideo(ValueError):
  """A file that OpenCV cannot open as a video."""


@dataclasses.dataclass(frozen=True)
class Frame:
  index: int  # 0-based position among the decoded frames.
  time: float  # Seconds from the start (the container's timestamp).
  pixels: np.ndarray  # uint8 RGB (H, W, 3).


@dataclasses.dataclass
class DecodeReport:
  """What a file holds and what decoded (filled in while its frames are read)."""

  path: str = ""
  fps: float = 0.0
  width: int = 0
  height: int = 0
  expected_frames: int = 0  # The container's frame count (0 when it does not say).
  expected_duration: float = 0.0  # Seconds, from the frame count and rate.
  decoded_frames: int = 0
  last_time: float = 0.0  # Timestamp of the last frame decoded.
  gaps: list[tuple[float, float, str]] = dataclasses.field(default_factory=list)

  @property
  def complete(self) -> bool:
    return not self.gaps

  def to_json(self) -> dict:
    return {
      "file": self.path,
      "fps": round(self.fps, 3),
      "width": self.width,
      "height": self.height,
      "expected_frames": self.expected_frames,
      "decoded_frames": self.decoded_frames,
      # Frames the container announced but that did not decode (its count is an estimate in
      # some containers; in AVI, whose timestamps count frames, a damaged stretch shows here
      # and not as a gap).
      "missing_frames": max(self.expected_frames - self.decoded_frames, 0),
      "duration": round(self.expected_duration, 3),
      "complete": self.complete,
      "gaps": [{"start": round(a, 3), "end": round(b, 3), "why": why} for a, b, why in self.gaps],
    }


def _import_cv2():
  import cv2  # pylint: disable=g-import-not-at-top

  return cv2


def open_video(path: str, report: DecodeReport):
  """An opened cv2.VideoCapture; fills in the report's header fields.

  Raises:
    FileNotFoundError: no such file.
    NotAVideo: OpenCV cannot open it, or it has no frame rate (e.g. a still image).
  """
  cv2 = _import_cv2()
  if os.path.isdir(path):
    raise NotAVideo(f"{path} is a folder: give the video files in it.")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} does not exist.")
  still = _still_image(path)
  if still:
    raise NotAVideo(f"{path} is a still image ({still}), not a video.")
  capture = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
  fps = capture.get(cv2.CAP_PROP_FPS) if capture.isOpened() else 0.0
  if not capture.isOpened() or not fps > 0:
    capture.release()
    with open(path, "rb") as f:
      head = f.read(12)
    if head[4:8] == b"ftyp":  # An MP4 / MOV whose index (moov atom) is missing.
      raise NotAVideo(
        f"{path} is an MP4 without its index (moov atom), which MP4 writers put at the end: "
        "the file is truncated (an interrupted download or recording). Nothing in it can be "
        "decoded without the index; download it again, or recover it with a tool that rebuilds "
        "the index from a complete file of the same camera/encoder (e.g. untrunc)."
      )
    raise NotAVideo(
      f"{path} is not a video that OpenCV's FFmpeg can read (a container such as MP4, MKV, "
      "WebM or AVI with a video stream)."
    )
  count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
  report.path = path
  report.fps = float(fps)
  report.width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
  report.height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
  report.expected_frames = max(count, 0)
  report.expected_duration = report.expected_frames / report.fps
  return capture


def _still_image(path: str) -> str:
  """The image format of `path` when it is a still (one-frame) picture, else ''."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  try:
    with Image.open(path) as image:
      return "" if getattr(image, "n_frames", 1) > 1 else str(image.format)
  except (OSError, ValueError, Image.DecompressionBombError):
    return ""


def frames(path: str, report: DecodeReport | None = None) -> Iterator[Frame]:
  """Every frame that decodes, in order (see the module docstring). The file is opened now, so
  the report's header fields (rate, size, frame count) are filled in before the first frame.

  Raises: FileNotFoundError, NotAVideo.
  """
  report = report if report is not None else DecodeReport()
  return _read(open_video(path, report), report)


def _read(capture, report: DecodeReport) -> Iterator[Frame]:
  cv2 = _import_cv2()
  step = 1.0 / report.fps
  previous = None  # Timestamp of the previous decoded frame.
  failed = 0
  try:
    while True:
      ok, bgr = capture.read()
      if not ok or bgr is None:
        failed += 1
        if failed >= MAX_FAILED_READS or _at_end(capture, cv2, report):
          break
        continue
      failed = 0
      time = capture.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
      if previous is not None and time <= previous:  # No usable timestamps: count frames.
        time = previous + step
      start = 0.0 if previous is None else previous + step
      if time - start > (GAP_FRAMES - 1) * step + 1e-6:
        report.gaps.append((start, time, "frames missing (damaged stretch)"))
      previous = time
      pixels = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
      yield Frame(report.decoded_frames, time, pixels)
      report.decoded_frames += 1
      report.last_time = time
  finally:
    capture.release()
  end = report.expected_duration
  decoded_to = (previous + step) if previous is not None else 0.0
  if end - decoded_to > GAP_FRAMES * step:
    report.gaps.append((decoded_to, end, "file ends early (truncated or damaged)"))


def _at_end(capture, cv2, report: DecodeReport) -> bool:
  """Whether the capture is at (or past) the last frame the container announced."""
  position = capture.get(cv2.CAP_PROP_POS_FRAMES)
  return report.expected_frames <= 0 or position >= report.expected_frames
