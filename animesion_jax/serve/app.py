"""The Starlette app: one page, its script and style, and a small JSON API.

  GET  /                    the page (static/index.html, app.js, style.css: read once, by name)
  GET  /healthz             {"status": "ok", "model", "waiting", "batches", "crops"}
  GET  /api/info            model, classes, face detection, attention, limits, examples
  GET  /api/examples/{i}    PNG of example picture i (drawn in memory)
  POST /api/predict         multipart field `image` ->
      {"faces": [{"box": [x, y, w, h], "whole_image", "character" (name or null), "unknown",
                  "confidence", "closest", "enrolled", "top5": [{"name", "probability"}],
                  ["attention": PNG data URL]}], "model", "elapsed_ms", "width", "height",
       "notes"}; `?attention=1` adds the attention overlays (ViTs).
  POST /api/enroll          multipart `name` + files `images` (one face each: the largest) ->
      {"name", "pictures", "enrolled": [names], "skipped": [{"file", "error"}]}; only with
      --allow_enroll (else 403).

Errors answer {"error": message} with a 4xx status (503 with Retry-After when the queue is
full). No part of a request names a file: the page's three files are a fixed table.
"""

import asyncio
import base64
from collections.abc import Callable
import dataclasses
import importlib.resources
import threading
import time
from typing import Any

from absl import logging
import anyio
import numpy as np
from PIL import Image
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.responses import Response
from starlette.routing import Route

from animesion_jax.inference import faces
from animesion_jax.open_set import answering
from animesion_jax.open_set import gallery
from animesion_jax.serve import batcher as batcher_lib
from animesion_jax.serve import pictures

RETRY_AFTER_S = 1  # What a 503 asks clients to wait.
_PAGE_FILES = {  # URL -> (file in static/, media type).
  "/": ("index.html", "text/html; charset=utf-8"),
  "/app.js": ("app.js", "text/javascript; charset=utf-8"),
  "/style.css": ("style.css", "text/css; charset=utf-8"),
}
# crops uint8 [n, S, S, 3] -> attention heatmaps [n, g, g].
AttentionFn = Callable[[np.ndarray], np.ndarray]


@dataclasses.dataclass
class Service:
  """What the app serves with."""

  batcher: batcher_lib.MicroBatcher
  class_names: list[str]
  model: str  # Shown to people: model name, step, where it came from.
  image_size: int
  detector: faces.FaceDetector | None
  face_note: str  # Why face detection is off (empty when on).
  limits: pictures.Limits = dataclasses.field(default_factory=pictures.Limits)
  examples: list[tuple[str, bytes]] = dataclasses.field(default_factory=list)
  attention: AttentionFn | None = None  # None: not a ViT (or not available).
  decode_threads: int = 4  # Pictures decoded at once (bounds memory).
  # answering.Answerer: logits, embeddings -> answers. Enrolment replaces it (never mutates it).
  answerer: Any = None
  # (name, embeddings, picture names) -> updated gallery; None: adding characters is off.
  enroll: Callable[[str, np.ndarray, list[str]], Any] | None = None
  top_k: int = 5
  # Held while a character is enrolled and the new answerer swapped in (one enrolment at a time).
  enroll_lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
  # gallery.Watch of the answerer's gallery: an enrolment from the command line is answered
  # within its poll interval (`current_answerer`); None: not watched.
  gallery_watch: Any = None


class _Refusal(Exception):
  def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
    super().__init__(message)
    self.response = JSONResponse({"error": message}, status, headers=headers)


def _busy() -> _Refusal:
  return _Refusal(
    503, f"The server is busy; try again in {RETRY_AFTER_S} s.", {"Retry-After": str(RETRY_AFTER_S)}
  )


async def _body(request: Request, limit: int) -> bytes:
  """The request body, refused (413) past `limit` bytes; reads a bounded excess first, so that
  clients still sending see the answer rather than a reset connection."""
  too_big = _Refusal(
    413, f"The upload is larger than the limit of {limit / 2**20:.0f} MB. Send a smaller picture."
  )
  declared = request.headers.get("content-length", "")
  if declared.isdigit() and int(declared) > 4 * limit:
    raise too_big
  chunks, size = [], 0
  async for chunk in request.stream():
    size += len(chunk)
    if size > 4 * limit:
      break
    if size <= limit:
      chunks.append(chunk)
  if size > limit:
    raise too_big
  return b"".join(chunks)


async def _multipart_form(request: Request, limit: int, max_files: int) -> Any:
  """The multipart form of a body read within `limit` bytes (400 when it does not parse)."""
  body = await _body(request, limit)

  async def replay():
    return {"type": "http.request", "body": body, "more_body": False}

  try:
    return await Request(request.scope, replay).form(max_files=max_files, max_fields=8)
  except Exception as error:  # pylint: disable=broad-exception-caught
    detail = getattr(error, "detail", None) or error
    raise _Refusal(
      400, f"The upload could not be read as multipart/form-data ({detail})."
    ) from None


async def _upload(request: Request, limits: pictures.Limits) -> bytes:
  """The bytes of the multipart field `image` (parsed from memory)."""
  if not request.headers.get("content-type", "").startswith("multipart/form-data"):
    raise _Refusal(
      400,
      "Send the picture as multipart/form-data with the field 'image' "
      "(curl -F image=@picture.png URL/api/predict).",
    )
  form = await _multipart_form(request, limits.max_upload_bytes, max_files=1)
  try:
    field = form.get("image")
    if not isinstance(field, UploadFile):
      raise _Refusal(
        400,
        "No file in the field 'image': send the picture as "
        "multipart/form-data with a file in the field 'image'.",
      )
    return await field.read()
  finally:
    await form.close()


async def _enroll_upload(request: Request, limits: pictures.Limits) -> tuple[str, list]:
  """(name, [(file name, bytes)]) of a multipart `name` + `images` upload."""
  if not request.headers.get("content-type", "").startswith("multipart/form-data"):
    raise _Refusal(400, "Send multipart/form-data with a field 'name' and files 'images'.")
  form = await _multipart_form(request, limits.max_upload_bytes, max_files=limits.max_faces)
  try:
    name = form.get("name")
    if not isinstance(name, str) or not name.strip():
      raise _Refusal(400, "Give the character's name in the field 'name'.")
    files = [f for f in form.getlist("images") if isinstance(f, UploadFile)]
    if not files:
      raise _Refusal(400, "Send the character's pictures as files in the field 'images'.")
    return name.strip(), [(f.filename or "picture", await f.read()) for f in files]
  finally:
    await form.close()


def _answer_face(answer: answering.Answer) -> dict[str, Any]:
  return {
    "character": answer.character,
    "unknown": answer.unknown,
    "confidence": answer.confidence,
    "closest": answer.closest,
    "enrolled": answer.enrolled,
    "calibrated": answer.calibrated,
    "top5": [{"name": r.name, "probability": r.probability} for r in answer.top_k],
    # The answer as the printed table words it; a refused face's top 5 are only guesses.
    "text": answer.describe(),
    "guesses_note": answering.GUESSES_NOTE if answer.unknown else "",
  }


def _data_url(image: Image.Image) -> str:
  return "data:image/png;base64," + base64.b64encode(pictures.png_bytes(image)).decode("ascii")


def _service(request: Request) -> Service:
  return request.app.state.service


def _attention_overlays(state: Any, picture: pictures.Picture) -> list[str]:
  """PNG data URLs of each crop's attention overlay (one computation at a time)."""
  from animesion_jax.inference import attention  # pylint: disable=g-import-not-at-top

  with state.attention_lock:
    heatmaps = state.service.attention(picture.crops)
  return [
    _data_url(attention.overlay(Image.fromarray(crop), heatmap))
    for crop, heatmap in zip(picture.crops, heatmaps)
  ]


async def _read_picture(request: Request, data: bytes) -> pictures.Picture:
  """Decodes an upload in a worker thread (at most `decode_threads` at once)."""
  service = _service(request)
  return await anyio.to_thread.run_sync(
    pictures.read_picture,
    data,
    service.image_size,
    service.detector,
    service.limits,
    limiter=request.app.state.decode_limiter,
  )


def page_file(request: Request) -> Response:
  content, media = request.app.state.page[request.url.path]
  return Response(content, media_type=media, headers={"Cache-Control": "no-cache"})


def healthz(request: Request) -> JSONResponse:
  service = _service(request)
  batcher = service.batcher
  return JSONResponse(
    {
      "status": "ok",
      "model": service.model,
      "waiting": batcher.waiting,
      "batches": batcher.batches,
      "crops": batcher.crops,
    }
  )


def info(request: Request) -> JSONResponse:
  service = _service(request)
  answerer = current_answerer(service)  # Read once: an enrolment may swap in another.
  limits = service.limits
  return JSONResponse(
    {
      "model": service.model,
      "num_classes": len(service.class_names),
      "face_detection": service.detector is not None,
      "face_note": service.face_note,
      "attention": service.attention is not None,
      "calibrated": answerer.calibration is not None,
      "calibration_note": answerer.note,
      "enroll": service.enroll is not None,
      "enrolled": answering.enrolled_names(answerer.gallery, answerer.class_names),
      "max_upload_mb": limits.max_upload_bytes / 2**20,
      "max_megapixels": limits.max_pixels / 1e6,
      "max_faces": limits.max_faces,
      "examples": [
        {"name": name, "url": f"/api/examples/{i}"} for i, (name, _) in enumerate(service.examples)
      ],
    }
  )


def example(request: Request) -> Response:
  examples = _service(request).examples
  index = request.path_params["index"]
  if not 0 <= index < len(examples):
    return JSONResponse({"error": f"No example {index}."}, 404)
  return Response(
    examples[index][1], media_type="image/png", headers={"Cache-Control": "max-age=3600"}
  )


async def predict(request: Request) -> Response:
  started = time.perf_counter()
  service = _service(request)
  want_attention = request.query_params.get("attention", "") in ("1", "true", "on")
  try:
    if want_attention and service.attention is None:
      raise _Refusal(400, "Attention maps are only available for ViT models.")
    if service.batcher.waiting >= service.batcher.queue_size:
      raise _busy()  # Refused before the upload is read or decoded.
    picture = await _read_picture(request, await _upload(request, service.limits))
    if not len(picture.crops):  # A head detector found no character: no box, no answer.
      logits = embeddings = np.zeros((0, 0), np.float32)
    else:
      try:
        future = service.batcher.submit(picture.crops)
      except batcher_lib.QueueFull:
        raise _busy() from None
      logits, embeddings = await asyncio.wrap_future(future)
    overlays = None
    if want_attention and len(picture.crops):
      overlays = await anyio.to_thread.run_sync(
        _attention_overlays, request.app.state, picture, limiter=request.app.state.decode_limiter
      )
  except _Refusal as refusal:
    return refusal.response
  except pictures.BadPicture as bad:
    return JSONResponse({"error": bad.message}, bad.status)
  answerer = current_answerer(service)  # Read once: an enrolment may swap in another.
  answers = answerer.answer(logits, embeddings, service.top_k)
  found = []
  for i, box in enumerate(picture.boxes):
    face: dict[str, Any] = {"box": box, "whole_image": picture.whole, **_answer_face(answers[i])}
    if overlays is not None:
      face["attention"] = overlays[i]
    found.append(face)
  elapsed_ms = 1000 * (time.perf_counter() - started)
  logging.info(
    "Classified %d crop(s) of a %dx%d picture in %.1f ms.",
    len(found),
    picture.image.width,
    picture.image.height,
    elapsed_ms,
  )
  return JSONResponse(
    {
      "faces": found,
      "model": service.model,
      "elapsed_ms": elapsed_ms,
      "width": picture.image.width,
      "height": picture.image.height,
      "notes": picture.notes,
    }
  )


def current_answerer(service: Service) -> Any:
  """service.answerer, first swapped for one with the gallery as stored now where another
  process changed it (python -m animesion_jax.enroll; polled at most once per interval).

  Swapped under enroll_lock, as enrolment through the page swaps it; while that lock is held
  (an enrolment underway here) the answerer is left as it is, and the next request polls.
  """
  watch = service.gallery_watch
  if watch is None or not watch.due() or not service.enroll_lock.acquire(blocking=False):
    return service.answerer
  try:
    changed, found = watch.poll()
    if changed:
      service.answerer = service.answerer.with_gallery(found)
      logging.info("Gallery changed on disk: %d characters.", len(found.names) if found else 0)
  except gallery.GalleryError as error:
    logging.warning("Kept the gallery answered so far: %s", error)
  finally:
    service.enroll_lock.release()
  return service.answerer


def _enroll_and_swap(service: Service, name: str, embeddings: np.ndarray, names: list[str]):
  """Adds the character and swaps in an answerer with the updated gallery; that gallery."""
  with service.enroll_lock:
    updated = service.enroll(name, embeddings, names)
    # Requests read service.answerer once: they see the old gallery or the new one.
    service.answerer = service.answerer.with_gallery(updated)
  return updated


async def enroll(request: Request) -> Response:
  service = _service(request)
  if service.enroll is None:
    return JSONResponse(
      {"error": "Adding characters is off on this server (start it with --allow_enroll)."}, 403
    )
  try:
    if service.batcher.waiting >= service.batcher.queue_size:
      raise _busy()
    name, uploads = await _enroll_upload(request, service.limits)
    crops, names, skipped = [], [], []
    for filename, data in uploads:
      try:
        picture = await _read_picture(request, data)
      except pictures.BadPicture as bad:
        skipped.append({"file": filename, "error": bad.message})
        continue
      largest = max(
        range(len(picture.boxes)), key=lambda i: picture.boxes[i][2] * picture.boxes[i][3]
      )
      crops.append(picture.crops[largest])
      names.append(filename)
    if not crops:
      raise _Refusal(
        400,
        "None of the pictures could be read: "
        + "; ".join(f"{s['file']}: {s['error']}" for s in skipped),
      )
    try:
      future = service.batcher.submit(np.stack(crops))
    except batcher_lib.QueueFull:
      raise _busy() from None
    _, embeddings = await asyncio.wrap_future(future)
    updated = await anyio.to_thread.run_sync(_enroll_and_swap, service, name, embeddings, names)
  except _Refusal as refusal:
    return refusal.response
  except gallery.GalleryError as error:
    return JSONResponse({"error": str(error)}, 409)
  logging.info("Enrolled %r from %d pictures.", name, len(crops))
  return JSONResponse(
    {
      "name": name,
      "pictures": len(crops),
      "enrolled": answering.enrolled_names(updated, service.class_names),
      "skipped": skipped,
    }
  )


ROUTES = [Route(url, page_file) for url in _PAGE_FILES] + [
  Route("/healthz", healthz),
  Route("/api/info", info),
  Route("/api/examples/{index:int}", example),
  Route("/api/predict", predict, methods=["POST"]),
  Route("/api/enroll", enroll, methods=["POST"]),
]


def create_app(service: Service) -> Starlette:
  """The web app around a ready Service (the caller owns the batcher's lifetime).

  The endpoints read what they serve with from `app.state`: the service, the page's files (read
  once), the limiter of picture decoding threads and the attention lock.
  """
  web_app = Starlette(routes=ROUTES)
  web_app.state.service = service
  web_app.state.page = {
    url: (
      importlib.resources.files("animesion_jax.serve").joinpath("static", name).read_bytes(),
      media,
    )
    for url, (name, media) in _PAGE_FILES.items()
  }
  web_app.state.decode_limiter = anyio.CapacityLimiter(service.decode_threads)
  web_app.state.attention_lock = threading.Lock()  # One attention computation at a time.
  return web_app
