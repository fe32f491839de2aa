"""setup.py accepts the Python and JAX releases users have, and keeps TensorFlow out of the run path."""

import ast
import pathlib

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
import pytest

SETUP = pathlib.Path(__file__).resolve().parents[1] / "setup.py"


def _setup_lists() -> dict[str, list[str]]:
  """The module-level list literals of setup.py (read, not executed)."""
  tree = ast.parse(SETUP.read_text())
  lists = {}
  for node in tree.body:
    if isinstance(node, ast.Assign) and isinstance(node.value, (ast.List, ast.BinOp, ast.Dict)):
      try:
        lists[node.targets[0].id] = ast.literal_eval(node.value)
      except ValueError:
        pass  # TEST_REQUIRES = BUILD_REQUIRES + [...]: not a literal.
  return lists


def _requirements() -> dict[str, Requirement]:
  return {
    Requirement(line).name.lower(): Requirement(line) for line in _setup_lists()["INSTALL_REQUIRES"]
  }


@pytest.mark.parametrize(
  "name,version",
  [
    ("jax", "0.10.2"),
    ("jax", "0.11.2"),
    ("jax", "0.12.0"),
    ("jax", "0.12.7"),
    ("jaxlib", "0.11.2"),
    ("jaxlib", "0.12.3"),
    ("flax", "0.12.8"),
    ("flax", "0.13.0"),
    ("optax", "0.3.0"),
    ("orbax-checkpoint", "0.13.1"),
    ("numpy", "2.0.2"),
    ("numpy", "2.4.6"),
  ],
)
def test_accepts_current_and_newer_releases(name, version):
  assert _requirements()[name].specifier.contains(version), (name, version)


@pytest.mark.parametrize("name,version", [("jax", "0.9.0"), ("opencv-python-headless", "5.0.0")])
def test_rejects_known_incompatible_releases(name, version):
  assert not _requirements()[name].specifier.contains(version), (name, version)


def test_python_versions():
  text = SETUP.read_text()
  python_requires = SpecifierSet(text.split('python_requires="')[1].split('"')[0])
  assert [v for v in ("3.10", "3.11", "3.12", "3.13") if python_requires.contains(v)] == [
    "3.11",
    "3.12",
    "3.13",
  ]
  for minor in ("3.11", "3.12", "3.13"):
    assert f"Programming Language :: Python :: {minor}" in text


def test_tensorflow_only_in_the_build_extra():
  lists = _setup_lists()
  names = {Requirement(line).name.lower() for line in lists["INSTALL_REQUIRES"]}
  assert not names & {"tensorflow", "tensorflow-cpu", "apache-beam", "mlcroissant"}
  build = {Requirement(line).name.lower() for line in lists["BUILD_REQUIRES"]}
  assert {"tensorflow-cpu", "apache-beam", "mlcroissant"} <= build


def test_accelerator_extras_map_to_jax_extras():
  extras = _setup_lists()["ACCELERATOR_EXTRAS"]
  for name in ("cuda12", "cuda13", "tpu"):
    (line,) = extras[name]
    requirement = Requirement(line)
    assert requirement.name == "jax" and requirement.extras == {name}
    assert requirement.specifier.contains("0.12.1") and requirement.specifier.contains("0.10.2")
