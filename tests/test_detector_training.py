"""The head detector trained by the train command's loop, resumed, and used by predict (slow)."""

import io
import json
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from animesion_jax import calibrate
from animesion_jax import predict
from animesion_jax import recognizer
from animesion_jax import run_dir
from animesion_jax.data import datasets
from animesion_jax.export import formats
from animesion_jax.inference import crops
from animesion_jax.inference import head_detector
from animesion_jax.inference import image_files
from configs import detector_quickstart
from tests import helpers
from tests import trained_run

pytestmark = pytest.mark.slow


def _tiny_detector_config(**overrides):
  config = detector_quickstart.get_config()
  config.data_dir = helpers.session_dir("scenes")
  config.dataset_config = "tiny"
  config.image_size = 64
  config.model.widths = (8, 8, 16, 16)
  config.model.head_width = 8
  config.batch_size = 8  # The tests' 8 CPU devices.
  config.eval_batch_size = 8
  config.num_epochs = 3  # 12 pictures: 2 steps per epoch.
  config.log_every_steps = 1
  config.update(overrides)
  return config


@pytest.fixture(scope="module")
def detector_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("detector"))
  halted = calibrate.train_and_calibrate(_tiny_detector_config(halt_after_steps=2), workdir)
  assert not halted["completed"] and halted["steps"] == 2
  results = calibrate.train_and_calibrate(_tiny_detector_config(), workdir)  # Resumes.
  assert results["completed"] and results["steps"] == 6
  return workdir, results


def test_training_reports_coco_metrics_and_keeps_a_best_checkpoint(detector_run):
  workdir, results = detector_run
  for split in ("validation", "test"):
    metrics = results[split]
    assert metrics["num_examples"] == 4
    for key in ("ap50", "ap", "recall", "precision", "empty_clean"):
      assert 0.0 <= metrics[key] <= 1.0
  assert results["best"]["value"] == results["validation"]["ap50"]
  assert run_dir.RunDir(workdir).load_class_names() == ["head"]


def _scene_file(folder, index: int) -> str:
  config = _tiny_detector_config()
  builder = datasets.open_dataset(config.dataset, config.data_dir, config.dataset_config)
  record = datasets.data_source(builder, "test")[index]
  path = folder / f"scene{index}.png"
  Image.open(io.BytesIO(record["image"])).save(path)
  return str(path)


def test_predict_answers_each_box_or_says_none_was_found(detector_run, tmp_path):
  workdir, _ = detector_run
  run = recognizer.load_run(trained_run.tiny_trained_workdir(), "latest")
  files, _ = image_files.find_images([_scene_file(tmp_path, 0), _scene_file(tmp_path, 1)])
  everything = head_detector.HeadDetector(workdir, threshold=0.0)
  results, errors = predict.predict_files(run, files, top_k=2, detector=everything)
  assert not errors
  per_file = {f.path: [r for r in results if r["file"] == f.path] for f in files}
  for file, rows in per_file.items():
    # Every peak is a head (but those wholly off the picture).
    assert 0 < len(rows) <= everything.config.detection.max_detections
    width, height = Image.open(file).size
    for row in rows:
      left, top, right, bottom = row["box"]
      assert 0 <= left < right <= width and 0 <= top < bottom <= height
      assert len(row["predictions"]) == 2 and "confidence" in row
  nothing = head_detector.HeadDetector(workdir, threshold=1.01)
  results, _ = predict.predict_files(run, files, detector=nothing)
  assert [r["note"] for r in results] == [crops.NO_CHARACTER] * 2
  assert all(r["box"] is None and r["predictions"] == [] for r in results)
  assert crops.NO_CHARACTER in predict.format_table(results)


def test_find_and_predict_answers_each_box_as_predict_does(detector_run, tmp_path):
  workdir, _ = detector_run
  run = recognizer.load_run(trained_run.tiny_trained_workdir(), "latest")
  paths = [_scene_file(tmp_path, 0), _scene_file(tmp_path, 1)]
  files, _ = image_files.find_images(paths)
  everything = head_detector.HeadDetector(workdir, threshold=0.0)
  rows, _ = predict.predict_files(run, files, top_k=3, detector=everything)
  pictures = [paths[0], np.asarray(Image.open(paths[1]).convert("RGB"))]  # A path, an array.
  found = run.find_and_predict(pictures, everything, top_k=3, batch_size=3)
  assert [len(answers) for answers in found] == [
    sum(r["file"] == f.path for r in rows) for f in files
  ]
  answers = [answer for per_picture in found for answer in per_picture]
  assert [list(a.box) for a in answers] == [r["box"] for r in rows]
  assert [a.names for a in answers] == [[p["name"] for p in r["predictions"]] for r in rows]
  for answer, row in zip(answers, rows):
    assert answer.character == row["character"]
    assert answer.confidence == pytest.approx(row["confidence"], abs=1e-5)
  nothing = head_detector.HeadDetector(workdir, threshold=1.01)
  assert run.find_and_predict(pictures, nothing) == [[], []]
  with pytest.raises(TypeError, match="pass \\[image\\]"):
    run.find_and_predict(paths[0], everything)


def test_the_export_command_writes_the_detector_as_onnx(detector_run, tmp_path):
  workdir, _ = detector_run
  result = subprocess.run(
    [sys.executable, "-m", "animesion_jax.export", f"--workdir={workdir}", "--format=onnx"]
    + ["--output_dir=exported/"],
    cwd=tmp_path,
    env=helpers.subprocess_env(),
    capture_output=True,
    text=True,
    timeout=600,
    check=False,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert float(result.stdout.strip().rsplit(" ", 1)[-1]) <= 1e-4  # Largest difference vs JAX.
  contents = json.loads((tmp_path / "exported" / "model.json").read_text())
  assert contents["files"] == {"model": "model.onnx"}
  assert (tmp_path / "exported" / "model.onnx").stat().st_size > 1000
  assert contents["input"]["size"] == [64, 64] and contents["output"]["name"] == "heads"
  assert contents["output"]["shape"] == ["batch", 16, 16, 5]
  config = _tiny_detector_config()
  assert contents["detection"]["score_threshold"] == config.detection.score_threshold
  assert contents["detection"]["max_detections"] == config.detection.max_detections
  assert contents["source"]["step"] == 6


def test_onnx_predict_names_each_head_as_predict_does(detector_run, tmp_path):
  """tools/onnx_predict.py --detector: the detector's and recognizer's exports, without JAX's
  code, give predict --detector's boxes, names and probabilities."""
  workdir, _ = detector_run
  onnx_predict = helpers.load_tool("onnx_predict")
  run = recognizer.load_run(trained_run.tiny_trained_workdir(), "latest", read_open_set=False)
  formats.export(run, "onnx", tmp_path / "recognizer")
  detector_run_loaded = recognizer.load_run(workdir, read_open_set=False)
  formats.export(detector_run_loaded, "onnx", tmp_path / "detector")
  files, _ = image_files.find_images([_scene_file(tmp_path, 0), _scene_file(tmp_path, 1)])
  pairs = [(f.path, f.relative) for f in files]
  model = onnx_predict.Model(str(tmp_path / "recognizer"))
  for threshold in (0.05, 1.01):  # Some heads in each picture; none.
    expected, _ = predict.predict_files(
      run, files, top_k=2, detector=head_detector.HeadDetector(workdir, threshold=threshold)
    )
    detector = onnx_predict.Detector(str(tmp_path / "detector"), threshold=threshold)
    got, errors = onnx_predict.predict_files(model, pairs, top=2, batch_size=3, detector=detector)
    assert not errors
    if threshold < 1:
      assert all(row["box"] is not None for row in expected)
      assert {row["file"] for row in expected} == {f.path for f in files}
    else:
      assert [row["note"] for row in expected] == [crops.NO_CHARACTER] * 2
    for row in expected:
      for p in row["predictions"]:
        p["probability"] = pytest.approx(p["probability"], abs=1e-5)
      if row["predictions"]:
        row.update(confidence=pytest.approx(row["confidence"], abs=1e-5), note="")
    assert got == expected
  assert onnx_predict.format_table(got) == predict.format_table(expected)


def test_a_classifier_run_is_refused_as_detector():
  with pytest.raises(head_detector.NotADetector, match="not a head detector"):
    head_detector.HeadDetector(trained_run.tiny_trained_workdir())


def test_detect_many_maps_boxes_onto_each_picture(detector_run):
  workdir, _ = detector_run
  detector = head_detector.HeadDetector(workdir, threshold=0.0)
  pictures = [Image.new("RGB", (300, 120), (90, 160, 220)), Image.new("RGB", (50, 200))]
  for picture, (boxes, scores) in zip(pictures, detector.detect_many(pictures)):
    assert len(boxes) == len(scores) > 0 and np.all(np.diff(scores) <= 0)
    assert (boxes[:, 0] + boxes[:, 2] <= picture.width + 1e-3).all()
    assert (boxes[:, 1] + boxes[:, 3] <= picture.height + 1e-3).all()


def test_evaluate_gives_the_metrics_training_reported(detector_run):
  workdir, results = detector_run
  assert head_detector.is_detector_run(workdir)
  assert not head_detector.is_detector_run(trained_run.tiny_trained_workdir())
  final = head_detector.HeadDetector(f"{workdir}/checkpoints/6")
  report = final.evaluate("test", batch_size=8)
  for key in ("ap50", "ap", "recall", "precision", "empty_clean"):
    assert report[key] == pytest.approx(results["test"][key], abs=1e-6)
  assert "AP50" in head_detector.format_report(report)


def test_enrol_organize_and_the_page_take_the_head_detector(detector_run, tmp_path):
  """The crop reader of enroll and organize, and the page's picture reader, with --detector: a
  head per box; a picture with no head found is reported, never classified whole."""
  from animesion_jax.serve import pictures  # pylint: disable=g-import-not-at-top

  workdir, _ = detector_run
  files, _ = image_files.find_images([_scene_file(tmp_path, 0), _scene_file(tmp_path, 1)])
  everything = head_detector.HeadDetector(workdir, threshold=0.0)
  found = crops.read_crops(files, 32, everything)
  assert found.problems == [] and len(found.pixels) >= 2
  assert all(box is not None for box in found.boxes)
  nothing = head_detector.HeadDetector(workdir, threshold=1.01)
  none = crops.read_crops(files, 32, nothing)
  assert len(none.pixels) == 0
  assert [p["error"] for p in none.problems] == [crops.NO_CHARACTER] * 2
  data = open(files[0].path, "rb").read()
  picture = pictures.read_picture(data, 32, nothing, pictures.Limits())
  assert (picture.boxes, len(picture.crops)) == ([], 0)
  assert crops.NO_CHARACTER in picture.notes
  picture = pictures.read_picture(data, 32, everything, pictures.Limits())
  assert len(picture.boxes) == len(picture.crops) > 0 and not picture.whole
