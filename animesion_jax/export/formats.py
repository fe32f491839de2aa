"""The model of a run as an ONNX file or as serialized StableHLO, in float32.

Both take float32 NHWC images already normalised as model.json says, with any batch size, and
give float32 logits [batch, classes] (a head detector: its CenterNet output, model_json.py). A run trained in bfloat16 is exported computing in float32
(its parameters are float32 either way).

  ONNX:       model.onnx, through jax2onnx (an opset-23 graph with the weights inside).
  StableHLO:  model.stablehlo (`jax.export`, lowered for CPU, CUDA and TPU) of
              fn(variables, images), and variables.msgpack (flax.serialization); reload with
              `load_stablehlo` (jax.export.deserialize + flax.serialization.msgpack_restore).
"""

from collections.abc import Callable, Sequence
import contextlib
import logging
import os
from typing import Any

from etils import epath
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

from animesion_jax import recognizer
from animesion_jax.export import model_json

ONNX_FILE = "model.onnx"
STABLEHLO_FILE = "model.stablehlo"
VARIABLES_FILE = "variables.msgpack"
ONNX_OPSET = 23
STABLEHLO_PLATFORMS = ("cpu", "cuda", "tpu")
# Loggers that report, as warnings with tracebacks, jax2onnx plugins for libraries not installed
# (Equinox, dm-pix: not used here) and shape stamps onnx-ir drops; neither affects the graph.
_QUIET_LOGGERS = ("jax2onnx.plugins.plugin_system", "onnx_ir.serde")
_INSTALL_HINT = (
  "ONNX export needs the `export` extra and jax2onnx without its dependencies (jax2onnx pins "
  "an older orbax-checkpoint than this package needs; see docs/export.md):\n"
  "  pip install -e '.[export]' && pip install --no-deps jax2onnx==0.17.1"
)


class MissingExporter(ImportError):
  """jax2onnx (or onnx) is not installed."""


def float32_model_and_variables(run: recognizer.Recognizer) -> tuple[Any, dict[str, Any]]:
  """The run's model computing in float32, and its variables as host numpy arrays."""
  model = run.model.clone(dtype=jnp.float32) if hasattr(run.model, "dtype") else run.model
  return model, jax.tree.map(np.asarray, jax.device_get(run.variables))


@contextlib.contextmanager
def _quiet(names: Sequence[str]):
  loggers = [logging.getLogger(name) for name in names]
  levels = [logger.level for logger in loggers]
  for logger in loggers:
    logger.setLevel(logging.ERROR)
  try:
    yield
  finally:
    for logger, level in zip(loggers, levels):
      logger.setLevel(level)


def onnx_proto(run: recognizer.Recognizer) -> Any:
  """The run's model as an onnx.ModelProto with a dynamic batch dimension."""
  with _quiet(_QUIET_LOGGERS):
    try:
      import jax2onnx  # pylint: disable=g-import-not-at-top
    except ImportError as error:
      raise MissingExporter(f"{error}.\n{_INSTALL_HINT}") from None
    model, variables = float32_model_and_variables(run)
    size = int(run.config.image_size)
    proto = jax2onnx.to_onnx(
      lambda images: model.apply(variables, images, train=False),
      inputs=[("batch", size, size, 3)],
      model_name=type(model).__name__,
      opset=ONNX_OPSET,
      input_names=[model_json.INPUT_NAME],
      output_names=[model_json.output_name(run)],
    )
  # jax2onnx stamps some intermediate values with their NHWC shapes where the graph holds them in
  # NCHW; onnxruntime then warns once per value. The annotations are optional: drop them all.
  del proto.graph.value_info[:]
  return proto


def write_onnx(run: recognizer.Recognizer, output_dir: str | os.PathLike) -> dict[str, str]:
  """Writes OUTPUT_DIR/model.onnx; returns model.json's "files"."""
  proto = onnx_proto(run)
  (epath.Path(output_dir) / ONNX_FILE).write_bytes(proto.SerializeToString())
  return {"model": ONNX_FILE}


def exported_stablehlo(
  run: recognizer.Recognizer, platforms: Sequence[str] = STABLEHLO_PLATFORMS
) -> tuple[jax.export.Exported, dict[str, Any]]:
  """jax.export of fn(variables, images) -> logits (a detector: its output) with a symbolic
  batch, and the variables."""
  model, variables = float32_model_and_variables(run)
  size = int(run.config.image_size)
  (batch,) = jax.export.symbolic_shape("batch")

  def logits(variables, images):
    return model.apply(variables, images, train=False).astype(jnp.float32)

  exported = jax.export.export(jax.jit(logits), platforms=tuple(platforms))(
    jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), variables),
    jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32),
  )
  return exported, variables


def write_stablehlo(
  run: recognizer.Recognizer,
  output_dir: str | os.PathLike,
  platforms: Sequence[str] = STABLEHLO_PLATFORMS,
) -> dict[str, str]:
  """Writes OUTPUT_DIR/model.stablehlo and variables.msgpack; returns model.json's "files"."""
  exported, variables = exported_stablehlo(run, platforms)
  output_dir = epath.Path(output_dir)
  (output_dir / STABLEHLO_FILE).write_bytes(exported.serialize())
  (output_dir / VARIABLES_FILE).write_bytes(flax.serialization.msgpack_serialize(variables))
  return {
    "model": STABLEHLO_FILE,
    "variables": VARIABLES_FILE,
    "platforms": ",".join(exported.platforms),
    "call": "jax.export.deserialize(model).call(flax.serialization.msgpack_restore(variables), "
    "images)",
  }


def load_stablehlo(export_dir: str | os.PathLike) -> Callable[[np.ndarray], jax.Array]:
  """images -> logits from an export folder written by `write_stablehlo`."""
  export_dir = epath.Path(export_dir)
  exported = jax.export.deserialize(bytearray((export_dir / STABLEHLO_FILE).read_bytes()))
  variables = flax.serialization.msgpack_restore((export_dir / VARIABLES_FILE).read_bytes())
  return lambda images: exported.call(variables, images)


WRITERS = {"onnx": write_onnx, "stablehlo": write_stablehlo}


def export(
  run: recognizer.Recognizer, format_name: str, output_dir: str | os.PathLike
) -> dict[str, Any]:
  """Writes the model file(s) and model.json into `output_dir`; returns model.json's content."""
  if format_name not in WRITERS:
    raise ValueError(f"format={format_name!r}: choose one of {sorted(WRITERS)}.")
  output_dir = epath.Path(output_dir)
  output_dir.mkdir(parents=True, exist_ok=True)
  files = WRITERS[format_name](run, output_dir)
  contents = model_json.contract(run, format_name, files)
  model_json.write(contents, output_dir)
  return contents
