"""A loaded model as the web app's Service: the batched predict function, faces, attention."""

import os

import numpy as np

from animesion_jax import recognizer
from animesion_jax import run_dir
from animesion_jax.inference import faces
from animesion_jax.open_set import answering
from animesion_jax.open_set import gallery
from animesion_jax.serve import app
from animesion_jax.serve import batcher as batcher_lib
from animesion_jax.serve import pictures


def face_detector(
  cascade: str | None, margin: float = 0.25, min_size: int = 24
) -> tuple[faces.FaceDetector | None, str]:
  """(detector, "") when a cascade is found, else (None, why face detection is off)."""
  try:
    return faces.create_detector(cascade, margin=margin, min_size=min_size), ""
  except faces.CascadeNotFound as error:
    if cascade:  # Asked for by name: a mistake to report, not to work around.
      raise
    return None, f"Face detection is off, so each whole picture is classified. {error}"


def _attention_fn(run: recognizer.Recognizer, sizes: list[int]) -> app.AttentionFn | None:
  """crops -> attention rollout heatmaps, for ViTs; None for other models."""
  if not run.has_attention:
    return None

  def heatmaps(crops: np.ndarray) -> np.ndarray:
    # Padded to the batcher's sizes: attention.maps compiles once per batch size.
    size = next((s for s in sizes if s >= len(crops)), len(crops))
    padded = np.zeros((size, *crops.shape[1:]), np.uint8)
    padded[: len(crops)] = crops
    return run.attention_maps(padded)["rollout"][: len(crops)]

  return heatmaps


def build_service(
  run: recognizer.Recognizer,
  *,
  detector: faces.FaceDetector | None = None,
  face_note: str = "",
  limits: pictures.Limits = pictures.Limits(),
  max_batch: int = 32,
  max_wait_s: float = 0.005,
  queue_size: int = 64,
  warm_up: bool = True,
  attention: bool = True,
  allow_enroll: bool = False,
) -> app.Service:
  """Starts the micro-batcher on the run's devices and gathers what the page shows.

  Args:
    run: the loaded model.
    detector: face detector, or None to classify whole pictures (`face_note` says why).
    face_note: shown on the page when detector is None.
    limits: upload limits.
    max_batch: most crops per device call (at least limits.max_faces).
    max_wait_s: longest a request waits for others to share its device call.
    queue_size: requests that may wait before the answer is 503.
    warm_up: compile every padded batch size now.
    attention: offer attention maps (ViTs only).
    allow_enroll: offer POST /api/enroll (adding characters to the run's gallery, in the
      directory its calibration was read from: see recognizer.Recognizer.with_open_set).
  """
  if max_batch < limits.max_faces:
    raise ValueError(
      f"max_batch={max_batch} must be at least max_faces={limits.max_faces}: "
      "one picture's faces go in one device call."
    )
  enroll = _enroller(run) if allow_enroll else None

  def predict(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    logits, embeddings = run.device_embed(images)  # The run's one jitted function.
    return np.asarray(logits), np.asarray(embeddings)

  size = run.config.image_size
  batcher = batcher_lib.MicroBatcher(
    predict,
    (size, size, 3),
    max_batch=max_batch,
    max_wait_s=max_wait_s,
    queue_size=queue_size,
    multiple=run.mesh.size,
  )
  if warm_up:
    batcher.warm_up()
  step = f", step {run.step}" if run.step is not None else ""
  source = os.path.basename(run.description.rstrip("/")) or run.description  # No server paths.
  return app.Service(
    batcher=batcher,
    class_names=list(run.class_names),
    model=f"{run.config.model.name}{step} ({source})",
    image_size=size,
    detector=detector,
    face_note=face_note,
    limits=limits,
    examples=pictures.examples(run.class_names),
    attention=_attention_fn(run, batcher.sizes) if attention else None,
    answerer=run.answerer,  # Answers say unknown or name enrolled characters.
    enroll=enroll,
    gallery_watch=_gallery_watch(run),
  )


def _gallery_watch(run: recognizer.Recognizer) -> gallery.Watch | None:
  """Watches the gallery the run's answerer reads (enrolments from the command line)."""
  directory = run.answerer.directory
  if directory is None:
    return None
  return gallery.Watch(directory / run_dir.GALLERY_DIR, lambda: answering.provenance(run))


def _enroller(run: recognizer.Recognizer):
  """(name, embeddings, picture names) -> the updated gallery (the app swaps in an answerer
  with it)."""
  directory = run.answerer.directory
  if directory is None:
    raise gallery.GalleryError(
      "--allow_enroll with a checkpoint file needs --gallery=DIR (where added characters go)."
    )
  provenance = answering.provenance(run)

  def enroll(name: str, embeddings: np.ndarray, names: list[str]) -> gallery.Gallery:
    updated = gallery.enroll(
      directory / run_dir.GALLERY_DIR, provenance, name, embeddings, names, run.class_names
    )
    return updated

  return enroll
