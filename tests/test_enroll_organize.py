"""enroll, predict with enrolled characters, and organize, as commands from a relative workdir."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from tests import helpers
from tests import trained_run

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _command(cwd, module, *args):
  env = helpers.subprocess_env()
  return subprocess.run(
    [sys.executable, "-m", f"animesion_jax.{module}", *args],
    cwd=cwd,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )


def _check_contact_sheet_in_a_browser(tmp_path, record):
  """The contact sheet in headless Chromium: a row per group, every thumbnail loaded."""
  from selenium.webdriver.common.by import By  # pylint: disable=g-import-not-at-top

  from tests import test_serve  # pylint: disable=g-import-not-at-top

  driver = test_serve._browser(tmp_path)  # pylint: disable=protected-access
  try:
    driver.get((tmp_path / "sorted" / "index.html").as_uri())
    rows = driver.find_elements(By.CSS_SELECTOR, "section.group")
    assert [r.find_element(By.CSS_SELECTOR, "h2").text.split()[0] for r in rows] == [
      g["name"] for g in record["groups"]
    ]
    images = driver.find_elements(By.CSS_SELECTOR, "section.group img")
    assert len(images) == sum(len(g["pictures"]) for g in record["groups"])
    assert all(driver.execute_script("return arguments[0].naturalWidth", i) == 96 for i in images)
  finally:
    driver.quit()


@pytest.mark.browser
@pytest.mark.timeout(900)
def test_enrol_then_predict_and_organize(trained_workdir, tmp_path):
  trained_run.copy_of_trained_workdir(tmp_path / "run")
  pictures = tmp_path / "pics"
  helpers.write_test_pictures(pictures, 6)
  (tmp_path / "pics" / "broken.png").write_bytes(b"not a picture")
  known = json.loads((tmp_path / "run" / "class_names.json").read_text())[0]

  done = _command(
    tmp_path, "enroll", "--workdir=run", "--name=newbie", "pics/00.png", "pics/broken.png"
  )
  assert done.returncode == 0, done.stderr[-3000:]
  assert "Skipping pics/broken.png" in done.stdout
  assert "Enrolled 'newbie' from 1 pictures" in done.stdout
  refused = _command(tmp_path, "enroll", "--workdir=run", f"--name={known}", "pics/01.png")
  assert refused.returncode == 1 and "--refine" in refused.stderr
  assert refused.stderr.strip().splitlines()[-1].startswith("enroll: '")  # A message,
  assert "Traceback" not in refused.stderr  # not a traceback.
  listed = _command(tmp_path, "enroll", "--workdir=run", "--list")
  assert "newbie: 1 pictures" in listed.stdout

  # The enrolled picture itself is nearest to its own prototype (cosine 1): named newbie.
  done = _command(
    tmp_path, "predict", "--workdir=run", "--output_dir=out", "pics/00.png", "pics/01.png"
  )
  assert done.returncode == 0, done.stderr[-3000:]
  results = json.loads((tmp_path / "out" / "predictions.json").read_text())["results"]
  assert results[0]["character"] == "newbie" and results[0]["enrolled"]
  assert all(r["calibrated"] for r in results)
  for r in results:
    assert r["unknown"] == (r["character"] is None) and 0 < r["confidence"] <= 1

  # organize: every picture in one group, the copy marked as a duplicate, files placed by group.
  shutil.copyfile(pictures / "00.png", pictures / "00_copy.png")
  Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)).save(
    pictures / "noise.png"
  )
  done = _command(tmp_path, "organize", "--workdir=run", "pics", "--output_dir=sorted", "--copy")
  assert done.returncode == 0, done.stderr[-3000:]
  record = json.loads((tmp_path / "sorted" / "groups.json").read_text())
  placed = [p["relative"] for g in record["groups"] for p in g["pictures"]]
  assert sorted(placed) == sorted(
    ["pics/00.png", "pics/00_copy.png", "pics/noise.png"]
    + [f"pics/{i:02d}.png" for i in range(1, 6)]
  )
  by_file = {p["relative"]: (g["name"], p) for g in record["groups"] for p in g["pictures"]}
  assert by_file["pics/00.png"][0] == "newbie" == by_file["pics/00_copy.png"][0]
  assert by_file["pics/00_copy.png"][1]["duplicate_of"] == "pics/00.png"
  assert [e["file"] for e in record["errors"]] == ["pics/broken.png"]
  assert (tmp_path / "sorted" / "newbie" / "pics__00.png").is_file()
  csv_rows = (tmp_path / "sorted" / "groups.csv").read_text().splitlines()
  assert len(csv_rows) == 1 + len(placed)
  page = (tmp_path / "sorted" / "index.html").read_text()
  assert page.count("<section") == len(record["groups"]) and "thumbnails/0.png" in page
  _check_contact_sheet_in_a_browser(tmp_path, record)

  # A gallery made for another checkpoint (other parameters: another fingerprint) is refused with
  # a message naming what differs; the step alone does not decide where both have fingerprints.
  gallery_file = tmp_path / "run" / "gallery" / "gallery.json"
  stored = json.loads(gallery_file.read_text())
  assert stored["provenance"]["fingerprint"]
  stored["provenance"]["fingerprint"] = "0" * len(stored["provenance"]["fingerprint"])
  gallery_file.write_text(json.dumps(stored))
  refused = _command(tmp_path, "predict", "--workdir=run", "pics/01.png")
  assert refused.returncode == 1 and "another model or checkpoint" in refused.stderr
  removed = _command(tmp_path, "enroll", "--workdir=run", "--remove=newbie")
  assert removed.returncode == 1 and "fingerprint: gallery '0000" in removed.stderr


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_checkpoint_without_run_files_keeps_calibration_and_gallery_in_a_given_dir(
  trained_workdir, tmp_path
):
  """--checkpoint/--source: calibrate --output_dir=DIR, then enroll and predict with --gallery=DIR."""
  trained_run.copy_of_trained_workdir(tmp_path / "run")
  os.remove(tmp_path / "run" / "calibration.json")  # The run's own files are not used.
  helpers.write_test_pictures(tmp_path / "pics", 2)
  model = ["--checkpoint=run", "--source=run"]
  data = [
    "--dataset=synthetic_characters",
    f"--data_dir={helpers.synthetic_data_dir()}",
    "--dataset_config=small",
  ]
  done = _command(tmp_path, "calibrate", *model, *data, "--output_dir=store")
  assert done.returncode == 0, done.stderr[-3000:]
  assert (tmp_path / "store" / "calibration.json").is_file()
  assert not (tmp_path / "run" / "calibration.json").exists()
  done = _command(tmp_path, "enroll", *model, "--gallery=store", "--name=newbie", "pics/00.png")
  assert done.returncode == 0, done.stderr[-3000:]
  assert (tmp_path / "store" / "gallery" / "gallery.json").is_file()
  done = _command(tmp_path, "predict", *model, "--gallery=store", "--output_dir=out", "pics/00.png")
  assert done.returncode == 0, done.stderr[-3000:]
  (result,) = json.loads((tmp_path / "out" / "predictions.json").read_text())["results"]
  assert result["calibrated"] and result["character"] == "newbie"
  # Without --gallery the same checkpoint answers uncalibrated and says how to calibrate.
  done = _command(tmp_path, "predict", *model, "--output_dir=out2", "pics/00.png")
  assert done.returncode == 0 and "Note: uncalibrated" in done.stdout
