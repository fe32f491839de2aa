"""One video, streamed: decode -> shots -> sampled frames -> boxes -> embeddings -> tracks.

  found = indexer.index_video(run, "episode.mkv", detector, Settings(), progress=True)
  found.report (decoding.DecodeReport), found.shots, found.tracks (tracking.Track, with the sums
  of their frames' logits and embeddings), found.stats

Every decoded frame goes through the shot detector; within a shot a frame is sampled every
`sample_every` seconds (dark frames of a fade never); a sampled frame almost identical to the
last answered frame of its shot (no cell of their 32x18 grey thumbnails differs by
`duplicate_level` or more) is not detected or answered again: the tracks on screen are held. Where a
track starts (ends) between two sampled frames, or at a shot's end, the frames since the last
sample (at most `edge_frames`) are searched by bisection for the first (last) one the detector
finds it in, so its start and end are to the frame. The crops of
the other sampled frames' boxes wait in a batch of `batch_size` for the recognizer. Only those
frames, one batch of crops and each track's best thumbnail are held in memory.
"""

import collections
import dataclasses
import os

import numpy as np
from PIL import Image

from animesion_jax.data import preprocess
from animesion_jax.video_index import decoding
from animesion_jax.video_index import shots as shots_lib
from animesion_jax.video_index import tracking

THUMBNAIL = 96  # Side of the thumbnails kept per track (the page's pictures), in pixels.


@dataclasses.dataclass(frozen=True)
class Settings:
  # Seconds between sampled frames within a shot.
  sample_every: float = 0.25
  # Largest absolute difference (0-255) between the cells of grey 32x18 thumbnails under which
  # a sampled frame is a near-duplicate of the last answered one (the largest, not the mean: a
  # small head entering changes a few cells only).
  duplicate_level: float = 6.0
  # Least IoU for a box to continue a track.
  min_iou: float = 0.3
  # Answered frames a track may miss before it ends.
  max_missed: int = 2
  # Crops per recognizer call.
  batch_size: int = 64
  # Frames kept since the last sampled frame, to find the frame where a track starts or ends.
  edge_frames: int = 16


@dataclasses.dataclass
class VideoIndex:
  path: str
  report: decoding.DecodeReport
  shots: list[shots_lib.Shot]
  tracks: list[tracking.Track]
  stats: dict
  # Per shot: (first, last) sampled frame time; a track seen at either runs to the shot's edge.
  samples: dict[int, tuple[float, float]] = dataclasses.field(default_factory=dict)
  # Per shot: (start, end) of its picture, i.e. without the dark frames of a fade.
  pictures: dict[int, tuple[float, float]] = dataclasses.field(default_factory=dict)


class _Pending:
  """Crops waiting for the recognizer, with the track and frame each belongs to."""

  def __init__(self, run, batch_size: int):
    self.run, self.batch_size = run, batch_size
    self.items: list[tuple[tracking.Track, float, list[int], np.ndarray, np.ndarray]] = []

  def add(self, track, time, box, pixels, thumbnail) -> None:
    self.items.append((track, time, box, pixels, thumbnail))
    if len(self.items) >= self.batch_size:
      self.flush()

  def flush(self) -> None:
    if not self.items:
      return
    batch = np.zeros(
      (self.batch_size, *self.items[0][3].shape), np.uint8
    )  # One shape: one compile.
    batch[: len(self.items)] = [item[3] for item in self.items]
    logits, embeddings = self.run.embed(batch, self.batch_size)
    count = len(self.items)
    answers = self.run.answer(logits[:count], embeddings[:count], top_k=1)
    for (track, time, box, _, thumbnail), lg, em, answer in zip(
      self.items, logits, embeddings, answers
    ):
      track.add(time, box, lg, em, answer, thumbnail)
    self.items = []


def _crops(run, frame: np.ndarray, boxes):
  """(model inputs [n, S, S, 3] by `Recognizer.pixels`, as predict makes them; thumbnails
  [n, T, T, 3]) of the boxes."""
  image = Image.fromarray(frame)
  inputs, thumbnails = [], []
  for left, top, right, bottom in boxes:
    part = image.crop((left, top, right, bottom))
    inputs.append(run.pixels(np.asarray(part)))
    thumbnails.append(np.asarray(preprocess.resize_square(part, THUMBNAIL)))
  return inputs, thumbnails


def _grey(pixels: np.ndarray) -> np.ndarray:
  import cv2  # pylint: disable=g-import-not-at-top

  small = cv2.resize(pixels, shots_lib.THUMBNAIL, interpolation=cv2.INTER_AREA)
  return small.astype(np.float32).mean(axis=2)


def _edge(recent, box, detector, min_iou: float, first: bool) -> float | None:
  """The time of the first (`first`) or last frame in `recent` with a box overlapping `box`,
  by bisection (the character is taken to be absent then present, or present then absent, over
  these few frames); None where it is in none of them."""

  def present(i: int) -> bool:
    return any(tracking.iou(b, box) >= min_iou for b in detector(recent[i].pixels))

  low, high = 0, len(recent)
  while low < high:
    middle = (low + high) // 2
    if present(middle) == first:
      high = middle
    else:
      low = middle + 1
  if first:
    return recent[low].time if low < len(recent) else None
  return recent[low - 1].time if low > 0 else None


def _find_ends(ending, recent, detector, min_iou: float, stats: dict) -> None:
  """Sets the last frame of each track in `ending` (on screen at the last sample, not now) from
  the frames since that sample."""
  for track in ending:
    if recent:
      track.last = _edge(recent, track.box, detector, min_iou, False) or track.last
      stats["edge_detections"] += 1


def index_video(run, path: str, detector, settings: Settings = Settings(), progress=False):
  """The shots and tracks of one video file (see the module docstring).

  Raises (before any frame is read): FileNotFoundError, decoding.NotAVideo.
  """
  report = decoding.DecodeReport()
  frames = decoding.frames(path, report)
  bar = None
  if progress:
    import tqdm  # pylint: disable=g-import-not-at-top

    bar = tqdm.tqdm(
      total=report.expected_frames or None,
      unit="frame",
      desc=os.path.basename(path),
      dynamic_ncols=True,
      mininterval=1.0,
    )
  detector_shots = shots_lib.ShotDetector()
  linker = tracking.Linker(settings.min_iou, settings.max_missed)
  pending = _Pending(run, settings.batch_size)
  tracks: list[tracking.Track] = []
  stats = {"frames": 0, "sampled": 0, "near_duplicates": 0, "answered_frames": 0, "boxes": 0}
  stats["edge_detections"] = 0
  next_sample, last_grey, end = 0.0, None, 0.0
  samples: dict[int, tuple[float, float]] = {}
  pictures: dict[int, tuple[float, float]] = {}
  recent = collections.deque(maxlen=settings.edge_frames)  # Frames since the last sample.
  for frame in frames:
    stats["frames"] += 1
    if bar is not None:
      bar.update(1)
    end = frame.time + 1.0 / report.fps
    if detector_shots.update(frame.time, frame.pixels):
      _find_ends(linker.on_screen(), recent, detector, settings.min_iou, stats)
      linker.close_all(next_shot=detector_shots.shot_index)
      next_sample, last_grey = frame.time, None
      recent.clear()
    if detector_shots.dark:
      continue
    shot = detector_shots.shot_index
    pictures[shot] = (pictures.get(shot, (frame.time,))[0], end)
    if frame.time + 1e-6 < next_sample:
      recent.append(frame)
      continue
    next_sample = frame.time + settings.sample_every
    stats["sampled"] += 1
    samples[shot] = (samples.get(shot, (frame.time,))[0], frame.time)
    grey = _grey(frame.pixels)
    if last_grey is not None and float(np.abs(grey - last_grey).max()) < settings.duplicate_level:
      stats["near_duplicates"] += 1
      linker.hold(frame.time)
      recent.clear()
      continue
    last_grey = grey
    stats["answered_frames"] += 1
    boxes = [list(map(int, box)) for box in detector(frame.pixels)]
    stats["boxes"] += len(boxes)
    inputs, thumbnails = _crops(run, frame.pixels, boxes)
    before, born_from = linker.on_screen(), linker.next_id
    linked = linker.link(frame.time, boxes)
    for track, box, pixels, thumbnail in zip(linked, boxes, inputs, thumbnails):
      pending.add(track, frame.time, box, pixels, thumbnail)
    # Where tracks started or ended between the last sample and this one, to the frame.
    for track in linked:
      if track.id >= born_from and recent:
        track.first = _edge(recent, track.box, detector, settings.min_iou, True) or track.first
        stats["edge_detections"] += 1
    _find_ends([t for t in before if t not in linked], recent, detector, settings.min_iou, stats)
    recent.clear()
    tracks.extend(linker.take_finished())
  if bar is not None:
    bar.close()
  _find_ends(linker.on_screen(), recent, detector, settings.min_iou, stats)
  linker.close_all()
  pending.flush()
  tracks.extend(linker.take_finished())
  tracks = sorted((t for t in tracks if t.frames), key=lambda t: (t.first, t.id))
  end = max(end, report.expected_duration) if report.complete else end
  return VideoIndex(path, report, detector_shots.finish(end), tracks, stats, samples, pictures)
