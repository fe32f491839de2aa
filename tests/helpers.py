"""Shared test set-up: a tiny built synthetic dataset and a tiny training config.

Every test session gets its own temporary directory (`session_tmp_dir`, a session-scoped
fixture that tests/conftest.py uses for every session), so data built by an older builder in an
earlier run can never be picked up. Its path travels in the environment, so the training
subprocesses some tests start (their config files call `tiny_config`) use the same data.
"""

import fcntl
import functools
import importlib.util
import os
import pathlib
import sys
from types import ModuleType

import ml_collections
import pytest

from configs import quickstart

# The repository root: subprocesses import animesion_jax, configs and tests from it.
REPO = str(pathlib.Path(__file__).resolve().parents[1])

# The session's temporary directory; set by `session_tmp_dir`, inherited by subprocesses.
SESSION_DIR_ENV = "ANIMESION_JAX_TEST_SESSION_DIR"


@pytest.fixture(scope="session", autouse=True)
def session_tmp_dir(tmp_path_factory):
  """This test session's own directory for built data and shared runs (under pytest's basetemp)."""
  path = tmp_path_factory.mktemp("session")
  previous = os.environ.get(SESSION_DIR_ENV)
  os.environ[SESSION_DIR_ENV] = str(path)
  yield path
  if previous is None:
    os.environ.pop(SESSION_DIR_ENV, None)
  else:
    os.environ[SESSION_DIR_ENV] = previous


def session_dir(name: str) -> str:
  """`name` under this test session's directory (created if needed)."""
  root = os.environ.get(SESSION_DIR_ENV)
  if not root:
    raise RuntimeError(
      f"{SESSION_DIR_ENV} is not set: run the tests with pytest (tests/conftest.py "
      "gives every session its own temporary directory)."
    )
  path = os.path.join(root, name)
  os.makedirs(path, exist_ok=True)
  return path


@functools.cache
def _built(data_dir: str) -> str:
  from animesion_jax.data import datasets  # pylint: disable=g-import-not-at-top

  # Training subprocesses (two at once in the multi-process test) may be the first to ask:
  # one builds, the others wait and find it built.
  with open(f"{data_dir}.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    datasets.open_dataset("synthetic_characters", data_dir, "small", build_if_missing=True)
  return data_dir


def synthetic_data_dir() -> str:
  """The 'small' synthetic dataset (560/112/224 images), built once per test session."""
  return _built(session_dir("tfds"))


def write_test_pictures(
  folder: str | os.PathLike, count: int, *, start: int = 0, prefix: str = ""
) -> list[str]:
  """Test-split images `start`, ..., `start + count - 1` of the small synthetic dataset (the
  tiny configs' and the trained run's) as PNG files FOLDER/PREFIX00.png, ...; their paths."""
  from animesion_jax.data import datasets  # pylint: disable=g-import-not-at-top

  builder = datasets.open_dataset("synthetic_characters", synthetic_data_dir(), "small")
  source = datasets.data_source(builder, "test")
  os.makedirs(folder, exist_ok=True)
  paths = [os.path.join(folder, f"{prefix}{i:02d}.png") for i in range(start, start + count)]
  for i, path in zip(range(start, start + count), paths):
    with open(path, "wb") as f:
      f.write(source[i]["image"])
  return paths


def subprocess_env(*first: str | os.PathLike, **extra: str) -> dict[str, str]:
  """This process's environment for a subprocess that imports the project: PYTHONPATH is the
  folders `first`, then the repository root, then the inherited PYTHONPATH; `extra` variables are
  added (or replace inherited ones)."""
  paths = [*map(str, first), REPO, os.environ.get("PYTHONPATH", "")]
  return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p), **extra}


def tiny_config(**overrides) -> ml_collections.ConfigDict:
  """A seconds-long run: a 2-layer ViT on 16 px synthetic images."""
  config = quickstart.get_config()
  config.data_dir = synthetic_data_dir()
  config.dataset_config = "small"
  config.image_size = 16
  config.resize_margin = 4
  config.model.patch_size = 4
  config.model.hidden_size = 32
  config.model.mlp_dim = 64
  config.model.num_heads = 2
  config.model.num_layers = 2
  config.batch_size = 32
  config.eval_batch_size = 64
  config.num_train_steps = 4
  config.learning_rate = 0.05
  config.warmup_epochs = 0.0
  config.log_every_steps = 2
  config.checkpoint_every_steps = 2
  config.eval_every_epochs = 100
  for key, value in overrides.items():
    config[key] = value
  return config


def hiding_sitecustomize(module: str, attempts_env: str = "") -> str:
  """The text of a sitecustomize.py that makes `module` look not installed.

  Its import finder answers None, as for a package that is not installed. With `attempts_env`, each
  `import module` (not mere importlib.util.find_spec checks, as etils.epath makes to pick a backend
  for gs:// paths; they import nothing) is appended to the file that environment variable names.
  """
  return f"""
import importlib.machinery, os, sys

class _Hidden(importlib.machinery.PathFinder):
  @classmethod
  def find_spec(cls, fullname, path=None, target=None):
    if fullname == {module!r} or fullname.startswith({module + "."!r}):
      frame, importing = sys._getframe(1), False
      while frame is not None and not importing:
        importing, frame = frame.f_code.co_name == "_find_and_load", frame.f_back
      if importing and {attempts_env!r}:
        with open(os.environ[{attempts_env!r}], "a") as log:
          log.write(f"{{fullname}} {{' '.join(sys.argv)}}\\n")
      return None
    return super().find_spec(fullname, path, target)

sys.meta_path[:] = [_Hidden if finder is importlib.machinery.PathFinder else finder
                    for finder in sys.meta_path]
"""


def load_tool(name: str) -> ModuleType:
  """tools/NAME.py as a module (tools/ is not a package), its sibling modules importable as when
  it runs as a script."""
  tools = pathlib.Path(__file__).resolve().parents[1] / "tools"
  if str(tools) not in sys.path:
    sys.path.insert(0, str(tools))
  spec = importlib.util.spec_from_file_location(name, tools / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module
