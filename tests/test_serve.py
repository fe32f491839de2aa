"""serve: the CLI on a trained run, its JSON API, every awkward file, a load test, a real browser.

One server process (`python -m animesion_jax.serve --workdir=RELATIVE --port=0`, started in an
empty working directory, as people run it) serves the whole module.
"""

import concurrent.futures
import functools
import io
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib

import numpy as np
from PIL import Image
import pytest
import requests

from animesion_jax import predict
from animesion_jax import recognizer
from animesion_jax.inference import faces
from animesion_jax.inference import image_files
from animesion_jax.serve import pictures
from tests import trained_run
from tfds_builders.synthetic_characters import drawing

# Trains in subprocesses or starts a server: not in the fast tier.
pytestmark = pytest.mark.slow

_CHROMIUM, _CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
_LOAD_CLIENTS, _LOAD_SECONDS = 8, 20.0
_SCREENSHOT_ENV = "ANIMESION_SERVE_SCREENSHOT"  # Also save the browser screenshot here.


def _cascade() -> str:
  try:
    return faces.find_cascade()
  except faces.CascadeNotFound:  # OpenCV's own face cascade finds the synthetic faces too.
    import cv2  # pylint: disable=g-import-not-at-top

    return os.path.join(cv2.data.haarcascades, "haarcascade_frontalface_default.xml")


def _files(root) -> dict[str, int]:
  return {
    os.path.relpath(os.path.join(folder, name), root): os.path.getsize(os.path.join(folder, name))
    for folder, _, names in os.walk(root)
    for name in names
  }


class _Server:
  """The CLI in a subprocess; `url` once it printed it."""

  def __init__(self, tmp_path_factory, *extra_flags: str):
    self.workdir = str(
      trained_run.copy_of_trained_workdir(tmp_path_factory.mktemp("serve") / "run")
    )
    self.cwd = str(tmp_path_factory.mktemp("serve_cwd"))
    self.temp = str(tmp_path_factory.mktemp("serve_tmp"))
    self.workdir_files = _files(self.workdir)
    env = dict(os.environ, TMPDIR=self.temp)
    env.pop("XLA_FLAGS", None)  # One CPU device, as people run it.
    self.process = subprocess.Popen(
      [
        sys.executable,
        "-m",
        "animesion_jax.serve",
        f"--workdir={os.path.relpath(self.workdir, self.cwd)}",
        "--port=0",
        "--max_batch=16",
        f"--cascade={_cascade()}",
        *extra_flags,
      ],
      cwd=self.cwd,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    self.output: list[str] = []
    found = threading.Event()
    self.url = None

    def read():
      for line in self.process.stdout:
        self.output.append(line)
        match = re.search(r"Serving .* at (http://\S+)/ \(Ctrl\+C stops\)", line)
        if match:
          self.url = match.group(1)
          found.set()
      found.set()

    threading.Thread(target=read, daemon=True).start()
    found.wait(300)
    assert self.url, "The server did not start:\n" + "".join(self.output)

  def post(self, data: bytes, name: str = "picture.png", query: str = "") -> requests.Response:
    return requests.post(
      f"{self.url}/api/predict{query}", files={"image": (name, data)}, timeout=60
    )

  def stop(self) -> None:
    """Ctrl+C."""
    if self.process.poll() is None:
      self.process.send_signal(signal.SIGINT)
      self.process.wait(30)


@pytest.fixture(scope="module")
def server(trained_workdir, tmp_path_factory):
  started = _Server(tmp_path_factory)
  yield started
  started.stop()


def _png(image: Image.Image, **options) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, format="PNG", **options)
  return buffer.getvalue()


def _encoded(image: Image.Image, kind: str, **options) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, format=kind, **options)
  return buffer.getvalue()


def _example() -> Image.Image:
  """Test picture 0 of the synthetic class the server's first example shows."""
  return Image.open(io.BytesIO(pictures.examples(drawing.class_names())[0][1])).convert("RGB")


def _illustration() -> Image.Image:
  """Two characters side by side on a wide canvas (OpenCV's cascade finds both faces)."""
  canvas = Image.new("RGB", (560, 300), (235, 240, 250))
  for i, left in enumerate((20, 290)):
    canvas.paste(
      Image.fromarray(
        drawing.draw_character(drawing.CHARACTERS[i], np.random.default_rng(i), size=256)
      ),
      (left, 20),
    )
  return canvas


def _png_bomb(width: int, height: int) -> bytes:
  """A real grayscale PNG of width x height black pixels: small file, huge when decoded."""

  def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

  compressor = zlib.compressobj(1)
  rows = bytes((width + 1) * 1000)  # 1000 rows: filter byte 0 and zeros.
  body = b"".join(compressor.compress(rows) for _ in range(height // 1000)) + compressor.flush()
  return (
    b"\x89PNG\r\n\x1a\n"
    + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    + chunk(b"IDAT", body)
    + chunk(b"IEND", b"")
  )


def _top5(response: requests.Response) -> list[list[tuple[str, float]]]:
  assert response.status_code == 200, response.text
  return [
    [(guess["name"], guess["probability"]) for guess in face["top5"]]
    for face in response.json()["faces"]
  ]


def test_answers_match_the_predict_command(server, tmp_path):
  """The API's boxes and top-5 are those of `predict` (same reader, crops and model)."""
  (tmp_path / "example.png").write_bytes(_png(_example()))
  (tmp_path / "group.png").write_bytes(_png(_illustration()))
  run = recognizer.load_run(server.workdir, "best")
  results, errors = predict.predict_files(
    run,
    [image_files.ImageFile(str(tmp_path / name), name) for name in ("example.png", "group.png")],
    top_k=5,
    batch_size=8,
    detector=faces.FaceDetector(_cascade()),
  )
  assert errors == []
  for name, width, height in (("example.png", 64, 64), ("group.png", 560, 300)):
    answer = server.post((tmp_path / name).read_bytes(), name)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    expected = [r for r in results if r["file"].endswith(name)]
    assert len(body["faces"]) == len(expected)
    assert (body["width"], body["height"]) == (width, height)
    assert body["model"] == f"vit_tiny, step {trained_run.TRAIN_STEPS} (run)"  # No server path.
    assert 0 < body["elapsed_ms"] < 60_000
    for face, result in zip(body["faces"], expected):
      if result["box"] is None:
        assert face["whole_image"] and face["box"] == [0, 0, width, height]
      else:
        left, top, right, bottom = result["box"]
        assert not face["whole_image"] and face["box"] == [left, top, right - left, bottom - top]
      assert [g["name"] for g in face["top5"]] == [p["name"] for p in result["predictions"]]
      assert (face["character"], face["unknown"]) == (result["character"], result["unknown"])
      assert face["confidence"] == pytest.approx(result["confidence"], abs=1e-5)
      np.testing.assert_allclose(
        [g["probability"] for g in face["top5"]],
        [p["probability"] for p in result["predictions"]],
        atol=1e-5,
      )
  assert len(_top5(server.post((tmp_path / "group.png").read_bytes()))) == 2  # Both faces.
  assert server.post((tmp_path / "example.png").read_bytes()).json()["notes"] == [
    "no face found: the whole picture was classified"
  ]


@functools.cache
def _awkward_cases() -> dict[str, tuple[bytes, int, str | bytes]]:
  """name -> (upload, expected status, message fragment or the PNG that must answer the same)."""
  example, group = _example(), _illustration()
  frames = [example.quantize(256), Image.new("RGB", (64, 64), (0, 0, 255)).quantize(256)]
  gray = example.convert("L")
  alpha = np.asarray(group.convert("RGBA")).copy()
  alpha[:, :20, 3] = 0  # A transparent strip: white once composited.
  composited = np.asarray(group).copy()
  composited[:, :20] = 255
  palette = group.quantize(64)
  return {
    "text file": (b"name,character\n1,miku\n", 415, "not a picture that can be read"),
    "empty file": (b"", 400, "The file is empty"),
    "truncated png": (_png(group)[:300], 400, "damaged or cut short"),
    "truncated jpeg": (_encoded(group, "JPEG")[:400], 400, "damaged or cut short"),
    "20000x20000 bomb": (_png_bomb(20000, 20000), 413, "far too many pixels"),
    "8000x8000 bomb": (
      _png_bomb(8000, 8000),
      413,
      "8000x8000 (64 megapixels); the limit is 40 megapixels",
    ),
    "17 MB upload": (b"\x89PNG" + bytes(17 * 2**20), 413, "larger than the limit of 16 MB"),
    "animated gif": (
      _encoded(frames[0], "GIF", save_all=True, append_images=frames[1:]),
      200,
      _encoded(frames[0], "GIF"),
    ),
    "cmyk jpeg": (_encoded(group.convert("CMYK"), "JPEG", quality=95), 200, ""),
    "16-bit png": (
      _png(Image.fromarray(np.asarray(gray).astype(np.uint16) * 257)),
      200,
      _png(gray),
    ),
    "palette png": (_png(palette), 200, _png(palette.convert("RGB"))),
    "alpha png": (_png(Image.fromarray(alpha, "RGBA")), 200, _png(Image.fromarray(composited))),
  }


def test_every_awkward_file_gets_its_answer(server):
  failures = []
  for name, (data, status, expected) in _awkward_cases().items():
    answer = server.post(data, name)
    if answer.status_code != status:
      failures.append(f"{name}: {answer.status_code} {answer.text[:200]}")
    elif status != 200:
      if expected not in answer.json()["error"]:
        failures.append(f"{name}: {answer.json()['error']!r} lacks {expected!r}")
    elif expected and _top5(answer) != _top5(server.post(expected, name)):
      failures.append(f"{name}: {_top5(answer)} != {_top5(server.post(expected, name))}")
    elif not expected and not (_top5(answer) and all(len(f) == 5 for f in _top5(answer))):
      failures.append(f"{name}: {answer.json()}")
    assert requests.get(f"{server.url}/healthz", timeout=10).json()["status"] == "ok", name
  assert failures == []
  animated = server.post(_awkward_cases()["animated gif"][0]).json()
  assert "animated picture: its first frame was classified" in animated["notes"]


def test_requests_that_are_not_a_picture_upload(server):
  url = server.url
  cases = [
    requests.post(f"{url}/api/predict", data={"image": "not a file"}, timeout=10),
    requests.post(f"{url}/api/predict", files={"picture": b"x"}, timeout=10),
    requests.post(
      f"{url}/api/predict",
      data=b"\x89PNG raw body",
      timeout=10,
      headers={"Content-Type": "image/png"},
    ),
    requests.post(
      f"{url}/api/predict",
      data=b"--broken",
      timeout=10,
      headers={"Content-Type": "multipart/form-data; boundary=zz"},
    ),
  ]
  assert [c.status_code for c in cases] == [400, 400, 400, 400]
  assert "field 'image'" in cases[0].json()["error"] and "field 'image'" in cases[2].json()["error"]
  assert requests.get(f"{url}/api/predict", timeout=10).status_code == 405
  for path in (
    "/../../etc/passwd",
    "/static/app.js",
    "/api/examples/99",
    "/api/examples/-1",
    "/api/examples/..%2F..%2Fconfig.json",
    "/app.js/../../config.json",
  ):
    answer = requests.get(url + path, timeout=10)
    assert answer.status_code == 404 and b"workdir" not in answer.content, path


def test_load_bounded_clients(server):
  """8 clients post synthetic test pictures for 20 s: all answered, latency printed."""
  uploads = [
    _png(Image.open(io.BytesIO(png))) for _, png in pictures.examples(drawing.class_names())
  ]
  before = requests.get(f"{server.url}/healthz", timeout=10).json()
  deadline = time.monotonic() + _LOAD_SECONDS

  def client(index: int) -> list[tuple[int, float]]:
    answers = []
    with requests.Session() as session:
      while time.monotonic() < deadline:
        started = time.perf_counter()
        answer = session.post(
          f"{server.url}/api/predict",
          timeout=60,
          files={"image": uploads[(index + len(answers)) % len(uploads)]},
        )
        answers.append((answer.status_code, time.perf_counter() - started))
    return answers

  started = time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(_LOAD_CLIENTS) as pool:
    answers = [a for result in pool.map(client, range(_LOAD_CLIENTS)) for a in result]
  elapsed = time.perf_counter() - started
  after = requests.get(f"{server.url}/healthz", timeout=10).json()
  statuses = {status: sum(s == status for s, _ in answers) for status, _ in answers}
  latencies = np.array([seconds for _, seconds in answers]) * 1000
  batches, crops = after["batches"] - before["batches"], after["crops"] - before["crops"]
  print(
    f"\nload: {_LOAD_CLIENTS} clients, {elapsed:.1f} s, {len(answers)} requests, "
    f"{len(answers) / elapsed:.1f} images/s, p50 {np.percentile(latencies, 50):.0f} ms, "
    f"p99 {np.percentile(latencies, 99):.0f} ms, {crops / max(batches, 1):.2f} crops per "
    f"device call, statuses {statuses}"
  )
  assert statuses == {200: len(answers)}  # Never a 5xx (the queue of 64 is never full here).
  assert len(answers) >= _LOAD_CLIENTS and crops == len(answers)
  assert batches < crops  # Concurrent requests shared device calls.


def _browser(tmp_path):
  if not (os.path.exists(_CHROMIUM) and os.path.exists(_CHROMEDRIVER)):
    pytest.skip(
      "Debian's chromium and chromium-driver are not installed "
      "(apt-get install chromium chromium-driver; .ci/run installs them)."
    )
  from selenium import webdriver  # pylint: disable=g-import-not-at-top
  from selenium.webdriver.chrome.service import Service  # pylint: disable=g-import-not-at-top

  os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not download anything.
  options = webdriver.ChromeOptions()
  options.binary_location = _CHROMIUM
  for argument in (
    "--headless=new",
    "--no-sandbox",
    "--disable-dev-shm-usage",
    "--disable-gpu",
    "--window-size=1100,1250",
    f"--user-data-dir={tmp_path / 'profile'}",
  ):
    options.add_argument(argument)
  return webdriver.Chrome(service=Service(executable_path=_CHROMEDRIVER), options=options)


@pytest.mark.browser
def test_browser_names_the_characters(server, tmp_path):
  from selenium.webdriver.common.by import By  # pylint: disable=g-import-not-at-top
  from selenium.webdriver.support.ui import WebDriverWait  # pylint: disable=g-import-not-at-top

  (tmp_path / "example.png").write_bytes(_png(_example()))
  (tmp_path / "two characters.png").write_bytes(_png(_illustration()))
  driver = _browser(tmp_path)
  try:
    wait = WebDriverWait(driver, 120)
    driver.get(server.url + "/")
    wait.until(lambda d: d.find_element(By.ID, "model").text.startswith("Model: vit_tiny"))
    assert "Faces are found first" in driver.find_element(By.ID, "face-note").text
    examples = driver.find_elements(By.CSS_SELECTOR, "#examples button")
    assert len(examples) == 6
    done = lambda count: (
      lambda d: len(d.find_elements(By.CSS_SELECTOR, "article.card[data-state=done]")) == count
    )
    examples[0].click()
    wait.until(done(1))
    driver.find_element(By.ID, "attention").click()  # A ViT: the toggle is shown.
    driver.find_element(By.ID, "picker").send_keys(str(tmp_path / "example.png"))
    wait.until(done(2))
    overlay = driver.find_element(By.CSS_SELECTOR, "article.card img.attention")
    assert overlay.get_attribute("src").startswith("data:image/png;base64,")
    driver.find_element(By.ID, "attention").click()
    driver.find_element(By.ID, "picker").send_keys(
      f"{tmp_path / 'example.png'}\n{tmp_path / 'two characters.png'}"
    )
    wait.until(done(4))
    assert driver.find_elements(By.CSS_SELECTOR, "article.card[data-state=error]") == []
    cards = {
      card.find_element(By.CSS_SELECTOR, "h2").text: card
      for card in driver.find_elements(By.CSS_SELECTOR, "article.card")[:2]
    }
    for name, card in cards.items():
      expected = _top5(server.post((tmp_path / name).read_bytes(), name))
      shown = [
        [cell.text for cell in face.find_elements(By.CSS_SELECTOR, "td.name")]
        for face in card.find_elements(By.CSS_SELECTOR, "li.face")
      ]
      assert shown == [[guess for guess, _ in face] for face in expected], name
      answers = server.post((tmp_path / name).read_bytes(), name).json()["faces"]
      shown_answers = [a.text for a in card.find_elements(By.CSS_SELECTOR, "p.answer")]
      assert shown_answers == [_answer_text(a) for a in answers], name
      assert card.find_elements(By.CSS_SELECTOR, "form.enroll") == []  # Off by default.
      percents = card.find_elements(By.CSS_SELECTOR, "td.probability")
      assert percents[0].text == f"{100 * expected[0][0][1]:.1f}%"
      assert len(card.find_elements(By.CSS_SELECTOR, ".box")) == (
        2 if name == "two characters.png" else 0
      )
    screenshot = tmp_path / "serve.png"
    assert driver.save_screenshot(str(screenshot))
    with Image.open(screenshot) as image:
      assert image.size[0] >= 1000 and len(np.unique(np.asarray(image.convert("L")))) > 50
    if os.environ.get(_SCREENSHOT_ENV):
      shutil.copyfile(screenshot, os.environ[_SCREENSHOT_ENV])
  finally:
    driver.quit()


def _answer_text(face) -> str:
  if face["unknown"]:
    return f"unknown (not sure enough to name; nearest: {face['closest']})"
  added = " (added)" if face["enrolled"] else ""
  return f"{face['character']}{added} · {100 * face['confidence']:.1f}%"


def _enroll(url, name, files):
  return requests.post(
    f"{url}/api/enroll",
    data={"name": name},
    files=[("images", (file_name, data)) for file_name, data in files],
    timeout=60,
  )


def test_enrolment_is_off_unless_allowed(server):
  refused = _enroll(server.url, "newbie", [("a.png", _png(_example()))])
  assert refused.status_code == 403 and "--allow_enroll" in refused.json()["error"]
  assert requests.get(f"{server.url}/api/info", timeout=30).json()["enroll"] is False


@pytest.fixture(scope="module")
def enroll_server(trained_workdir, tmp_path_factory):
  started = _Server(tmp_path_factory, "--allow_enroll")
  yield started
  started.stop()


def test_enrol_through_the_api_and_the_page(enroll_server, tmp_path):
  from selenium.webdriver.common.by import By  # pylint: disable=g-import-not-at-top
  from selenium.webdriver.support.ui import WebDriverWait  # pylint: disable=g-import-not-at-top

  example = _png(_example())
  added = _enroll(enroll_server.url, "newbie", [("a.png", example), ("bad.png", b"junk")])
  assert added.status_code == 200, added.text
  body = added.json()
  assert body["pictures"] == 1 and body["enrolled"] == ["newbie"]
  assert [s["file"] for s in body["skipped"]] == ["bad.png"]
  # The enrolled picture is nearest to its own prototype: answered with the new name.
  face = enroll_server.post(example, "a.png").json()["faces"][0]
  assert (face["character"], face["enrolled"], face["unknown"]) == ("newbie", True, False)
  again = _enroll(enroll_server.url, "newbie", [("a.png", example)])
  assert again.status_code == 409 and "already enrolled" in again.json()["error"]
  assert _enroll(enroll_server.url, "", [("a.png", example)]).status_code == 400
  gallery_file = os.path.join(enroll_server.workdir, "gallery", "gallery.json")
  assert os.path.isfile(gallery_file)

  (tmp_path / "group.png").write_bytes(_png(_illustration()))
  driver = _browser(tmp_path)
  try:
    wait = WebDriverWait(driver, 120)
    driver.get(enroll_server.url + "/")
    wait.until(lambda d: d.find_element(By.ID, "model").text.startswith("Model: vit_tiny"))
    driver.find_element(By.ID, "picker").send_keys(str(tmp_path / "group.png"))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "article.card[data-state=done]"))
    form = driver.find_element(By.CSS_SELECTOR, "form.enroll")
    form.find_element(By.CSS_SELECTOR, "input").send_keys("pair")
    form.find_element(By.CSS_SELECTOR, "button").click()
    wait.until(lambda d: "Added pair" in d.find_element(By.CSS_SELECTOR, ".enroll-status").text)
  finally:
    driver.quit()
  info = requests.get(f"{enroll_server.url}/api/info", timeout=30).json()
  assert info["enroll"] is True and info["enrolled"] == ["newbie", "pair"]


def test_command_line_mistakes_are_explained(server, tmp_path):
  port = server.url.rsplit(":", 1)[1]
  cases = {  # flags -> what the message must say.
    ("--port=0",): "Give --workdir=RUN (a training run directory), or --checkpoint=PATH "
    "--source=SOURCE",
    ("--port=0", "--workdir=no_such_run"): "no_such_run is not a training run directory",
    (
      "--port=0",
      "--checkpoint=b16.pth",
      "--source=pytorch_vit",
      "--class_names=names.csv",
    ): "b16.pth does not exist",
    (f"--workdir={server.workdir}", f"--port={port}"): f"Cannot listen on 127.0.0.1:{port}",
  }
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  processes = {
    flags: subprocess.Popen(
      [sys.executable, "-m", "animesion_jax.serve", *flags],
      cwd=tmp_path,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for flags in cases
  }
  for flags, process in processes.items():
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 1 and cases[flags] in output, (flags, output)
    assert "Traceback" not in output, (flags, output)
  assert os.listdir(tmp_path) == []


def test_nothing_written_outside_the_temporary_folder(server):
  """Runs last: after every request above, the run and the working directory are unchanged."""
  assert requests.get(f"{server.url}/healthz", timeout=10).json()["status"] == "ok"
  assert _files(server.workdir) == server.workdir_files
  assert os.listdir(server.cwd) == []
  assert os.listdir(server.temp) == []  # Uploads spooled past 1 MB were deleted.
  server.stop()
  output = "".join(server.output)
  assert server.process.returncode == 0 and output.endswith("Stopped.\n"), output
  assert "Traceback" not in output and "ERROR" not in output, output
