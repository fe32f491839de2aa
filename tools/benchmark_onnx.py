"""onnxruntime's side of `benchmark.py --mode=eval --compare=onnxruntime`.

The benchmarked model (its freshly initialised variables) is exported with animesion_jax.export
into a temporary folder and run by tools/onnx_predict.py's code: the evaluation step is the
normalisation of the uint8 batch, the session's forward pass and the top-1 accuracy, as JAX's; the
predict pass is onnx_predict over the same folder of JPEGs as JAX's predict, at the same batch size.
"""

from collections.abc import Callable
import os
import tempfile
import time
from typing import Any

import ml_collections
import numpy as np
import onnx_predict  # tools/ sibling: this script's directory is on sys.path.

from animesion_jax import recognizer
from animesion_jax import sharding
from animesion_jax.export import formats


def onnx_model(
  config: ml_collections.ConfigDict, model: Any, variables: Any, mesh: Any
) -> tuple[onnx_predict.Model, dict[str, Any]]:
  """The model exported to ONNX and loaded in onnxruntime, and the export's time and size."""
  run = recognizer.Recognizer(
    config=config,
    model=model,
    variables=variables,
    class_names=[f"class {i}" for i in range(model.num_classes)],
    mesh=mesh,
    checkpoint="(random initialisation)",
  )
  with tempfile.TemporaryDirectory(prefix="benchmark_onnx_") as folder:
    start = time.perf_counter()
    formats.export(run, "onnx", folder)
    facts = {
      "export_s": time.perf_counter() - start,
      "model_bytes": os.path.getsize(os.path.join(folder, formats.ONNX_FILE)),
    }
    return onnx_predict.Model(folder), facts


def benchmark_onnx_eval(
  ort_model: onnx_predict.Model, images: np.ndarray, labels: np.ndarray
) -> tuple[dict[str, Any], Callable[[int], float]]:
  """Facts and a window timer of the evaluation step in onnxruntime."""

  def step() -> float:
    logits = ort_model.logits(images)
    return float(np.mean(logits.argmax(axis=1) == labels))

  def window(num_steps: int) -> float:
    start = time.perf_counter()
    for _ in range(num_steps):
      step()
    return time.perf_counter() - start

  facts = {
    "version": onnx_predict.onnxruntime.__version__,
    "providers": ort_model.session.get_providers(),
    # 0: onnxruntime's default, one thread per physical core.
    "intra_op_threads": ort_model.session.get_session_options().intra_op_num_threads,
    "first_step_s": window(1),
  }
  return facts, window


def onnx_predict_timer(
  ort_model: onnx_predict.Model, files: list[Any], config: ml_collections.ConfigDict, mesh: Any
) -> Callable[[], float]:
  """A timer of onnx_predict.predict_files over `files` (image_files.ImageFile), in batches of
  the size JAX's predict runs."""
  batch_size = sharding.round_up_batch(config.batch_size, mesh.size)
  pairs = [(file.path, file.relative) for file in files]

  def window() -> float:
    start = time.perf_counter()
    results, errors = onnx_predict.predict_files(ort_model, pairs, batch_size=batch_size)
    if errors or len(results) != len(pairs):
      raise RuntimeError(f"onnx_predict classified {len(results)} of {len(pairs)}: {errors}")
    return time.perf_counter() - start

  return window
