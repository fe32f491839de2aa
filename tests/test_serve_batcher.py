"""serve: the micro-batcher, and the app's 503 when its queue is full (no model needed)."""

import concurrent.futures
import contextlib
import socket
import threading
import time

import numpy as np
from PIL import Image
import pytest
import requests
import uvicorn

from animesion_jax.open_set import answering
from animesion_jax.serve import app
from animesion_jax.serve import batcher as batcher_lib
from animesion_jax.serve import model
from animesion_jax.serve import pictures

_SHAPE = (4, 4, 3)
_NAMES = [f"character_{i}" for i in range(10)]


class _GatedPredict:
  """A predict function that records batch sizes and waits for `gate` before answering.

  Crop i filled with value v gets class ids [v % 10, ...] and probability v / 255.
  """

  def __init__(self):
    self.gate = threading.Event()
    self.entered = threading.Event()
    self.sizes = []

  def __call__(self, images):
    self.entered.set()
    assert self.gate.wait(30)
    self.sizes.append(len(images))
    values = images[:, 0, 0, 0].astype(np.int64)
    ids = np.stack([(values + k) % 10 for k in range(5)], axis=1)
    probabilities = np.repeat((values / 255.0)[:, None], 5, axis=1)
    return probabilities, ids


class _GatedLogits(_GatedPredict):
  """As _GatedPredict, in the app's contract (logits, embeddings): crop value v gets logit
  v / 10 for class v % 10 and 0 for the others."""

  def __call__(self, images):
    super().__call__(images)
    values = images[:, 0, 0, 0].astype(np.int64)
    logits = np.zeros((len(images), len(_NAMES)), np.float32)
    logits[np.arange(len(values)), values % 10] = values / 10
    return logits, np.full((len(images), 2), np.sqrt(0.5), np.float32)


def _crops(value: int, count: int = 1) -> np.ndarray:
  return np.full((count, *_SHAPE), value, np.uint8)


def _wait_until(condition, timeout=10.0):
  deadline = time.monotonic() + timeout
  while not condition():
    assert time.monotonic() < deadline, "timed out"
    time.sleep(0.005)


def test_batch_sizes():
  assert batcher_lib.batch_sizes(32, 1) == [1, 4, 16, 32]
  assert batcher_lib.batch_sizes(16, 1) == [1, 4, 16]
  assert batcher_lib.batch_sizes(32, 8) == [8, 32]
  assert batcher_lib.batch_sizes(20, 8) == [8, 24]
  assert batcher_lib.batch_sizes(1, 8) == [8]


def test_requests_that_wait_share_one_device_call():
  predict = _GatedPredict()
  batcher = batcher_lib.MicroBatcher(predict, _SHAPE, max_batch=8, max_wait_s=0.05, queue_size=10)
  try:
    first = batcher.submit(_crops(1))
    assert predict.entered.wait(10)  # The worker holds the first request at the gate.
    later = [batcher.submit(_crops(10 + i, count=2)) for i in range(3)] + [
      batcher.submit(_crops(20, count=3))
    ]  # 2+2+2 fit in 8; the 3 waits for the next call.
    assert batcher.waiting == 4
    predict.gate.set()
    results = [f.result(timeout=10) for f in [first] + later]
    assert predict.sizes == [1, 8, 4]  # 1 alone; 6 crops padded to 8; then 3 padded to 4.
    assert batcher.batches == 3 and batcher.crops == 10
    for value, count, (probabilities, ids) in zip([1, 10, 11, 12, 20], [1, 2, 2, 2, 3], results):
      assert ids.shape == (count, 5) and ids[:, 0].tolist() == [value % 10] * count
      np.testing.assert_allclose(probabilities[:, 0], value / 255.0)
  finally:
    batcher.close()


def test_full_queue_refuses_at_once():
  predict = _GatedPredict()
  batcher = batcher_lib.MicroBatcher(predict, _SHAPE, max_batch=4, max_wait_s=0, queue_size=2)
  try:
    held = batcher.submit(_crops(1))
    assert predict.entered.wait(10)
    waiting = [batcher.submit(_crops(2)), batcher.submit(_crops(3))]
    started = time.monotonic()
    with pytest.raises(batcher_lib.QueueFull, match="2 pictures are already waiting"):
      batcher.submit(_crops(4))
    assert time.monotonic() - started < 0.5
    predict.gate.set()
    assert [f.result(timeout=10)[1][0, 0] for f in [held] + waiting] == [1, 2, 3]
    assert batcher.submit(_crops(5)).result(timeout=10)[1][0, 0] == 5  # Room again.
  finally:
    batcher.close()


def test_a_failing_batch_fails_its_requests_only():
  calls = []

  def predict(images):
    calls.append(len(images))
    if len(calls) == 1:
      raise RuntimeError("device lost")
    return np.zeros((len(images), 5)), np.zeros((len(images), 5), np.int64)

  batcher = batcher_lib.MicroBatcher(predict, _SHAPE, max_batch=4, max_wait_s=0)
  try:
    with pytest.raises(RuntimeError, match="device lost"):
      batcher.submit(_crops(1)).result(timeout=10)
    assert batcher.submit(_crops(2)).result(timeout=10)[1].shape == (1, 5)
  finally:
    batcher.close()
  with pytest.raises(ValueError, match=r"Expected 1 to 4 crops of shape \(4, 4, 3\)"):
    batcher.submit(_crops(1, count=5))


def test_cancelled_requests_are_skipped():
  predict = _GatedPredict()
  batcher = batcher_lib.MicroBatcher(predict, _SHAPE, max_batch=4, max_wait_s=0)
  try:
    held = batcher.submit(_crops(1))
    assert predict.entered.wait(10)
    gone = batcher.submit(_crops(2))
    kept = batcher.submit(_crops(3))
    assert gone.cancel()  # Its client went away.
    predict.gate.set()
    assert kept.result(timeout=10)[1][0, 0] == 3 and held.done()
    assert predict.sizes == [1, 1]  # The cancelled crop was never sent to the device.
  finally:
    batcher.close()


@contextlib.contextmanager
def _serving(service: app.Service):
  sock = socket.socket()
  sock.bind(("127.0.0.1", 0))
  sock.listen(64)
  server = uvicorn.Server(uvicorn.Config(app.create_app(service), log_level="warning"))
  thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
  thread.start()
  try:
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
  finally:
    server.should_exit = True
    thread.join(10)
    service.batcher.close()


def _png(value: int) -> bytes:
  return pictures.png_bytes(Image.new("RGB", (40, 30), (value, value, value)))


def test_full_queue_answers_503_with_retry_after():
  predict = _GatedLogits()
  batcher = batcher_lib.MicroBatcher(predict, _SHAPE, max_batch=4, max_wait_s=0, queue_size=2)
  service = app.Service(
    batcher=batcher,
    class_names=_NAMES,
    model="gated",
    image_size=4,
    detector=None,
    face_note="Face detection is off.",
    answerer=answering.Answerer(_NAMES, note=answering.UNCALIBRATED_NOTE),
  )
  with _serving(service) as url, concurrent.futures.ThreadPoolExecutor(8) as pool:
    post = lambda value: requests.post(
      f"{url}/api/predict", files={"image": _png(value)}, timeout=30
    )
    first = pool.submit(post, 7)
    assert predict.entered.wait(10)
    queued = [pool.submit(post, 8), pool.submit(post, 9)]
    _wait_until(lambda: batcher.waiting == 2)
    refused = [post(1) for _ in range(3)]
    assert [r.status_code for r in refused] == [503] * 3
    assert refused[0].headers["Retry-After"] == "1"
    assert refused[0].json() == {"error": "The server is busy; try again in 1 s."}
    assert requests.get(f"{url}/healthz", timeout=10).json()["waiting"] == 2
    predict.gate.set()
    answers = [f.result(timeout=30) for f in [first] + queued]
    assert [a.status_code for a in answers] == [200] * 3
    for value, answer in zip([7, 8, 9], answers):
      (face,) = answer.json()["faces"]
      assert face["box"] == [0, 0, 40, 30] and face["whole_image"]
      assert face["top5"][0] == {
        "name": f"character_{value % 10}",
        "probability": pytest.approx(np.exp(value / 10) / (np.exp(value / 10) + 9), rel=1e-6),
      }
    assert post(3).status_code == 200
    info = requests.get(f"{url}/api/info", timeout=10).json()
    assert not info["face_detection"] and info["face_note"] == "Face detection is off."
    assert info["examples"] == [] and not info["attention"]  # Not a synthetic model, no ViT.
    again = requests.post(f"{url}/api/predict?attention=1", files={"image": _png(3)}, timeout=10)
    assert again.status_code == 400 and "only available for ViT" in again.json()["error"]


def test_face_detection_off_says_why(monkeypatch):
  monkeypatch.setattr(
    model.faces,
    "find_cascade",
    lambda path: (_ for _ in ()).throw(
      model.faces.CascadeNotFound("lbpcascade_animeface.xml was not found.")
    ),
  )
  detector, note = model.face_detector(None)
  assert detector is None
  assert note == (
    "Face detection is off, so each whole picture is classified. "
    "lbpcascade_animeface.xml was not found."
  )
  with pytest.raises(model.faces.CascadeNotFound):
    model.face_detector("/nowhere.xml")  # Asked for by name: an error, not a fallback.
