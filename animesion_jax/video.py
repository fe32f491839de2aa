r"""Who appears when: indexes videos by character, with a timeline per file.

  python -m animesion_jax.video episode01.mkv episode02.mkv --workdir=runs/quickstart \
      --output_dir=index [--detect_faces | --detector=NAME] [--sample_every=0.25]

Each file is decoded frame by frame (OpenCV's FFmpeg), cut into shots, sampled within each shot
(near-duplicate frames skipped); the boxes of each sampled frame (--detect_faces: anime faces;
default: the whole frame) are answered by the run's recognizer, linked into tracks within a shot,
and each track gets one answer from the mean of its frames (a known name, an enrolled name or
unknown). Writes to --output_dir: timeline.json (appearances, shots, screen time), timeline.csv,
index.html (a row per character, each thumbnail's timestamp opens the video there) and
thumbnails/. A file that is not a video is reported and the others go on; a truncated or damaged
file is indexed as far as it decodes and the missing stretch is reported. See docs/video.md.
"""

from absl import app
from absl import flags
from absl import logging

from animesion_jax import run_dir
from animesion_jax.cli import common
from animesion_jax.inference import faces
from animesion_jax.video_index import decoding
from animesion_jax.video_index import detectors
from animesion_jax.video_index import indexer
from animesion_jax.video_index import timeline


def define_flags() -> None:
  common.define_model_flags("With --source: classid_classname.csv or a JSON list of names.")
  common.define_runtime_flags(distributed=False)
  flags.adopt_module_key_flags(common)
  flags.DEFINE_string("output_dir", None, "Where to write the timeline (required).")
  flags.DEFINE_bool("detect_faces", False, "Find anime faces (as --detector=faces).")
  flags.DEFINE_enum(
    "detector",
    None,
    sorted(detectors.DETECTORS),
    "What boxes each sampled frame: "
    + "; ".join(f"{k}: {v[0]}" for k, v in sorted(detectors.DETECTORS.items()))
    + " (default: whole_frame, or faces with --detect_faces).",
  )
  flags.DEFINE_string("cascade", None, "Face detector cascade file (see predict --help).")
  flags.DEFINE_float("face_margin", 0.25, "Grow each face box by this fraction per side.")
  flags.DEFINE_integer("min_face", 24, "Smallest face side to detect, in pixels.")
  defaults = indexer.Settings()
  flags.DEFINE_float("sample_every", defaults.sample_every, "Seconds between sampled frames.")
  flags.DEFINE_integer("batch_size", defaults.batch_size, "Crops per recognizer call.")
  flags.DEFINE_bool("progress", True, "Show a progress bar with the time left (stderr).")


def main(argv):
  flag = flags.FLAGS
  files = argv[1:]
  if not files:
    raise app.UsageError("Give the video files to index after the flags.")
  if not flag.output_dir:
    raise app.UsageError("Give --output_dir=DIR (where the timeline is written).")
  if flag.detect_faces and flag.detector not in (None, "faces"):
    raise app.UsageError("Give --detect_faces or --detector, not both.")
  if not flag.sample_every > 0:
    raise app.UsageError("--sample_every must be more than 0 seconds.")
  common.check_model_flags(flag)
  if not flag["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  common.start_jax(flag)
  name = "faces" if flag.detect_faces else flag.detector or "whole_frame"
  try:
    detector = detectors.make(
      name, cascade=flag.cascade, margin=flag.face_margin, min_size=flag.min_face
    )
    run = common.load_from_flags(flag)
  except (*common.USER_ERRORS, faces.CascadeNotFound) as error:
    common.exit_with_user_error("video", error)
  settings = indexer.Settings(sample_every=flag.sample_every, batch_size=flag.batch_size)
  indexes, errors = [], []
  for path in files:
    try:
      indexes.append(indexer.index_video(run, path, detector, settings, progress=flag.progress))
    except (FileNotFoundError, decoding.NotAVideo) as error:
      errors.append({"file": path, "error": str(error)})
      print(f"Skipped {path}: {error}")
  appearances = timeline.answer_tracks(run, indexes)
  record = timeline.assemble(indexes, appearances, errors, run, settings)
  output_dir = run_dir.resolve(flag.output_dir)
  timeline.write(record, indexes, str(output_dir))
  for video in record["videos"]:
    for gap in video["gaps"]:
      print(f"{video['file']}: {gap['start']:.2f}-{gap['end']:.2f} s not decoded ({gap['why']})")
  for row in record["screen_time"]:
    print(f"{row['file']}  {row['group']:30} {row['seconds']:8.1f} s  {row['appearances']:>4}")
  if run.answerer.note:
    print(f"Note: {run.answerer.note}.")
  print(f"{len(indexes)} videos, {len(appearances)} appearances; wrote {output_dir}")
  if not indexes:
    raise SystemExit("video: no file could be read as a video (see the messages above).")


if __name__ == "__main__":
  define_flags()
  app.run(main)
