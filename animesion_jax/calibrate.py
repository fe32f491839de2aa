r"""Fits a model's calibrated confidence and "unknown" threshold, and stores them with it.

  python -m animesion_jax.calibrate --workdir=runs/quickstart [--checkpoint=best] [--accept=0.95]
  python -m animesion_jax.calibrate --checkpoint=b16_dafre.pth --source=pytorch_vit \
      --class_names=classid_classname.csv --dataset=dafre --data_dir=DIR --output_dir=DIR

Training does this by itself at the end of a run that has a validation split; this command
calibrates runs trained before that, another checkpoint of a run, or a converted checkpoint
(written to --output_dir, which predict, enroll, organize and serve then take as --gallery).
Uses the training split (class prototypes of the embeddings) and the validation split (the
temperature, the score that separates known pictures from unknown ones best, and the threshold
that names --accept of the known validation pictures); see animesion_jax/open_set/calibration.py.
Writes calibration.json and calibration.npz, and prints the metrics.
"""

from collections.abc import Sequence
import os
from typing import Any

from absl import app
from absl import flags
from absl import logging
import jax

from animesion_jax import recognizer
from animesion_jax import run_dir
from animesion_jax.cli import common
from animesion_jax.data import datasets
from animesion_jax.open_set import answering
from animesion_jax.open_set import calibration
from animesion_jax.open_set import fitting
from animesion_jax.training import loop
from animesion_jax.training import model_setup


def format_metrics(fitted: calibration.Calibration) -> str:
  """A text table of the calibration's metrics, per score."""
  scores = fitted.metrics["scores"]
  lines = [
    f"temperature {fitted.temperature:.3f}, cosine scale {fitted.cosine_scale:.2f}; kept score "
    f"{fitted.score!r}, threshold {fitted.threshold:.4f} (names {100 * fitted.accept:.0f}% of "
    f"{fitted.metrics['validation_pictures']} known validation pictures)",
    f"{'score':12}{'AUROC own class out':>21}{'AUROC no character':>20}"
    f"{'FPR95 own out':>15}{'FPR95 no char':>15}",
  ]
  for name in calibration.SCORES:
    row = scores[name]
    lines.append(
      f"{name:12}{row['auroc_own_class_removed']:>21.4f}{row['auroc_no_character']:>20.4f}"
      f"{row['fpr95_own_class_removed']:>15.4f}{row['fpr95_no_character']:>15.4f}"
    )
  rule = fitted.metrics.get("no_character_rule")
  if rule:
    lines.append(
      f"no-character rule: margin {rule['margin']:.3f} (rejects "
      f"{100 * rule['known_validation_rejected']:.2f}% of known validation pictures)"
    )
  for kind, row in fitted.metrics["probabilities"].items():
    before, after = row["before"], row["after"]
    lines.append(
      f"{kind} probabilities: NLL {before['nll']:.4f} -> {after['nll']:.4f}, "
      f"ECE {before['ece']:.4f} -> {after['ece']:.4f}"
    )
  return "\n".join(lines)


def calibrate_trained_run(
  config: Any, workdir: str | os.PathLike, devices: Sequence[jax.Device] | None = None
) -> calibration.Calibration | None:
  """Fits and stores the calibration of a finished run's best checkpoint (the train command
  calls it after training); None when the run has no validation split to fit on."""
  data = loop.open_data(config)
  if "validation" not in data.eval_sources:
    return None
  run = recognizer.load_run(workdir, "best", devices=devices, read_open_set=False)
  batch_size = int(run.config.get("eval_batch_size", 256))
  fitted = fitting.fit_for_run(
    run, data.train_source, data.eval_sources["validation"], batch_size=batch_size
  )
  answering.save_calibration(fitted, run.workdir.path)
  logging.info(
    "Calibrated step %s: temperature %.3f, score %s, threshold %.4f (accepts %.0f%% of known "
    "validation pictures).",
    run.step,
    fitted.temperature,
    fitted.score,
    fitted.threshold,
    100 * fitted.accept,
  )
  return fitted


def train_and_calibrate(
  config: Any, workdir: str | os.PathLike, devices: Sequence[jax.Device] | None = None
) -> dict[str, Any]:
  """What `python -m animesion_jax.main` does: train (resuming), then, once the run is complete,
  fit its confidence and "unknown" threshold on the validation split. Returns the results."""
  results = loop.train_and_evaluate(config, os.fspath(workdir), devices)
  if results["completed"] and config.task == "classify":  # A detector has nothing to calibrate.
    calibrate_trained_run(config, workdir, devices)
  return results


def define_flags() -> None:
  common.define_model_flags(
    "With --source: the dataset's classid_classname.csv or a JSON list of names."
  )
  common.define_runtime_flags(distributed=False)
  flags.adopt_module_key_flags(common)  # --help lists them with this program's own.
  flags.DEFINE_string("dataset", None, "With --source: the dataset whose splits calibrate it.")
  flags.DEFINE_string("data_dir", "", "With --source: TFDS data directory of --dataset.")
  flags.DEFINE_string("dataset_config", "", "With --source: builder config of --dataset.")
  flags.DEFINE_string(
    "output_dir", None, "Where to write (default: --gallery, or the run directory)."
  )
  flags.DEFINE_integer("batch_size", 256, "Pictures per device call.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  flag = flags.FLAGS
  common.check_model_flags(flag)
  if flag.source is not None and (not flag.dataset or not (flag.output_dir or flag.gallery)):
    raise app.UsageError("--source needs --dataset (with --data_dir) and --output_dir.")
  accept = 0.95 if flag.accept is None else flag.accept
  if not 0.0 < accept <= 1.0:
    raise app.UsageError(f"--accept={accept} must be in (0, 1].")
  if not flag["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  common.start_jax(flag)
  try:
    run = common.load_from_flags(flag, read_open_set=False)  # The one being fitted.
    if run.workdir is not None and flag.source is None:
      config = run.config
      builder = datasets.open_dataset(config.dataset, config.data_dir, config.dataset_config)
    else:
      config = model_setup.with_defaults(run.config)
      config.dataset = flag.dataset
      data_dir = run_dir.resolve(flag.data_dir) if flag.data_dir else ""
      builder = datasets.open_dataset(flag.dataset, str(data_dir), flag.dataset_config)
      if list(builder.info.features["label"].names) != list(run.class_names):
        raise recognizer.LoadError(
          f"The class names of {run.description} are not dataset {flag.dataset!r}'s "
          "(same names, same order): its class ids would not mean the dataset's."
        )
    train_source, validation_source = fitting.calibration_sources(config, builder)
    if validation_source is None:
      raise recognizer.LoadError(
        f"Dataset {config.dataset!r} has no validation split to calibrate on; train with "
        "--config.validation_fraction=0.1 (or calibrate with a dataset that has one)."
      )
    fitted = fitting.fit_for_run(
      run, train_source, validation_source, accept=accept, batch_size=flag.batch_size
    )
    output = answering.store_dir(run, flag.output_dir or flag.gallery)
  except common.USER_ERRORS as error:
    common.exit_with_user_error("calibrate", error)
  answering.save_calibration(fitted, output)
  print(format_metrics(fitted))
  print(f"Wrote {output / run_dir.CALIBRATION_FILE}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
