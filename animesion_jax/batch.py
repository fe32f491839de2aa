r"""Recognises a whole collection with Ray: Parquet rows of answers, continued after a crash.

  pip install -e ".[ray]"
  python -m animesion_jax.batch --workdir=runs/quickstart --input=my_pictures/ \
      --output_dir=answers [--input='more/*.png'] [--ray_address=ADDR] [--embeddings] \
      [--accept=0.9] [--top_k=5] [--batch_size=64] [--actors=N]

Inputs are folders (searched recursively), files and globs, local or gs://. Ray Data reads and
decodes the files in tasks; an actor pool (one actor per GPU where the cluster has GPUs, else
one per node) loads the run's best checkpoint, calibration and gallery once per actor and
answers batches as predict does. The answers are written to --output_dir as Parquet parts of
--part_rows rows, each atomically; a file that cannot be read gets a row with its `error`. Running the
same command again answers only the pictures not yet in --output_dir (after a crash, or with new
pictures), so the output holds each picture once. Without --ray_address a local Ray is started
(no dashboard); with one (e.g. ray://head:10001 or auto) the job runs on that cluster. Sort the
output with `python -m animesion_jax.organize --from_batch=OUT --output_dir=SORTED`.
docs/batch.md has the output's columns, cluster set-ups and timings.
"""

import glob
import os
import sys

from absl import app
from absl import flags
from absl import logging
from etils import epath

from animesion_jax.cli import common
from animesion_jax.distributed import job
from animesion_jax.distributed import rows


def define_flags() -> None:
  common.define_runtime_flags(distributed=False)  # --compilation_cache_dir, used by the actors.
  flags.adopt_module_key_flags(common)
  flags.DEFINE_string("workdir", None, "Training run directory (its best checkpoint answers).")
  flags.DEFINE_multi_string(
    "input", [], "A folder, file or glob of pictures, local or gs:// (repeatable)."
  )
  flags.DEFINE_string("output_dir", None, "Where the Parquet parts are written (required).")
  flags.DEFINE_string(
    "ray_address", None, "A Ray cluster to join (e.g. auto, ray://HEAD:10001); default: local."
  )
  flags.DEFINE_bool("embeddings", False, "Also write each picture's L2-normalised embedding.")
  flags.DEFINE_float(
    "accept", None, "Share of known pictures to name (default: the run's calibration)."
  )
  flags.DEFINE_integer("top_k", 5, "Names (with probabilities) kept per picture.")
  flags.DEFINE_integer("batch_size", 64, "Pictures per decode task and per actor call.")
  flags.DEFINE_integer(
    "actors", None, "Recognizer actors (default: one per GPU, or one per node without GPUs)."
  )
  flags.DEFINE_integer(
    "part_rows", job.PART_ROWS, "Rows per Parquet part (a crash loses at most one part's answers)."
  )
  flags.DEFINE_integer("num_cpus", None, "CPUs of a local Ray (default: this machine's).")


def expand(given: str) -> list[str]:
  """A glob's matches (sorted; local or gs://), or the input itself when it has no wildcard."""
  if not any(c in given for c in "*?["):
    return [given]
  if "://" not in given:
    return sorted(glob.glob(os.path.expanduser(given), recursive=True)) or [given]
  parts = given.split("/")
  first = next(i for i, part in enumerate(parts) if any(c in part for c in "*?["))
  root = epath.Path("/".join(parts[:first]))
  return sorted(os.fspath(p) for p in root.glob("/".join(parts[first:]))) or [given]


def main(argv):
  flag = flags.FLAGS
  inputs = [found for given in [*flag.input, *argv[1:]] for found in expand(given)]
  if not inputs:
    raise app.UsageError("Give the pictures with --input=FOLDER_FILE_OR_GLOB (repeatable).")
  if not flag.workdir:
    raise app.UsageError("Give --workdir=RUN (a training run directory).")
  if not flag.output_dir:
    raise app.UsageError("Give --output_dir=DIR (where the Parquet parts are written).")
  if min(flag.top_k, flag.batch_size, flag.part_rows) < 1:
    raise app.UsageError("--top_k, --batch_size and --part_rows must be at least 1.")
  if not flag["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  try:
    summary = job.run(
      flag.workdir,
      inputs,
      flag.output_dir,
      address=flag.ray_address,
      top_k=flag.top_k,
      batch_size=flag.batch_size,
      embeddings=flag.embeddings,
      accept=flag.accept,
      actors=flag.actors,
      compilation_cache_dir=flag.compilation_cache_dir,
      part_rows=flag.part_rows,
      num_cpus=flag.num_cpus,
    )
  except (*common.USER_ERRORS, rows.BatchOutputError) as error:
    common.exit_with_user_error("batch", error)
  print(job.describe(summary, flag.output_dir))
  if summary.listed == 0:
    sys.exit("batch: no picture found (see the messages above).")
  if summary.errors and not summary.answered and not summary.already_done:
    sys.exit("batch: no picture could be read (see the messages above).")


if __name__ == "__main__":
  define_flags()
  app.run(main)
