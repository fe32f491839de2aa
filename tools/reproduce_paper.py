r"""Reproduces the Animesion paper's Tables 1-4: runs each row, writes paper vs measured tables.

  python tools/reproduce_paper.py --table=2 --rows=B-16,L-16 --runs_dir=runs/paper \
      --pretrained_dir=weights/
  python tools/reproduce_paper.py --table=all --smoke          # every row's plumbing, seconds each

The rows (model, pretrained or not, dataset, image size, batch size, epochs, the paper's top-1
and top-5) and the config that runs each are in configs/paper.py; a row's run lives in
RUNS_DIR/table<N>/<model>-<pretrained|scratch>/. Rows run one after the other; a row whose
results.json says it completed is not rerun, and an interrupted row resumes from its checkpoint
(run the same command again). Then RUNS_DIR/table<N>.md and .csv hold the paper's and the
measured test top-1/top-5 side by side ("paper / measured").

Pretrained rows load, from --pretrained_dir:
  ViT-B_16.npz ViT-B_32.npz ViT-L_16.npz ViT-L_32.npz   ImageNet-21k ViT checkpoints of
      google-research/vision_transformer (gs://vit_models/imagenet21k/), fine-tuned whole;
  resnet18-f37072fd.pth resnet152-394f9c45.pth          torchvision ImageNet-1k weights
      (IMAGENET1K_V1); only the classifier trains (the paper's recipe for pretrained ResNets).

--smoke replaces each row's dataset by the small synthetic one, its model by a tiny model of
the same family (same block types, classifier names and frozen-backbone setting), drops the
checkpoint loading, and runs 2 steps, so the whole matrix is known to work before anyone spends
accelerator hours on it. Smoke numbers mean nothing.
"""

from collections.abc import Iterator, Sequence
import contextlib
import csv
import json
import os
import sys
import tempfile
import time
from typing import Any

from absl import app
from absl import flags
from absl import logging
import ml_collections

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # Run as `python tools/reproduce_paper.py` from a source checkout.
  sys.path.insert(0, ROOT)

from configs import paper  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

# Tiny stand-ins of each family for --smoke: same module, block type and classifier name.
_SMOKE_MODEL = {
  "shallow": {"channels": (4, 8), "hidden": 16},
  "resnet": {"base_width": 4, "stage_sizes": (1,)},  # One stage: compiles in a fraction.
  "vit": {"patch_size": 4, "hidden_size": 16, "mlp_dim": 32, "num_heads": 2, "num_layers": 1},
}
SMOKE_STEPS = 2
# Default persistent compilation cache of --smoke: reruns (and rows sharing programs) skip XLA.
SMOKE_CACHE_DIR = os.path.join(tempfile.gettempdir(), "animesion_jax_smoke_xla_cache")


def check_full_size(row: paper.Row, num_devices: int) -> None:
  """Validates the row's real config and builds its real-size model and optimizer abstractly.

  Catches what a tiny stand-in cannot: an image size the patch size does not divide, a batch
  size the devices do not divide, a frozen backbone without a classifier to train.
  """
  # pylint: disable=g-import-not-at-top
  import jax

  from animesion_jax import sharding
  from animesion_jax.training import config_validation
  from animesion_jax.training import model_setup

  # pylint: enable=g-import-not-at-top
  config = paper.row_config(row)
  config.init_from.source = config.init_from.path = ""  # The files are not needed to check.
  config_validation.validate(config, num_devices=num_devices)
  model = model_setup.build_model(config, paper.NUM_CLASSES[row.dataset])
  mesh = sharding.create_mesh(jax.devices()[:num_devices])
  model_setup.abstract_train_state(config, model, mesh)


def _round_up(value: int, multiple: int) -> int:
  return -(-value // multiple) * multiple


def smoke_config(
  config: ml_collections.ConfigDict, data_dir: str, num_devices: int = 8
) -> ml_collections.ConfigDict:
  """`config` shrunk to a seconds-long run on the small synthetic dataset.

  Everything the tiny run cannot exercise meaningfully (dataset, sizes, schedule length) is set
  to the same value for every row, so rows that differ only there share one run (and rows with
  the same programs share their compilation).
  """
  config = ml_collections.ConfigDict(config.to_dict())
  family = next(f for f in _SMOKE_MODEL if config.model.name.startswith(f))
  for field, value in _SMOKE_MODEL[family].items():
    config.model[field] = value
  config.init_from.source = ""  # Same plumbing (freeze_backbone etc.) without the weights.
  config.init_from.path = ""
  config.dataset = "synthetic_characters"
  config.dataset_config = "small"
  config.data_dir = data_dir
  config.build_dataset_if_missing = True
  config.image_size = 16
  config.resize_margin = 4
  config.batch_size = _round_up(8, num_devices)
  config.eval_batch_size = _round_up(224, num_devices)  # The small test split in one batch.
  config.num_train_steps = SMOKE_STEPS
  config.num_epochs = 1
  config.decay_every_epochs = 1
  config.eval_splits = ("test",)
  # Evaluate after every step (the small train split has 560 examples), so the recipe's
  # switch to eval mode after the first evaluation (original_eval_mode_after_first_epoch) runs too.
  config.eval_every_epochs = config.batch_size / 560
  config.log_every_steps = 1
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 1
  return config


@contextlib.contextmanager
def compilation_cache(directory: str | None) -> Iterator[None]:
  """Persistent XLA compilation cache in `directory` (rows with the same programs compile once)."""
  if not directory:
    yield
    return
  # pylint: disable=g-import-not-at-top
  import jax
  from jax.experimental.compilation_cache import compilation_cache as cache

  # pylint: enable=g-import-not-at-top
  names = (
    "jax_compilation_cache_dir",
    "jax_persistent_cache_min_compile_time_secs",
    "jax_persistent_cache_min_entry_size_bytes",
  )
  previous = {name: getattr(jax.config, name) for name in names}
  for name, value in zip(names, (directory, 0.0, 0)):
    jax.config.update(name, value)
  cache.reset_cache()
  try:
    yield
  finally:
    for name, value in previous.items():
      jax.config.update(name, value)
    cache.reset_cache()


def read_result(workdir: str) -> dict[str, Any] | None:
  """The completed run's test metrics (%), or None if it has not completed."""
  from animesion_jax import run_dir  # pylint: disable=g-import-not-at-top

  try:
    results = run_dir.RunDir(workdir).load_results()
  except FileNotFoundError:
    return None
  if not results.get("completed") or "test" not in results:
    return None
  return {
    "top1": 100 * results["test"]["top1"],
    "top5": 100 * results["test"]["top5"],
    "steps": results.get("steps"),
  }


def run_rows(
  rows: Sequence[paper.Row],
  runs_dir: str,
  *,
  smoke: bool = False,
  pretrained_dir: str = "",
  data_dir: str = "",
  overrides: Sequence[str] = (),
) -> list[dict[str, Any]]:
  """Runs (or resumes, or reuses) each row; returns one record per row with paper and measured.

  With `smoke`, each row's real config is also checked at full size (`check_full_size`), and
  rows whose tiny stand-in configs are identical share one run. The tables are rewritten after
  every row, so they show the progress of a long matrix.
  """
  import jax  # pylint: disable=g-import-not-at-top

  from animesion_jax.training import loop  # pylint: disable=g-import-not-at-top  # After torch.

  records, runs_by_config, checked = [], {}, set()
  for row in rows:
    if records:
      write_tables(records, runs_dir, smoke)
    workdir = os.path.join(runs_dir, f"table{row.table}", row.name)
    config = paper.row_config(row, pretrained_dir, data_dir)
    record = {
      "table": row.table,
      "model": row.model,
      "pretrained": row.pretrained,
      "dataset": row.dataset,
      "image_size": row.image_size,
      "batch_size": row.batch_size,
      "epochs": row.epochs,
      "init_from": config.init_from.path,
      "paper_top1": row.paper_top1,
      "paper_top5": row.paper_top5,
      "top1": None,
      "top5": None,
      "status": "",
      "workdir": workdir,
    }
    try:
      if smoke:
        # Only the classifier's width differs between datasets: check each model shape once.
        shape_key = (row.model, row.image_size, row.batch_size, config.freeze_backbone)
        if shape_key not in checked:
          check_full_size(row, jax.device_count())
          checked.add(shape_key)
        config = smoke_config(config, data_dir, jax.device_count())
      apply_overrides(config, overrides)
      key = config.to_json(sort_keys=True)
      if key in runs_by_config:
        record["workdir"] = workdir = runs_by_config[key]
        record["status"] = "same run as " + os.path.relpath(workdir, runs_dir)
      else:
        runs_by_config[key] = workdir
        record["status"] = _run_once(loop, config, workdir, records + [record], runs_dir, smoke)
    except (SystemExit, KeyboardInterrupt):  # Preempted: the run resumes on the next call.
      raise
    except Exception as error:  # pylint: disable=broad-exception-caught
      # One failing row (out of memory, a missing file) must not cost the others.
      logging.exception("Row %s of table %d failed.", row.name, row.table)
      records.append({**record, "status": f"failed: {type(error).__name__}: {error}"[:300]})
      continue
    result = read_result(workdir)
    if result is None:
      records.append({**record, "status": "not completed"})
    else:
      records.append({**record, "top1": result["top1"], "top5": result["top5"]})
  write_tables(records, runs_dir, smoke)
  return records


def _run_once(
  train: Any,
  config: ml_collections.ConfigDict,
  workdir: str,
  records: list[dict[str, Any]],
  runs_dir: str,
  smoke: bool,
) -> str:
  """Trains (or resumes) the run in `workdir` unless it completed earlier; returns a status."""
  if read_result(workdir) is not None:
    return "done earlier"
  start = time.time()
  logging.info("Running %s", workdir)
  try:
    train.train_and_evaluate(config, workdir)
  except (SystemExit, KeyboardInterrupt):
    records[-1] = {**records[-1], "status": "interrupted: rerun the command to resume"}
    write_tables(records, runs_dir, smoke)
    raise
  return f"ran in {time.time() - start:.0f} s"


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> None:
  """Applies 'field=value' (dotted fields; value parsed as JSON, else kept as a string)."""
  for item in overrides:
    if "=" not in item:
      raise ValueError(f"--set={item!r}: expected FIELD=VALUE, e.g. dtype=bfloat16.")
    field, text = item.split("=", 1)
    try:
      value = json.loads(text)
    except json.JSONDecodeError:
      value = text
    target, *parents = config, *field.split(".")[:-1]
    for parent in parents:
      target = target[parent]
    target[field.split(".")[-1]] = value


def _cell(published: float | None, measured: float | None) -> str:
  if published is None:
    return ""
  return f"{published:.2f} / {'—' if measured is None else f'{measured:.2f}'}"


def markdown_table(table: int, records: Sequence[dict[str, Any]], smoke: bool = False) -> str:
  """The table in the paper's layout; each cell is 'paper / measured'."""
  by_cell = {(r["model"], r["pretrained"]): r for r in records if r["table"] == table}
  note = " SMOKE RUN: measured numbers are meaningless." if smoke else ""
  lines = [
    paper.caption(table) + note,
    "Cells: paper / measured (test split).",
    "",
    "| Model | Pretrained=False Top-1 | Pretrained=False Top-5 | Pretrained=True Top-1 | "
    "Pretrained=True Top-5 |",
    "|---|---|---|---|---|",
  ]
  for model in paper.TABLES[table][1]:
    cells = []
    for pretrained in (False, True):
      record = by_cell.get((model, pretrained))
      published = paper.TABLES[table][1][model][2 * pretrained : 2 * pretrained + 2]
      for i, key in enumerate(("top1", "top5")):
        cells.append(_cell(published[i], record[key] if record else None))
    lines.append(f"| {model} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def write_tables(
  records: Sequence[dict[str, Any]], runs_dir: str, smoke: bool = False
) -> list[str]:
  """RUNS_DIR/table<N>.md and .csv for every table with a record; returns the paths.

  Only process 0 writes (every process of a multi-host run has the same records).
  """
  import jax  # pylint: disable=g-import-not-at-top

  if jax.process_index() != 0:
    return []
  paths = []
  os.makedirs(runs_dir, exist_ok=True)
  for table in sorted({r["table"] for r in records}):
    base = os.path.join(runs_dir, f"table{table}")
    with open(base + ".md", "w", encoding="utf-8") as f:
      f.write(markdown_table(table, records, smoke))
    with open(base + ".csv", "w", newline="", encoding="utf-8") as f:
      writer = csv.DictWriter(f, fieldnames=list(records[0]))
      writer.writeheader()
      writer.writerows(r for r in records if r["table"] == table)
    paths += [base + ".md", base + ".csv"]
  return paths


def define_flags() -> None:
  flags.DEFINE_string("table", "all", "Tables to run: 'all' or a comma list such as '1,2'.")
  flags.DEFINE_string("rows", "", "Models to run, paper labels such as 'B-16,L-16' (default all).")
  flags.DEFINE_enum("pretrained", "both", ["both", "yes", "no"], "Which columns to run.")
  flags.DEFINE_string("runs_dir", "runs/paper", "Parent directory of the runs and tables.")
  flags.DEFINE_string("pretrained_dir", "", "Directory with the pretrained files listed above.")
  flags.DEFINE_string(
    "data_dir",
    "",
    "TFDS data directory of the built datasets (default "
    "~/tensorflow_datasets; with --smoke, where the synthetic set is built).",
  )
  flags.DEFINE_multi_string(
    "set",
    [],
    "Config override FIELD=VALUE for every row, e.g. "
    "--set=dtype=bfloat16 --set=grad_accumulation_steps=4.",
  )
  flags.DEFINE_bool(
    "smoke",
    False,
    "Run every selected row's plumbing for a few steps on the synthetic dataset with tiny models.",
  )
  flags.DEFINE_string(
    "compilation_cache_dir",
    None,
    "Persistent XLA compilation cache (default "
    "with --smoke: a folder in the system temp directory; otherwise none).",
  )


def plan(flag: Any) -> tuple[list[paper.Row], str, str, str]:
  """The rows, runs folder, data folder and pretrained folder the flags ask for.

  Raises ValueError with the message for the user when the selection or the files do not work.
  Relative paths mean the directory the command was typed in.
  """
  rows = paper.select_rows(flag.table, flag.rows, flag.pretrained)
  from animesion_jax import run_dir  # pylint: disable=g-import-not-at-top

  runs_dir = os.fspath(run_dir.resolve(flag.runs_dir))
  runs_dir = os.path.join(runs_dir, "smoke") if flag.smoke else runs_dir
  data_dir = (
    os.fspath(run_dir.resolve(flag.data_dir))
    if flag.data_dir
    else os.path.join(runs_dir, "data")
    if flag.smoke
    else ""
  )
  pretrained_dir = os.fspath(run_dir.resolve(flag.pretrained_dir)) if flag.pretrained_dir else ""
  if not flag.smoke:
    missing = sorted(
      {paper.row_config(r, pretrained_dir).init_from.path for r in rows if r.pretrained} - {""}
    )
    missing = [path for path in missing if not os.path.isfile(path)]
    if missing:
      raise ValueError("Pretrained rows need these files (see --help):\n  " + "\n  ".join(missing))
  return rows, runs_dir, data_dir, pretrained_dir


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  flag = flags.FLAGS
  from animesion_jax.cli import xla_flags  # pylint: disable=g-import-not-at-top

  xla_flags.apply_default_flags()  # Before the backend starts.
  try:
    rows, runs_dir, data_dir, pretrained_dir = plan(flag)
  except ValueError as error:
    raise app.UsageError(str(error)) from None
  if not flag.smoke:
    if any(r.pretrained and paper.MODELS[r.model][1] == "torchvision_resnet" for r in rows):
      import torch  # pylint: disable=g-import-not-at-top,unused-import  # Before TensorFlow, or

      del torch  # loading the .pth files later segfaults.
  cache_dir = flag.compilation_cache_dir or (SMOKE_CACHE_DIR if flag.smoke else None)
  with compilation_cache(cache_dir):
    records = run_rows(
      rows,
      runs_dir,
      smoke=flag.smoke,
      pretrained_dir=pretrained_dir,
      data_dir=data_dir,
      overrides=flag.set,
    )
  for table in sorted({r["table"] for r in records}):
    print(markdown_table(table, records, flag.smoke))
  failed = [r for r in records if r["top1"] is None]
  for record in failed:
    print(
      f"Table {record['table']} {record['model']} pretrained={record['pretrained']}: "
      f"{record['status']}"
    )
  print(f"Wrote the tables to {runs_dir}/table<N>.md and .csv.")
  if failed:
    sys.exit(1)


if __name__ == "__main__":
  define_flags()
  app.run(main)
