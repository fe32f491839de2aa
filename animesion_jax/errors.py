"""Errors that loading a model raises, defined below every part that raises them.

`animesion_jax` re-exports them beside `Recognizer` and `load_run`; the recognizer, the annotated
pictures of predict and the command line's model flags raise them.
"""

__all__ = ["CheckpointMismatch", "ClassNamesError", "LoadError"]


class LoadError(ValueError):
  """What was given to load a model does not work (the message says why and what to do)."""


class CheckpointMismatch(LoadError):
  """The class names (or settings) given do not fit the checkpoint's model."""


class ClassNamesError(LoadError):
  """A class-names file that cannot be read as class names."""
