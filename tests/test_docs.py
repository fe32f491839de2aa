"""The README and docs/ as a newcomer reads them: short, every link lands, CI runs what they say."""

import pathlib
import re

import pytest

from tests import readme_commands

ROOT = pathlib.Path(readme_commands.REPO)
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_readme_reads_in_one_sitting():
  lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
  assert len(lines) <= 300, len(lines)
  headings = [line for line in lines if line.startswith("## ")]
  # What it is, install, quick start, tests, results, then the code map before any detail.
  assert headings.index("## Code map") < headings.index("## Documentation"), headings


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_relative_link_lands(page):
  text = page.read_text(encoding="utf-8")
  for target in re.findall(r"\]\(([^)\s]+)\)", text):
    if re.match(r"[a-z]+:", target) or target.startswith("#"):
      continue
    path = (page.parent / target.split("#")[0]).resolve()
    assert path.exists(), f"{page.name} links to {target}, which does not exist"


def test_no_link_to_a_home_the_project_does_not_have():
  for path in [*PAGES, ROOT / "notebooks" / "quickstart.ipynb"]:
    assert "github.com/animesion-jax" not in path.read_text(encoding="utf-8"), path


def test_ci_runs_the_readmes_test_command_then_the_slow_tiers():
  (line,) = readme_commands.readme_commands("Install the test extras")
  ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
  assert line in ci, line
  assert ci.index(line) < ci.index("python -m pytest -q tests -m slow")


def _code_map() -> str:
  text = (ROOT / "README.md").read_text(encoding="utf-8")
  section = text[text.index("## Code map") :]
  start = section.index("```\nanimesion_jax/\n")
  return section[start : section.index("\n```\n", start)]


def test_code_map_names_every_folder_and_top_level_module():
  package = ROOT / "animesion_jax"
  code_map = _code_map()
  named = set(re.findall(r"[\w.]+/|\w+\.py", code_map))
  folders = {p.name + "/" for p in package.iterdir() if (p / "__init__.py").is_file()}
  modules = {p.name for p in package.glob("*.py")}
  assert folders <= named, f"folders missing from the README's code map: {folders - named}"
  assert modules <= named, f"modules missing from the README's code map: {modules - named}"
  # And the map names nothing that is gone.
  every_module = {p.name for folder in (package, ROOT / "configs") for p in folder.rglob("*.py")}
  assert {n for n in named if n.endswith(".py")} <= every_module
