r"""Names the characters in people's own pictures with a trained run.

  python -m animesion_jax.predict --workdir=runs/b16_dafre my_pictures/ art.png [--top_k=5]
      [--annotate] [--detect_faces [--cascade=PATH]] [--output_dir=DIR]

Inputs are image files and folders (searched recursively): JPEG, PNG, WebP, GIF (first frame),
BMP, TIFF, of any size and mode (grayscale, palette, RGBA composited on white). Unreadable files
are reported and skipped. Each image (or, with --detect_faces, each anime face found in it) is
resized to the run's image size and classified; batches run jitted on all local devices while
the next batch is decoded on the host. Writes predictions.json and predictions.csv (and, with
--annotate, copies of the images with the predictions drawn) to --output_dir (default
WORKDIR/predictions) and prints a table.
"""

import collections
import concurrent.futures
import csv
import dataclasses
import json
import os
from typing import Any, Iterator, Sequence

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont
import tqdm

from animesion_jax import faces
from animesion_jax import image_files
from animesion_jax import inference
from animesion_jax import sharding
from animesion_jax.data import preprocess

ANNOTATE_MIN_SIDE = 384  # Annotated copies of small images are enlarged to this, for legible text.
_COLOURS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6")


@dataclasses.dataclass
class Crop:
  """One thing to classify: a whole image, or one face in it."""
  file: image_files.ImageFile
  face: int | None  # Index of the face in its image (reading order); None for the whole image.
  box: faces.Box | None
  pixels: np.ndarray  # uint8 [S, S, 3]
  note: str = ""


def _prepare(file: image_files.ImageFile, image_size: int,
             detector: faces.FaceDetector | None) -> list[Crop]:
  """Decodes one file into the crops to classify (runs in a worker thread)."""
  image = image_files.load_image(file.path, min_size=None if detector else image_size)
  if detector is None:
    return [Crop(file, None, None, np.asarray(preprocess.resize_square(image, image_size)))]
  boxes = detector.detect(image)
  if not boxes:
    return [Crop(file, None, None, np.asarray(preprocess.resize_square(image, image_size)),
                 note="no face found; whole image classified")]
  return [Crop(file, i, box, np.asarray(preprocess.resize_square(
      image.crop((box.left, box.top, box.right, box.bottom)), image_size)))
          for i, box in enumerate(boxes)]


def _crops(files: Sequence[image_files.ImageFile], image_size: int,
           detector: faces.FaceDetector | None, pool: concurrent.futures.Executor,
           errors: list[dict[str, str]], in_flight: int) -> Iterator[Crop]:
  """Crops of all files in order, decoding up to `in_flight` files ahead in the pool."""
  pending = collections.deque()
  queue = iter(files)
  progress = tqdm.tqdm(total=len(files), unit="image", disable=None)
  while True:
    while len(pending) < in_flight:
      file = next(queue, None)
      if file is None:
        break
      pending.append((file, pool.submit(_prepare, file, image_size, detector)))
    if not pending:
      break
    file, future = pending.popleft()
    progress.update(1)
    try:
      crops = future.result()
    # Pillow raises many exception types on foreign or damaged bytes (OSError, SyntaxError,
    # struct.error, EOFError, DecompressionBombError, ...); each means "cannot read this file".
    except Exception as error:  # pylint: disable=broad-exception-caught
      errors.append({"file": file.path, "error": f"{type(error).__name__}: {error}"})
      logging.warning("Skipping %s: %s", file.path, error)
      continue
    yield from crops
  progress.close()


def _batches(crops: Iterator[Crop], batch_size: int) -> Iterator[tuple[list[Crop], np.ndarray]]:
  batch = []
  for crop in crops:
    batch.append(crop)
    if len(batch) == batch_size:
      yield batch, np.stack([c.pixels for c in batch])
      batch = []
  if batch:
    images = np.zeros((batch_size, *batch[0].pixels.shape), np.uint8)
    images[:len(batch)] = np.stack([c.pixels for c in batch])
    yield batch, images


def predict_files(run: inference.LoadedRun, files: Sequence[image_files.ImageFile], *,
                  top_k: int = 5, batch_size: int = 256,
                  detector: faces.FaceDetector | None = None,
                  workers: int | None = None) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
  """Classifies every file (or every face in it).

  Returns:
    (results, errors): one result per crop in input order, {'file', 'relative' (its name for
    outputs), 'face', 'box' ([left, top, right, bottom] or None), 'note', 'predictions':
    [{'rank', 'class_id', 'name', 'probability'}]}, and {'file', 'error'} for files that could
    not be read.
  """
  predict_fn = inference.make_predict_fn(run, top_k)
  batch_size = inference.round_up_batch(batch_size, run.mesh.size)
  workers = workers or min(16, (os.cpu_count() or 2) + 2)
  results, errors, previous = [], [], None

  def collect(done):
    crops, (probabilities, class_ids) = done
    probabilities = inference.host_rows(probabilities, run.mesh)
    class_ids = inference.host_rows(class_ids, run.mesh)
    for row, crop in enumerate(crops):
      results.append({
          "file": crop.file.path, "relative": crop.file.relative, "face": crop.face,
          "box": crop.box.as_list() if crop.box else None, "note": crop.note,
          "predictions": [{"rank": rank + 1, "class_id": int(class_id),
                           "name": run.class_names[int(class_id)],
                           "probability": float(probability)}
                          for rank, (class_id, probability) in enumerate(
                              zip(class_ids[row], probabilities[row]))]})

  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    crops = _crops(files, run.config.image_size, detector, pool, errors, in_flight=2 * batch_size)
    for batch_crops, images in _batches(crops, batch_size):
      outputs = predict_fn(run.variables, sharding.to_global_batch({"image": images},
                                                                   run.mesh)["image"])
      if previous is not None:  # Fetched only now: the device ran while this batch was decoded.
        collect(previous)
      previous = (batch_crops, outputs)
    if previous is not None:
      collect(previous)
  return results, errors


def format_table(results: Sequence[dict[str, Any]], limit: int = 50) -> str:
  """A text table of the predictions (at most `limit` crops; 0 = all)."""
  shown = results if limit <= 0 else results[:limit]
  width = max([len(r["file"]) for r in shown] + [4])
  names = max([len(p["name"]) for r in shown for p in r["predictions"]] + [9])
  lines = [f"{'file':{width}}  {'face':>4}  {'#':>2}  {'character':{names}}  {'prob':>6}"]
  for result in shown:
    face = "" if result["face"] is None else str(result["face"])
    for p in result["predictions"]:
      first = p["rank"] == 1
      lines.append(f"{result['file'] if first else '':{width}}  {face if first else '':>4}  "
                   f"{p['rank']:>2}  {p['name']:{names}}  {100 * p['probability']:5.1f}%")
    if result["note"]:
      lines.append(f"{'':{width}}  ({result['note']})")
  if len(shown) < len(results):
    lines.append(f"... and {len(results) - len(shown)} more (see predictions.csv).")
  return "\n".join(lines)


def write_outputs(results: Sequence[dict[str, Any]], errors: Sequence[dict[str, str]],
                  run: inference.LoadedRun, output_dir: str) -> None:
  """predictions.json (everything) and predictions.csv (one row per crop and rank)."""
  os.makedirs(output_dir, exist_ok=True)
  with open(os.path.join(output_dir, "predictions.json"), "w", encoding="utf-8") as f:
    json.dump({"workdir": run.workdir, "checkpoint": run.checkpoint, "step": run.step,
               "results": list(results), "errors": list(errors)}, f, indent=1, ensure_ascii=False)
  with open(os.path.join(output_dir, "predictions.csv"), "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f)
    writer.writerow(["file", "face", "box_left", "box_top", "box_right", "box_bottom", "rank",
                     "class_id", "name", "probability"])
    for result in results:
      box = result["box"] or ["", "", "", ""]
      for p in result["predictions"]:
        writer.writerow([result["file"], "" if result["face"] is None else result["face"], *box,
                         p["rank"], p["class_id"], p["name"], f"{p['probability']:.6f}"])


def _font(size: int) -> ImageFont.ImageFont:
  try:
    return ImageFont.load_default(size=size)
  except (TypeError, OSError):  # Pillow built without FreeType: fixed-size bitmap font.
    return ImageFont.load_default()


def _label(draw: ImageDraw.ImageDraw, box: tuple[float, float, float, float],
           lines: Sequence[str], font: ImageFont.ImageFont, colour: str,
           size: tuple[int, int]) -> None:
  """Draws `lines` below `box` (above it, or inside it, where the image ends), in the image."""
  text = "\n".join(lines)
  _, _, width, height = draw.multiline_textbbox((0, 0), text, font=font)
  pad = max(2, height // (8 * len(lines)))
  left, top, _, bottom = box
  if bottom + 2 * pad + height <= size[1]:
    y = bottom + 2 * pad
  elif top - 2 * pad - height >= 0:
    y = top - 2 * pad - height
  else:
    y = top + 2 * pad
  x = min(max(left + 2 * pad, pad), max(pad, size[0] - width - pad))
  draw.rectangle((x - pad, y - pad, x + width + pad, y + height + pad),
                 fill=(255, 255, 255, 200), outline=colour, width=max(1, pad // 2))
  draw.multiline_text((x, y), text, font=font, fill=(0, 0, 0, 255))


def annotate(path: str, crops: Sequence[dict[str, Any]], destination: str,
             label_ranks: int = 3) -> None:
  """Writes a copy of the image at `path` with the predictions of its crops drawn on it."""
  image = image_files.load_image(path)
  scale = max(1.0, ANNOTATE_MIN_SIDE / min(image.size))
  if scale > 1:
    image = image.resize((round(image.width * scale), round(image.height * scale)),
                         Image.BICUBIC)
  canvas = Image.new("RGBA", image.size)
  draw = ImageDraw.Draw(canvas)
  font = _font(max(12, min(image.size) // 28))
  line_width = max(2, min(image.size) // 150)
  for i, crop in enumerate(crops):
    colour = _COLOURS[i % len(_COLOURS)]
    ranked = [f"{p['rank']}. {p['name']} {100 * p['probability']:.1f}%"
              for p in crop["predictions"][:label_ranks]]
    if crop["box"] is None:  # The whole image: the label goes inside its top-left corner.
      _label(draw, (0, 0, image.width, 0), ranked, font, colour, image.size)
      continue
    box = tuple(round(v * scale) for v in crop["box"])
    draw.rectangle(box, outline=colour, width=line_width)
    _label(draw, box, [f"face {crop['face']}"] + ranked, font, colour, image.size)
  os.makedirs(os.path.dirname(destination) or ".", exist_ok=True)
  Image.alpha_composite(image.convert("RGBA"), canvas).convert("RGB").save(destination)


def annotate_all(results: Sequence[dict[str, Any]], output_dir: str) -> dict[str, str]:
  """Annotated copies of every classified file under output_dir/annotated; {file: copy}."""
  by_file: dict[str, list[dict[str, Any]]] = collections.OrderedDict()
  relative = {}
  for result in results:
    by_file.setdefault(result["file"], []).append(result)
    relative[result["file"]] = result["relative"]
  destinations, taken = {}, set()
  for file in by_file:
    stem = os.path.splitext(relative[file])[0]
    candidate, n = f"{stem}.png", 1
    while candidate in taken:  # a.jpg and a.png (or two inputs' a.png) must not overwrite.
      candidate, n = f"{stem}_{n}.png", n + 1
    taken.add(candidate)
    destinations[file] = os.path.join(output_dir, "annotated", candidate)
  with concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 2)) as pool:
    list(pool.map(lambda f: annotate(f, by_file[f], destinations[f]), by_file))
  return destinations


def define_flags() -> None:
  """The command line flags (defined only when run as a program)."""
  flags.DEFINE_string("workdir", None, "Training run directory.", required=True)
  flags.DEFINE_string("checkpoint", "best", "'best', 'latest' or a checkpoint step directory.")
  flags.DEFINE_integer("top_k", 5, "Characters listed per image or face.")
  flags.DEFINE_string("output_dir", None, "Where to write (default WORKDIR/predictions).")
  flags.DEFINE_bool("annotate", False, "Also write copies of the images with the predictions.")
  flags.DEFINE_bool("detect_faces", False, "Find anime faces first and classify each face "
                    "(for whole illustrations).")
  flags.DEFINE_string("cascade", None, f"Face detector cascade file (default: the "
                      f"{faces.CASCADE_FILE} of an installed package).")
  flags.DEFINE_float("face_margin", 0.25, "Grow each face box by this fraction per side.")
  flags.DEFINE_integer("min_face", 24, "Smallest face side to detect, in pixels.")
  flags.DEFINE_integer("batch_size", 256, "Images per batch over all local devices (rounded up to "
                       "a multiple of the device count).")
  flags.DEFINE_integer("print_limit", 50, "Crops shown in the printed table (0 = all).")


def main(argv):
  flag = flags.FLAGS
  inputs = argv[1:]
  if not inputs:
    raise app.UsageError("Give image files and/or folders after the flags.")
  if flag.top_k < 1:
    raise app.UsageError(f"--top_k={flag.top_k} must be at least 1.")
  if not flag["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Library INFO chatter would bury the table.
  files, problems = image_files.find_images(inputs)
  for given, problem in problems:
    print(f"Skipping {given}: {problem}")
  try:
    detector = None
    if flag.detect_faces:
      detector = faces.FaceDetector(faces.find_cascade(flag.cascade), margin=flag.face_margin,
                                    min_size=flag.min_face)
    run = inference.load_run(flag.workdir, flag.checkpoint, devices=jax.local_devices())
  except (FileNotFoundError, inference.CheckpointMismatch) as error:
    raise app.UsageError(str(error)) from None
  results, errors = predict_files(run, files, top_k=flag.top_k, batch_size=flag.batch_size,
                                  detector=detector)
  errors = [{"file": given, "error": problem} for given, problem in problems] + errors
  output_dir = flag.output_dir or os.path.join(flag.workdir, "predictions")
  write_outputs(results, errors, run, output_dir)
  if flag.annotate:
    annotate_all(results, output_dir)
  print(format_table(results, flag.print_limit))
  for error in errors:
    print(f"Could not read {error['file']}: {error['error']}")
  classified = len({result["file"] for result in results})
  print(f"{len(results)} predictions for {classified} of {len(files)} images; wrote {output_dir}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
