#!/usr/bin/env bash
# Checks this project on a bare accelerator box (JAX, flax, optax, orbax-checkpoint, tensorboard
# installed; no network) in at most ~8 minutes, with tools/device_check.py.
#
# 1. Beforehand, on a machine that reaches the package index, fetch the wheels the box lacks
#    (run-path packages only: no TensorFlow), for the box's Python:
#      tools/device_check.sh --download wheels 3.12
# 2. On the box, from the repository root (the wheels folder travels with the working tree):
#      tools/device_check.sh                      # wheels/, full sizes, device_check.json
#      WHEELS=dir SCALE=tiny OUT=x.json BUDGET_S=300 tools/device_check.sh   # a CPU rehearsal
# It installs only the wheels of distributions that are not installed yet (offline, no
# dependency resolution), checks that the run path imports, then runs the check.
set -euo pipefail
cd "$(dirname "$0")/.."

# What the run path needs beyond JAX/flax/optax/orbax/tensorboard (tfds ArrayRecord sources,
# grain, clu.metrics, ml_collections, matplotlib for evaluation figures) and their small
# dependencies that such a box lacks. TensorFlow, apache-beam and mlcroissant are not needed.
RUN_PATH_PACKAGES=(
  tensorflow-datasets array_record grain clu ml_collections
  dm-tree attrs wrapt immutabledict simple-parsing docstring_parser tensorflow-metadata
  googleapis-common-protos termcolor toml cloudpickle portpicker einops promise six
  requests urllib3 idna certifi charset-normalizer tqdm
  matplotlib contourpy cycler fonttools kiwisolver pyparsing python-dateutil importlib_resources
)
PYTHON="${PYTHON:-python3}"

if [[ "${1:-}" == "--download" ]]; then
  dest="${2:?usage: tools/device_check.sh --download DIR [PYTHON_VERSION]}"
  version="${3:-3.12}"
  mkdir -p "$dest"
  # Binary wheels for the box's Python and platform; promise has only a source release, so it is
  # built here into a (pure-Python) wheel.
  for package in "${RUN_PATH_PACKAGES[@]}"; do
    if [[ "$package" == promise ]]; then
      "$PYTHON" -m pip wheel --quiet --no-deps -w "$dest" promise
    else
      "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: -d "$dest" \
        --python-version "$version" --platform manylinux_2_28_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 "$package"
    fi
  done
  # OpenCV is 60 MB and optional (Pillow decodes without it; host colour jitter and face detection
  # need it): fetched only when asked (EXTRA_PACKAGES="opencv-python-headless").
  for package in ${EXTRA_PACKAGES:-}; do
    "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: -d "$dest" \
      --python-version "$version" --platform manylinux_2_28_x86_64 "$package"
  done
  du -sh "$dest"
  exit 0
fi

WHEELS="${WHEELS:-wheels}"
missing=()
if [[ -d "$WHEELS" ]]; then
  for wheel in "$WHEELS"/*.whl; do
    [[ -e "$wheel" ]] || continue
    name="$(basename "$wheel" | cut -d- -f1)"
    if ! "$PYTHON" -c "import importlib.metadata as m, sys; m.distribution(sys.argv[1])" \
        "$name" 2>/dev/null; then
      missing+=("$wheel")
    fi
  done
fi
if ((${#missing[@]})); then
  echo "[device_check] installing ${#missing[@]} missing wheels from $WHEELS"
  "$PYTHON" -m pip install --quiet --no-index --no-deps "${missing[@]}"
else
  echo "[device_check] nothing to install from '$WHEELS'"
fi

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PYTHON" -c "import animesion_jax.training.loop, animesion_jax.evaluate, animesion_jax.predict" ; then
  echo "[device_check] the run path does not import (above: the missing module). Fetch its wheel" \
       "with tools/device_check.sh --download (EXTRA_PACKAGES=... for more) and rerun." >&2
  exit 2
fi

exec "$PYTHON" tools/device_check.py --scale="${SCALE:-full}" --out="${OUT:-device_check.json}" \
  --budget_s="${BUDGET_S:-450}" --workdir="${WORKDIR:-/tmp/device_check}"
