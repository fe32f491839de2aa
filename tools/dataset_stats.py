r"""Statistics and figures of a built dataset, as in the Animesion paper.

  python tools/dataset_stats.py --dataset=dafre --out_dir=/tmp/stats
  python tools/dataset_stats.py --dataset=moeimouto --split=train \
      --data_dir=~/tensorflow_datasets --out_dir=/tmp/stats
  python tools/dataset_stats.py --dataset_dir=/data/dafre/faces/1.0.0 \
      --out_dir=/tmp/stats

For the chosen split (any TFDS split expression; by default all splits
together, as the paper counts them) it writes, under --out_dir:

  <name>_stats.json          classes, images, mean/median/std/min/max of
                             images per class, head/medium/tail class counts,
                             the most frequent classes
  <name>_top_classes.png     images per class of the 100 most frequent
                             classes (the paper's Figures 2 and 3)
  <name>_samples.png         sample images with their class names (Figure 1)

and prints the JSON. Images per class come from the counts stored when the
dataset was built (older builds: from the labels alone, no image decoded);
only the sample grid reads images. The paper reports mean / median / std of 142 / 48 / 359
for DAF:re and 83 / 80 / 27 for moeImouto (all splits, std over classes).
Head / medium / tail follow the usual long-tail convention: more than
--head_above images, fewer than --tail_below, and the rest.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
import json
import textwrap
from typing import Any

from absl import app
from absl import flags
from etils import epath
import matplotlib
import numpy as np
import tensorflow_datasets as tfds

from animesion_jax import run_dir
from tfds_builders.common import class_counts

matplotlib.use("Agg")  # Files only; no display needed.
from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

_DATASET = flags.DEFINE_string(
  "dataset", None, "Dataset name: 'moeimouto', 'dafre' or 'synthetic_characters'."
)
_CONFIG = flags.DEFINE_string(
  "config", "", "Builder config ('' = the default: drop_non_rgb / faces)."
)
_DATA_DIR = flags.DEFINE_string(
  "data_dir", "", "TFDS data directory (default ~/tensorflow_datasets)."
)
_DATASET_DIR = flags.DEFINE_string(
  "dataset_dir",
  None,
  "Instead of --dataset: the folder of a built dataset (.../<name>/<config>/<version>).",
)
_SPLIT = flags.DEFINE_string(
  "split", None, "TFDS split expression, e.g. 'train' or 'train+test'; default: all splits."
)
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Where to write the files.")
_TOP_K = flags.DEFINE_integer("top_k", 100, "Classes in the histogram.")
_GRID = flags.DEFINE_integer("grid", 16, "Sample images in the grid.")
_SEED = flags.DEFINE_integer("seed", 0, "Picks the sample classes.")
_HEAD_ABOVE = flags.DEFINE_integer("head_above", 100, "Head classes have more images than this.")
_TAIL_BELOW = flags.DEFINE_integer("tail_below", 20, "Tail classes have fewer images than this.")


def _records(
  builder: tfds.core.DatasetBuilder, split: str, decode_images: bool
) -> Iterator[dict[str, Any]]:
  """Examples of `split` in stored order, from ArrayRecord or TFRecord."""
  decoders = None if decode_images else {"image": tfds.decode.SkipDecoding()}
  if builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD:
    yield from builder.as_data_source(split, decoders=decoders)
  else:
    dataset = builder.as_dataset(split, decoders=decoders, shuffle_files=False)
    yield from tfds.as_numpy(dataset)


def class_count_stats(counts: np.ndarray) -> dict[str, float]:
  """Mean, median, std (over classes, ddof=0), min, max of `counts`."""
  counts = np.asarray(counts, dtype=np.float64)
  return {
    "mean": float(counts.mean()),
    "median": float(np.median(counts)),
    "std": float(counts.std()),
    "min": int(counts.min()),
    "max": int(counts.max()),
  }


def long_tail_groups(counts: np.ndarray, head_above: int, tail_below: int) -> dict[str, int]:
  """Numbers of head (> head_above), tail (< tail_below) and medium classes."""
  counts = np.asarray(counts)
  head = int(np.sum(counts > head_above))
  tail = int(np.sum(counts < tail_below))
  return {"head": head, "medium": len(counts) - head - tail, "tail": tail}


def plot_top_classes(
  counts: np.ndarray, names: Sequence[str], top_k: int, title: str, path: epath.Path
) -> list[int]:
  """Bar chart of the `top_k` most frequent classes; returns their ids."""
  # Stable sort: ties keep class-id order, so the figure is reproducible.
  order = np.argsort(-counts, kind="stable")[:top_k]
  fig, ax = plt.subplots(figsize=(max(6.0, 0.2 * len(order) + 2), 6))
  ax.bar(np.arange(len(order)), counts[order], color="tab:blue")
  ax.set_xticks(np.arange(len(order)))
  ax.set_xticklabels([names[i] for i in order], rotation=90, fontsize=6)
  ax.set_ylabel("images")
  ax.set_title(title)
  ax.margins(x=0.005)
  fig.tight_layout()
  with path.open("wb") as f:  # Local or remote (gs://) paths alike.
    fig.savefig(f, format="png", dpi=120)
  plt.close(fig)
  return [int(i) for i in order]


def plot_samples(images: Sequence[np.ndarray], captions: Sequence[str], path: epath.Path) -> None:
  """A grid of images, each captioned (wrapped) underneath."""
  cols = int(np.ceil(np.sqrt(len(images))))
  rows = int(np.ceil(len(images) / cols))
  fig, axes = plt.subplots(rows, cols, figsize=(2 * cols, 2.3 * rows), squeeze=False)
  for ax in axes.flat:
    ax.axis("off")
  for ax, image, caption in zip(axes.flat, images, captions):
    ax.imshow(image)
    ax.set_title("\n".join(textwrap.wrap(caption, 22)[:2]), fontsize=7)
  fig.tight_layout()
  with path.open("wb") as f:  # Local or remote (gs://) paths alike.
    fig.savefig(f, format="png", dpi=120)
  plt.close(fig)


def _fetch(
  builder: tfds.core.DatasetBuilder, split: str, indices: Sequence[int]
) -> list[dict[str, Any]]:
  """Examples at `indices` (stored order) with their images decoded."""
  skip = {"image": tfds.decode.SkipDecoding()}
  if builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD:
    source = builder.as_data_source(split, decoders=skip)
    examples = [source[i] for i in indices]
  else:  # TFRecord has no random access: scan up to the last index.
    wanted = set(indices)
    found = {}
    for index, example in enumerate(_records(builder, split, False)):
      if index in wanted:
        found[index] = example
        if len(found) == len(wanted):
          break
    examples = [found[i] for i in indices]
  image_feature = builder.info.features["image"]
  return [dict(ex, image=image_feature.decode_example_np(ex["image"])) for ex in examples]


def sample_examples(
  builder: tfds.core.DatasetBuilder, split: str, labels: np.ndarray, num: int, seed: int
) -> list[dict[str, Any]]:
  """The first example of each of `num` classes picked at random."""
  present = np.unique(labels)
  rng = np.random.default_rng(seed)
  chosen = rng.choice(present, size=min(num, len(present)), replace=False)
  first_index = {}
  for index, label in enumerate(labels.tolist()):
    first_index.setdefault(label, index)
  return _fetch(builder, split, sorted(first_index[c] for c in chosen))


def _split_order(name: str) -> tuple[int, str]:
  known = ("train", "validation", "test")
  return (known.index(name) if name in known else len(known), name)


def compute_and_plot(
  builder: tfds.core.DatasetBuilder,
  split: str | None,
  out_dir: epath.Path,
  top_k: int = 100,
  grid: int = 16,
  seed: int = 0,
  head_above: int = 100,
  tail_below: int = 20,
) -> dict[str, Any]:
  """Writes the JSON and both figures for `split`; returns the statistics.

  Args:
    builder: a prepared dataset.
    split: TFDS split expression; None means all splits together.
    out_dir: created if needed.
    top_k: classes in the histogram.
    grid: sample images in the grid (0 skips the figure).
    seed: picks the sample classes.
    head_above: head classes have more images than this.
    tail_below: tail classes have fewer images than this.
  """
  split = split or "+".join(sorted(builder.info.splits, key=_split_order))
  names = builder.info.features["label"].names
  counts = class_counts.split_class_counts(builder, split)
  if not counts.sum():
    raise ValueError(f"{builder.info.full_name} split {split!r} is empty.")
  present = counts[counts > 0]
  stem = "_".join(
    [
      builder.name,
      *([builder.builder_config.name] if builder.builder_config else []),
      split.replace("+", "_"),
    ]
  )
  out_dir.mkdir(parents=True, exist_ok=True)
  figures = {"top_classes": str(out_dir / f"{stem}_top_classes.png")}
  top = plot_top_classes(
    counts,
    names,
    top_k,
    f"{builder.info.full_name} [{split}]: {min(top_k, len(names))} most "
    f"frequent of {len(names)} classes",
    epath.Path(figures["top_classes"]),
  )
  if grid:
    figures["samples"] = str(out_dir / f"{stem}_samples.png")
    labels = class_counts.read_labels(builder, split)
    examples = sample_examples(builder, split, labels, grid, seed)
    plot_samples(
      [ex["image"] for ex in examples],
      [names[ex["label"]] for ex in examples],
      epath.Path(figures["samples"]),
    )
  stats = {
    "dataset": builder.info.full_name,
    "split": split,
    "num_classes": len(names),
    "num_classes_present": int(present.size),
    "num_images": int(counts.sum()),
    "images_per_class": class_count_stats(present),
    "long_tail": {
      "rule": f"head: > {head_above} images, tail: < {tail_below}",
      **long_tail_groups(present, head_above, tail_below),
    },
    "top_classes": [{"name": names[i], "images": int(counts[i])} for i in top],
    "figures": figures,
  }
  stats_path = out_dir / f"{stem}_stats.json"
  stats_path.write_text(json.dumps(stats, indent=2) + "\n")
  return stats


def _open_builder() -> tfds.core.DatasetBuilder:
  if _DATASET_DIR.value:
    return tfds.builder_from_directory(str(run_dir.resolve(_DATASET_DIR.value)))
  if not _DATASET.value:
    raise app.UsageError("Pass --dataset or --dataset_dir.")
  # Imported here: the project's dataset table pulls in the input pipeline.
  from animesion_jax.data import datasets  # pylint: disable=g-import-not-at-top

  data_dir = str(run_dir.resolve(_DATA_DIR.value)) if _DATA_DIR.value else ""
  builder = datasets.get_builder(_DATASET.value, data_dir, _CONFIG.value)
  if not datasets.is_built(builder):
    raise app.UsageError(
      f"{_DATASET.value} is not built in {builder.data_dir}; build it with "
      f"`{datasets.get_spec(_DATASET.value).build_command}` "
      "(add --data_dir if it is not the default)."
    )
  return builder


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not _OUT_DIR.value:
    raise app.UsageError("Pass --out_dir.")
  stats = compute_and_plot(
    _open_builder(),
    _SPLIT.value,
    run_dir.resolve(_OUT_DIR.value),
    top_k=_TOP_K.value,
    grid=_GRID.value,
    seed=_SEED.value,
    head_above=_HEAD_ABOVE.value,
    tail_below=_TAIL_BELOW.value,
  )
  shown = dict(stats, top_classes=stats["top_classes"][:10])
  print(json.dumps(shown, indent=2))


if __name__ == "__main__":
  app.run(main)
