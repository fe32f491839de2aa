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
  "animesion_jax.cli_common",
  "animesion_jax.serve.__main__",
  "animesion_jax.export.__main__",
}
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
  assert "animesion_jax.data.datasets" in graph["animesion_jax.model_setup"]
  assert "absl.flags" in graph["animesion_jax.cli_common"]
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a", "x"}}) == ["a", "b", "c", "a"]
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_in_the_package():
  assert find_cycle(import_graph()) is None


@pytest.mark.parametrize("module", sorted(set(_modules()) - CLI_MODULES))
def test_library_modules_import_no_cli_module_and_no_flags(module):
  imported = import_graph()[module]
  assert not imported & CLI_MODULES, f"{module} imports {sorted(imported & CLI_MODULES)}"
  assert not imported & set(FLAG_LIBRARIES), f"{module} imports a flags library"
