r"""Exports a trained run (or a checkpoint file) as ONNX or StableHLO, with its model.json.

  python -m animesion_jax.export --workdir=runs/quickstart --format=onnx --output_dir=exported/
  python -m animesion_jax.export --workdir=runs/quickstart --format=stablehlo \
      --output_dir=exported_hlo/ [--checkpoint=latest]
  python -m animesion_jax.export --checkpoint=b16_dafre.pth --source=pytorch_vit \
      --class_names=classid_classname.csv --format=onnx --output_dir=exported/

ONNX needs the `export` extra and jax2onnx (docs/export.md). Writes OUTPUT_DIR/model.onnx, or
OUTPUT_DIR/model.stablehlo and variables.msgpack, and OUTPUT_DIR/model.json; prints the largest
difference between the exported model's logits and JAX's on a few random images.
"""

import time

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np

from animesion_jax import recognizer
from animesion_jax import run_dir
from animesion_jax.cli import common
from animesion_jax.export import formats

_CHECK_IMAGES = 2


def define_flags() -> None:
  """The command line flags (defined only when run as a program)."""
  common.define_model_flags(
    "With --source: the dataset's classid_classname.csv (id,name rows) or a JSON list of names."
  )
  common.define_runtime_flags(distributed=False)
  flags.adopt_module_key_flags(common)  # --help lists them with this program's own.
  flags.DEFINE_enum("format", "onnx", sorted(formats.WRITERS), "What to write.")
  flags.DEFINE_string("output_dir", None, "Folder to write into (created if missing).")
  flags.DEFINE_bool(
    "check", True, "Compare the exported model's logits with JAX's on random images."
  )
  flags.mark_flag_as_required("output_dir")


def _max_logit_difference(run: recognizer.Recognizer, format_name: str, output_dir) -> float:
  """Largest |logit difference| of the written model against JAX (float32) on random images."""
  size = int(run.config.image_size)
  images = np.random.default_rng(0).normal(size=(_CHECK_IMAGES, size, size, 3)).astype(np.float32)
  model, variables = formats.float32_model_and_variables(run)
  expected = np.asarray(jax.jit(lambda x: model.apply(variables, x, train=False))(images))
  if format_name == "stablehlo":
    got = np.asarray(formats.load_stablehlo(output_dir)(images))
  else:
    import onnxruntime  # pylint: disable=g-import-not-at-top

    session = onnxruntime.InferenceSession(
      str(output_dir / formats.ONNX_FILE), providers=["CPUExecutionProvider"]
    )
    got = session.run(None, {session.get_inputs()[0].name: images})[0]
  return float(np.abs(got - expected).max())


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  flag = flags.FLAGS
  if not flag["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  common.start_jax(flag)
  try:
    run = common.load_from_flags(flag)
    output_dir = run_dir.resolve(flag.output_dir)
    start = time.perf_counter()
    contents = formats.export(run, flag.format, output_dir)
  except (*common.USER_ERRORS, formats.MissingExporter) as error:
    common.exit_with_user_error("export", error)
  seconds = time.perf_counter() - start
  files = ", ".join(
    str(output_dir / name)
    for key, name in contents["files"].items()
    if key in ("model", "variables")
  )
  print(
    f"Exported {run.description} (step {run.step}, {run.config.model.name}, "
    f"{run.num_classes} classes, {run.config.image_size} px) as {flag.format} in "
    f"{seconds:.1f} s: {files}, {output_dir / 'model.json'}"
  )
  if flag.check:
    difference = _max_logit_difference(run, flag.format, output_dir)
    print(
      f"Largest |logit difference| against JAX on {_CHECK_IMAGES} random images: {difference:.2e}"
    )


if __name__ == "__main__":
  define_flags()
  app.run(main)
