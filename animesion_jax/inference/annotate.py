"""Pictures with predictions drawn on them, and attention-map overlays (outputs of predict).

annotate_all(results, "runs/x/predictions")   # annotated/<image>.png, boxes and top names
AttentionWriter(run, output_dir)(crops, images) # attention/<image>/layer_NN.png, rollout.png
"""

import collections
from collections.abc import Sequence
import concurrent.futures
import os
from typing import Any

from etils import epath
import numpy as np
from PIL import Image
from PIL import ImageDraw

from animesion_jax import errors
from animesion_jax.inference import attention
from animesion_jax.inference import image_files
from animesion_jax.inference import plots

ANNOTATE_MIN_SIDE = 384  # Annotated copies of small images are enlarged to this, for legible text.
COLOURS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6")


def annotate(
  path: str, crops: Sequence[dict[str, Any]], destination: str | os.PathLike, label_ranks: int = 3
) -> None:
  """Writes a PNG copy of the image at `path` with the predictions of its crops drawn on it.

  `crops`: {'box' ([left, top, right, bottom] or None for the whole image), 'face',
  'predictions' (Prediction.ranked() rows)}, as predict's results hold them.
  """
  image = image_files.load_image(path)
  scale = max(1.0, ANNOTATE_MIN_SIDE / min(image.size))
  if scale > 1:
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
  canvas = Image.new("RGBA", image.size)
  draw = ImageDraw.Draw(canvas)
  font = plots.font(max(12, min(image.size) // 28))
  line_width = max(2, min(image.size) // 150)
  for i, crop in enumerate(crops):
    colour = COLOURS[i % len(COLOURS)]
    ranked = [
      f"{p['rank']}. {p['name']} {100 * p['probability']:.1f}%"
      for p in crop["predictions"][:label_ranks]
    ]
    if crop["box"] is None:  # The whole image: the label goes inside its top-left corner.
      plots.draw_label(draw, (0, 0, image.width, 0), ranked, font, colour, image.size)
      continue
    box = tuple(round(v * scale) for v in crop["box"])
    draw.rectangle(box, outline=colour, width=line_width)
    plots.draw_label(draw, box, [f"face {crop['face']}"] + ranked, font, colour, image.size)
  drawn = Image.alpha_composite(image.convert("RGBA"), canvas).convert("RGB")
  plots.save_png(drawn, epath.Path(destination))


def unique_name(stem: str, taken: set[str]) -> str:
  """`stem`, or `stem_1`, `stem_2`, ... if taken (a.jpg and a.png must not overwrite)."""
  candidate, n = stem, 1
  while candidate in taken:
    candidate, n = f"{stem}_{n}", n + 1
  taken.add(candidate)
  return candidate


def annotate_all(
  results: Sequence[dict[str, Any]], output_dir: str | os.PathLike
) -> dict[str, str]:
  """Annotated copies of every classified file under output_dir/annotated; {file: copy}."""
  output_dir = epath.Path(output_dir)
  by_file: dict[str, list[dict[str, Any]]] = collections.OrderedDict()
  for result in results:
    by_file.setdefault(result["file"], []).append(result)
  taken = set()
  destinations = {
    file: output_dir
    / "annotated"
    / (unique_name(os.path.splitext(crops[0]["relative"])[0], taken) + ".png")
    for file, crops in by_file.items()
  }
  with concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 2)) as pool:
    list(pool.map(lambda f: annotate(f, by_file[f], destinations[f]), by_file))
  return {file: os.fspath(path) for file, path in destinations.items()}


class AttentionWriter:
  """Writes, for each crop of a batch, the class token's attention per layer and its rollout.

  Under output_dir/attention/<image name>[_face<i>]/: layer_01.png ... (one per encoder layer)
  and rollout.png, each the model's input (enlarged to ANNOTATE_MIN_SIDE) scaled by the map.
  """

  def __init__(self, run: Any, output_dir: epath.Path):
    if not run.has_attention:
      raise errors.LoadError(
        f"--attention_maps needs a ViT; {run.description} is a "
        f"{type(run.model).__name__}, which has no attention."
      )
    self.run, self.root, self.taken = run, output_dir / "attention", set()
    self.written: dict[tuple[str, int | None], str] = {}  # (file, face) -> folder.

  def __call__(self, crops: Sequence[Any], images: np.ndarray) -> None:
    """`crops`: crops.Crop rows of one batch (file, face, pixels); `images` their inputs."""
    result = self.run.attention_maps(images)
    for row, crop in enumerate(crops):
      stem = os.path.splitext(crop.file.relative)[0]
      folder = self.root / unique_name(
        stem if crop.face is None else f"{stem}_face{crop.face}", self.taken
      )
      picture = Image.fromarray(crop.pixels)
      scale = max(1.0, ANNOTATE_MIN_SIDE / picture.width)
      picture = picture.resize(
        (round(picture.width * scale), round(picture.height * scale)), Image.BICUBIC
      )
      for layer, heat in enumerate(result["layers"][row]):
        plots.save_png(attention.overlay(picture, heat), folder / f"layer_{layer + 1:02d}.png")
      plots.save_png(attention.overlay(picture, result["rollout"][row]), folder / "rollout.png")
      self.written[(crop.file.path, crop.face)] = os.fspath(folder)
