"""XLA flags this project sets by default, each only where the installed jaxlib accepts it.

XLA reads XLA_FLAGS once, when the first backend starts, and aborts the process on a flag it does
not know. So a flag is added only after a child process has started XLA with it (the answer is
cached per jaxlib version and flag), and only when the user's own XLA_FLAGS do not set it: a
user's flags always win. `apply_default_flags()` must run before the backend initialises (the
first `jax.devices()` or computation); every CLI calls it first thing in `main`.

The flag today: `--xla_cpu_experimental_ynn_fusion_type=-individual_convolution`. On CPU, XLA
sends single convolutions (among them the filter gradients of a CNN's train step) to YNNPACK,
which ran them at ~2 GFLOP/s on AVX2 machines; without it ResNet-18's train step went from 0.32x
to 0.90x torchvision's speed (docs/recipe_differences.md). It changes which kernel computes a
convolution, not what is computed. Other backends ignore it.
"""

from collections.abc import MutableMapping
import json
import os
import subprocess
import sys

from absl import logging

# (flag name, value): added to XLA_FLAGS where jaxlib accepts it and the user did not set it.
DEFAULT_FLAGS = (("xla_cpu_experimental_ynn_fusion_type", "-individual_convolution"),)
_PROBE_TIMEOUT_S = 120
# Starts XLA's CPU backend, which parses XLA_FLAGS (and aborts on an unknown flag).
_PROBE_CODE = "import jax; jax.devices('cpu')"


def _cache_file() -> str:
  root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(root, "animesion_jax", "xla_flags.json")


def _jaxlib_version() -> str:
  import jaxlib  # pylint: disable=g-import-not-at-top  # Cheap: no backend, no jax.

  return jaxlib.__version__


def user_sets(flags_value: str, name: str) -> bool:
  """Whether the XLA_FLAGS string `flags_value` sets flag `name` (any value, any spelling)."""
  for word in flags_value.split():
    key = word.lstrip("-").split("=", 1)[0]
    if key in (name, f"no{name}"):
      return True
  return False


def jaxlib_accepts(flag: str) -> bool:
  """Whether XLA starts with XLA_FLAGS=`flag` ('--name=value'), asked in a child process.

  The child sees this flag alone (not the user's XLA_FLAGS), so the answer depends only on jaxlib.
  Any failure (an unknown flag aborts the child; a timeout; no interpreter) answers False.
  """
  env = dict(os.environ)
  env["XLA_FLAGS"] = flag
  env["JAX_PLATFORMS"] = "cpu"  # Asks the parser, without starting (or waiting for) accelerators.
  try:
    probe = subprocess.run(
      [sys.executable, "-c", _PROBE_CODE],
      env=env,
      capture_output=True,
      timeout=_PROBE_TIMEOUT_S,
      check=False,
    )
  except (OSError, subprocess.SubprocessError):
    return False
  return probe.returncode == 0


def _read_cache(path: str) -> dict[str, bool]:
  try:
    with open(path, encoding="utf-8") as f:
      cached = json.load(f)
    return {k: v for k, v in cached.items() if isinstance(v, bool)}
  except (OSError, ValueError, AttributeError):
    return {}


def _write_cache(path: str, cached: dict[str, bool]) -> None:
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w", encoding="utf-8") as f:
      json.dump(cached, f, indent=1, sort_keys=True)
    os.replace(temporary, path)
  except OSError as error:  # A read-only home: probe again next time, no harm done.
    logging.info("Could not cache the XLA flag probe in %s: %s", path, error)


def accepted(flag: str, cache_path: str | None = None) -> bool:
  """`jaxlib_accepts(flag)`, remembered per jaxlib version in the user's cache directory."""
  cache_path = cache_path or _cache_file()
  key = f"jaxlib {_jaxlib_version()} {flag}"
  cached = _read_cache(cache_path)
  if key not in cached:
    cached[key] = jaxlib_accepts(flag)
    _write_cache(cache_path, cached)
  return cached[key]


def apply_default_flags(
  environ: MutableMapping[str, str] | None = None,
  cache_path: str | None = None,
  defaults: tuple[tuple[str, str], ...] = DEFAULT_FLAGS,
) -> list[str]:
  """Adds each of `defaults` that jaxlib accepts and XLA_FLAGS lacks to XLA_FLAGS.

  Returns the flags added. Never raises: a flag that cannot be checked is left out. Set
  ANIMESION_XLA_DEFAULT_FLAGS=0 to add none.
  """
  environ = os.environ if environ is None else environ
  if environ.get("ANIMESION_XLA_DEFAULT_FLAGS", "1") == "0":
    return []
  added = []
  for name, value in defaults:
    current = environ.get("XLA_FLAGS", "")
    if user_sets(current, name):
      continue
    flag = f"--{name}={value}"
    try:
      ok = accepted(flag, cache_path)
    except Exception as error:  # pylint: disable=broad-except  # A default must never stop a run.
      logging.info("XLA flag %s not checked (%s); left out.", flag, error)
      ok = False
    if ok:
      environ["XLA_FLAGS"] = f"{current} {flag}".strip()
      added.append(flag)
    else:
      logging.info("jaxlib %s does not accept %s; left out.", _jaxlib_version(), flag)
  return added


def prepare(compilation_cache_dir: str | None) -> None:
  """What every process that runs JAX does first (a command's start_jax, a Ray actor): XLA's
  default flags, before the backend starts, then the compilation cache (unless
  JAX_COMPILATION_CACHE_DIR is set), so a repeated run does not compile again."""
  apply_default_flags()
  if compilation_cache_dir and not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    import jax  # pylint: disable=g-import-not-at-top  # After the flags.

    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(compilation_cache_dir))
