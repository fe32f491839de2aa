r"""Converts a checkpoint into one that train, evaluate and predict load as is.

  python tools/convert_checkpoint.py --source=vit_npz --input=ViT-B_16.npz \
      --output=/tmp/vit_b16_173 --num_classes=173 --image_size=128

  python tools/convert_checkpoint.py --source=run --input=runs/b16_dafre \
      --output=exported/b16_dafre [--checkpoint=best|latest]

Sources: vit_npz (original ViT .npz), pytorch_vit (pytorch_pretrained_vit /
Animesion state dicts), torchvision_resnet, animesion (an earlier output, e.g.
to change its class count or image size), run (a training run directory or one
of its checkpoint step directories: exports the trained model). The output
directory holds model.json, variables/ (Orbax) and conversion.json (plus
class_names.json for a run); load it with `convert.load('animesion', DIR)` or
`predict --source=animesion --checkpoint=DIR --class_names=DIR/class_names.json`.
A summary is printed: the architecture found, the parameter count and which
tensors were dropped, resized or re-initialised.
"""

from collections.abc import Sequence
import json
from typing import Any

from absl import app
from absl import flags
from absl import logging
import jax

from animesion_jax import convert
from animesion_jax import recognizer
from animesion_jax import run_dir
from animesion_jax.cli import common
from animesion_jax.convert import conversion as conversion_lib

RUN = recognizer.RUN_SOURCE  # --source of a training run.
_SOURCE = flags.DEFINE_enum("source", None, sorted([*convert.SOURCES, RUN]), "Format of --input.")
_INPUT = flags.DEFINE_string(
  "input",
  None,
  "Checkpoint file (a directory for "
  "the animesion source; a run directory or "
  "checkpoint step directory for run).",
)
_CHECKPOINT = flags.DEFINE_string(
  "checkpoint", "best", "With --source=run and a run directory: 'best' or 'latest'."
)
_OUTPUT = flags.DEFINE_string("output", None, "Directory to write.")
_NUM_CLASSES = flags.DEFINE_integer(
  "num_classes", None, "New class count (zero head); unset keeps the head."
)
_IMAGE_SIZE = flags.DEFINE_integer(
  "image_size",
  None,
  "New image size (resizes a ViT position embedding); unset keeps the checkpoint size.",
)
_NUM_HEADS = flags.DEFINE_integer(
  "num_heads",
  None,
  "ViT attention heads for pytorch_vit files, which do not store them (default hidden / 64).",
)
flags.mark_flags_as_required(["source", "input", "output"])


def format_summary(summary: dict[str, Any]) -> str:
  """Human-readable report of a conversion summary."""
  model = summary["model"]
  fields = ", ".join(f"{k}={v}" for k, v in model["fields"].items())
  lines = [
    f"source:         {summary['source']} {summary['input']}",
    f"architecture:   {model['class']}({fields})",
    f"image size:     {summary['image_size']}",
    f"parameters:     {summary['num_params']:,}",
  ]
  for item in summary["dropped"]:
    lines.append(f"dropped:        {item['key']} {tuple(item['shape'])}: {item['reason']}")
  for item in summary["resized"]:
    lines.append(
      f"resized:        {item['key']} {tuple(item['from'])} -> {tuple(item['to'])} ({item['how']})"
    )
  for item in summary["reinitialised"]:
    lines.append(
      f"re-initialised: {item['key']} {tuple(item['from'])} -> {tuple(item['to'])} ({item['init']})"
    )
  if not (summary["dropped"] or summary["resized"] or summary["reinitialised"]):
    lines.append("unchanged:      every tensor carried over as is")
  lines.extend(f"note:           {note}" for note in summary["notes"])
  return "\n".join(lines)


def load_run(
  path: str, checkpoint: str, *, num_classes: int | None, image_size: int | None
) -> tuple[convert.Conversion, list[str]]:
  """A training run's model as a conversion (with the run's class names)."""
  resolved = run_dir.resolve(path)
  run = run_dir.RunDir(resolved)
  # The trained weights as stored: a conversion carries no inference-time tau-normalisation.
  if run.exists():
    loaded = recognizer.load_run(run, checkpoint, read_open_set=False, tau_norm=0.0)
  else:  # A checkpoint step directory of a run.
    loaded = recognizer.load_checkpoint(resolved, RUN, None, read_open_set=False, tau_norm=0.0)
  summary = conversion_lib.new_summary(RUN, loaded.checkpoint)
  summary["notes"].append(f"step {loaded.step} of the training run {loaded.description}")
  summary["normalization"] = loaded.config.normalization
  variables = jax.device_get(loaded.variables)
  conversion = conversion_lib.from_module(
    summary,
    loaded.model,
    variables,
    loaded.config.image_size,
    num_classes=num_classes,
    new_image_size=image_size,
  )
  names = loaded.class_names if num_classes in (None, loaded.num_classes) else []
  return conversion, names


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    # The printed summary says what matters; Orbax logs every write step.
    logging.set_verbosity(logging.WARNING)
  names = []
  try:
    if _SOURCE.value == RUN:
      if _NUM_HEADS.value is not None:
        raise convert.ConversionError("--num_heads does not apply to a run.")
      conversion, names = load_run(
        _INPUT.value,
        _CHECKPOINT.value,
        num_classes=_NUM_CLASSES.value,
        image_size=_IMAGE_SIZE.value,
      )
    else:
      conversion = convert.load_with_summary(
        _SOURCE.value,
        run_dir.resolve(_INPUT.value),
        convert.Target(_NUM_CLASSES.value, _IMAGE_SIZE.value, _NUM_HEADS.value),
      )
  except common.USER_ERRORS as error:
    common.exit_with_user_error("convert_checkpoint", error)
  output = run_dir.resolve(_OUTPUT.value)
  convert.save(output, conversion.model, conversion.variables, conversion.summary)
  if names:
    (output / "class_names.json").write_text(
      json.dumps(names, indent=0, ensure_ascii=False), encoding="utf-8"
    )
  print(format_summary(conversion.summary))
  print(f"written:        {output}")


if __name__ == "__main__":
  app.run(main)
