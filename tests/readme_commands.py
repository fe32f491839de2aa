"""The README's (and docs/') own command lines, run verbatim in a fresh copy of the project.

tests/conftest.py turns these into session fixtures, so each heavy artefact (the quick-start run,
the paper smoke run) is made once per test session and shared by every test that checks it.
"""

import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SKIP = (".git", ".ci-venv", ".venv", "runs", "__pycache__", ".pytest_cache", "*.egg-info")


def readme_commands(heading: str, doc: str = "README.md") -> list[str]:
  """The command lines of the first ```bash block after `heading` in `doc` (README.md or docs/)."""
  text = open(os.path.join(REPO, doc), encoding="utf-8").read()
  section = text[text.index(heading) :]
  block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
  lines = block.replace("\\\n", " ").splitlines()
  return [
    line.split("  #")[0].strip() for line in lines if line.strip() and not line.startswith("#")
  ]


def fresh_copy(root: pathlib.Path) -> tuple[pathlib.Path, dict[str, str]]:
  """A copy of the project (as a clone would be) and an environment with its own TFDS folder."""
  copy = root / "animesion_jax"
  shutil.copytree(REPO, copy, ignore=shutil.ignore_patterns(*_SKIP))
  env = {**os.environ, "TFDS_DATA_DIR": str(root / "tensorflow_datasets")}
  env.pop("XLA_FLAGS", None)  # One CPU device, as on a newcomer's laptop.
  env.pop("PYTHONPATH", None)  # The package is imported from the copy, as after a clone.
  return copy, env


def run(command: str, cwd, env, timeout: int = 1500) -> str:
  """Runs one README command line with this interpreter as `python`; returns its output."""
  argv = shlex.split(command)
  assert argv[0] == "python", command
  process = subprocess.run(
    [sys.executable, *argv[1:]],
    cwd=cwd,
    env=env,
    text=True,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    timeout=timeout,
  )
  assert process.returncode == 0, f"{command}\n{process.stdout[-4000:]}"
  return process.stdout


def paper_smoke_command() -> str:
  """docs/reproduce_paper.md's smoke line."""
  (command,) = [
    c
    for c in readme_commands(
      "`tools/reproduce_paper.py` runs whole tables", "docs/reproduce_paper.md"
    )
    if "--smoke" in c
  ]
  return command
