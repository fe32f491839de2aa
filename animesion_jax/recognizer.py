"""Name the characters in pictures from Python: a trained model, ready to predict.

  from animesion_jax import load_run, load_checkpoint
  model = load_run("runs/quickstart")            # its best checkpoint, calibration and gallery
  for answer in model.predict(["art.png", pil_image, uint8_array], top_k=3):
    print(answer.character, answer.unknown, answer.confidence, answer.names)

  model = load_checkpoint("b16_dafre.pth", "pytorch_vit", "classid_classname.csv")

A `Recognizer` holds the model, its variables (placed on a mesh of the devices), the class names,
its open-set answerer (calibration and gallery: answers that may say "unknown" or name enrolled
characters, see answering.py) and one jitted forward (logits and embedding) built when it is
loaded: `predict`, the `predict`, `calibrate`, `enroll` and `organize` commands, evaluate's
open-set section and the web page all call that one function. No command-line flags here.
Every answer is an `animesion_jax.Answer` (open_set/answering.py): the name or None, unknown,
the calibrated confidence, the top-k, enrolled, box and note.
"""

from collections.abc import Callable, Sequence
import dataclasses
import functools
import hashlib
import json
import os
from typing import Any, Protocol

from absl import logging
from flax import linen as nn
import jax
import ml_collections
import numpy as np
from PIL import Image

from animesion_jax import convert
from animesion_jax import models
from animesion_jax import run_dir
from animesion_jax import sharding
from animesion_jax.data import preprocess
from animesion_jax.errors import CheckpointMismatch
from animesion_jax.errors import ClassNamesError
from animesion_jax.errors import LoadError
from animesion_jax.inference import attention
from animesion_jax.inference import faces
from animesion_jax.inference import image_files
from animesion_jax.inference import longtail
from animesion_jax.models import vit
from animesion_jax.open_set import answering
from animesion_jax.training import evaluation
from animesion_jax.training import model_setup

__all__ = [
  "CheckpointMismatch",
  "ClassNamesError",
  "ImageLike",
  "LoadError",
  "Recognizer",
  "load_checkpoint",
  "load_run",
  "read_class_names",
]

RUN_SOURCE = "run"  # load_checkpoint's source for a training run (directory or step directory).
SOURCES = tuple(sorted([*convert.SOURCES, RUN_SOURCE]))  # Every source load_checkpoint takes.

# One image: a file path, a PIL image or a uint8 array (H, W), (H, W, 3) or (H, W, 4).
ImageLike = str | os.PathLike | Image.Image | np.ndarray


class HeadFinder(Protocol):
  """What `find_and_predict` takes: a head detector (inference/head_detector.HeadDetector)."""

  def detect(self, image: Image.Image) -> list[faces.Box]: ...


@dataclasses.dataclass(frozen=True)
class Recognizer:
  """A model ready for inference (frozen: its forward function is built once, at creation)."""

  config: ml_collections.ConfigDict  # At least image_size, normalization and model.name.
  model: nn.Module
  variables: dict[str, Any]  # {'params': ..., ['batch_stats': ...]}, placed on `mesh`.
  class_names: list[str]
  mesh: jax.sharding.Mesh
  checkpoint: str  # The checkpoint restored: a run's step directory, a file or a directory.
  step: int | None = None  # Training step of a run's checkpoint; None for converted ones.
  workdir: run_dir.RunDir | None = None  # The training run; None for a checkpoint file.
  # The tau-normalisation applied to the classifier's weights (0: none; see `load_run`).
  tau_norm: float = 0.0
  # Calibration and gallery (see `with_open_set`); default: uncalibrated, no gallery.
  answerer: answering.Answerer | None = dataclasses.field(default=None, repr=False, compare=False)
  _forward: Callable[..., tuple[jax.Array, jax.Array]] = dataclasses.field(
    init=False, repr=False, compare=False
  )

  def __post_init__(self):
    model, normalization = self.model, self.config.normalization

    def forward(variables: Any, images: jax.Array) -> tuple[jax.Array, jax.Array]:
      normalized = preprocess.normalize(images, normalization, model.dtype)
      return models.logits_and_embedding(model, variables, normalized)

    # Compiled once per batch shape; the variables are an argument, never baked in.
    jitted = jax.jit(forward, out_shardings=sharding.batch_sharding(self.mesh))
    object.__setattr__(self, "_forward", jitted)
    if self.answerer is None:
      uncalibrated = answering.Answerer(list(self.class_names), note=answering.UNCALIBRATED_NOTE)
      object.__setattr__(self, "answerer", uncalibrated)

  def with_open_set(
    self, accept: float | None = None, store: str | os.PathLike | None = None
  ) -> "Recognizer":
    """This model with its calibration and gallery, read from `store` (default: the run).

    Raises:
      answering.OpenSetError: `accept` outside (0, 1].
      gallery.GalleryMismatch: the gallery was made with another model or checkpoint.
    """
    return dataclasses.replace(self, answerer=answering.for_run(self, accept, store))

  @functools.cached_property
  def fingerprint(self) -> str:
    """A hash of the parameters as answered (after any tau-normalisation): what a calibration
    and a gallery are tied to (answering.provenance). Names, shapes, dtypes and bytes of every
    variable (SHA-256: 0.8 s for a ViT-B/16's 346 MB on this project's shared 2-core machine at
    load 13), computed once per Recognizer, only where a calibration or gallery is stored."""
    digest = hashlib.sha256()
    leaves, _ = jax.tree_util.tree_flatten_with_path(self.variables)
    for path, leaf in sorted(leaves, key=lambda item: jax.tree_util.keystr(item[0])):
      # A replicated array's first local copy: the whole array on every process.
      value = np.asarray(leaf.addressable_data(0) if isinstance(leaf, jax.Array) else leaf)
      header = f"{jax.tree_util.keystr(path)}:{value.dtype}:{value.shape};"
      digest.update(header.encode())
      digest.update(np.ascontiguousarray(value).tobytes())
    return digest.hexdigest()[:32]

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def description(self) -> str:
    """The run directory, or the checkpoint, the model came from."""
    return str(self.workdir) if self.workdir is not None else self.checkpoint

  @property
  def has_attention(self) -> bool:
    """Whether `attention_maps` applies (ViTs; ResNets and ShallowNet have no attention)."""
    return isinstance(self.model, vit.VisionTransformer)

  def device_embed(self, images: np.ndarray) -> tuple[jax.Array, jax.Array]:
    """(float32 logits, L2-normalised embeddings) of this process's uint8 NHWC batch.

    The batch length must be a multiple of this process's devices in the mesh (see
    `sharding.round_up_batch`). Returns global device arrays without waiting for them.
    """
    batch = sharding.to_global_batch({"image": images}, self.mesh)["image"]
    return self._forward(self.variables, batch)

  def embed(self, pixels: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(logits, embeddings) on the host of this process's uint8 [N, S, S, 3] model inputs."""
    size = sharding.round_up_batch(
      min(batch_size, max(len(pixels), 1)), len(self.mesh.local_devices)
    )
    logits, embeddings = [], []
    for start in range(0, len(pixels), size):
      chunk = pixels[start : start + size]
      padded = np.zeros((size, *pixels.shape[1:]), np.uint8)
      padded[: len(chunk)] = chunk
      rows = [evaluation.host_rows(a, self.mesh) for a in self.device_embed(padded)]
      logits.append(rows[0][: len(chunk)])
      embeddings.append(rows[1][: len(chunk)])
    if not logits:
      return np.zeros((0, self.num_classes), np.float32), np.zeros((0, 0), np.float32)
    return np.concatenate(logits), np.concatenate(embeddings)

  def answer(
    self, logits: np.ndarray, embeddings: np.ndarray, top_k: int = 5
  ) -> list[answering.Answer]:
    """The answers (a known name, an enrolled name or unknown) of `embed`'s rows, by the
    calibration and gallery: see answering.decide, the one decision rule."""
    return self.answerer.answer(logits, embeddings, top_k)

  def pixels(self, image: ImageLike) -> np.ndarray:
    """The uint8 [S, S, 3] model input of one image, resized as predict and the web page do."""
    size = self.config.image_size
    return np.asarray(preprocess.resize_square(_picture(image, min_size=size), size))

  def find_and_predict(
    self, images: Sequence[ImageLike], detector: HeadFinder, top_k: int = 5, batch_size: int = 64
  ) -> list[list[answering.Answer]]:
    """Names every character `detector` finds in each image: one list of answers per image.

    Each box (a `faces.Box`, in the picture's pixels, as `detector.detect` gives them: reading
    order) is cropped and resized as the predict command's --detector does
    (`faces.square_crops`), and answered by the calibration and gallery (`answer`); each answer's
    `box` is that box as [left, top, right, bottom]. An image where no head is found gets [].
    `detector`: a trained head detector (`inference.head_detector.HeadDetector(run)`) or anything
    with `detect(PIL RGB image) -> list[faces.Box]`.

    Raises:
      FileNotFoundError, image_files.UnreadableImage: a path that is not a readable image.
      ValueError, TypeError: something that is not an image.
    """
    if isinstance(images, (str, os.PathLike, Image.Image)) or (
      isinstance(images, np.ndarray) and images.ndim < 4
    ):
      raise TypeError("find_and_predict takes a sequence of images: pass [image] for one.")
    images, found = list(images), []
    for start in range(0, len(images), batch_size):  # Decoded batch by batch.
      per_image, crops = [], []
      for image in images[start : start + batch_size]:
        picture = _picture(image)
        boxes = detector.detect(picture)
        per_image.append(boxes)
        if boxes:
          crops.append(faces.square_crops(picture, boxes, self.config.image_size))
      if not crops:
        found.extend([] for _ in per_image)
        continue
      answers = iter(self.answer(*self.embed(np.concatenate(crops), batch_size), top_k))
      for boxes in per_image:
        found.append(
          [dataclasses.replace(next(answers), box=tuple(box.as_list())) for box in boxes]
        )
    return found

  def predict(
    self, images: Sequence[ImageLike], top_k: int = 5, batch_size: int = 64
  ) -> list[answering.Answer]:
    """Names the characters in `images` (paths, PIL images or uint8 arrays): one per image.

    Each whole image is resized to the model's input (to name every character a head detector
    finds in a picture, use `find_and_predict`). On several processes each process passes its own
    images, all processes the same number.

    Raises:
      FileNotFoundError, image_files.UnreadableImage: a path that is not a readable image.
      ValueError, TypeError: something that is not an image.
    """
    if isinstance(images, (str, os.PathLike, Image.Image)) or (
      isinstance(images, np.ndarray) and images.ndim < 4
    ):
      raise TypeError("predict takes a sequence of images: pass [image] for one.")
    images = list(images)
    per_process = len(self.mesh.local_devices)
    size = sharding.round_up_batch(min(batch_size, max(len(images), 1)), per_process)
    found = []
    for start in range(0, len(images), size):  # Decoded batch by batch: any number of images.
      chunk = np.stack([self.pixels(image) for image in images[start : start + size]])
      padded = np.zeros((size, *chunk.shape[1:]), np.uint8)
      padded[: len(chunk)] = chunk
      logits, embeddings = (evaluation.host_rows(a, self.mesh) for a in self.device_embed(padded))
      found.extend(self.answer(logits[: len(chunk)], embeddings[: len(chunk)], top_k))
    return found

  def attention_maps(self, images: np.ndarray) -> dict[str, np.ndarray]:
    """Class-token attention of a ViT over uint8 NHWC model inputs (see attention.maps).

    Raises:
      ValueError: the model is not a ViT.
    """
    normalized = preprocess.normalize(images, self.config.normalization, self.model.dtype)
    return attention.maps(self.model, self.variables, normalized)


def _picture(image: ImageLike, min_size: int | None = None) -> Image.Image:
  """One image as an RGB PIL image (a JPEG path may be decoded at a reduced scale whose sides
  are still at least `min_size`; None: full size)."""
  if isinstance(image, (str, os.PathLike)):
    image = image_files.load_image(os.fspath(image), min_size=min_size)
  elif isinstance(image, np.ndarray):
    if image.dtype != np.uint8 or not (image.ndim == 2 or image.shape[2:] in ((3,), (4,))):
      raise ValueError(
        f"An image array must be uint8 pixels (0-255) of shape (H, W), (H, W, 3) or "
        f"(H, W, 4); got {image.dtype} {image.shape}."
      )
    image = Image.fromarray(image)
  elif not isinstance(image, Image.Image):
    raise TypeError(f"Expected a file path, a PIL image or a uint8 array; got {type(image)}.")
  return image_files.to_rgb(image)


def read_class_names(path: str | os.PathLike) -> list[str]:
  """Class names (index = class id) from a JSON list or a `class_id,class_name` CSV file.

  The CSV is the original Animesion `classid_classname.csv` (with or without a header row).
  """
  from tfds_builders.common import label_csv  # pylint: disable=g-import-not-at-top

  path = run_dir.resolve(path)
  if not path.is_file():
    raise FileNotFoundError(f"Class-names file {path} does not exist.")
  if path.suffix.lower() != ".json":
    try:
      return label_csv.read_class_names(path)
    except (ValueError, UnicodeDecodeError) as error:
      raise ClassNamesError(
        f"{error}\nExpected the dataset's classid_classname.csv "
        "(class_id,class_name rows) or a JSON list of names."
      ) from None
  try:
    names = json.loads(path.read_text(encoding="utf-8"))
  except (ValueError, UnicodeDecodeError) as error:
    raise ClassNamesError(
      f"{path} is not valid JSON ({error}); expected a list of class names."
    ) from None
  if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
    raise ClassNamesError(
      f"{path} should hold a JSON list of class-name strings (index = class id)."
    )
  return names


def load_run(
  workdir: str | os.PathLike | run_dir.RunDir,
  checkpoint: str | int | os.PathLike = "best",
  devices: Sequence[jax.Device] | None = None,
  *,
  accept: float | None = None,
  gallery: str | os.PathLike | None = None,
  read_open_set: bool = True,
  tau_norm: float | None = None,
) -> Recognizer:
  """A training run's model, restored for inference, with its calibration and gallery.

  Args:
    workdir: the training run's directory (it holds config.json and checkpoints).
    checkpoint: 'best' (the best validation top-1, else the latest), 'latest', a step number or
      the path of a checkpoint step directory.
    devices: devices to place the variables on, replicated (default: all).
    accept: share of known pictures to name (default: the calibration's); see answering.for_run.
    gallery: directory of the calibration and gallery (default: the run directory).
    read_open_set: False reads no calibration or gallery (answers are uncalibrated), e.g. to
      fit a calibration or to enrol.
    tau_norm: tau-normalise the classifier's weights (longtail.tau_normalized; 0 = off).
      Default: the run's config.tau_norm, so that every consumer (predict, evaluate, calibrate,
      enroll, organize, serve, export, Python) answers with the classifier the run names. A
      calibration or gallery records it and is not used at another value.

  Raises:
    FileNotFoundError: no config, checkpoint or class names.
    checkpointing.IncompatibleCheckpoint: the checkpoint's parameter shapes differ from the
      config's model (the message lists each differing parameter).
    checkpointing.DamagedCheckpoint: the checkpoint's files are incomplete (the message names
      it and the run's other checkpoints).
  """
  run = workdir if isinstance(workdir, run_dir.RunDir) else run_dir.RunDir(workdir)
  if str(checkpoint).isdigit():  # A step number.
    checkpoint = run.checkpoints_dir / str(int(checkpoint))
  checkpoint = os.fspath(checkpoint)
  mesh = sharding.create_mesh(devices)
  restored = model_setup.restore_run(run, checkpoint, mesh)
  loaded = Recognizer(
    config=restored.config,
    model=restored.model,
    variables=restored.variables,
    class_names=restored.class_names,
    mesh=mesh,
    checkpoint=os.fspath(restored.checkpoint),
    step=restored.step,
    workdir=run,
  )
  if tau_norm is None:
    tau_norm = float(restored.config.get("tau_norm", 0.0))
  loaded = _tau_normalized(loaded, tau_norm)
  return loaded.with_open_set(accept, gallery) if read_open_set else loaded


def load_checkpoint(
  checkpoint: str | os.PathLike,
  source: str,
  class_names: str | os.PathLike | Sequence[str] | None,
  *,
  num_heads: int | None = None,
  image_size: int | None = None,
  devices: Sequence[jax.Device] | None = None,
  accept: float | None = None,
  gallery: str | os.PathLike | None = None,
  read_open_set: bool = True,
  tau_norm: float | None = None,
) -> Recognizer:
  """A model straight from a checkpoint and a class-names file, with no training run.

  Args:
    checkpoint: the checkpoint file (a directory for 'animesion'; a run directory or one of its
      checkpoint step directories for 'run').
    source: one of SOURCES: 'run' or a converter source (pytorch_vit, torchvision_resnet,
      animesion, vit_npz); the architecture is read from the checkpoint as `convert.load` does.
    class_names: the original `classid_classname.csv` (id,name rows, with or without a header)
      or a JSON list (or the names themselves); as many as the checkpoint has classes.
      Optional for 'run'.
    num_heads: ViT attention heads where the file does not store them (pytorch_vit).
    image_size: input size (default: the checkpoint's; a ViT's position embedding is resized).
    devices: devices to place the variables on, replicated (default: all).
    accept, gallery, read_open_set: as for `load_run`; a checkpoint file has a calibration and
      gallery only where `gallery` names their directory.
    tau_norm: as for `load_run` (default: the run's config for 'run', else 0).

  Raises:
    FileNotFoundError: a missing checkpoint or class-names file.
    LoadError: bad arguments, or class names that do not fit the checkpoint.
    convert.ConversionError: the checkpoint is not of that source.
  """
  path = run_dir.resolve(checkpoint)
  if not path.exists():
    raise FileNotFoundError(f"Checkpoint {path} does not exist.")
  if class_names is None or isinstance(class_names, (list, tuple)):
    names = None if class_names is None else list(class_names)
  else:
    names = read_class_names(class_names)
  if source == RUN_SOURCE:
    if num_heads is not None or image_size is not None:
      raise LoadError(
        "--num_heads and --image_size apply to converted checkpoints; a run uses its own settings."
      )
    loaded = load_run(
      *model_setup.run_and_checkpoint(path), devices, read_open_set=False, tau_norm=tau_norm
    )
    if names is not None:
      _check_class_count(names, loaded.num_classes, class_names, path)
      loaded = dataclasses.replace(loaded, class_names=names, answerer=None)
    return loaded.with_open_set(accept, gallery) if read_open_set else loaded
  if source not in convert.SOURCES:
    raise LoadError(f"--source={source!r}: choose one of {list(SOURCES)}.")
  if names is None:
    raise LoadError(
      f"--source={source} needs --class_names (classid_classname.csv or a JSON list of names)."
    )
  conversion = convert.load_with_summary(
    source, path, convert.Target(image_size=image_size, num_heads=num_heads)
  )
  model = conversion.model
  _check_class_count(names, model.num_classes, class_names, path)
  model_class = type(model).__name__
  config = ml_collections.ConfigDict(
    {
      "image_size": int(conversion.summary["image_size"]),
      "normalization": conversion.summary.get("normalization")
      or models.family_of(model).normalization,
      "model": {"name": f"{model_class} ({source})"},
    }
  )
  mesh = sharding.create_mesh(devices)
  variables = jax.device_put(conversion.variables, sharding.replicated(mesh))
  loaded = Recognizer(
    config=config,
    model=model,
    variables=variables,
    class_names=names,
    mesh=mesh,
    checkpoint=os.fspath(path),
  )
  loaded = _tau_normalized(loaded, tau_norm or 0.0)
  logging.info(
    "Loaded %s (%s): %s, %d classes, image size %d.",
    path,
    source,
    model_class,
    len(names),
    config.image_size,
  )
  return loaded.with_open_set(accept, gallery) if read_open_set else loaded


def _tau_normalized(loaded: Recognizer, tau_norm: float) -> Recognizer:
  """The model with its classifier tau-normalised (recorded in `tau_norm`); as is for 0."""
  if tau_norm < 0:
    raise LoadError(f"tau_norm={tau_norm} must be >= 0 (0 = off).")
  if not tau_norm:
    return loaded
  return dataclasses.replace(
    longtail.tau_normalized_run(loaded, tau_norm), tau_norm=float(tau_norm), answerer=None
  )


def _check_class_count(names: list[str], outputs: int, given: Any, checkpoint: Any) -> None:
  if len(names) != outputs:
    given = "The class names" if isinstance(given, (list, tuple)) else os.fspath(given)
    raise CheckpointMismatch(
      f"{given} lists {len(names)} class names, but the classifier of {checkpoint} "
      f"has {outputs} outputs: use the class-names file of the dataset it was trained on."
    )
