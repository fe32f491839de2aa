r"""Measures the video indexer on synthetic episodes with ground truth (issue #28's goals).

  python tools/video_benchmark.py --workdir=runs/quickstart [--episodes=4] [--seconds=60] \
      [--size=640x360] [--json=OUT]

Draws --episodes random episodes (tfds_builders/synthetic_characters/episodes.py: cuts, fades
through black, pans, characters entering and leaving, one character in eight never seen in
training) of --seconds each, indexes each with the `video` command's library and the
synthetic_markers detector (the tiles' frames stand in for a head detector: the numbers measure
shots, tracking and naming, not detection), and prints:
  shot-boundary precision / recall / F1 (a boundary within --tolerance seconds of a true one);
  naming accuracy of the answered boxes: each box's own answer (per frame) against its track's
    answer (one per track, from the mean of its frames), a never-seen character counting right
    when answered unknown; boxes matched to the truth by IoU >= 0.5;
  per-character screen-time error |indexed - true| / true (characters of the trained classes),
    and the same with each track given its true character (timing alone: shots, tracks, edges;
    never-seen characters included);
  seconds of processing per minute of video (decode, shots, detection, recognizer, tracks; the
    drawing of the episodes not included) and the real-time factor, on this machine.
"""

import json
import os
import tempfile
import time

from absl import app
from absl import flags
from absl import logging
import numpy as np

from animesion_jax import recognizer
from animesion_jax.video_index import detectors
from animesion_jax.video_index import indexer
from animesion_jax.video_index import timeline
from animesion_jax.video_index import tracking


def define_flags() -> None:
  """The flags of the command line (defined when run, not when imported by tests)."""
  flags.DEFINE_string("workdir", None, "A trained, calibrated run on synthetic characters.")
  flags.DEFINE_string("checkpoint", "best", "best, latest or a step directory.")
  flags.DEFINE_integer("episodes", 4, "Random episodes drawn.")
  flags.DEFINE_float("seconds", 60.0, "Length of each episode.")
  flags.DEFINE_string("size", "640x360", "Width x height of the episodes.")
  flags.DEFINE_integer("fps", 24, "Frames per second of the episodes.")
  flags.DEFINE_integer("seed", 0, "Seed of the first episode (then seed + 1, ...).")
  flags.DEFINE_float("tolerance", 0.25, "Seconds a found boundary may be off.")
  flags.DEFINE_float("sample_every", 0.25, "Seconds between sampled frames.")
  flags.DEFINE_enum(
    "detector", "synthetic_markers", sorted(detectors.DETECTORS), "Boxes per sampled frame."
  )
  flags.DEFINE_string("json", None, "Also write the numbers to this JSON file.")


GOALS = {
  "shot_f1": ">= 0.95",
  "track_minus_frame_accuracy": ">= +0.03",
  "max_screen_time_error": "<= 0.05",
  "realtime_factor": ">= 4 (360p)",
}


def boundary_scores(found, true, tolerance: float) -> tuple[int, int, int]:
  """(matched, found, true) boundaries; each true boundary matches at most one found one."""
  unused = sorted(true)
  matched = 0
  for b in sorted(found):
    near = [t for t in unused if abs(t - b) <= tolerance]
    if near:
      unused.remove(min(near, key=lambda t: abs(t - b)))
      matched += 1
  return matched, len(found), len(true)


def naming_scores(index, appearances, truth, fps: int) -> dict:
  """Per answered box: (own answer right, its track's answer right), over boxes matched to a
  true character (IoU >= 0.5); a never-seen character's right answer is unknown (None)."""
  by_track = {a["track"]: a["character"] for a in appearances}
  frame_right, track_right, unmatched, never_seen = [], [], 0, []
  truth_of_track = {}  # Track id -> the true character most of its boxes show.
  for track in index.tracks:
    votes = {}
    for moment, box, own in track.per_frame:
      frame = min(int(round(moment * fps)), len(truth["frames"]) - 1)
      overlaps = [(tracking.iou(box, t["box"]), t) for t in truth["frames"][frame]]
      best = max(overlaps, key=lambda pair: pair[0], default=(0.0, None))
      if best[0] < 0.5:
        unmatched += 1
        continue
      expected = best[1]["character"] if best[1]["known"] else None
      votes[best[1]["character"]] = votes.get(best[1]["character"], 0) + 1
      frame_right.append(own == expected)
      track_right.append(by_track[track.id] == expected)
      never_seen.append(expected is None)
    if votes:
      truth_of_track[track.id] = max(votes, key=votes.get)
  return {
    "frame": frame_right,
    "track": track_right,
    "unmatched": unmatched,
    "never_seen": never_seen,
    "truth_of_track": truth_of_track,
  }


def true_screen_time(truth) -> dict[str, float]:
  seconds: dict[str, float] = {}
  for boxes in truth["frames"]:
    for b in {b["character"] for b in boxes}:
      seconds[b] = seconds.get(b, 0.0) + 1.0 / truth["fps"]
  return seconds


def measure_episode(run, seed: int, folder: str) -> dict:
  from tfds_builders.synthetic_characters import episodes  # pylint: disable=g-import-not-at-top

  width, height = (int(v) for v in flags.FLAGS.size.split("x"))
  path = os.path.join(folder, f"episode{seed}.mp4")
  truth = episodes.render(
    episodes.random_script(seed, flags.FLAGS.seconds), path, (width, height), flags.FLAGS.fps, seed
  )
  settings = indexer.Settings(sample_every=flags.FLAGS.sample_every)
  started = time.perf_counter()
  index = indexer.index_video(run, path, detectors.make(flags.FLAGS.detector), settings)
  appearances = timeline.answer_tracks(run, [index])
  rows = timeline.screen_time(appearances, [index])
  seconds = time.perf_counter() - started
  found = [s.start for s in index.shots[1:]]
  true = [s["start"] for s in truth["shots"][1:]]
  indexed = {r["group"]: r["seconds"] for r in rows}
  naming = naming_scores(index, appearances, truth, flags.FLAGS.fps)
  # Timing alone: each track given the character most of its boxes truly show.
  truly: dict[str, list] = {}
  for a in appearances:
    name = naming["truth_of_track"].get(a["track"])
    if name is not None:
      truly.setdefault(name, []).append((a["start"], a["end"]))
  timed_alone = {name: timeline.union_seconds(spans) for name, spans in truly.items()}
  timed = {  # name: (true seconds, indexed seconds), characters of the trained classes.
    name: (value, indexed.get(name, 0.0))
    for name, value in true_screen_time(truth).items()
    if not name.startswith("unseen_")
  }
  errors = {name: abs(mine - true) / true for name, (true, mine) in timed.items()}
  timing_errors = {
    name: abs(timed_alone.get(name, 0.0) - true) / true
    for name, true in true_screen_time(truth).items()
  }
  return {
    "seed": seed,
    "boundaries": boundary_scores(found, true, flags.FLAGS.tolerance),
    "naming": naming,
    "timing_errors": timing_errors,
    "screen_time_errors": errors,
    "screen_time": timed,
    "appearances": appearances,
    "processing_seconds": seconds,
    "video_seconds": truth["duration"],
    "stats": index.stats,
  }


def summarise(results) -> dict:
  matched = sum(r["boundaries"][0] for r in results)
  found = sum(r["boundaries"][1] for r in results)
  true = sum(r["boundaries"][2] for r in results)
  precision, recall = matched / max(found, 1), matched / max(true, 1)
  frame = np.concatenate([r["naming"]["frame"] for r in results]).astype(float)
  track = np.concatenate([r["naming"]["track"] for r in results]).astype(float)
  unseen = np.concatenate([r["naming"]["never_seen"] for r in results]).astype(bool)
  errors = [e for r in results for e in r["screen_time_errors"].values()]
  timing = [e for r in results for e in r["timing_errors"].values()]
  processing = sum(r["processing_seconds"] for r in results)
  video = sum(r["video_seconds"] for r in results)
  return {
    "episodes": len(results),
    "video_seconds": video,
    "true_boundaries": true,
    "shot_precision": precision,
    "shot_recall": recall,
    "shot_f1": 2 * precision * recall / max(precision + recall, 1e-12),
    "boxes_scored": len(frame),
    "boxes_unmatched": sum(r["naming"]["unmatched"] for r in results),
    "frame_accuracy": float(frame.mean()) if len(frame) else 0.0,
    "track_accuracy": float(track.mean()) if len(track) else 0.0,
    "track_minus_frame_accuracy": float(track.mean() - frame.mean()) if len(frame) else 0.0,
    "boxes_of_never_seen": int(unseen.sum()),
    "frame_accuracy_trained": float(frame[~unseen].mean()) if (~unseen).any() else 0.0,
    "track_accuracy_trained": float(track[~unseen].mean()) if (~unseen).any() else 0.0,
    "frame_unknown_never_seen": float(frame[unseen].mean()) if unseen.any() else 0.0,
    "track_unknown_never_seen": float(track[unseen].mean()) if unseen.any() else 0.0,
    "characters_timed": len(errors),
    "mean_screen_time_error": float(np.mean(errors)) if errors else 0.0,
    "max_screen_time_error": float(np.max(errors)) if errors else 0.0,
    "characters_within_5_percent": float(np.mean(np.array(errors) <= 0.05)) if errors else 0.0,
    "timing_only_mean_error": float(np.mean(timing)) if timing else 0.0,
    "timing_only_max_error": float(np.max(timing)) if timing else 0.0,
    "timing_only_within_5_percent": float(np.mean(np.array(timing) <= 0.05)) if timing else 0.0,
    "seconds_per_video_minute": 60.0 * processing / video,
    "realtime_factor": video / processing,
  }


def main(argv):
  del argv
  if not flags.FLAGS.workdir:
    raise app.UsageError("Give --workdir=RUN (a run trained on synthetic_characters).")
  logging.set_verbosity(logging.WARNING)
  run = recognizer.load_run(flags.FLAGS.workdir, flags.FLAGS.checkpoint)
  with tempfile.TemporaryDirectory() as folder:
    measure_episode(
      run, flags.FLAGS.seed, folder
    )  # Warm-up: compiles the recognizer's batch shape.
    results = [
      measure_episode(run, flags.FLAGS.seed + i, folder) for i in range(flags.FLAGS.episodes)
    ]
  summary = summarise(results)
  summary["calibration"] = run.answerer.note or "calibrated"
  summary["size"] = flags.FLAGS.size
  summary["cpu_count"] = os.cpu_count()
  for key, value in summary.items():
    goal = f"   (goal {GOALS[key]})" if key in GOALS else ""
    shown = f"{value:.4f}" if isinstance(value, float) else value
    print(f"{key:30} {shown}{goal}")
  if flags.FLAGS.json:
    with open(flags.FLAGS.json, "w", encoding="utf-8") as f:
      json.dump(
        {
          "summary": summary,
          "episodes": [{k: v for k, v in r.items() if k != "naming"} for r in results],
        },
        f,
        indent=1,
      )


if __name__ == "__main__":
  define_flags()
  app.run(main)
