"""The project's figures: training curves (tools/plot_run.py), evaluation plots (evaluate) and
the labels drawn on pictures (predict).

Figures are built with matplotlib's object API (`matplotlib.figure.Figure`), never pyplot, so
importing this module selects no backend and changes no global state. Each writes one PNG through
etils.epath (local or gs://) and returns its path.
"""

from collections.abc import Sequence
import io
from typing import Any

from etils import epath
from matplotlib import figure
from matplotlib import ticker
import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont

from animesion_jax.inference import longtail

SPLIT_STYLE = {
  "train": ("tab:blue", None),
  "validation": ("tab:orange", "o"),
  "test": ("tab:green", "s"),
}
CONFUSION_CLASSES = 16  # Classes shown in the confusion plot at most.
_GROUP_COLOURS = {"many": "tab:blue", "medium": "tab:orange", "few": "tab:red"}


def _save(fig: figure.Figure, path: epath.Path) -> epath.Path:
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=120)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(buffer.getvalue())
  return path


def _ordered(splits: Sequence[str]) -> list[str]:
  return sorted(splits, key=lambda s: (list(SPLIT_STYLE).index(s) if s in SPLIT_STYLE else 99, s))


def training_curves(
  curves: dict[str, dict[str, list[float]]], out_dir: epath.Path, title: str = ""
) -> list[epath.Path]:
  """loss.png and accuracy.png of {split: {'epoch', 'loss', 'top1', 'top5': [...]}}."""
  fig = figure.Figure(figsize=(7, 4.5), layout="tight")
  ax = fig.subplots()
  for split in _ordered(curves):
    colour, marker = SPLIT_STYLE.get(split, ("black", "x"))
    curve = curves[split]
    if curve.get("loss"):
      ax.plot(curve["epoch"], curve["loss"], color=colour, marker=marker, markersize=4, label=split)
  ax.set_xlabel("epoch")
  ax.set_ylabel("cross-entropy loss")
  ax.set_title(f"{title} loss".strip())
  ax.grid(alpha=0.3)
  ax.legend()
  paths = [_save(fig, out_dir / "loss.png")]

  fig = figure.Figure(figsize=(7, 4.5), layout="tight")
  ax = fig.subplots()
  for split in _ordered(curves):
    colour, marker = SPLIT_STYLE.get(split, ("black", "x"))
    curve = curves[split]
    for name, line, fill in (("top1", "-", colour), ("top5", "--", "none")):
      if len(curve.get(name, [])) == len(curve["epoch"]):
        ax.plot(
          curve["epoch"],
          [100 * v for v in curve[name]],
          color=colour,
          linestyle=line,
          marker=marker,
          markersize=4,
          markerfacecolor=fill,
          label=f"{split} {name.replace('top', 'top-')}",
        )
  ax.set_xlabel("epoch")
  ax.set_ylabel("accuracy (%)")
  ax.set_ylim(0, 100)
  ax.set_title(f"{title} accuracy".strip())
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  paths.append(_save(fig, out_dir / "accuracy.png"))
  return paths


def binned_means(
  counts: np.ndarray, values: np.ndarray, bins: int = 12, min_members: int = 3
) -> tuple[list[float], list[float]]:
  """Geometric-mean count and mean value of classes in log-spaced count bins (>= min_members)."""
  edges = np.geomspace(counts.min(), counts.max() * 1.0001, bins + 1)
  which = np.digitize(counts, edges)
  centres, means = [], []
  for b in np.unique(which):
    members = which == b
    if members.sum() >= min_members:
      centres.append(float(np.exp(np.mean(np.log(counts[members])))))
      means.append(float(np.mean(values[members])))
  return centres, means


def accuracy_vs_frequency(report: dict[str, Any], path: epath.Path) -> epath.Path:
  """Per-class top-1 (y) against training images (x, log scale), coloured by shot group."""
  classes = [c for c in report["per_class"] if c["examples"] > 0]
  fig = figure.Figure(figsize=(8, 5), layout="tight")
  ax = fig.subplots()
  shot = report.get("shot_groups", {})
  many_above = shot.get("many_above", longtail.MANY_SHOT_ABOVE)
  few_below = shot.get("few_below", longtail.FEW_SHOT_BELOW)
  titles = longtail.group_titles(many_above, few_below)
  for group in longtail.GROUPS:
    members = [c for c in classes if c["group"] == group]
    if members:
      counts = [max(c["train_count"], 1) for c in members]
      ax.scatter(
        counts,
        [100 * c["top1"] for c in members],
        s=12,
        alpha=0.6,
        color=_GROUP_COLOURS[group],
        label=f"{titles[group]}: {len(members)}",
      )
  for boundary in (few_below, many_above):
    ax.axvline(boundary, color="grey", linestyle=":", linewidth=1)
  if len(classes) >= 20:  # A trend line once there are enough classes to average.
    centres, means = binned_means(
      np.array([max(c["train_count"], 1) for c in classes], float),
      np.array([100 * c["top1"] for c in classes]),
    )
    ax.plot(centres, means, color="black", linewidth=1.5, label="mean over classes (log bins)")
  ax.set_xscale("log")
  ax.xaxis.set_major_formatter(ticker.ScalarFormatter())
  ax.xaxis.set_minor_formatter(ticker.NullFormatter())
  ax.set_ylim(-3, 103)
  ax.set_xlabel("training images of the class")
  ax.set_ylabel("top-1 accuracy of the class (%)")
  ax.set_title(
    f"{report['model']} on {report['dataset']} {report['split']}: top-1 "
    f"{100 * report['top1']:.2f}%, mean per class "
    f"{100 * report['mean_class_top1']:.2f}%"
  )
  ax.legend(loc="lower right", fontsize=8)
  return _save(fig, path)


def confusion_classes(report: dict[str, Any], limit: int = CONFUSION_CLASSES) -> list[int]:
  """Class ids in the most confused pairs, in order of first appearance, at most `limit`."""
  chosen = []
  for pair in report["confused_pairs"]:
    for class_id in (pair["true_id"], pair["predicted_id"]):
      if class_id not in chosen and len(chosen) < limit:
        chosen.append(class_id)
  return chosen


def confusions(
  report: dict[str, Any], labels: np.ndarray, predictions: np.ndarray, path: epath.Path
) -> epath.Path:
  """Row-normalised confusion matrix restricted to the most confused classes."""
  chosen = confusion_classes(report)
  side = 0.45 * max(len(chosen), 4)
  fig = figure.Figure(figsize=(2 + side, 1.5 + side), layout="tight")
  ax = fig.subplots()
  if not chosen:
    ax.text(0.5, 0.5, "no mistakes", ha="center", va="center")
    ax.axis("off")
  else:
    position = np.full(len(report["per_class"]), -1)
    position[chosen] = np.arange(len(chosen))
    rows, cols = position[labels], position[predictions]
    both = (rows >= 0) & (cols >= 0)
    matrix = np.zeros((len(chosen), len(chosen)))
    np.add.at(matrix, (rows[both], cols[both]), 1)
    totals = np.array([report["per_class"][c]["examples"] for c in chosen], float)
    matrix = 100 * matrix / np.maximum(totals, 1)[:, None]
    image = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=100)
    names = [report["per_class"][c]["name"][:24] for c in chosen]
    ax.set_xticks(range(len(chosen)), names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(chosen)), names, fontsize=7)
    for (row, col), value in np.ndenumerate(matrix):
      if value >= 0.5:
        ax.text(
          col,
          row,
          f"{value:.0f}",
          ha="center",
          va="center",
          fontsize=6,
          color="white" if value > 50 else "black",
        )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(image, ax=ax, label="% of the true class's examples", shrink=0.8)
  ax.set_title("Most confused classes", fontsize=10)
  return _save(fig, path)


def font(size: int) -> ImageFont.ImageFont:
  """Pillow's default font at `size` pixels (its fixed bitmap font without FreeType)."""
  try:
    return ImageFont.load_default(size=size)
  except (TypeError, OSError):  # Pillow built without FreeType: fixed-size bitmap font.
    return ImageFont.load_default()


def draw_label(
  draw: ImageDraw.ImageDraw,
  box: tuple[float, float, float, float],
  lines: Sequence[str],
  font: ImageFont.ImageFont,
  colour: str,
  size: tuple[int, int],
) -> None:
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
  draw.rectangle(
    (x - pad, y - pad, x + width + pad, y + height + pad),
    fill=(255, 255, 255, 200),
    outline=colour,
    width=max(1, pad // 2),
  )
  draw.multiline_text((x, y), text, font=font, fill=(0, 0, 0, 255))


def save_png(image: Image.Image, destination: epath.Path) -> None:
  """Writes a PIL image as PNG (local or gs://), creating the folder."""
  buffer = io.BytesIO()
  image.save(buffer, format="PNG")
  destination.parent.mkdir(parents=True, exist_ok=True)
  destination.write_bytes(buffer.getvalue())


def method_comparison(
  names: Sequence[str], values: dict[str, Sequence[float | None]], path: epath.Path
) -> epath.Path:
  """Grouped bars: for each metric (x groups: overall, balanced, many, ...), one bar per method.

  Args:
    names: the methods, one bar colour each.
    values: metric title -> each method's accuracy in percent (None: not measured).
    path: where to write the PNG.
  """
  fig = figure.Figure(figsize=(max(7, 1.4 * len(values) + 0.4 * len(names)), 4.5), layout="tight")
  ax = fig.subplots()
  width = 0.8 / max(1, len(names))
  for i, name in enumerate(names):
    heights = [np.nan if v[i] is None else v[i] for v in values.values()]
    ax.bar(np.arange(len(values)) + (i - (len(names) - 1) / 2) * width, heights, width, label=name)
  ax.set_xticks(np.arange(len(values)), list(values))
  ax.set_ylabel("top-1 accuracy (%)")
  ax.set_ylim(0, 100)
  ax.grid(axis="y", alpha=0.3)
  ax.legend(fontsize=8)
  return _save(fig, path)
