"""Characters enrolled without retraining: a gallery of embedding prototypes stored with a run.

  RUN/gallery/gallery.json   {"provenance": {...}, "characters": {name: {"count", "sum",
                              "pictures"}}}; written atomically (temporary file + rename)
  RUN/gallery/.lock          held (fcntl) while a change reads, edits and writes the file, so two
                              enrolments at once both land; on gs:// (no locks) each write is
                              conditional on the generation read (`_update_object`)

A character's prototype is the normalised sum of its pictures' L2-normalised embeddings. The
gallery belongs to the checkpoint whose embeddings it holds (a fingerprint of its parameters;
galleries made before fingerprints: its model, step and class count): loading it for another
model is refused with a message saying which (`provenance_differences`).
"""

from collections.abc import Callable
import contextlib
import dataclasses
import fcntl
import json
import os
import random
import time
from typing import Any

from etils import epath
import numpy as np

from animesion_jax import run_dir

GALLERY_FILE = "gallery.json"
_LOCK_FILE = ".lock"


class GalleryError(ValueError):
  """A gallery change that cannot be done (the message says why and what to do)."""


class GalleryMismatch(GalleryError):
  """The gallery was made with another model or checkpoint."""


@dataclasses.dataclass
class Character:
  count: int
  sum: np.ndarray  # [D] float64 sum of the pictures' normalised embeddings.
  pictures: list[str]

  @property
  def prototype(self) -> np.ndarray:
    return (self.sum / max(float(np.linalg.norm(self.sum)), 1e-12)).astype(np.float32)


@dataclasses.dataclass
class Gallery:
  provenance: dict[str, Any]
  characters: dict[str, Character] = dataclasses.field(default_factory=dict)

  @property
  def names(self) -> list[str]:
    return sorted(self.characters)

  def prototypes(self) -> np.ndarray:
    """[characters, D] in `names` order."""
    if not self.characters:
      return np.zeros((0, 0), np.float32)
    return np.stack([self.characters[name].prototype for name in self.names])

  def to_json(self) -> dict[str, Any]:
    return {
      "provenance": self.provenance,
      "characters": {
        name: {"count": c.count, "sum": [float(v) for v in c.sum], "pictures": c.pictures}
        for name, c in sorted(self.characters.items())
      },
    }

  @classmethod
  def from_json(cls, record: dict[str, Any]) -> "Gallery":
    return cls(
      provenance=record["provenance"],
      characters={
        name: Character(int(c["count"]), np.asarray(c["sum"], np.float64), list(c["pictures"]))
        for name, c in record["characters"].items()
      },
    )


# What a provenance stored before a key existed meant by its absence: tau_norm was never applied.
_BEFORE = {"tau_norm": 0.0}


def provenance_differences(found: dict[str, Any], expected: dict[str, Any]) -> list[str]:
  """The keys whose stored value (`found`, of a calibration or gallery) differs from the model's.

  Where both hold a `fingerprint` (of the checkpoint's parameters, as answered), it alone
  decides: the same parameters answer the same, whatever the step, path or model label. Where the
  stored one has none (made before fingerprints), the other keys decide, as they did then (a
  missing tau_norm meaning 0).
  """
  if found.get("fingerprint") and expected.get("fingerprint"):
    keys = ["fingerprint"]
  else:
    keys = sorted((set(found) | set(expected)) - {"fingerprint"})
  return [key for key in keys if stored(found, key) != expected.get(key)]


def stored(found: dict[str, Any], key: str) -> Any:
  """A stored provenance's value of `key` (what its absence meant, for one stored before it)."""
  return found.get(key, _BEFORE.get(key))


def _mismatch(found: dict[str, Any], expected: dict[str, Any]) -> list[str]:
  return [
    f"{key}: gallery {stored(found, key)!r}, model {expected.get(key)!r}"
    for key in provenance_differences(found, expected)
  ]


def load(directory: str | os.PathLike, provenance: dict[str, Any]) -> Gallery | None:
  """The gallery under `directory` (None if there is none).

  Raises:
    GalleryMismatch: it was made with another model or checkpoint than `provenance` names.
  """
  path = epath.Path(directory) / GALLERY_FILE
  if not path.exists():
    return None
  return _parsed(path.read_bytes(), path, provenance)


def _parsed(data: bytes, path: epath.Path, provenance: dict[str, Any]) -> Gallery:
  try:
    gallery = Gallery.from_json(json.loads(data.decode("utf-8")))
  except (ValueError, KeyError, TypeError) as error:
    raise GalleryError(f"{path} is not a gallery file ({error}).") from None
  differences = _mismatch(gallery.provenance, provenance)
  if differences:
    raise GalleryMismatch(
      f"{path} was made with another model or checkpoint ("
      + "; ".join(differences)
      + "): its embeddings do not fit this one. Use the model it was made with, or enrol the "
      "characters again for this one (move the gallery away first)."
    )
  return gallery


def stamp(directory: str | os.PathLike) -> tuple[Any, ...] | None:
  """What changes whenever the gallery file under `directory` is written (None: no file).

  Local files: inode, modification time (ns) and size; `update` replaces the file by a rename,
  so each write has a new inode. Object stores: modification time and size.
  """
  path = os.path.join(os.fspath(directory), GALLERY_FILE)
  try:
    if "://" in path:
      found = epath.Path(path).stat()
      return (found.mtime, found.length)
    found = os.stat(path)
  except FileNotFoundError:
    return None
  return (found.st_ino, found.st_mtime_ns, found.st_size)


class Watch:
  """Notices a gallery written by another process (python -m animesion_jax.enroll while a web
  server runs): `poll` re-reads it when its `stamp` changed, at most once per `every_s`."""

  def __init__(
    self,
    directory: str | os.PathLike,
    provenance: Callable[[], dict[str, Any]],
    every_s: float = 1.0,
  ):
    self.directory = directory
    self._provenance = provenance  # Called once, when a gallery is first read.
    self._expected: dict[str, Any] | None = None
    self._every_s = every_s
    self._stamp = stamp(directory)
    self._checked = time.monotonic()

  def due(self) -> bool:
    return time.monotonic() - self._checked >= self._every_s

  def poll(self) -> tuple[bool, "Gallery | None"]:
    """(True, the gallery as stored now) when the file changed since the last poll (a removed
    file: (True, None)); else (False, None).

    Raises:
      GalleryError: the new file is not a gallery, or one of another model (then the next
        change is looked at again).
    """
    self._checked = time.monotonic()
    now = stamp(self.directory)
    if now == self._stamp:
      return False, None
    self._stamp = now
    if now is None:
      return True, None
    if self._expected is None:
      self._expected = self._provenance()
    return True, load(self.directory, self._expected)


@contextlib.contextmanager
def _locked(directory: epath.Path):
  directory.mkdir(parents=True, exist_ok=True)
  with open(directory / _LOCK_FILE, "a") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


def update(
  directory: str | os.PathLike, provenance: dict[str, Any], change: Callable[[Gallery], None]
) -> Gallery:
  """Reads the gallery (or an empty one), applies `change`, writes it back, all under the lock.

  If `change` raises, nothing is written: the gallery stays as it was.
  """
  directory = epath.Path(directory)
  if "://" in os.fspath(directory):
    return _update_object(directory / GALLERY_FILE, provenance, change)
  with _locked(directory):
    gallery = load(directory, provenance) or Gallery(provenance=dict(provenance))
    data = _changed(gallery, provenance, change)
    run_dir.write_atomic(directory / GALLERY_FILE, data)
  return gallery


def _changed(gallery: Gallery, provenance: dict[str, Any], change) -> bytes:
  gallery.provenance = dict(provenance)  # A gallery made before fingerprints gets one.
  change(gallery)
  return json.dumps(gallery.to_json(), ensure_ascii=False).encode("utf-8")


_OBJECT_TRIES = 50  # Writers racing for one gallery object: each try loses only to a new write.


def _update_object(path: epath.Path, provenance: dict[str, Any], change) -> Gallery:
  """`update` for an object store (gs://), which has no locks: read the object and its
  generation, change it, and write it only if its generation is still that one (Cloud Storage's
  ifGenerationMatch; 0: only if it does not exist). A writer that lost to another reads again
  and re-applies its change, so two enrolments at once both land."""
  import fsspec  # pylint: disable=g-import-not-at-top  # gcsfs: what epath reads gs:// with.

  fs = fsspec.filesystem("gs")
  bucket, key = os.fspath(path).split("://", 1)[1].split("/", 1)
  for attempt in range(_OBJECT_TRIES):
    try:
      generation = int(fs.info(os.fspath(path), refresh=True)["generation"])
      # Read after the generation: a newer content than it makes the conditional write fail.
      data = fs.cat_file(os.fspath(path))
      gallery = _parsed(data, path, provenance)
    except FileNotFoundError:
      generation, gallery = 0, Gallery(provenance=dict(provenance))
    data = _changed(gallery, provenance, change)
    try:
      fs.call(
        "POST",
        f"{fs._location}/upload/storage/v1/b/{bucket}/o",  # pylint: disable=protected-access
        uploadType="media",
        name=key,
        ifGenerationMatch=str(generation),
        headers={"Content-Type": "application/octet-stream"},
        data=data,
        json_out=True,
      )
    except FileExistsError:  # 412: another writer came first.
      time.sleep(random.uniform(0.0, 0.05 * (attempt + 1)))
      continue
    fs.invalidate_cache(os.fspath(path))
    return gallery
  raise GalleryError(f"{path}: {_OBJECT_TRIES} other writes came first; try again.")


def enroll(
  directory: str | os.PathLike,
  provenance: dict[str, Any],
  name: str,
  embeddings: np.ndarray,
  pictures: list[str],
  known_names: list[str],
  *,
  refine: bool = False,
) -> Gallery:
  """Adds a character (or, with refine, more pictures of a known or enrolled one).

  Raises:
    GalleryError: an empty name, no pictures, or a name the model or gallery already knows
      without `refine`.
  """
  name = name.strip()
  if not name:
    raise GalleryError("Give the character a name (--name=NAME).")
  embeddings = np.asarray(embeddings, np.float64)
  if embeddings.ndim != 2 or not len(embeddings):
    raise GalleryError(f"No usable picture of {name!r}: nothing enrolled.")

  def change(gallery: Gallery) -> None:
    if not refine and name in known_names:
      raise GalleryError(
        f"{name!r} is one of the model's own classes; pass --refine to add pictures to it anyway."
      )
    if not refine and name in gallery.characters:
      raise GalleryError(
        f"{name!r} is already enrolled ({gallery.characters[name].count} pictures); pass "
        "--refine to add these pictures to it, or --remove it first."
      )
    old = gallery.characters.get(name)
    if old is not None and old.sum.shape != embeddings.shape[1:]:
      raise GalleryMismatch(f"{name!r}: stored embeddings have another size.")
    gallery.characters[name] = Character(
      count=(old.count if old else 0) + len(embeddings),
      sum=(old.sum if old else 0.0) + embeddings.sum(axis=0),
      pictures=(old.pictures if old else []) + list(pictures),
    )

  return update(directory, provenance, change)


def remove(directory: str | os.PathLike, provenance: dict[str, Any], name: str) -> Gallery:
  def change(gallery: Gallery) -> None:
    if name not in gallery.characters:
      raise GalleryError(
        f"{name!r} is not enrolled; enrolled: {', '.join(gallery.names) or 'none'}."
      )
    del gallery.characters[name]

  return update(directory, provenance, change)
