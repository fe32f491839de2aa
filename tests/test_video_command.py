"""The video command end to end on a synthetic episode the test draws, from a relative workdir:
shots, tracks and their answers, the timeline files, the page (also in a browser), bad input."""

import csv
import json
import os
import subprocess
import sys

import pytest

from tests import trained_run

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _iou(a, b):
  from animesion_jax.video_index import tracking  # pylint: disable=g-import-not-at-top

  return tracking.iou(a, b)


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
  """(folder, truth, completed process) of one run of the command over three files."""
  from tfds_builders.synthetic_characters import episodes  # pylint: disable=g-import-not-at-top

  folder = tmp_path_factory.mktemp("video")
  workdir = os.path.relpath(trained_run.tiny_trained_workdir(), folder)
  truth = episodes.render(episodes.scripted(), str(folder / "episode.mp4"), size=(320, 180))
  episodes.render(episodes.scripted()[:2], str(folder / "cut.mkv"), size=(320, 180))
  whole = (folder / "cut.mkv").read_bytes()
  (folder / "cut.mkv").write_bytes(whole[: len(whole) * 2 // 3])  # Truncated: 4 s of 6 decode.
  (folder / "notes.txt").write_text("not a video")
  env = {**os.environ, "PYTHONPATH": _REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
  done = subprocess.run(
    [
      sys.executable,
      "-m",
      "animesion_jax.video",
      "episode.mp4",
      "notes.txt",
      "cut.mkv",
      f"--workdir={workdir}",
      "--detector=synthetic_markers",
      "--output_dir=index",
    ],
    cwd=folder,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  return folder, truth, done


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_video_command_writes_the_timeline(indexed):
  folder, truth, done = indexed
  assert done.returncode == 0, done.stderr[-3000:]
  assert "Skipped notes.txt: notes.txt is not a video" in done.stdout
  assert "cut.mkv: " in done.stdout and "not decoded (file ends early" in done.stdout
  assert "frame/s" in done.stderr  # The progress bar (tqdm), with its rate and time left.
  record = json.loads((folder / "index" / "timeline.json").read_text())
  assert record["errors"] == [{"file": "notes.txt", "error": record["errors"][0]["error"]}]
  episode, cut = record["videos"]
  assert episode["complete"] and episode["decoded_frames"] == len(truth["frames"]) == 360
  assert not cut["complete"] and cut["gaps"][0]["end"] == pytest.approx(6.0)
  assert 1.0 < cut["gaps"][0]["start"] < 5.5

  # Shots: every true boundary (3 cuts, a fade through black) found, within 2 frames.
  shots = [s for s in record["shots"] if s["file"] == "episode.mp4"]
  assert [s["start"] for s in shots] == pytest.approx(
    [s["start"] for s in truth["shots"]], abs=2 / 24
  )
  # Tracks: one per scripted appearance (a character's stretch within a shot).
  appearances = [a for a in record["appearances"] if a["file"] == "episode.mp4"]
  assert [sum(a["shot"] == k for a in appearances) for k in range(5)] == [1, 2, 1, 2, 1]
  for a in appearances:
    assert set(a) >= {"character", "unknown", "confidence", "start", "end", "shot", "track", "box"}
    assert a["unknown"] == (a["character"] is None) and 0 < a["confidence"] <= 1
    assert shots[a["shot"]]["start"] <= a["start"] < a["end"] <= shots[a["shot"]]["end"]
    frame = truth["frames"][round(a["best_time"] * 24)]
    assert max(_iou(a["box"], t["box"]) for t in frame) > 0.8
    assert a["group"] == (a["character"] or a["group"]) and (
      a["character"] or a["group"].startswith("unknown-")
    )
  # Screen time: the union of each group's appearances, in seconds.
  for row in record["screen_time"]:
    mine = [
      a for a in record["appearances"] if a["group"] == row["group"] and a["file"] == row["file"]
    ]
    assert row["appearances"] == len(mine)
    assert row["seconds"] <= sum(a["end"] - a["start"] for a in mine) + 1e-6
  with open(folder / "index" / "timeline.csv", encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == len(record["appearances"])
  assert [float(r["start"]) for r in rows] == [a["start"] for a in record["appearances"]]
  page = (folder / "index" / "index.html").read_text()
  groups = {a["group"] for a in record["appearances"]}
  assert page.count("<section") == len(groups)
  assert f'href="../episode.mp4#t={appearances[0]["start"]:.2f}"' in page
  assert all(
    (folder / "index" / "thumbnails" / f"{a['video']}-{a['track']}.jpg").is_file()
    for a in record["appearances"]
  )


@pytest.mark.browser
@pytest.mark.timeout(900)
def test_video_page_in_a_browser(indexed, tmp_path):
  """The page in headless Chromium: a row per group, every thumbnail loaded, links to times."""
  from selenium.webdriver.common.by import By  # pylint: disable=g-import-not-at-top

  from tests import test_serve  # pylint: disable=g-import-not-at-top

  folder, _, done = indexed
  assert done.returncode == 0, done.stderr[-3000:]
  record = json.loads((folder / "index" / "timeline.json").read_text())
  driver = test_serve._browser(tmp_path)  # pylint: disable=protected-access
  try:
    driver.get((folder / "index" / "index.html").as_uri())
    rows = driver.find_elements(By.CSS_SELECTOR, "section")
    assert len(rows) == len({a["group"] for a in record["appearances"]})
    images = driver.find_elements(By.CSS_SELECTOR, "section img")
    assert len(images) == len(record["appearances"])
    assert all(driver.execute_script("return arguments[0].naturalWidth", i) == 96 for i in images)
    links = [a.get_attribute("href") for a in driver.find_elements(By.CSS_SELECTOR, "section a")]
    assert all("#t=" in link and link.split("#")[0].endswith((".mp4", ".mkv")) for link in links)
  finally:
    driver.quit()
