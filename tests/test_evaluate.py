"""Evaluation: long-tail metrics (hand-computed), and evaluate.py on a tiny trained run."""

import csv
import json
import math
import os
import socket
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from animesion_jax import evaluate
from animesion_jax import recognizer
from animesion_jax import run_dir
from animesion_jax.inference import longtail
from animesion_jax.inference import plots
from animesion_jax.training import checkpointing
from tests import trained_run

# Six eval examples over four classes; class 3 has none. Columns: label, top-3 predictions.
_LABELS = np.array([0, 0, 0, 1, 1, 2])
_TOP = np.array([[0, 1, 2], [1, 0, 2], [1, 2, 3], [1, 0, 2], [0, 1, 2], [1, 2, 0]])
_TRAIN_COUNTS = np.array([150, 50, 5, 30])  # many, medium, few, medium.
_NAMES = ["asuka", "rei", "misato", "shinji"]


def test_shot_groups_use_the_paper_thresholds():
  groups = longtail.shot_groups(np.array([0, 19, 20, 100, 101, 5000]))
  assert groups.tolist() == ["few", "few", "medium", "medium", "many", "many"]


def test_summary_numbers():
  report = longtail.summarize(_LABELS, _TOP, _TRAIN_COUNTS, _NAMES)
  assert report["num_examples"] == 6
  assert report["classes_evaluated"] == 3
  assert report["top1"] == pytest.approx(2 / 6)
  assert report["top5"] == pytest.approx(5 / 6)
  assert report["mean_class_top1"] == pytest.approx((1 / 3 + 1 / 2 + 0) / 3)
  assert report["mean_class_top5"] == pytest.approx((2 / 3 + 1 + 1) / 3)
  many, medium, few = (report["groups"][g] for g in ("many", "medium", "few"))
  assert (many["classes"], many["examples"]) == (1, 3)
  assert many["top1"] == pytest.approx(1 / 3) and many["top5"] == pytest.approx(2 / 3)
  assert (medium["classes"], medium["examples"]) == (1, 2)  # 'shinji' has no eval examples.
  assert medium["top1"] == pytest.approx(0.5) and medium["top5"] == pytest.approx(1.0)
  assert (few["classes"], few["examples"], few["top1"], few["top5"]) == (1, 1, 0.0, 1.0)
  assert medium["title"] == "medium-shot (20-100)"
  assert [(p["true_name"], p["predicted_name"], p["count"]) for p in report["confused_pairs"]] == [
    ("asuka", "rei", 2),
    ("rei", "asuka", 1),
    ("misato", "rei", 1),
  ]
  assert report["confused_pairs"][0]["fraction_of_true"] == pytest.approx(2 / 3)
  shinji = report["per_class"][3]
  assert (shinji["examples"], shinji["top1"], shinji["group"]) == (0, None, "medium")
  assert report["per_class"][0] == {
    "class_id": 0,
    "name": "asuka",
    "train_count": 150,
    "group": "many",
    "examples": 3,
    "top1": pytest.approx(1 / 3),
    "top5": pytest.approx(2 / 3),
  }
  json.dumps(report)  # JSON-ready: no numpy scalars or NaN.


def test_group_without_examples_and_bad_inputs():
  report = longtail.summarize(_LABELS[:3], _TOP[:3], _TRAIN_COUNTS, _NAMES)
  assert report["groups"]["few"] == {
    "title": "few-shot (<20)",
    "classes": 0,
    "examples": 0,
    "top1": None,
    "top5": None,
    "mean_class_top1": None,
    "mean_class_top5": None,
  }
  with pytest.raises(ValueError, match=r"Labels must be in \[0, 4\)"):
    longtail.class_counts(np.array([0, 4]), 4)
  with pytest.raises(ValueError, match="3 training counts for 4 classes"):
    longtail.summarize(_LABELS, _TOP, _TRAIN_COUNTS[:3], _NAMES)


def test_confused_pairs_order_and_limit():
  labels = np.array([3, 3, 1, 1, 2, 0, 0])
  predicted = np.array([1, 1, 3, 3, 0, 0, 2])
  assert longtail.confused_pairs(labels, predicted) == [(1, 3, 2), (3, 1, 2), (0, 2, 1), (2, 0, 1)]
  assert longtail.confused_pairs(labels, predicted, limit=1) == [(1, 3, 2)]
  assert longtail.confused_pairs(labels, labels) == []


@pytest.fixture(scope="module")
def workdir(trained_workdir):
  return trained_workdir


@pytest.fixture(scope="module")
def test_report(workdir, tmp_path_factory):
  out = tmp_path_factory.mktemp("eval_test")
  return evaluate.evaluate(workdir, split="test", checkpoint="latest", output_dir=str(out))


def test_evaluation_matches_the_training_loop(workdir, test_report):
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)["test"]
  assert test_report["step"] == trained_run.TRAIN_STEPS
  assert test_report["num_examples"] == results["num_examples"] == 224
  assert test_report["top1"] == pytest.approx(results["top1"], abs=1e-6)
  assert test_report["top5"] == pytest.approx(results["top5"], abs=1e-6)
  assert test_report["loss"] == pytest.approx(results["loss"], rel=1e-5)
  assert test_report["classes_evaluated"] == 28
  # Every class has 20 training images: all medium-shot.
  assert test_report["groups"]["medium"]["classes"] == 28
  assert test_report["groups"]["many"]["examples"] == test_report["groups"]["few"]["examples"] == 0
  # 8 test images per class: the balanced accuracy equals the pooled one.
  assert test_report["mean_class_top1"] == pytest.approx(test_report["top1"])


def test_evaluation_files(test_report):
  out = test_report["output_dir"]
  with open(os.path.join(out, "evaluation.json")) as f:
    written = json.load(f)
  assert written["top1"] == test_report["top1"]
  with open(os.path.join(out, "predictions.csv")) as f:
    rows = list(csv.DictReader(f))
  assert [int(r["index"]) for r in rows] == list(range(224))  # Every example exactly once.
  hits = sum(int(r["label"]) == int(r["top1"]) for r in rows)
  assert hits / 224 == pytest.approx(test_report["top1"])
  with open(os.path.join(out, "per_class.csv")) as f:
    per_class = list(csv.DictReader(f))
  assert len(per_class) == 28
  assert {int(r["train_count"]) for r in per_class} == {20}
  assert sum(int(r["examples"]) for r in per_class) == 224
  with open(os.path.join(out, "confused_pairs.csv")) as f:
    pairs = list(csv.DictReader(f))
  assert len(pairs) == len(test_report["confused_pairs"]) > 0
  assert int(pairs[0]["count"]) >= int(pairs[-1]["count"])
  for name in ("accuracy_vs_train_count.png", "confusions.png"):
    with Image.open(os.path.join(out, name)) as image:
      assert image.format == "PNG" and min(image.size) > 300


def test_other_split_checkpoint_and_odd_batch_size(workdir, tmp_path, monkeypatch):
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)["validation"]
  monkeypatch.chdir(os.path.dirname(workdir))  # A relative workdir works too.
  # 20 is not a multiple of the 8 devices: rounded up to 24, the last batch padded.
  report = evaluate.evaluate(
    os.path.basename(workdir),
    split="validation",
    checkpoint="best",
    output_dir=str(tmp_path),
    batch_size=20,
  )
  assert report["num_examples"] == 112
  assert report["top1"] == pytest.approx(results["top1"], abs=1e-6)
  assert report["loss"] == pytest.approx(results["loss"], rel=1e-5)
  assert report["checkpoint"].endswith(os.path.join("checkpoints", str(trained_run.TRAIN_STEPS)))


def test_a_calibrated_run_goes_through_the_model_once_per_split(workdir, tmp_path, monkeypatch):
  """The open-set section reads the logits and embeddings of evaluate's own pass (#25 item 4):
  the same numbers as a separate embedding pass, with the model run over the split once."""
  from animesion_jax.open_set import fitting  # pylint: disable=g-import-not-at-top
  from animesion_jax.training import evaluation  # pylint: disable=g-import-not-at-top

  run = recognizer.load_run(workdir, "latest")
  config = run.config
  builder = evaluate.datasets.open_dataset(
    config.dataset, config.data_dir, config.dataset_config, config.build_dataset_if_missing
  )
  logits, embeddings, labels = fitting.embed_source(
    run, evaluate.datasets.data_source(builder, "test"), 64
  )
  expected = run.answerer.answer(logits, embeddings)
  passes = []
  predict_split = evaluation.predict_split
  monkeypatch.setattr(
    evaluation, "predict_split", lambda *a, **k: passes.append(1) or predict_split(*a, **k)
  )
  monkeypatch.setattr(fitting, "embed_source", lambda *a, **k: pytest.fail("a second pass"))
  report = evaluate.evaluate_loaded(run, builder, run.config.dataset, "test", tmp_path, 64)
  assert passes == [1]
  section = report["open_set"]
  named = np.mean([a.character == run.class_names[y] for a, y in zip(expected, labels)])
  assert section["known_named_right"] == pytest.approx(named, abs=1e-9)
  assert section["known_answered_unknown"] == pytest.approx(np.mean([a.unknown for a in expected]))


def test_summary_table(test_report):
  text = evaluate.format_summary(test_report)
  lines = text.splitlines()
  assert "224 examples, 28/28 classes" in lines[0]
  assert lines[2].split()[:3] == ["all", "28", "224"]
  assert f"{100 * test_report['top1']:.2f}" in lines[2]
  assert lines[3].startswith("many-shot (>100)") and lines[3].split()[-3:] == ["-", "-", "-"]
  assert lines[6].startswith("Open set (") and "known named right" in lines[6]
  assert lines[7] == "Most confused (count: true -> predicted):"


@pytest.mark.multiprocess
def test_command_line_with_two_processes(workdir, tmp_path, test_report):
  """Multi-host evaluation: each process reads its part; process 0 writes the whole report."""
  with socket.socket() as sock:
    sock.bind(("localhost", 0))
    port = sock.getsockname()[1]
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  processes = [
    subprocess.Popen(
      [
        sys.executable,
        "-m",
        "animesion_jax.evaluate",
        f"--workdir={workdir}",
        "--checkpoint=latest",
        f"--output_dir={tmp_path}",
        "--batch_size=48",
        f"--coordinator_address=localhost:{port}",
        "--num_processes=2",
        f"--process_id={index}",
      ],
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for index in range(2)
  ]
  outputs = [p.communicate(timeout=300)[0] for p in processes]
  for process, output in zip(processes, outputs):
    assert process.returncode == 0, output[-3000:]
  # The command line prints the summary table once, from process 0.
  summary = evaluate.format_summary({**test_report, "workdir": workdir})
  assert f"{summary}\nWrote {tmp_path}\n" in outputs[0]
  assert "Wrote" not in outputs[1]
  with open(tmp_path / "evaluation.json") as f:
    report = json.load(f)
  assert report["num_examples"] == 224
  assert report["top1"] == test_report["top1"] and report["top5"] == test_report["top5"]
  assert report["loss"] == pytest.approx(test_report["loss"], rel=1e-5)
  with (
    open(tmp_path / "predictions.csv") as f,
    open(os.path.join(test_report["output_dir"], "predictions.csv")) as g,
  ):
    assert f.read() == g.read()  # The same top-5 for every example, in record order.


def test_unknown_split_is_a_clear_error(workdir):
  with pytest.raises(
    evaluate.EvaluationError,
    match=r"--split='dev'.*\['test', 'train', "
    r"'validation'\]",
  ):
    evaluate.evaluate(workdir, split="dev")


def test_checkpoint_that_does_not_fit_lists_the_shapes(trained_workdir, tmp_path):
  workdir = trained_run.copy_of_trained_workdir(tmp_path / "run")
  with open(os.path.join(workdir, "config.json")) as f:
    config = json.load(f)
  config["model"]["hidden_size"] = 48
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(config, f)
  with pytest.raises(checkpointing.IncompatibleCheckpoint) as error:
    recognizer.load_run(workdir)
  message = str(error.value)
  assert "params/Transformer/encoder_norm/scale: model (48,), checkpoint (32,)" in message
  assert message.endswith("... 2 more")  # 22 parameters differ; the first 20 are listed.
  assert "vit_tiny, 28 classes, image size 16" in message
  # Another class count (a class_names.json of another dataset) is caught the same way.
  config["model"]["hidden_size"] = 32
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(config, f)
  run_dir.RunDir(workdir).save_class_names([f"c{i}" for i in range(10)])
  with pytest.raises(
    checkpointing.IncompatibleCheckpoint,
    match=r"params/head/bias: model \(10,\), "
    r"checkpoint \(28,\)",
  ):
    recognizer.load_run(workdir)


def test_missing_checkpoints_are_clear_errors(workdir, tmp_path):
  with pytest.raises(FileNotFoundError, match="is not a training run directory"):
    recognizer.load_run(str(tmp_path))
  run = run_dir.RunDir(workdir)
  with pytest.raises(FileNotFoundError, match="expected 'best', 'latest' or a checkpoint step"):
    checkpointing.resolve(run, str(tmp_path))
  (tmp_path / "config.json").write_text(run.config_file.read_text())
  with pytest.raises(FileNotFoundError, match="No checkpoint under .*checkpoints"):
    recognizer.load_run(str(tmp_path))
  step_dir = os.path.join(workdir, "checkpoints", str(trained_run.TRAIN_STEPS))
  assert checkpointing.resolve(run, step_dir) == checkpointing.resolve(run, "latest")


def test_binned_means():
  # Two log bins: [1, 10) and [10, 100]; a bin needs 3 classes to count.
  counts = np.array([1, 1, 1, 50, 50, 50, 100, 5], float)
  values = np.array([0, 0, 30, 50, 50, 50, 99, 7.0])
  centres, means = plots.binned_means(counts, values, bins=2)
  assert centres == [
    pytest.approx(math.exp(np.mean(np.log([1, 1, 1, 5])))),
    pytest.approx(math.exp(np.mean(np.log([50, 50, 50, 100])))),
  ]
  assert means == [pytest.approx(37 / 4), pytest.approx(249 / 4)]
  _, sparse = plots.binned_means(counts[:7], values[:7], bins=2, min_members=4)
  assert sparse == [pytest.approx(249 / 4)]


def test_evaluate_straight_from_a_checkpoint(workdir, test_report, tmp_path, monkeypatch):
  """No training run: the run's model exported to the converted format gives the same report."""
  import jax  # pylint: disable=g-import-not-at-top

  from animesion_jax import convert  # pylint: disable=g-import-not-at-top
  from animesion_jax.convert import conversion as conversion_lib  # pylint: disable=g-import-not-at-top

  run = recognizer.load_run(workdir, "latest")
  summary = dict(
    conversion_lib.new_summary("run", run.checkpoint), normalization=run.config.normalization
  )
  conversion = conversion_lib.from_module(
    summary, run.model, jax.device_get(run.variables), run.config.image_size
  )
  convert.save(tmp_path / "exported", conversion.model, conversion.variables, conversion.summary)
  monkeypatch.chdir(tmp_path)  # Relative paths, and the default output folder, mean this one.
  report = evaluate.evaluate_checkpoint(
    "exported",
    "animesion",
    "synthetic_characters",
    data_dir=run.config.data_dir,
    dataset_config="small",
    batch_size=64,
  )
  assert report["step"] is None and report["checkpoint"] == str(tmp_path / "exported")
  assert report["output_dir"] == str(tmp_path / "evaluation" / "exported_test")
  assert report["num_examples"] == 224 and report["top1"] == test_report["top1"]
  assert report["loss"] == pytest.approx(test_report["loss"], rel=1e-5)
  assert (
    json.loads((tmp_path / "evaluation" / "exported_test" / "evaluation.json").read_text())["top5"]
    == test_report["top5"]
  )
  assert (
    "converted checkpoint, synthetic_characters test: 224 examples"
    in (evaluate.format_summary(report).splitlines()[0])
  )
  names = run_dir.RunDir(workdir).load_class_names()
  (tmp_path / "names.json").write_text(json.dumps(names[:3] + ["someone"] + names[4:]))
  with pytest.raises(
    evaluate.EvaluationError, match=f"first difference at class 3: 'someone' against '{names[3]}'"
  ):
    evaluate.evaluate_checkpoint(
      "exported",
      "animesion",
      "synthetic_characters",
      class_names="names.json",
      data_dir=run.config.data_dir,
      dataset_config="small",
    )
