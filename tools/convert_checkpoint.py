r"""Converts a checkpoint into one that train, evaluate and predict load as is.

  python tools/convert_checkpoint.py --source=vit_npz --input=ViT-B_16.npz \
      --output=/tmp/vit_b16_173 --num_classes=173 --image_size=128

Sources: vit_npz (original ViT .npz), pytorch_vit (pytorch_pretrained_vit /
Animesion state dicts), torchvision_resnet, animesion (an earlier output, e.g.
to change its class count or image size). The output directory holds
model.json, variables/ (Orbax) and conversion.json; load it with
`convert.load('animesion', DIR)`. A summary is printed: the architecture found,
the parameter count and which tensors were dropped, resized or re-initialised.
"""

import sys
from typing import Any, Sequence

from absl import app
from absl import flags
from absl import logging

from animesion_jax import convert

_SOURCE = flags.DEFINE_enum('source', None, sorted(convert.SOURCES),
                            'Format of --input.')
_INPUT = flags.DEFINE_string('input', None, 'Checkpoint file (a directory for '
                             'the animesion source).')
_OUTPUT = flags.DEFINE_string('output', None, 'Directory to write.')
_NUM_CLASSES = flags.DEFINE_integer(
    'num_classes', None, 'New class count (zero head); unset keeps the head.')
_IMAGE_SIZE = flags.DEFINE_integer(
    'image_size', None, 'New image size (resizes a ViT position embedding); '
    'unset keeps the checkpoint size.')
_NUM_HEADS = flags.DEFINE_integer(
    'num_heads', None, 'ViT attention heads for pytorch_vit files, which do '
    'not store them (default hidden / 64).')
flags.mark_flags_as_required(['source', 'input', 'output'])


def format_summary(summary: dict[str, Any]) -> str:
  """Human-readable report of a conversion summary."""
  model = summary['model']
  fields = ', '.join(f'{k}={v}' for k, v in model['fields'].items())
  lines = [
      f"source:         {summary['source']} {summary['input']}",
      f"architecture:   {model['class']}({fields})",
      f"image size:     {summary['image_size']}",
      f"parameters:     {summary['num_params']:,}",
  ]
  for item in summary['dropped']:
    lines.append(f"dropped:        {item['key']} {tuple(item['shape'])}: "
                 f"{item['reason']}")
  for item in summary['resized']:
    lines.append(f"resized:        {item['key']} {tuple(item['from'])} -> "
                 f"{tuple(item['to'])} ({item['how']})")
  for item in summary['reinitialised']:
    lines.append(f"re-initialised: {item['key']} {tuple(item['from'])} -> "
                 f"{tuple(item['to'])} ({item['init']})")
  if not (summary['dropped'] or summary['resized'] or summary['reinitialised']):
    lines.append('unchanged:      every tensor carried over as is')
  lines.extend(f'note:           {note}' for note in summary['notes'])
  return '\n'.join(lines)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:
    # The printed summary says what matters; Orbax logs every write step.
    logging.set_verbosity(logging.WARNING)
  try:
    conversion = convert.load_with_summary(
        _SOURCE.value, _INPUT.value, num_classes=_NUM_CLASSES.value,
        image_size=_IMAGE_SIZE.value, num_heads=_NUM_HEADS.value)
  except (convert.ConversionError, FileNotFoundError) as e:
    sys.exit(f'convert_checkpoint: {e}')
  convert.save(_OUTPUT.value, conversion.model, conversion.variables,
               conversion.summary)
  print(format_summary(conversion.summary))
  print(f'written:        {_OUTPUT.value}')


if __name__ == '__main__':
  app.run(main)
