r"""Names the characters in people's own pictures, with a trained run or a checkpoint file.

  python -m animesion_jax.predict --workdir=runs/b16_dafre my_pictures/ art.png [--top_k=5]
      [--annotate] [--attention_maps] [--detector=RUN | --detect_faces [--cascade=PATH]]
      [--output_dir=DIR]
  python -m animesion_jax.predict --checkpoint=b16_dafre.pth --source=pytorch_vit \
      --class_names=classid_classname.csv [--num_heads=N] [--image_size=S] my_pictures/

SOURCE is pytorch_vit, torchvision_resnet, animesion, vit_npz or run; the architecture is read
from the checkpoint. Inputs are image files and folders (searched recursively): JPEG, PNG,
WebP, GIF (first frame), BMP, TIFF, of any size and mode (grayscale, palette, RGBA composited on
white). Files that cannot be decoded are reported and skipped; any other error stops the run.
Each image (or, with --detector, each head the detector run finds in it, or with --detect_faces,
each face the OpenCV cascade finds) is resized to the model's image size and classified; with
--detector a picture where no head is found gets no box and no answer, only a note; batches run jitted on all local devices while the next batch is
decoded on the host. Writes predictions.json and predictions.csv (with --annotate, copies of the
images with the predictions drawn; with --attention_maps, for ViTs, the class token's attention
per layer and its rollout over each input) to --output_dir (default WORKDIR/predictions, or
predictions/ in the current directory) and prints a table. Exits non-zero when nothing could be
classified.
"""

from collections.abc import Callable, Iterator, Sequence
import concurrent.futures
import csv
import dataclasses
import io
import json
import os
import sys
from typing import Any

from absl import app
from absl import flags
from absl import logging
from etils import epath
import numpy as np

from animesion_jax import recognizer
from animesion_jax import run_dir
from animesion_jax import sharding
from animesion_jax.cli import common
from animesion_jax.inference import annotate
from animesion_jax.inference import crops as crops_lib
from animesion_jax.inference import faces
from animesion_jax.inference import head_detector
from animesion_jax.inference import image_files
from animesion_jax.open_set import answering
from animesion_jax.training import evaluation

# A head detector (inference/head_detector.py) or the OpenCV face cascade (faces.py).
Detector = faces.FaceDetector | head_detector.HeadDetector


def _batches(
  crops: Iterator[crops_lib.Crop], batch_size: int
) -> Iterator[tuple[list[crops_lib.Crop], np.ndarray]]:
  batch = []
  for crop in crops:
    batch.append(crop)
    if len(batch) == batch_size:
      yield batch, np.stack([c.pixels for c in batch])
      batch = []
  if batch:
    images = np.zeros((batch_size, *batch[0].pixels.shape), np.uint8)
    images[: len(batch)] = np.stack([c.pixels for c in batch])
    yield batch, images


def predict_files(
  run: recognizer.Recognizer,
  files: Sequence[image_files.ImageFile],
  *,
  top_k: int = 5,
  batch_size: int = 256,
  detector: Detector | None = None,
  workers: int | None = None,
  each_batch: Callable[[list[crops_lib.Crop], np.ndarray], None] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
  """Classifies every file (or every face in it).

  `each_batch(crops, uint8 images)` is called with every batch after it is dispatched (e.g. to
  draw attention maps); `images` is padded to the batch size.

  Returns:
    (results, errors): one result per crop in input order, {'file', 'relative' (its name for
    outputs), 'face', 'box' ([left, top, right, bottom] or None), 'note', the open-set answer
    of the run's calibration and gallery (`run.answer`: 'character' or None, 'unknown',
    'confidence', 'closest', 'enrolled', 'calibrated') and 'predictions':
    [{'rank', 'class_id', 'name', 'probability'}]}, and {'file', 'error'} for files that could
    not be decoded. With a head detector, a picture where no head is found has one result with
    'box' None, the note crops.NO_CHARACTER and no answer ('predictions' empty).
  """
  batch_size = sharding.round_up_batch(batch_size, len(run.mesh.local_devices))
  workers = workers or min(16, (os.cpu_count() or 2) + 2)
  results, errors = [], []
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    batches = _batches(
      _answered_or_noted(
        crops_lib.read_ahead(
          files, run.config.image_size, detector, pool, errors, 2 * batch_size, verbose=True
        ),
        results,
      ),
      batch_size,
    )

    def dispatch():
      for crops, images in batches:
        yield crops, run.device_embed(images)  # The recognizer's one jitted forward.
        if each_batch is not None:
          each_batch(crops, images)

    for crops, (logits, embeddings) in evaluation.lagged(dispatch(), run.mesh):
      answers = run.answer(logits[: len(crops)], embeddings[: len(crops)], top_k)
      for crop, answer in zip(crops, answers):
        box = tuple(crop.box.as_list()) if crop.box else None
        # The run's own note (e.g. uncalibrated) is printed once; each row keeps its crop's.
        answer = dataclasses.replace(answer, box=box, note=crop.note)
        results.append(
          {"file": crop.file.path, "relative": crop.file.relative, "face": crop.face}
          | answer.to_json()
        )
  order = {file.path: i for i, file in enumerate(files)}
  results.sort(key=lambda result: order[result["file"]])  # Noted pictures came in early.
  return results, errors


def _answered_or_noted(
  crops: Iterator[crops_lib.Crop], results: list[dict[str, Any]]
) -> Iterator[crops_lib.Crop]:
  """The crops to classify; pictures with nothing to classify (a head detector found no
  character) go straight into `results`, with their note and no answer."""
  for crop in crops:
    if crop.pixels is not None:
      yield crop
      continue
    results.append(
      {
        "file": crop.file.path,
        "relative": crop.file.relative,
        "face": None,
        "box": None,
        "note": crop.note,
        "character": None,
        "predictions": [],
      }
    )


def format_table(results: Sequence[dict[str, Any]], limit: int = 50) -> str:
  """A text table of the predictions (at most `limit` crops; 0 = all)."""
  shown = results if limit <= 0 else results[:limit]
  width = max([len(r["file"]) for r in shown] + [4])
  names = max([len(p["name"]) for r in shown for p in r["predictions"]] + [9])
  lines = [f"{'file':{width}}  {'face':>4}  {'#':>2}  {'character':{names}}  {'prob':>7}   answer"]
  refused = False
  for result in shown:
    face = "" if result["face"] is None else str(result["face"])
    if not result["predictions"]:  # Nothing classified (no head found): the note says why.
      lines.append(f"{result['file']:{width}}  {'':>4}  {'':>2}  {'-':{names}}  {'':>7}   -")
    answer = answering.Answer.from_json(result).describe() if result["predictions"] else ""
    guesses = bool(result.get("unknown"))  # Top-k of a refused picture: guesses, in parentheses.
    refused = refused or guesses
    for p in result["predictions"]:
      first = p["rank"] == 1
      probability = f"{100 * p['probability']:.1f}%"
      lines.append(
        (
          f"{result['file'] if first else '':{width}}  {face if first else '':>4}  "
          f"{p['rank']:>2}  {p['name']:{names}}  "
          + (f"({probability})" if guesses else f"{probability} ").rjust(8)
          + (f"  {answer}" if first else "")
        ).rstrip()
      )
    if result["note"]:
      lines.append(f"{'':{width}}  ({result['note']})")
  if len(shown) < len(results):
    lines.append(f"... and {len(results) - len(shown)} more (see predictions.csv).")
  if refused:
    lines.append(f"(Probabilities in parentheses: {answering.GUESSES_NOTE}.)")
  return "\n".join(lines)


def write_outputs(
  results: Sequence[dict[str, Any]],
  errors: Sequence[dict[str, str]],
  run: recognizer.Recognizer,
  output_dir: str | os.PathLike,
) -> None:
  """predictions.json (everything) and predictions.csv (one row per crop and rank)."""
  output_dir = epath.Path(output_dir)
  output_dir.mkdir(parents=True, exist_ok=True)
  (output_dir / "predictions.json").write_text(
    json.dumps(
      {
        "workdir": run.description,
        "checkpoint": run.checkpoint,
        "step": run.step,
        "calibration": run.answerer.note or "calibrated",
        "results": list(results),
        "errors": list(errors),
      },
      indent=1,
      ensure_ascii=False,
    ),
    encoding="utf-8",
  )
  text = io.StringIO()
  writer = csv.writer(text, lineterminator="\n")
  writer.writerow(
    [
      "file",
      "face",
      "box_left",
      "box_top",
      "box_right",
      "box_bottom",
      "rank",
      "class_id",
      "name",
      "probability",
      "character",
      "unknown",
      "confidence",
    ]
  )
  for result in results:
    box = result["box"] or ["", "", "", ""]
    for p in result["predictions"]:
      writer.writerow(
        [
          result["file"],
          "" if result["face"] is None else result["face"],
          *box,
          p["rank"],
          p["class_id"],
          p["name"],
          f"{p['probability']:.6f}",
          result.get("character") or "",
          int(result.get("unknown", False)),
          f"{result.get('confidence', p['probability']):.6f}",
        ]
      )
  (output_dir / "predictions.csv").write_text(text.getvalue(), encoding="utf-8")


def define_flags() -> None:
  """The command line flags (defined only when run as a program)."""
  common.define_model_flags(
    "With --source: the dataset's classid_classname.csv (id,name rows) or a JSON list of names."
  )
  common.define_runtime_flags(distributed=False)
  flags.adopt_module_key_flags(common)  # --help lists them with this program's own.
  flags.DEFINE_integer("top_k", 5, "Characters listed per image or face.")
  flags.DEFINE_string(
    "output_dir",
    None,
    "Where to write (default WORKDIR/predictions, or predictions/ in the current directory).",
  )
  flags.DEFINE_bool("annotate", False, "Also write copies of the images with the predictions.")
  flags.DEFINE_bool(
    "attention_maps",
    False,
    "ViTs: also write the class token's attention per "
    "layer and its rollout over each input (OUTPUT_DIR/attention/).",
  )
  common.define_face_flags(
    "Find anime faces first and classify each face (for whole illustrations)."
  )
  flags.DEFINE_integer(
    "batch_size",
    256,
    "Images per batch over all local devices (rounded up to a multiple of the device count).",
  )
  flags.DEFINE_integer("print_limit", 50, "Crops shown in the printed table (0 = all).")
  flags.DEFINE_float(
    "tau_norm",
    None,
    "Tau-normalise the classifier: each class's weights / their norm ** T, bias dropped "
    "(0 = off; default: the run's config.tau_norm, else 0).",
  )


def main(argv):
  flag = flags.FLAGS
  inputs = argv[1:]
  if not inputs:
    raise app.UsageError("Give image files and/or folders after the flags.")
  if flag.top_k < 1:
    raise app.UsageError(f"--top_k={flag.top_k} must be at least 1.")
  if not flag["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Library INFO chatter would bury the table.
  common.start_jax(flag)
  files, problems = image_files.find_images(inputs)
  for given, problem in problems:
    print(f"Skipping {given}: {problem}")
  try:
    detector = common.face_detector(flag)  # --detector, --detect_faces or none.
    run = common.load_from_flags(flag)  # Tau-normalised as --tau_norm or the run's config say.
    if flag.output_dir is not None:
      output_dir = run_dir.resolve(flag.output_dir)
    elif run.workdir is not None:
      output_dir = run.workdir.predictions_dir()
    else:
      output_dir = run_dir.resolve("predictions")
    writer = annotate.AttentionWriter(run, output_dir) if flag.attention_maps else None
  except common.USER_ERRORS as error:  # The message says what is wrong; no usage dump.
    common.exit_with_user_error("predict", error)
  results, errors = predict_files(
    run, files, top_k=flag.top_k, batch_size=flag.batch_size, detector=detector, each_batch=writer
  )
  errors = [{"file": given, "error": problem} for given, problem in problems] + errors
  write_outputs(results, errors, run, output_dir)
  if run.answerer.note:
    print(f"Note: {run.answerer.note}.")
  if flag.annotate:
    annotate.annotate_all(results, output_dir)
  if results:
    print(format_table(results, flag.print_limit))
  for error in errors:
    print(f"Could not read {error['file']}: {error['error']}")
  classified = len({result["file"] for result in results})
  print(f"{len(results)} predictions for {classified} of {len(files)} images; wrote {output_dir}")
  if not results:
    sys.exit("predict: no image was classified (see the messages above).")


if __name__ == "__main__":
  define_flags()
  app.run(main)
