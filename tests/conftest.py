"""Test-session set-up that must happen before JAX or TensorFlow are imported."""

import os

# Multi-device code is tested on 8 virtual CPU devices; must be set before jax starts.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Keep TensorFlow (used by tfds) off the few cores JAX needs.
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")

# Importing torchvision after tensorflow segfaults in one process; the other order works.
import torch  # noqa: E402,F401  pylint: disable=unused-import,g-import-not-at-top
import torchvision  # noqa: E402,F401  pylint: disable=unused-import,g-import-not-at-top

# Every test session builds its data in its own temporary directory (autouse, session-scoped).
from tests.helpers import session_tmp_dir  # noqa: E402,F401  pylint: disable=unused-import,g-import-not-at-top
