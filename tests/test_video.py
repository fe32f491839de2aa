"""The video indexer's parts on synthetic arrays and tiny files: shots, boxes, tracks, timeline,
decoding of bad files. (The command end to end: tests/test_video_command.py, slow.)"""

import json
import types

import cv2
import numpy as np
from PIL import Image
import pytest

from animesion_jax.inference import faces
from animesion_jax.open_set import answering
from animesion_jax.video_index import decoding
from animesion_jax.video_index import detectors
from animesion_jax.video_index import indexer
from animesion_jax.video_index import shots
from animesion_jax.video_index import timeline
from animesion_jax.video_index import tracking

FPS = 24


def _scene(seed: int, width: int = 320, height: int = 180) -> np.ndarray:
  """A textured picture (stripes over a two-colour gradient), twice as wide for panning."""
  rng = np.random.default_rng(seed)
  colors = rng.integers(60, 230, (2, 3)).astype(np.float32)
  t = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
  stripes = 1 + 0.15 * np.sin(np.arange(2 * width) / rng.uniform(8, 20))[None, :, None]
  return np.clip((colors[0] + t * (colors[1] - colors[0])) * stripes, 0, 255).astype(np.uint8)


def _episode() -> tuple[list[np.ndarray], list[int]]:
  """Frames: A still (30), cut to B panning fast (40), fade out / black / fade in to C (12+6+12),
  C still (30), cut to D (20). Returns the frames and the true first frame of each shot
  (None for the fade: its boundary is the middle of the black frames)."""
  a, b, c, d = (_scene(seed) for seed in range(4))
  frames = [a[:, :320]] * 30
  frames += [b[:, 4 * i : 4 * i + 320] for i in range(40)]  # 4 px a frame: a fast pan.
  frames += [(b[:, 160:480] * (1 - (i + 1) / 12)).astype(np.uint8) for i in range(12)]
  frames += [np.zeros_like(a[:, :320])] * 6
  frames += [(c[:, :320] * ((i + 1) / 12)).astype(np.uint8) for i in range(12)]
  frames += [c[:, :320]] * 30 + [d[:, :320]] * 20
  return frames, [0, 30, None, 30 + 40 + 30 + 30]


def test_shots_cut_pan_and_fade():
  frames, starts = _episode()
  detector = shots.ShotDetector()
  found = [i for i, f in enumerate(frames) if detector.update(i / FPS, f)]
  result = detector.finish(len(frames) / FPS)
  dark = [i for i, f in enumerate(frames) if f.mean() < detector.dark_level]
  # Cuts start a shot at their frame; a fade when the picture comes back, the boundary placed
  # in the middle of the dark frames.
  assert found == [starts[1], dark[-1] + 1, starts[3]]
  assert [s.start * FPS for s in result] == pytest.approx(
    [0, starts[1], (dark[0] + dark[-1] + 1) / 2, starts[3]]
  )
  assert [s.end for s in result] == [s.start for s in result[1:]] + [len(frames) / FPS]


def test_fade_is_one_boundary_in_the_dark_and_pan_none():
  frames, _ = _episode()
  detector = shots.ShotDetector()
  for i, f in enumerate(frames):
    detector.update(i / FPS, f)
  result = detector.finish(len(frames) / FPS)
  dark = [i for i, f in enumerate(frames) if f.mean() < 20]
  # No boundary during the 40-frame pan, exactly one inside the dark stretch.
  assert not [s for s in result if 31 / FPS < s.start < 70 / FPS]
  inside = [s for s in result if dark[0] / FPS <= s.start <= (dark[-1] + 1) / FPS]
  assert len(inside) == 1


def test_synthetic_markers_boxes_the_inside_of_magenta_frames():
  image = np.full((180, 320, 3), (200, 180, 220), np.uint8)  # Pinkish, yet not the marker.
  # Frames 2 px wide at 180p, as episodes.render draws them.
  image[50:110, 40:100] = (255, 0, 255)
  image[52:108, 42:98] = (250, 0, 250)  # A magenta inside does not widen or hide the box.
  image[60:124, 200:264] = (140, 10, 140)  # Dimmed (a fade).
  image[62:122, 202:262] = (30, 90, 60)
  image[10:20, 10:20] = (255, 0, 255)  # Too small to be a tile.
  assert detectors.marker_width(180) == 2
  assert detectors.synthetic_markers(image) == [[42, 52, 98, 108], [202, 62, 262, 122]]
  assert detectors.whole_frame(image) == [[0, 0, 320, 180]]
  with pytest.raises(ValueError, match="choose one of"):
    detectors.make("heads_v9")
  with pytest.raises(faces.CascadeNotFound, match="does not exist"):
    detectors.make("faces", cascade="missing/cascade.xml")


def test_linker_follows_moving_boxes_and_splits_new_ones():
  linker = tracking.Linker(min_iou=0.3, max_missed=1)
  first = linker.link(0.0, [[0, 0, 50, 50], [200, 0, 250, 50]])
  second = linker.link(0.25, [[210, 0, 260, 50], [10, 0, 60, 50], [100, 100, 150, 150]])
  assert [t.id for t in first] == [0, 1]
  assert [t.id for t in second] == [1, 0, 2]  # Moved boxes continue; the new one is new.
  linker.hold(0.5)  # A near-duplicate frame: all three stay on screen.
  third = linker.link(0.75, [[105, 100, 155, 150]])
  assert [t.id for t in third] == [2]
  assert not linker.take_finished()  # Missed once: allowed.
  linker.link(1.0, [[105, 100, 155, 150]])
  assert sorted(t.id for t in linker.take_finished()) == [0, 1]  # Missed twice: ended.
  assert (second[0].first, second[0].last) == (0.0, 0.5)
  linker.close_all(next_shot=1)
  assert [t.id for t in linker.take_finished()] == [2]
  assert linker.link(1.25, [[105, 100, 155, 150]])[0].shot == 1  # A cut: a new track.


def _fake_run(names):
  answerer = answering.Answerer(list(names))  # Uncalibrated: the top-1 name.
  return types.SimpleNamespace(
    answer=answerer.answer, answerer=answerer, description="fake", step=None
  )


def _track(id_, shot, frames_logits, start, box=(0, 0, 10, 10)):
  track = tracking.Track(id_, shot, start, start + 0.25 * (len(frames_logits) - 1), list(box))
  run = _fake_run(["a", "b", "c"])
  for i, logits in enumerate(frames_logits):
    logits = np.asarray(logits, np.float32)
    embedding = logits / np.linalg.norm(logits)
    answer = run.answer(logits[None], embedding[None], 1)[0]
    track.add(start + 0.25 * i, list(box), logits, embedding, answer, np.zeros((4, 4, 3), np.uint8))
  return track


def test_one_answer_per_track_from_the_mean_and_screen_time():
  # Track 0: frames answer b, a, a but the mean of the logits is b (one very sure frame).
  t0 = _track(0, 0, [[0, 9, 0], [2, 1, 0], [2, 1, 0]], start=0.0)
  t1 = _track(1, 1, [[0, 0, 3]] * 4, start=2.0)
  t2 = _track(2, 1, [[0, 5, 0]] * 2, start=2.5)
  assert [f[2] for f in t0.per_frame] == ["b", "a", "a"]
  logits, embedding = t0.mean_outputs()
  assert np.linalg.norm(embedding) == pytest.approx(1.0)
  index = indexer.VideoIndex(
    "ep.mp4",
    decoding.DecodeReport(fps=24.0),
    [shots.Shot(0, 0.0, 2.0), shots.Shot(1, 2.0, 4.0)],
    [t0, t1, t2],
    {},
    samples={0: (0.0, 1.75), 1: (2.0, 2.75)},  # First and last sampled frame of each shot.
    pictures={1: (2.0, 3.5)},  # Shot 1 fades out to black from 3.5 s.
  )
  appearances = timeline.answer_tracks(_fake_run(["a", "b", "c"]), [index])
  t1.last = 3.9  # Found in frames beyond the picture's end: clipped to it.
  assert [(a["character"], a["start"], a["end"]) for a in appearances] == [
    ("b", 0.0, 0.542),  # From its first frame to the end of its last (1/24 s).
    ("c", 2.0, 2.792),
    ("b", 2.5, 2.792),
  ]
  assert timeline.on_screen(t1, index) == (2.0, 3.5)
  assert timeline.union_seconds([(0, 1), (0.5, 2), (3, 4)]) == 3.0
  rows = timeline.screen_time(appearances, [index])
  assert [(r["group"], r["seconds"]) for r in rows] == [("b", 0.834), ("c", 0.792)]


def test_edges_of_a_track_found_to_the_frame_by_bisection():
  # Frames 0-7 since the last sample; the detector finds the box in frames 3-5 only.
  recent = [decoding.Frame(i, i / FPS, np.full((2, 2, 3), 3 <= i <= 5, np.uint8)) for i in range(8)]
  calls = []

  def detector(pixels):
    calls.append(1)
    return [[0, 0, 10, 10]] if pixels[0, 0, 0] else []

  entering, leaving = recent[:6], recent[3:]  # Absent then present; present then absent.
  assert indexer._edge(entering, [1, 1, 10, 10], detector, 0.3, True) == 3 / FPS
  assert indexer._edge(leaving, [1, 1, 10, 10], detector, 0.3, False) == 5 / FPS
  assert indexer._edge(recent[:3], [1, 1, 10, 10], detector, 0.3, True) is None
  assert indexer._edge(entering, [50, 50, 60, 60], detector, 0.3, True) is None  # Elsewhere.
  assert len(calls) <= 4 * 4  # Bisection: about log2(n) detector calls each.


def test_page_escapes_names_and_links_timestamps(tmp_path):
  record = {
    "calibration": "calibrated",
    "errors": [{"file": "x.txt", "error": "not a <video>"}],
    "videos": [{"file": "ep.mp4", "gaps": []}],
    "screen_time": [{"group": "<b>x</b>", "seconds": 2.0}, {"group": "unknown-1", "seconds": 5.0}],
    "appearances": [
      {
        "group": g,
        "file": str(tmp_path / "ep.mp4"),
        "start": 61.5,
        "end": 63.0,
        "shot": 0,
        "confidence": 0.9,
        "closest": g,
        "video": 0,
        "track": k,
      }
      for k, g in enumerate(["<b>x</b>", "unknown-1"])
    ],
  }
  page = timeline.page(record, str(tmp_path / "out"))
  assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page
  assert 'href="../ep.mp4#t=61.50">1:01.5-1:03.0</a>' in page
  assert page.index("&lt;b&gt;x") < page.index("unknown-1")  # Named rows first.
  assert "not a &lt;video&gt;" in page


def _write_clip(path, frames=48, size=(160, 96), fourcc="mp4v"):
  writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), FPS, size)
  for i in range(frames):
    writer.write(np.full((size[1], size[0], 3), (i * 5) % 255, np.uint8))
  writer.release()
  return path


def test_truncated_file_is_read_as_far_as_it_decodes(tmp_path):
  whole = _write_clip(tmp_path / "whole.mkv").read_bytes()
  (tmp_path / "half.mkv").write_bytes(whole[: len(whole) // 2])
  report = decoding.DecodeReport()
  times = [f.time for f in decoding.frames(str(tmp_path / "half.mkv"), report)]
  assert 5 < len(times) < 48 and report.expected_frames == 48
  [(start, end, why)] = report.gaps
  assert start == pytest.approx(len(times) / FPS, abs=0.01) and end == pytest.approx(2.0)
  assert "truncated" in why and not report.complete
  assert json.loads(json.dumps(report.to_json()))["gaps"][0]["end"] == 2.0


def test_files_that_are_not_videos_get_clear_errors(tmp_path):
  (tmp_path / "notes.mp4").write_text("hello")
  cv2.imwrite(str(tmp_path / "still.png"), np.zeros((32, 32, 3), np.uint8))
  whole = _write_clip(tmp_path / "whole.mp4").read_bytes()
  (tmp_path / "cut.mp4").write_bytes(whole[: len(whole) // 2])  # MP4 writers index at the end.
  with pytest.raises(decoding.NotAVideo, match="not a video that OpenCV"):
    decoding.frames(str(tmp_path / "notes.mp4"))
  with pytest.raises(decoding.NotAVideo, match="still image"):
    decoding.frames(str(tmp_path / "still.png"))
  with pytest.raises(decoding.NotAVideo, match="moov atom.*truncated"):
    decoding.frames(str(tmp_path / "cut.mp4"))
  with pytest.raises(FileNotFoundError):
    decoding.frames(str(tmp_path / "missing.mp4"))
  with pytest.raises(decoding.NotAVideo, match="is a folder"):
    decoding.frames(str(tmp_path))
  assert len(list(decoding.frames(str(tmp_path / "whole.mp4")))) == 48


class _ColourRun:
  """A stand-in recognizer: class 0/1/2 = red/green/blue by the crop's mean colour."""

  def __init__(self):
    self.config = types.SimpleNamespace(image_size=8)
    self.answerer = answering.Answerer(["red", "green", "blue"])
    self.calls = 0

  def pixels(self, image):
    return np.asarray(Image.fromarray(image).resize((8, 8)))

  def embed(self, pixels, batch_size):
    self.calls += 1
    logits = pixels.reshape(len(pixels), -1, 3).mean(axis=1).astype(np.float32) / 10
    norms = np.maximum(np.linalg.norm(logits, axis=1, keepdims=True), 1e-6)
    return logits, logits / norms

  def answer(self, logits, embeddings, top_k=5):
    return self.answerer.answer(logits, embeddings, top_k)


def test_indexer_samples_holds_and_finds_edges_to_the_frame(tmp_path):
  """A 4 s clip: a red tile on screen from frame 0 to 59, a blue one from frame 29 to 95, a cut
  at frame 72 (the background changes). Sampled every 0.25 s (6 frames), yet the blue track
  starts at frame 29 exactly, and still frames are held, not answered again."""
  path = str(tmp_path / "clip.mkv")
  writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), FPS, (320, 180))
  for i in range(96):
    frame = np.full((180, 320, 3), (90, 140, 120) if i < 72 else (150, 120, 200), np.uint8)
    for first, last, left, colour in ((0, 59, 30, (240, 20, 20)), (29, 95, 200, (20, 20, 240))):
      if first <= i <= last:
        frame[40:100, left : left + 60] = (255, 0, 255)  # The tile's 2 px magenta frame.
        frame[42:98, left + 2 : left + 58] = colour
    writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
  writer.release()
  run = _ColourRun()
  settings = indexer.Settings(sample_every=0.25, batch_size=4)
  found = indexer.index_video(run, path, detectors.synthetic_markers, settings)
  assert [round(s.start * FPS) for s in found.shots] == [0, 72]
  assert found.stats["sampled"] == 16 and found.stats["near_duplicates"] >= 8
  appearances = timeline.answer_tracks(run, [found])
  spans = [
    (a["character"], a["shot"], round(a["start"] * FPS), round(a["end"] * FPS)) for a in appearances
  ]
  # Frames are to the frame: red 0-59 (ends at 60), blue 29 until the cut, then blue again.
  assert spans == [("red", 0, 0, 60), ("blue", 0, 29, 72), ("blue", 1, 72, 96)]
  rows = timeline.screen_time(appearances, [found])
  assert [r["group"] for r in rows] == ["blue", "red"]
  assert [r["seconds"] for r in rows] == pytest.approx([67 / FPS, 60 / FPS], abs=1e-3)
  assert run.calls == -(-found.stats["boxes"] // 4)  # Batches of 4 crops, the last padded.


def test_whole_frame_gives_one_track_per_shot(tmp_path):
  path = str(tmp_path / "clip.mkv")
  writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), FPS, (160, 96))
  for i in range(48):  # Red for 1 s, then a cut to blue.
    writer.write(np.full((96, 160, 3), (30, 30, 220) if i < 24 else (220, 40, 40), np.uint8))
  writer.release()
  run = _ColourRun()
  found = indexer.index_video(run, path, detectors.whole_frame)
  appearances = timeline.answer_tracks(run, [found])
  assert [(a["character"], a["start"], a["end"], a["box"]) for a in appearances] == [
    ("red", 0.0, 1.0, [0, 0, 160, 96]),
    ("blue", 1.0, 2.0, [0, 0, 160, 96]),
  ]


def test_benchmark_matches_boundaries_within_the_tolerance():
  from tools import video_benchmark  # pylint: disable=g-import-not-at-top

  assert video_benchmark.boundary_scores([1.0, 2.1, 5.0], [1.05, 2.0, 3.0], 0.25) == (2, 3, 3)
  assert video_benchmark.boundary_scores([1.0, 1.1], [1.05], 0.25) == (1, 2, 1)  # Once each.
  truth = {"fps": 4, "frames": [[{"character": "a"}], [{"character": "a"}, {"character": "b"}]]}
  assert video_benchmark.true_screen_time(truth) == {"a": 0.5, "b": 0.25}
