"""predict.py: any image people have, bad files skipped, faces, outputs, and the CLI."""

import csv
import io
import json
import os
import re
import subprocess
import sys
import types

from absl import app
import numpy as np
from PIL import Image
import pytest
import torch  # Before anything imports TensorFlow (torchvision after it segfaults).
from torchvision.models import resnet as tv_resnet

from animesion_jax import evaluate
from animesion_jax import predict
from animesion_jax import recognizer
from animesion_jax import run_dir
from animesion_jax.cli import common
from animesion_jax.data import datasets
from animesion_jax.inference import annotate
from animesion_jax.inference import attention
from animesion_jax.inference import faces
from animesion_jax.inference import image_files
from animesion_jax.open_set import answering
from tests import helpers
from tests import test_convert_torch
from tests import trained_run
from tfds_builders.synthetic_characters import drawing

_RECORDS = 12  # Test-split images written out as user files.


def test_to_rgb_composites_transparency_on_white():
  rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
  rgba.putpixel((0, 0), (0, 0, 255, 255))
  rgba.putpixel((1, 0), (0, 0, 0, 128))
  rgb = image_files.to_rgb(rgba)
  assert rgb.mode == "RGB"
  assert rgb.getpixel((2, 2)) == (255, 255, 255)  # Transparent red is white, not red or black.
  assert rgb.getpixel((0, 0)) == (0, 0, 255)
  assert rgb.getpixel((1, 0)) == (127, 127, 127)  # Half-transparent black over white.
  palette = Image.new("P", (2, 1))
  palette.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
  palette.putpixel((1, 0), 1)
  palette.info["transparency"] = 0
  assert np.asarray(image_files.to_rgb(palette)).tolist() == [[[255, 255, 255], [200, 10, 10]]]
  sixteen = Image.fromarray(np.array([[0, 65535]], np.uint16))
  assert np.asarray(image_files.to_rgb(sixteen)).tolist() == [[[0, 0, 0], [255, 255, 255]]]
  assert image_files.to_rgb(Image.new("L", (1, 1), 7)).getpixel((0, 0)) == (7, 7, 7)
  assert image_files.to_rgb(Image.new("CMYK", (1, 1), (0, 0, 0, 0))).getpixel((0, 0)) == (
    255,
    255,
    255,
  )


def test_load_image_first_gif_frame_and_exif_orientation(tmp_path):
  frames = [Image.new("RGB", (8, 6), colour) for colour in ((255, 0, 0), (0, 0, 255))]
  frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
  gif = image_files.load_image(str(tmp_path / "anim.gif"))
  assert gif.size == (8, 6) and gif.getpixel((3, 3)) == (255, 0, 0)
  photo = Image.new("RGB", (40, 20), (0, 200, 0))
  exif = Image.Exif()
  exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display.
  photo.save(tmp_path / "rotated.jpg", exif=exif.tobytes())
  assert image_files.load_image(str(tmp_path / "rotated.jpg")).size == (20, 40)
  big = Image.new("RGB", (2000, 1000), (10, 20, 30))
  big.save(tmp_path / "big.jpg")
  reduced = image_files.load_image(str(tmp_path / "big.jpg"), min_size=64)
  assert reduced.size == (250, 125)  # Decoded at 1/8 scale: both sides still >= 64.


def test_find_images(tmp_path, monkeypatch):
  (tmp_path / "art" / "sub").mkdir(parents=True)
  (tmp_path / "empty").mkdir()
  for name in (
    "art/b.PNG",
    "art/a.jpg",
    "art/sub/c.webp",
    "art/notes.txt",
    "art/.hidden.png",
    "single.gif",
  ):
    (tmp_path / name).write_bytes(b"x")
  found, problems = image_files.find_images(
    [
      str(tmp_path / "art"),
      str(tmp_path / "single.gif"),
      str(tmp_path / "missing.png"),
      str(tmp_path / "empty"),
    ]
  )
  assert [f.relative for f in found] == ["art/a.jpg", "art/b.PNG", "art/sub/c.webp", "single.gif"]
  assert found[2].path == str(tmp_path / "art" / "sub" / "c.webp")
  monkeypatch.chdir(tmp_path / "art")  # A folder typed as "." (or relative) works the same.
  here, _ = image_files.find_images(["."])
  assert [(f.path, f.relative) for f in here] == [
    ("a.jpg", "./a.jpg"),
    ("b.PNG", "./b.PNG"),
    ("sub/c.webp", "./sub/c.webp"),
  ]
  assert problems == [
    (str(tmp_path / "missing.png"), "no such file or folder"),
    (
      str(tmp_path / "empty"),
      "no image files (.jpg, .jpeg, .png, .webp, .gif, .bmp, .tif, .tiff) in this folder",
    ),
  ]


@pytest.fixture(scope="module")
def run(trained_workdir):
  return recognizer.load_run(trained_workdir, "latest")


@pytest.fixture(scope="module")
def user_files(trained_workdir, run, tmp_path_factory):
  """The first test images as PNG, lossless WebP and opaque RGBA PNG, plus broken files."""
  folder = tmp_path_factory.mktemp("user_images")
  helpers.write_test_pictures(folder, _RECORDS)
  first = Image.open(folder / "00.png").convert("RGB")
  first.save(folder / "variant_webp.webp", lossless=True)
  first.convert("RGBA").save(folder / "variant_rgba.png")
  first.convert("L").save(folder / "variant_gray.png")
  (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
  (folder / "truncated.jpg").write_bytes(_jpeg_bytes(first)[:200])
  found, _ = image_files.find_images([str(folder)])
  results, errors = predict.predict_files(run, found, top_k=5, batch_size=8)
  builder = datasets.open_dataset("synthetic_characters", run.config.data_dir, "small")
  expected = evaluate.split_outputs(run, builder, "test", batch_size=64)["top5"][:_RECORDS]
  return {"folder": folder, "results": results, "errors": errors, "expected": expected}


def _jpeg_bytes(image: Image.Image) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, format="JPEG")
  return buffer.getvalue()


def test_predictions_match_the_evaluation_pipeline(trained_workdir, user_files):
  by_name = {os.path.basename(r["file"]): r for r in user_files["results"]}
  for i in range(_RECORDS):
    predictions = by_name[f"{i:02d}.png"]["predictions"]
    assert [p["class_id"] for p in predictions] == user_files["expected"][i].tolist()
    probabilities = [p["probability"] for p in predictions]
    assert probabilities == sorted(probabilities, reverse=True)
    assert 1 / 28 <= probabilities[0] and sum(probabilities) <= 1 + 1e-6
    assert [p["rank"] for p in predictions] == [1, 2, 3, 4, 5]
  # The same picture as lossless WebP or opaque RGBA gets the same answer as the PNG.
  for variant in ("variant_webp.webp", "variant_rgba.png"):
    assert by_name[variant]["predictions"] == by_name["00.png"]["predictions"]
  assert (
    by_name["variant_gray.png"]["predictions"][0]["name"]
    in run_dir.RunDir(trained_workdir).load_class_names()
  )


def test_unreadable_files_are_reported_and_skipped(user_files):
  assert sorted(os.path.basename(e["file"]) for e in user_files["errors"]) == [
    "corrupt.png",
    "truncated.jpg",
  ]
  assert any("cannot identify image file" in e["error"] for e in user_files["errors"])
  assert len(user_files["results"]) == _RECORDS + 3


def test_outputs_table_and_annotations(user_files, run, tmp_path):
  results, errors = user_files["results"], user_files["errors"]
  predict.write_outputs(results, errors, run, str(tmp_path))
  with open(tmp_path / "predictions.json") as f:
    written = json.load(f)
  assert written["step"] == trained_run.TRAIN_STEPS and len(written["errors"]) == 2
  assert written["results"][0]["predictions"] == results[0]["predictions"]
  with open(tmp_path / "predictions.csv") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 5 * len(results)
  assert rows[0]["name"] == results[0]["predictions"][0]["name"] and rows[0]["face"] == ""
  table = predict.format_table(results, limit=2).splitlines()
  assert table[0].split() == ["file", "face", "#", "character", "prob", "answer"]
  assert len(table) == 1 + 2 * 5 + 1 and table[-1].startswith(f"... and {len(results) - 2} more")
  top = results[0]["predictions"][0]
  assert table[1].split()[1:4] == ["1", top["name"], f"{100 * top['probability']:.1f}%"]
  assert table[1].endswith(answering.Answer.from_json(results[0]).describe())
  assert table[2].split()[0] == "2"  # Only the first rank carries the answer.
  copies = annotate.annotate_all(results[:2], str(tmp_path))
  assert sorted(os.path.relpath(p, tmp_path) for p in copies.values()) == [
    os.path.join("annotated", os.path.basename(user_files["folder"]), name)
    for name in ("00.png", "01.png")
  ]
  with Image.open(copies[results[0]["file"]]) as image:
    assert image.size == (384, 384)  # 64 px inputs are enlarged so the text is legible.
    # The label box, outlined in the first colour, is drawn in the top-left corner.
    colour = annotate.COLOURS[0]
    outline = tuple(int(colour[k : k + 2], 16) for k in (1, 3, 5))
    corner = np.asarray(image.convert("RGB"))[:80, :240]
    assert np.sum(np.all(corner == outline, axis=-1)) > 200
    original = np.asarray(Image.open(results[0]["file"]).convert("RGB"))
    assert np.sum(np.all(original == outline, axis=-1)) == 0


def _illustration() -> Image.Image:
  """Two synthetic characters side by side on a 560x300 canvas."""
  canvas = Image.new("RGB", (560, 300), (250, 250, 250))
  for i, left in ((0, 10), (1, 290)):
    character = drawing.CHARACTERS[i]
    canvas.paste(
      Image.fromarray(drawing.draw_character(character, np.random.default_rng(i), size=256)),
      (left, 20),
    )
  return canvas


def _cascade() -> str:
  try:
    return faces.find_cascade()
  except faces.CascadeNotFound:  # Plumbing test with OpenCV's own cascade (found both faces).
    import cv2  # pylint: disable=g-import-not-at-top

    return os.path.join(cv2.data.haarcascades, "haarcascade_frontalface_default.xml")


def test_each_face_is_classified_and_boxed(run, tmp_path):
  _illustration().save(tmp_path / "group.png")
  detector = faces.FaceDetector(_cascade())
  results, errors = predict.predict_files(
    run,
    [image_files.ImageFile(str(tmp_path / "group.png"), "group.png")],
    top_k=3,
    batch_size=8,
    detector=detector,
  )
  assert errors == []
  assert [r["face"] for r in results] == [0, 1]
  lefts = sorted(r["box"][0] for r in results)
  assert lefts[0] < 280 <= lefts[1]  # One face in each character's half.
  for result in results:
    left, top, right, bottom = result["box"]
    assert 0 <= left < right <= 560 and 0 <= top < bottom <= 300 and right - left >= 24
    assert len(result["predictions"]) == 3
  copies = annotate.annotate_all(results, str(tmp_path))
  with Image.open(copies[str(tmp_path / "group.png")]) as image:
    assert image.size == (717, 384)  # Short side enlarged to 384.
    scale = 384 / 300
    for i, result in enumerate(results):
      left, top, _, bottom = (round(v * scale) for v in result["box"])
      colour = annotate.COLOURS[i]
      expected = tuple(int(colour[k : k + 2], 16) for k in (1, 3, 5))
      for x in (left, left + 1):  # The box's left edge, 2 px wide at this size.
        assert image.convert("RGB").getpixel((x, (top + bottom) // 2)) == expected


def test_no_face_falls_back_to_the_whole_image(run, tmp_path):
  Image.new("RGB", (200, 100), (30, 160, 90)).save(tmp_path / "plain.png")
  results, _ = predict.predict_files(
    run,
    [image_files.ImageFile(str(tmp_path / "plain.png"), "plain.png")],
    top_k=2,
    batch_size=8,
    detector=faces.FaceDetector(_cascade()),
  )
  assert len(results) == 1 and results[0]["box"] is None
  assert results[0]["note"] == "no face found; whole image classified"


def test_missing_cascade_is_a_clear_error(tmp_path, monkeypatch):
  with pytest.raises(
    faces.CascadeNotFound,
    match=r"--cascade='/nowhere.xml' does not exist.*"
    r"pip install --no-deps danbooru-utility",
  ):
    faces.find_cascade("/nowhere.xml")
  monkeypatch.setattr(faces, "_PACKAGES_WITH_CASCADE", ())
  monkeypatch.setattr(faces.importlib.metadata, "distributions", lambda: [])
  with pytest.raises(
    faces.CascadeNotFound,
    match="lbpcascade_animeface.xml was not found in any "
    "installed package.*github.com/nagadomi/lbpcascade_animeface",
  ):
    faces.find_cascade()
  (tmp_path / "bad.xml").write_text("<not a cascade/>")
  with pytest.raises(faces.CascadeNotFound, match="is not an OpenCV cascade file"):
    faces.FaceDetector(str(tmp_path / "bad.xml"))


def test_class_names_file_and_missing_dataset(trained_workdir, tmp_path):
  workdir = trained_run.copy_of_trained_workdir(tmp_path / "run")
  names = [f"character_{i}" for i in range(28)]
  run_dir.RunDir(workdir).save_class_names(names)
  assert recognizer.load_run(workdir).class_names == names
  os.remove(os.path.join(workdir, run_dir.CLASS_NAMES_FILE))
  with open(os.path.join(workdir, "config.json")) as f:
    config = json.load(f)
  config["data_dir"] = str(tmp_path / "no_data")
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(config, f)
  with pytest.raises(
    FileNotFoundError,
    match="class names of .* are unknown: it has no "
    "class_names.json and the dataset it was trained on is not available",
  ):
    recognizer.load_run(workdir)


@pytest.mark.slow
def test_command_line(trained_workdir, tmp_path):
  """The CLI end to end: faces found and drawn, a table printed, bad inputs reported."""
  _illustration().save(tmp_path / "group.png")
  (tmp_path / "broken.webp").write_bytes(b"RIFF0000WEBPjunk")
  out = tmp_path / "out"
  command = [
    sys.executable,
    "-m",
    "animesion_jax.predict",
    f"--workdir={trained_workdir}",
    "--top_k=2",
    "--annotate",
    "--detect_faces",
    f"--cascade={_cascade()}",
    f"--output_dir={out}",
    str(tmp_path / "group.png"),
    str(tmp_path / "broken.webp"),
    str(tmp_path / "nope"),
  ]
  done = subprocess.run(
    command,
    capture_output=True,
    text=True,
    timeout=300,
    cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
  )
  assert done.returncode == 0, done.stderr[-3000:]
  lines = done.stdout.splitlines()
  assert lines[0] == f"Skipping {tmp_path / 'nope'}: no such file or folder"
  header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["file", "face"])
  assert lines[header + 1].split()[1:3] == ["0", "1"]  # Face 0, rank 1.
  assert f"Could not read {tmp_path / 'broken.webp'}" in done.stdout
  assert lines[-1] == f"2 predictions for 1 of 2 images; wrote {out}"
  assert (out / "annotated" / "group.png").is_file()
  with open(out / "predictions.json") as f:
    assert [r["face"] for r in json.load(f)["results"]] == [0, 1]

  missing = subprocess.run(
    command[:7] + ["--cascade=/nowhere.xml", str(tmp_path / "group.png")],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert missing.returncode != 0
  assert "--cascade='/nowhere.xml' does not exist" in missing.stderr


_NAMES = ["asuka", "rei", "misato", "shinji", "kaworu"]


def _torch_softmax(model, images: np.ndarray, mean, std) -> np.ndarray:
  x = (images.astype(np.float32) / 255 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
  with torch.no_grad():
    return torch.softmax(model(torch.from_numpy(x.transpose(0, 3, 1, 2))), -1).numpy()


@pytest.mark.slow
def test_predict_straight_from_an_original_vit_checkpoint(tmp_path, monkeypatch):
  """The released-checkpoint path: a pytorch_pretrained_vit file (Animesion's `model.` keys),
  the original classid_classname.csv, relative paths; probabilities and attention maps match
  the PyTorch network."""
  model = test_convert_torch.tiny_torch_vit(monkeypatch)  # 32 px, patch 8, 2 layers, 5 classes.
  test_convert_torch.save(model, tmp_path / "vit.pth", prefix=True)
  (tmp_path / "classid_classname.csv").write_text(
    "".join(f"{i},{name}\n" for i, name in enumerate(_NAMES))
  )
  (tmp_path / "pics").mkdir()
  pixels = np.random.default_rng(3).integers(0, 256, (3, 32, 32, 3), np.uint8)
  for i, image in enumerate(pixels):
    Image.fromarray(image).save(tmp_path / "pics" / f"p{i}.png")
  command = [
    sys.executable,
    "-m",
    "animesion_jax.predict",
    "--checkpoint=vit.pth",
    "--source=pytorch_vit",
    "--class_names=classid_classname.csv",
    "--num_heads=2",
    "--top_k=2",
  ]
  done = subprocess.run(
    command + ["--attention_maps", "pics"],
    capture_output=True,
    text=True,
    timeout=300,
    cwd=tmp_path,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stdout.splitlines()[-1] == (
    f"3 predictions for 3 of 3 images; wrote {tmp_path / 'predictions'}"
  )
  written = json.loads((tmp_path / "predictions" / "predictions.json").read_text())
  assert written["checkpoint"] == str(tmp_path / "vit.pth") and written["step"] is None
  expected = _torch_softmax(model, pixels, 0.5, 0.5)  # The paper's ViT inputs: mean/std 0.5.
  for result, probabilities in zip(written["results"], expected):
    best = np.argsort(-probabilities)[:2]
    assert [p["name"] for p in result["predictions"]] == [_NAMES[i] for i in best]
    np.testing.assert_allclose(
      [p["probability"] for p in result["predictions"]], probabilities[best], atol=2e-5
    )

  # Attention maps: the class token's attention per layer, as the PyTorch ViT computed it.
  model(torch.from_numpy((pixels.astype(np.float32) / 127.5 - 1).transpose(0, 3, 1, 2)))
  for i in range(3):
    folder = tmp_path / "predictions" / "attention" / "pics" / f"p{i}"
    assert sorted(p.name for p in folder.iterdir()) == [
      "layer_01.png",
      "layer_02.png",
      "rollout.png",
    ]
    picture = Image.fromarray(pixels[i]).resize((384, 384), Image.BICUBIC)
    layers = []
    for layer, block in enumerate(model.transformer.blocks):
      heat = block.attn.scores[i, :, 0, 1:].mean(0).reshape(4, 4).detach().numpy()
      layers.append(heat)
      want = np.asarray(attention.overlay(picture, heat), np.int16)
      got = np.asarray(Image.open(folder / f"layer_{layer + 1:02d}.png"), np.int16)
      assert got.shape == (384, 384, 3) and np.abs(got - want).max() <= 1
    assert not np.array_equal(
      np.asarray(Image.open(folder / "layer_01.png")),
      np.asarray(Image.open(folder / "layer_02.png")),
    )
    rollout_png = np.asarray(Image.open(folder / "rollout.png"))
    assert rollout_png.max() > 0 and not np.array_equal(
      rollout_png, np.asarray(Image.open(folder / "layer_02.png"))
    )

  # A run that classifies nothing fails.
  (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
  nothing = subprocess.run(
    command + ["broken.png", "missing.png"],
    capture_output=True,
    text=True,
    timeout=300,
    cwd=tmp_path,
  )
  assert nothing.returncode == 1
  assert "Could not read broken.png: UnidentifiedImageError: cannot identify image file" in (
    nothing.stdout
  )
  assert "Skipping missing.png: no such file or folder" in nothing.stdout
  assert nothing.stderr.splitlines()[-1] == (
    "predict: no image was classified (see the messages above)."
  )


def test_load_checkpoint_class_names_and_sources(trained_workdir, tmp_path):
  """A torchvision ResNet with a JSON list of names (ImageNet inputs); names that do not fit."""
  model = test_convert_torch.tiny_torch_resnet(tv_resnet.BasicBlock)  # 5 classes.
  test_convert_torch.save(model, tmp_path / "resnet.pth")
  (tmp_path / "names.json").write_text(json.dumps(_NAMES))
  run = recognizer.load_checkpoint(
    tmp_path / "resnet.pth", "torchvision_resnet", tmp_path / "names.json", image_size=36
  )
  assert (run.class_names, run.step, run.workdir) == (_NAMES, None, None)
  assert (run.config.normalization, run.config.image_size) == ("imagenet", 36)
  images = np.random.default_rng(5).integers(0, 256, (8, 36, 36, 3), np.uint8)
  answers = run.answer(*run.embed(images), top_k=3)
  probabilities, class_ids = [a.probabilities for a in answers], [a.class_ids for a in answers]
  expected = _torch_softmax(model, images, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
  np.testing.assert_array_equal(np.asarray(class_ids), np.argsort(-expected, axis=1)[:, :3])
  np.testing.assert_allclose(
    np.asarray(probabilities), -np.sort(-expected, axis=1)[:, :3], atol=2e-5
  )

  # The original CSV with a header row; a JSON list of the wrong length; files that are neither.
  (tmp_path / "with_header.csv").write_text(
    "class_id,class_name\n" + "".join(f"{i},{name}\n" for i, name in enumerate(_NAMES))
  )
  assert (
    recognizer.load_checkpoint(
      tmp_path / "resnet.pth", "torchvision_resnet", tmp_path / "with_header.csv"
    ).class_names
    == _NAMES
  )
  (tmp_path / "four.json").write_text(json.dumps(_NAMES[:4]))
  with pytest.raises(
    recognizer.CheckpointMismatch,
    match=r"four.json lists 4 class names, but "
    r"the classifier of .*resnet.pth has 5 outputs",
  ):
    recognizer.load_checkpoint(
      tmp_path / "resnet.pth", "torchvision_resnet", tmp_path / "four.json"
    )
  (tmp_path / "bad.json").write_text("{not json")
  with pytest.raises(recognizer.ClassNamesError, match="bad.json is not valid JSON"):
    recognizer.load_checkpoint(tmp_path / "resnet.pth", "torchvision_resnet", tmp_path / "bad.json")
  with pytest.raises(FileNotFoundError, match="Class-names file .*nope.csv does not exist"):
    recognizer.load_checkpoint(tmp_path / "resnet.pth", "torchvision_resnet", tmp_path / "nope.csv")
  with pytest.raises(recognizer.LoadError, match="needs --class_names"):
    recognizer.load_checkpoint(tmp_path / "resnet.pth", "torchvision_resnet", None)

  # source 'run': a run directory (its best checkpoint) or one of its step directories.
  workdir = trained_workdir
  whole = recognizer.load_checkpoint(workdir, "run", None)
  assert (whole.step, whole.num_classes) == (trained_run.TRAIN_STEPS, 28)
  second = recognizer.load_checkpoint(os.path.join(workdir, "checkpoints", "2"), "run", None)
  assert second.step == 2 and second.workdir.path == whole.workdir.path
  with pytest.raises(recognizer.CheckpointMismatch, match="The class names lists 5 class names"):
    recognizer.load_checkpoint(workdir, "run", _NAMES)


def test_worker_bugs_are_not_reported_as_unreadable_files(run, tmp_path):
  """Only decoding problems mean "could not read"; any other worker exception propagates."""
  Image.new("RGB", (40, 40), (200, 30, 30)).save(tmp_path / "fine.png")

  class BrokenDetector:
    def detect(self, image):
      raise RuntimeError(f"detector bug on a {image.size} image")

  with pytest.raises(RuntimeError, match=r"detector bug on a \(40, 40\) image"):
    predict.predict_files(
      run,
      [image_files.ImageFile(str(tmp_path / "fine.png"), "fine.png")],
      batch_size=8,
      detector=BrokenDetector(),
    )


@pytest.mark.slow
def test_damaged_checkpoint_is_named_in_a_few_lines(trained_workdir, tmp_path):
  workdir = trained_run.copy_of_trained_workdir(tmp_path / "run")
  state = os.path.join(workdir, "checkpoints", str(trained_run.TRAIN_STEPS), "state")
  # The merged OCDBT data files (what a restore reads), as a half-copied bucket would leave them.
  for name in os.listdir(os.path.join(state, "d")):
    path = os.path.join(state, "d", name)
    os.truncate(path, os.path.getsize(path) // 2)
  Image.new("RGB", (40, 40), (200, 30, 30)).save(tmp_path / "fine.png")
  done = subprocess.run(
    [
      sys.executable,
      "-m",
      "animesion_jax.predict",
      "--workdir=run",
      "--checkpoint=latest",
      "fine.png",
    ],
    capture_output=True,
    text=True,
    timeout=300,
    cwd=tmp_path,
  )
  assert done.returncode != 0
  # Nothing besides absl log lines: in particular none of the dozens of "Event loop is closed"
  # tracebacks the other arrays' late reads used to print (orbax_workarounds.silence_late_reads).
  message = [line for line in done.stderr.splitlines() if not re.match(r"[IWEF]\d{4} ", line)]
  assert len(message) == 2, done.stderr
  assert message[0].startswith(
    f"predict: Checkpoint {workdir}/checkpoints/4 is damaged or incomplete ("
  )
  assert message[1] == (
    f"Other checkpoints of this run: {workdir}/checkpoints/2 (pass one with --checkpoint)."
  )


@pytest.mark.parametrize(
  "given, message",
  [
    ({"source": "pytorch_vit"}, "--source needs --checkpoint=PATH"),
    ({"workdir": "run", "source": "run", "checkpoint": "run"}, "not both"),
    ({}, "Give --workdir=RUN (a training run directory), or --checkpoint=PATH"),
  ],
)
def test_model_flags_name_exactly_one_model(given, message):
  """The model flags shared by predict, evaluate and serve (common.define_model_flags);
  serve's command line test sees the same message from a real process."""
  flag = types.SimpleNamespace(**{"workdir": None, "source": None, "checkpoint": None, **given})
  with pytest.raises(app.UsageError, match=re.escape(message)):
    common.check_model_flags(flag)
