"""Test-session set-up that must happen before JAX or TensorFlow are imported."""

import os
import tempfile

# Multi-device code is tested on 8 virtual CPU devices; must be set before jax starts.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Keep TensorFlow (used by tfds) off the few cores JAX needs.
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")

# Compiled programs persist between test runs (a cache: entries are keyed by the program).
os.environ.setdefault(
  "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "animesion_jax_test_xla_cache")
)
# The suite tests the CPU paths (device counts included) even on a machine with an accelerator.
os.environ["JAX_PLATFORMS"] = "cpu"
# Importing torchvision or timm after tensorflow segfaults in one process; the other order works.
# Test modules that need torch import it at their top, so it loads at collection, before any test
# runs code that may import tensorflow (only dataset builds do).

# Every test session builds its data in its own temporary directory (autouse, session-scoped).
import pytest  # noqa: E402

from tests.helpers import session_tmp_dir  # noqa: E402,F401  pylint: disable=unused-import,g-import-not-at-top

# Kind marks that put a test in the slow tier (pyproject.toml's markers).
_SLOW_KINDS = ("e2e", "multiprocess", "browser")


@pytest.hookimpl(tryfirst=True)  # Before `-m` deselects by marks.
def pytest_collection_modifyitems(config, items):
  del config
  for item in items:
    if any(item.get_closest_marker(kind) for kind in _SLOW_KINDS):
      item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def fresh_copy(tmp_path_factory):
  """A fresh copy of the project and its environment, shared by the README-verbatim tests."""
  from tests import readme_commands  # pylint: disable=g-import-not-at-top

  return readme_commands.fresh_copy(tmp_path_factory.mktemp("clone"))


@pytest.fixture(scope="session")
def paper_smoke(fresh_copy):
  """docs/reproduce_paper.md's `--smoke` line run once per session in the fresh copy; its folder."""
  from tests import readme_commands  # pylint: disable=g-import-not-at-top

  copy, env = fresh_copy
  readme_commands.run(readme_commands.paper_smoke_command(), copy, env)
  return copy / "runs" / "paper" / "smoke"


@pytest.fixture(scope="session")
def trained_workdir():
  """The tiny trained run of tests/trained_run.py, trained once per session (do not modify it).

  Tests that use the run (directly or through trained_run's helpers) ask for this fixture, so
  `--durations` lists its training as a setup, not as any test's own time.
  """
  from tests import trained_run  # pylint: disable=g-import-not-at-top

  return trained_run.tiny_trained_workdir()
