"""configs/paper.py (the paper's tables as data, row configs) and tools/reproduce_paper.py."""

import csv
import json
import os
import pathlib
import re
import subprocess
import sys
import types

import pytest

from configs import paper
from tests import helpers

ROOT = pathlib.Path(__file__).resolve().parents[1]


reproduce_paper = helpers.load_tool("reproduce_paper")


def test_tables_hold_the_papers_numbers():
  rows = paper.paper_rows()
  assert len(rows) == 12 + 12 + 5 + 5
  cell = {(r.table, r.model, r.pretrained): r for r in rows}
  assert (cell[2, "B-16", True].paper_top1, cell[2, "B-16", True].paper_top5) == (91.57, 98.06)
  assert (cell[1, "R-18", False].paper_top1, cell[1, "R-18", False].paper_top5) == (69.09, 84.64)
  assert (cell[4, "B-32", False].paper_top1, cell[4, "B-32", True].paper_top5) == (9.17, 54.03)
  assert (3, "SN", True) not in cell and (3, "SN", False) in cell
  for r in rows:
    assert (r.dataset, r.image_size, r.batch_size, r.epochs) == {
      1: ("dafre", 128, 64, 50),
      2: ("moeimouto", 128, 64, 200),
      3: ("dafre", 224, 1024, 200),
      4: ("moeimouto", 224, 1024, 200),
    }[r.table]
  assert paper.caption(3) == (
    "Table 3: Classification accuracy (%) for DAF:re trained for 200 epochs with batch size: "
    "1024 and image size: 224x224."
  )


def test_row_configs_follow_the_recipe():
  rows = {(r.table, r.model, r.pretrained): r for r in paper.paper_rows()}
  resnet = paper.row_config(rows[3, "R-18", True], pretrained_dir="/weights")
  assert (resnet.model.name, resnet.dataset, resnet.image_size, resnet.batch_size) == (
    "resnet18",
    "dafre",
    224,
    1024,
  )
  assert (resnet.num_epochs, resnet.decay_every_epochs, resnet.resize_margin) == (200, 50, 32)
  assert (resnet.init_from.source, resnet.init_from.path, resnet.freeze_backbone) == (
    "torchvision_resnet",
    "/weights/resnet18-f37072fd.pth",
    True,
  )
  assert resnet.normalization == "imagenet" and resnet.learning_rate == 0.001
  vit = paper.row_config(rows[1, "L-32", True], pretrained_dir="/weights")
  assert (vit.model.name, vit.num_epochs, vit.decay_every_epochs) == ("vit_l32", 50, 20)
  assert (vit.init_from.source, vit.init_from.path, vit.freeze_backbone) == (
    "vit_npz",
    "/weights/ViT-L_32.npz",
    False,
  )
  scratch = paper.row_config(rows[2, "R-152", False])
  assert (scratch.model.name, scratch.init_from.source, scratch.freeze_backbone) == (
    "resnet152",
    "",
    False,
  )


def test_one_row_as_a_training_config():
  config = paper.get_config("2,B-16,pretrained")
  assert (config.model.name, config.dataset, config.init_from.source) == (
    "vit_b16",
    "moeimouto",
    "vit_npz",
  )
  assert config.init_from.path == "ViT-B_16.npz"  # Set --config.init_from.path to the file.
  assert paper.get_config("3,SN,scratch").model.name == "shallow"
  for bad in ("3,SN,pretrained", "5,B-16,scratch", "2,B-16", "2,B-16,yes"):
    with pytest.raises(ValueError, match="expected TABLE,MODEL,pretrained|scratch"):
      paper.get_config(bad)


def test_select_rows():
  assert [(r.model, r.pretrained) for r in paper.select_rows("2", "B-16,L-16")] == [
    ("B-16", False),
    ("B-16", True),
    ("L-16", False),
    ("L-16", True),
  ]
  assert [r.table for r in paper.select_rows("3,4", "SN")] == [3, 4]
  assert len(paper.select_rows("all", pretrained="yes")) == 6 + 6 + 2 + 2
  with pytest.raises(ValueError, match=r"the paper has tables \[1, 2, 3, 4\]"):
    paper.select_rows("5")
  with pytest.raises(
    ValueError,
    match=r"\['L-16'\] not in table\(s\) \[3\]; they have "
    r"\['B-32', 'R-18', 'SN'\]",
  ):
    paper.select_rows("3", "L-16")


def test_overrides_and_results(tmp_path):
  config = paper.row_config(paper.select_rows("1", "B-16")[0])
  reproduce_paper.apply_overrides(
    config, ["dtype=bfloat16", "grad_accumulation_steps=4", "model.dropout_rate=0.0"]
  )
  assert (config.dtype, config.grad_accumulation_steps, config.model.dropout_rate) == (
    "bfloat16",
    4,
    0.0,
  )
  with pytest.raises(ValueError, match="expected FIELD=VALUE"):
    reproduce_paper.apply_overrides(config, ["dtype"])
  assert reproduce_paper.read_result(str(tmp_path)) is None
  results = {"test": {"top1": 0.5, "top5": 0.75}, "steps": 10, "completed": False}
  (tmp_path / "results.json").write_text(json.dumps(results))
  assert reproduce_paper.read_result(str(tmp_path)) is None  # Interrupted: resume it.
  (tmp_path / "results.json").write_text(json.dumps({**results, "completed": True}))
  assert reproduce_paper.read_result(str(tmp_path)) == {"top1": 50.0, "top5": 75.0, "steps": 10}


def test_markdown_layout():
  records = [
    {"table": 4, "model": "SN", "pretrained": False, "top1": 12.345, "top5": 40.0},
    {"table": 4, "model": "R-18", "pretrained": True, "top1": None, "top5": None},
  ]
  lines = reproduce_paper.markdown_table(4, records).splitlines()
  assert lines[0] == paper.caption(4)
  assert lines[3] == (
    "| Model | Pretrained=False Top-1 | Pretrained=False Top-5 | "
    "Pretrained=True Top-1 | Pretrained=True Top-5 |"
  )
  assert lines[5] == "| SN | 57.49 / 12.35 | 80.43 / 40.00 |  |  |"
  assert lines[6] == "| R-18 | 60.41 / — | 84.20 / — | 34.08 / — | 58.95 / — |"
  assert lines[7] == "| B-32 | 9.17 / — | 20.12 / — | 24.69 / — | 54.03 / — |"


@pytest.mark.e2e
def test_smoke_runs_every_row_of_every_table(paper_smoke):
  """The whole matrix's plumbing: full-size config checks, tiny runs, tables written.

  `paper_smoke` is docs/reproduce_paper.md's `--smoke` line, run once per session (conftest).
  """
  records = []
  for table in (1, 2, 3, 4):
    text = (paper_smoke / f"table{table}.md").read_text()
    assert "SMOKE RUN" in text and "—" not in text
    with open(paper_smoke / f"table{table}.csv") as f:
      rows = list(csv.DictReader(f))
    assert len(rows) == {1: 12, 2: 12, 3: 5, 4: 5}[table]
    records += rows
  assert len(records) == len(paper.paper_rows())
  for record in records:
    assert record["status"].startswith(("ran in", "same run as")), record
    assert 0.0 <= float(record["top1"]) <= float(record["top5"]) <= 100.0
    with open(os.path.join(record["workdir"], "results.json")) as f:
      results = json.load(f)
    assert results["steps"] == reproduce_paper.SMOKE_STEPS and results["completed"]
    assert results["test"]["num_examples"] == 224
  # Rows that differ only in what a smoke run does not exercise share one run.
  shared = {r["workdir"] for r in records}
  assert len(shared) == 9  # SN, R-18 x2, R-152 x2 (frozen or not), B-16, B-32, L-16, L-32.
  (r18_pretrained,) = [
    r for r in records if (r["table"], r["model"], r["pretrained"]) == ("1", "R-18", "True")
  ]
  with open(os.path.join(r18_pretrained["workdir"], "config.json")) as f:
    config = json.load(f)
  assert config["freeze_backbone"] and config["model"]["name"] == "resnet18"
  assert r18_pretrained["init_from"] == "resnet18-f37072fd.pth"


def _flags(**given):
  values = dict(
    table="all",
    rows="",
    pretrained="both",
    runs_dir="runs/paper",
    pretrained_dir="",
    data_dir="",
    smoke=False,
  )
  return types.SimpleNamespace(**{**values, **given})


def test_command_line_rejects_bad_selections(tmp_path, monkeypatch):
  """The checks behind the command line's usage errors (in-process: no JAX start per case)."""
  with pytest.raises(ValueError, match=re.escape("--rows='SN': ['SN'] not in table(s) [2]")):
    reproduce_paper.plan(_flags(table="2", rows="SN", runs_dir=str(tmp_path)))
  with pytest.raises(ValueError) as missing:
    reproduce_paper.plan(
      _flags(table="4", rows="R-18", pretrained="yes", pretrained_dir=str(tmp_path))
    )
  assert f"Pretrained rows need these files (see --help):\n  {tmp_path}/resnet18-f37072fd.pth" in (
    str(missing.value)
  )
  # Typed from another directory, relative paths (and the default --runs_dir) mean that one.
  monkeypatch.chdir(tmp_path)
  with pytest.raises(ValueError) as relative:
    reproduce_paper.plan(_flags(table="4", rows="R-18", pretrained="yes", pretrained_dir="weights"))
  assert f"need these files (see --help):\n  {tmp_path}/weights/resnet18-f37072fd.pth" in (
    str(relative.value)
  )
  rows, runs_dir, data_dir, _ = reproduce_paper.plan(_flags(table="1", rows="B-16", smoke=True))
  assert [(r.table, r.model) for r in rows] == [(1, "B-16"), (1, "B-16")]
  assert (runs_dir, data_dir) == (
    f"{tmp_path}/runs/paper/smoke",
    f"{tmp_path}/runs/paper/smoke/data",
  )


@pytest.mark.slow
def test_command_line_usage_error_exit(tmp_path):
  """One real start of the command line: a usage error exits non-zero with the message."""
  done = subprocess.run(
    [
      sys.executable,
      str(ROOT / "tools" / "reproduce_paper.py"),
      "--table=2",
      "--rows=SN",
      f"--runs_dir={tmp_path}",
    ],
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert done.returncode != 0
  assert "--rows='SN': ['SN'] not in table(s) [2]" in done.stderr
