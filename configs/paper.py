"""The Animesion paper's Tables 1-4 as data, and the config that runs each row.

Every row (table, model, pretrained or not) becomes the model family's config with the paper's
recipe. Run one row with the training CLI, e.g. Table 2, ViT-B/16, pretrained:

  python -m animesion_jax.main --config=configs/paper.py:2,B-16,pretrained \
      --config.init_from.path=weights/ViT-B_16.npz --workdir=runs/paper/table2/B-16-pretrained

or whole tables with tools/reproduce_paper.py, which also writes the paper's and the measured
numbers side by side. Pretrained rows load (file names as published):
  ViT-B_16.npz ViT-B_32.npz ViT-L_16.npz ViT-L_32.npz   ImageNet-21k ViTs of
      google-research/vision_transformer (gs://vit_models/imagenet21k/), fine-tuned whole;
  resnet18-f37072fd.pth resnet152-394f9c45.pth          torchvision ImageNet-1k ResNets
      (IMAGENET1K_V1); only the classifier trains (the paper's recipe for pretrained ResNets).
"""

import dataclasses
import importlib
import os

import ml_collections

DATASET_TITLES = {"dafre": "DAF:re", "moeimouto": "moeImouto"}
NUM_CLASSES = {"dafre": 3263, "moeimouto": 173}  # Of the paper's splits (for --smoke checks).


@dataclasses.dataclass(frozen=True)
class Row:
  """One cell pair (top-1, top-5) of a paper table."""

  table: int
  model: str  # The paper's label: SN, R-18, R-152, B-16, B-32, L-16, L-32.
  pretrained: bool
  dataset: str
  image_size: int
  batch_size: int
  epochs: int
  paper_top1: float
  paper_top5: float

  @property
  def name(self) -> str:
    return f"{self.model}-{'pretrained' if self.pretrained else 'scratch'}"


# Paper label -> (config module, pretrained source, pretrained file).
MODELS = {
  "SN": ("shallow", None, None),
  "R-18": ("resnet18", "torchvision_resnet", "resnet18-f37072fd.pth"),
  "R-152": ("resnet152", "torchvision_resnet", "resnet152-394f9c45.pth"),
  "B-16": ("vit_b16", "vit_npz", "ViT-B_16.npz"),
  "B-32": ("vit_b32", "vit_npz", "ViT-B_32.npz"),
  "L-16": ("vit_l16", "vit_npz", "ViT-L_16.npz"),
  "L-32": ("vit_l32", "vit_npz", "ViT-L_32.npz"),
}

# (table, dataset, image size, batch size, epochs) and {model: (scratch top-1, top-5,
# pretrained top-1, top-5)}; None where the paper has no pretrained row.
TABLES = {
  1: (
    ("dafre", 128, 64, 50),
    {
      "R-18": (69.09, 84.64, 26.47, 45.30),
      "R-152": (64.36, 81.20, 26.49, 44.88),
      "B-16": (63.30, 78.58, 82.14, 92.77),
      "B-32": (51.09, 71.30, 75.42, 89.22),
      "L-16": (59.39, 77.91, 85.95, 94.23),
      "L-32": (51.81, 71.81, 75.88, 89.39),
    },
  ),
  2: (
    ("moeimouto", 128, 64, 200),
    {
      "R-18": (72.58, 90.86, 61.20, 83.83),
      "R-152": (63.17, 86.41, 63.06, 85.90),
      "B-16": (67.28, 82.22, 91.57, 98.06),
      "B-32": (48.76, 78.19, 85.76, 96.81),
      "L-16": (66.56, 87.43, 92.80, 98.44),
      "L-32": (49.88, 78.36, 85.22, 96.94),
    },
  ),
  3: (
    ("dafre", 224, 1024, 200),
    {
      "SN": (53.68, 72.04, None, None),
      "R-18": (68.30, 84.01, 24.31, 39.82),
      "B-32": (38.19, 59.06, 59.92, 79.20),
    },
  ),
  4: (
    ("moeimouto", 224, 1024, 200),
    {
      "SN": (57.49, 80.43, None, None),
      "R-18": (60.41, 84.20, 34.08, 58.95),
      "B-32": (9.17, 20.12, 24.69, 54.03),
    },
  ),
}


def paper_rows() -> list[Row]:
  """Every row of Tables 1-4, in the paper's order (scratch before pretrained)."""
  rows = []
  for table, ((dataset, size, batch, epochs), cells) in TABLES.items():
    for model, (top1, top5, pre_top1, pre_top5) in cells.items():
      rows.append(Row(table, model, False, dataset, size, batch, epochs, top1, top5))
      if pre_top1 is not None:
        rows.append(Row(table, model, True, dataset, size, batch, epochs, pre_top1, pre_top5))
  return rows


def caption(table: int) -> str:
  (dataset, size, batch, epochs), _ = TABLES[table]
  return (
    f"Table {table}: Classification accuracy (%) for {DATASET_TITLES[dataset]} trained for "
    f"{epochs} epochs with batch size: {batch} and image size: {size}x{size}."
  )


def select_rows(tables: str, models: str = "", pretrained: str = "both") -> list[Row]:
  """Rows of the chosen tables ('all' or '1,3'), models ('' = all) and pretrained setting."""
  rows = paper_rows()
  try:
    wanted_tables = set(TABLES) if tables == "all" else {int(t) for t in tables.split(",")}
  except ValueError:
    wanted_tables = {-1}
  if wanted_tables - set(TABLES):
    raise ValueError(f"--table={tables!r}: the paper has tables {sorted(TABLES)}.")
  rows = [r for r in rows if r.table in wanted_tables]
  if models:
    wanted_models = [m.strip() for m in models.split(",") if m.strip()]
    available = sorted({r.model for r in rows})
    missing = [m for m in wanted_models if m not in available]
    if missing:
      raise ValueError(
        f"--rows={models!r}: {missing} not in table(s) {sorted(wanted_tables)}; "
        f"they have {available}."
      )
    rows = [r for r in rows if r.model in wanted_models]
  if pretrained not in ("both", "yes", "no"):
    raise ValueError(f"--pretrained={pretrained!r}: choose both, yes or no.")
  if pretrained != "both":
    rows = [r for r in rows if r.pretrained == (pretrained == "yes")]
  return rows


def row_config(row: Row, pretrained_dir: str = "", data_dir: str = "") -> ml_collections.ConfigDict:
  """The config that runs `row` with the paper's recipe (the family config, then these fields)."""
  module, source, file_name = MODELS[row.model]
  config = importlib.import_module(f"configs.{module}").get_config(row.dataset)
  # Where the built dataset is ('' = ~/tensorflow_datasets).
  config.data_dir = data_dir
  # 128 or 224.
  config.image_size = row.image_size
  # Train: resize to 160 (128 px) or 256 (224 px), random-crop.
  config.resize_margin = 32
  # 64 or 1024.
  config.batch_size = row.batch_size
  # 50 or 200.
  config.num_epochs = row.epochs
  # Learning rate x1/3 this often.
  config.decay_every_epochs = 20 if row.epochs == 50 else 50
  # How the original code trained when it produced the published numbers:
  # ColorJitter(0.1, 0.1, 0.1, 0.1) in its train transform.
  config.color_jitter = 0.1
  # Its validate() left the model in eval mode from epoch 2 on (dropout off, BatchNorm frozen).
  config.original_eval_mode_after_first_epoch = True
  if row.pretrained:
    # 'vit_npz' or 'torchvision_resnet'.
    config.init_from.source = source
    # The published file name.
    config.init_from.path = os.path.join(pretrained_dir, file_name)
    # Pretrained ResNets: head only.
    config.freeze_backbone = source == "torchvision_resnet"
  return config


def get_config(arg: str) -> ml_collections.ConfigDict:
  """'TABLE,MODEL,pretrained|scratch', e.g. '2,B-16,pretrained' (set config.init_from.path)."""
  try:
    table, model, kind = arg.split(",")
    row = next(
      r
      for r in paper_rows()
      if (r.table, r.model, r.pretrained)
      == (int(table), model, {"pretrained": True, "scratch": False}[kind])
    )
  except (ValueError, KeyError, StopIteration):
    raise ValueError(
      f"configs/paper.py:{arg}: expected TABLE,MODEL,pretrained|scratch naming a "
      f"row of the paper, e.g. 2,B-16,pretrained or 3,SN,scratch."
    ) from None
  return row_config(row)
