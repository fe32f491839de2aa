"""The package's import graph: no cycle, and no library module imports a command line module.

Read from the source with `ast` (every import statement, function-level ones included), so the
test needs no import and takes well under a second.
"""

import ast
import functools
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "animesion_jax"
# Modules that define absl flags (when run as programs); only other CLIs may import them.
CLI_MODULES = {
  "animesion_jax.main",
  "animesion_jax.evaluate",
  "animesion_jax.predict",
  "animesion_jax.calibrate",
  "animesion_jax.enroll",
  "animesion_jax.organize",
  "animesion_jax.batch",
  "animesion_jax.video",
  "animesion_jax.cli.common",
  "animesion_jax.serve.__main__",
  "animesion_jax.export.__main__",
}
# The package's top level holds what users run or import (commands, the Python API, the config
# schema, a few foundations); everything else lives in a folder by role (README: code map).
MAX_TOP_LEVEL_MODULES = 15
# Parts that training (the loop's library) must never import.
NOT_FOR_TRAINING = ("animesion_jax.inference", "animesion_jax.open_set", "animesion_jax.cli")
FLAG_LIBRARIES = ("absl.flags", "absl.app", "ml_collections.config_flags")


def _module_name(path: pathlib.Path) -> str:
  parts = ("animesion_jax", *path.relative_to(PACKAGE).with_suffix("").parts)
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, pathlib.Path]:
  return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: pathlib.Path, modules: dict[str, pathlib.Path]) -> set[str]:
  """Every module `path` imports: package modules by name, others by their dotted name."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      assert node.level == 0, f"{path}: relative import of {node.module}"
      for alias in node.names:
        candidate = f"{node.module}.{alias.name}"
        if candidate in modules:  # from animesion_jax import recognizer
          found.add(candidate)
        elif node.module.startswith("animesion_jax"):  # from animesion_jax.convert import Target
          found.add(node.module)
        else:  # from absl import flags: absl and absl.flags
          found.update((node.module, candidate))
  return found


@functools.cache
def import_graph() -> dict[str, set[str]]:
  """{module: imported modules}, over every module of the package."""
  modules = _modules()
  return {name: _imports(path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One import cycle among the graph's own modules ([a, b, ..., a]), or None."""
  state, stack = {}, []

  def visit(node: str) -> list[str] | None:
    state[node] = "open"
    stack.append(node)
    for child in sorted(graph[node] & graph.keys()):
      if child == node:
        continue
      if state.get(child) == "open":
        return stack[stack.index(child) :] + [child]
      if child not in state and (cycle := visit(child)):
        return cycle
    stack.pop()
    state[node] = "done"
    return None

  for node in sorted(graph):
    if node not in state and (cycle := visit(node)):
      return cycle
  return None


def test_the_graph_is_read_as_python_would():
  graph = import_graph()
  assert "animesion_jax.recognizer" in graph["animesion_jax.predict"]
  assert "animesion_jax.data.datasets" in graph["animesion_jax.training.model_setup"]
  assert "absl.flags" in graph["animesion_jax.cli.common"]
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a", "x"}}) == ["a", "b", "c", "a"]
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_in_the_package():
  assert find_cycle(import_graph()) is None


@pytest.mark.parametrize("module", sorted(set(_modules()) - CLI_MODULES))
def test_library_modules_import_no_cli_module_and_no_flags(module):
  imported = import_graph()[module]
  assert not imported & CLI_MODULES, f"{module} imports {sorted(imported & CLI_MODULES)}"
  assert not imported & set(FLAG_LIBRARIES), f"{module} imports a flags library"


def part_of(module: str) -> str:
  """The first-level part a module belongs to: a folder (animesion_jax.training) or a top-level
  module (animesion_jax.recognizer); the package's own __init__ is the part animesion_jax."""
  return ".".join(module.split(".")[:2])


def part_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
  """{part: parts it imports}, over the package's modules (imports of the package's
  __init__, the public entry, count as its own part)."""
  parts: dict[str, set[str]] = {}
  for module, imported in graph.items():
    mine = part_of(module)
    parts.setdefault(mine, set())
    parts[mine].update(part_of(m) for m in imported if m.startswith("animesion_jax"))
    parts[mine].discard(mine)
  return parts


def test_part_graph_is_read_by_folder():
  parts = part_graph(
    {
      "animesion_jax.training.loop": {"animesion_jax.training.steps", "animesion_jax.data.x"},
      "animesion_jax.training.steps": set(),
      "animesion_jax.data.x": {"numpy"},
      "animesion_jax.recognizer": {"animesion_jax.training.loop"},
    }
  )
  assert parts["animesion_jax.training"] == {"animesion_jax.data"}
  assert parts["animesion_jax.recognizer"] == {"animesion_jax.training"}
  assert find_cycle({**parts, "animesion_jax.data": {"animesion_jax.recognizer"}}) is not None


def test_no_cycle_between_first_level_parts():
  graph = {
    part: imported
    for part, imported in part_graph(import_graph()).items()
    if part != "animesion_jax"  # The public entry imports what it re-exports, nothing imports it.
  }
  assert find_cycle(graph) is None, find_cycle(graph)


def test_nothing_in_the_package_imports_the_public_entry():
  importers = [m for m, imported in import_graph().items() if "animesion_jax" in imported]
  assert importers == [], f"{importers} import animesion_jax's __init__ (a cycle through it)"


def test_at_most_15_modules_at_the_top_level():
  top = sorted(p.name for p in PACKAGE.glob("*.py"))
  assert len(top) <= MAX_TOP_LEVEL_MODULES, top


def test_training_imports_no_inference_open_set_or_cli_code():
  graph = import_graph()
  for module in (m for m in graph if m.startswith("animesion_jax.training")):
    bad = sorted(m for m in graph[module] if m.startswith(NOT_FOR_TRAINING))
    assert not bad, f"{module} imports {bad}"


def test_every_folder_says_whether_it_is_internal():
  for init in sorted(PACKAGE.glob("*/__init__.py")):
    doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) or ""
    assert doc.startswith(("Internal", "Public")), f"{init}: docstring should start Internal/Public"
