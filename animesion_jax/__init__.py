"""animesion_jax: anime character recognition in JAX/Flax (a reimplementation of Animesion).

The public entry (docs/python_api.md):

  from animesion_jax import Recognizer, load_run
  model = load_run("runs/quickstart")
  for answer in model.predict(["art.png"]):
    print(answer.character, answer.unknown, answer.confidence)

Names are read from their modules on first use (PEP 562), so `python -m animesion_jax.X`
commands start without importing the model code they do not need.
"""

import importlib

# Public name -> the module that defines it (explicit: no registry filled at import time).
_PUBLIC = {
  "Recognizer": "animesion_jax.recognizer",
  "load_run": "animesion_jax.recognizer",
  "load_checkpoint": "animesion_jax.recognizer",
  "Answer": "animesion_jax.open_set.answering",
  "LoadError": "animesion_jax.errors",
  "CheckpointMismatch": "animesion_jax.errors",
  "ClassNamesError": "animesion_jax.errors",
  "ConfigError": "animesion_jax.config_schema",
  "DamagedCheckpoint": "animesion_jax.training.checkpointing",
  "IncompatibleCheckpoint": "animesion_jax.training.checkpointing",
  "UnreadableImage": "animesion_jax.inference.image_files",
  "OpenSetError": "animesion_jax.open_set.answering",
  "GalleryError": "animesion_jax.open_set.gallery",
  "GalleryMismatch": "animesion_jax.open_set.gallery",
  "ConversionError": "animesion_jax.convert.conversion",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
  if name not in _PUBLIC:
    raise AttributeError(f"module 'animesion_jax' has no attribute {name!r}")
  value = getattr(importlib.import_module(_PUBLIC[name]), name)
  globals()[name] = value  # Looked up once.
  return value


def __dir__() -> list[str]:
  return sorted([*globals(), *__all__])
