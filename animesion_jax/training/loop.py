"""train_and_evaluate: the training loop (data-parallel jit over a device mesh)."""

from collections.abc import Callable, Sequence
import dataclasses
import functools
from typing import Any

from absl import logging
import jax
import ml_collections
import numpy as np

from animesion_jax import run_dir as run_dir_lib
from animesion_jax import sharding
from animesion_jax.data import datasets
from animesion_jax.data import device_cache
from animesion_jax.data import holdout
from animesion_jax.data import pipeline
from animesion_jax.training import checkpointing
from animesion_jax.training import config_validation
from animesion_jax.training import detector_task
from animesion_jax.training import evaluation
from animesion_jax.training import jit_step
from animesion_jax.training import losses
from animesion_jax.training import model_setup
from animesion_jax.training import preemption
from animesion_jax.training import steps
from animesion_jax.training import summaries as summaries_lib


class NonFiniteLoss(RuntimeError):
  """The loss or gradients became NaN/Inf and the config says to stop."""


@dataclasses.dataclass
class Data:
  """The dataset of a run, opened once."""

  train_source: Any
  eval_sources: dict[str, Any]  # Split name -> records, in report order.
  class_names: list[str]
  steps_per_epoch: int
  total_steps: int
  # Per-class logit offsets of the config's loss (losses.py); None for plain softmax.
  logit_offsets: np.ndarray | None = None
  # Label of each train record, for class-balanced sampling; None otherwise.
  train_labels: np.ndarray | None = None


def open_data(config: ml_collections.ConfigDict) -> Data:
  builder = datasets.open_dataset(
    config.dataset, config.data_dir, config.dataset_config, config.build_dataset_if_missing
  )
  if config.task == "detect":
    train_source, eval_sources = detector_task.scene_sources(config, builder)
    steps_per_epoch = pipeline.steps_per_epoch(len(train_source), config.batch_size)
    return Data(
      train_source=train_source,
      eval_sources=eval_sources,
      class_names=list(detector_task.CLASSES),
      steps_per_epoch=steps_per_epoch,
      total_steps=(
        config.num_train_steps
        if config.num_train_steps > 0
        else config.num_epochs * steps_per_epoch
      ),
    )
  source = functools.partial(
    datasets.split_source,
    builder,
    dataset=config.dataset,
    validation_fraction=config.validation_fraction,
  )
  train_split = datasets.get_spec(config.dataset).train_split
  eval_splits = datasets.available_eval_splits(builder, tuple(config.eval_splits))
  if (
    datasets.carves_validation(builder, config.validation_fraction)
    and "validation" in config.eval_splits
  ):
    eval_splits.insert(0, "validation")
  # Held-out classes (config.open_set) leave every split and the model's classes.
  sources, class_names = holdout.known_sources(
    builder, config, {split: source(split) for split in [train_split, *eval_splits]}
  )
  train_source = sources[train_split]
  # The short last batch is trained on (padded and masked), as the original DataLoader did.
  steps_per_epoch = pipeline.steps_per_epoch(len(train_source), config.batch_size)
  carve = dict(dataset=config.dataset, validation_fraction=config.validation_fraction)
  # The counts and labels are the dataset's; held-out classes leave them as they left the splits.
  held = holdout.from_config(config, list(builder.info.features["label"].names))
  offsets = None
  if config.loss != "softmax":
    counts = holdout.known_counts(datasets.stored_train_counts(builder, **carve), held)
    offsets = losses.config_offsets(config, counts)
    logging.info("Loss %s: logit offsets %.3f..%.3f.", config.loss, offsets.min(), offsets.max())
  train_labels = None
  if config.class_balanced_sampling:
    train_labels = holdout.known_labels(datasets.train_labels(builder, **carve), held)
  return Data(
    train_source=train_source,
    eval_sources={split: sources[split] for split in eval_splits},
    class_names=class_names,
    steps_per_epoch=steps_per_epoch,
    total_steps=(
      config.num_train_steps if config.num_train_steps > 0 else config.num_epochs * steps_per_epoch
    ),
    logit_offsets=offsets,
    train_labels=train_labels,
  )


def check_resumable(run: run_dir_lib.RunDir, config: ml_collections.ConfigDict) -> None:
  """A run directory with checkpoints must be resumed with a config that fits them."""
  if run.exists() and checkpointing.step_dirs(run):
    differences = checkpointing.config_differences(run.load_config(), config)
    if differences:
      raise config_validation.ConfigError(
        f"{run.path} holds checkpoints of a different run; resuming would not fit them:\n  "
        + "\n  ".join(differences)
        + "\nUse another --workdir or the run's original settings."
      )


def train_batches(
  config: ml_collections.ConfigDict, data: Data, mesh
) -> tuple[Any, Callable[[int], dict[str, jax.Array]]]:
  """(checkpointable iterator or None, step -> global batch)."""
  if config.task == "detect":
    iterator = iter(detector_task.train_loader(config, data.train_source))
    return iterator, lambda _: sharding.to_global_batch(next(iterator), mesh)
  augment = dict(
    global_batch_size=config.batch_size,
    image_size=config.image_size,
    resize_margin=config.resize_margin,
    horizontal_flip=config.horizontal_flip,
    color_jitter=config.color_jitter,
    seed=config.seed,
    workers=config.data_workers,
  )
  if config.data_on_device:
    cache = device_cache.DeviceCache(data.train_source, mesh=mesh, **augment)
    logging.info("Training split cached on the devices: %d examples.", cache.num_examples)
    return None, cache.batch  # Batches are a function of the step: nothing to checkpoint.
  iterator = iter(
    pipeline.train_loader(data.train_source, class_balanced_labels=data.train_labels, **augment)
  )
  return iterator, lambda _: sharding.to_global_batch(next(iterator), mesh)


@dataclasses.dataclass
class Loop:
  """What the loop's steps share: the run's files, checkpoints, evaluation and summaries."""

  config: ml_collections.ConfigDict
  data: Data
  mesh: Any
  checkpoints: checkpointing.Checkpoints
  summaries: summaries_lib.Summaries
  progress: summaries_lib.Progress
  eval_fn: Callable[..., Any]

  def epoch(self, step: int) -> float:
    return step / self.data.steps_per_epoch

  def log_train(self, step: int, train_metrics: Any) -> None:
    values = {k: float(v) for k, v in train_metrics.compute().items()}
    values["images_per_second"] = self.progress.log(step, self.epoch(step), values)
    self.summaries.write(step, "train", values, epoch=self.epoch(step))

  def evaluate(self, state: steps.TrainState, step: int) -> dict[str, dict[str, float]]:
    if self.config.task == "detect":
      return self.evaluate_detector(state, step)
    results = {}
    with self.progress.evaluating():
      for split in self.data.eval_sources:
        batches = pipeline.eval_batches(
          self.data.eval_sources[split],
          global_batch_size=self.config.eval_batch_size,
          image_size=self.config.image_size,
          workers=self.config.data_workers,
        )
        results[split] = evaluation.evaluate_batches(state, self.eval_fn, batches, self.mesh)[0]
        self.summaries.write(step, split, results[split], epoch=self.epoch(step))
        logging.info(
          "step %d %s: top1 %.4f top5 %.4f loss %.4f (%d examples)",
          step,
          split,
          results[split]["top1"],
          results[split]["top5"],
          results[split]["loss"],
          results[split]["num_examples"],
        )
    return results

  def evaluate_detector(self, state: steps.TrainState, step: int) -> dict[str, dict[str, float]]:
    results = {}
    with self.progress.evaluating():
      for split, source in self.data.eval_sources.items():
        results[split] = detector_task.evaluate_split(
          self.config, self.eval_fn, state, split, source, step
        )
        self.summaries.write(step, split, results[split], epoch=self.epoch(step))
    return results

  def save(
    self,
    step: int,
    state: steps.TrainState,
    train_iter: Any,
    *,
    force: bool,
    metrics: dict[str, float] | None = None,
  ) -> bool:
    """Saves when forced or when a save policy says so (asked at every step: a collective)."""
    if not force and not self.checkpoints.should_save(step):
      return False
    check_finite(state, self.config, self.checkpoints)  # Never checkpoint a run that must stop.
    return self.checkpoints.save(
      step, state, train_iter, {"epoch": self.epoch(step)}, metrics=metrics
    )


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str, devices: Sequence[jax.Device] | None = None
) -> dict[str, Any]:
  """Trains (resuming from `workdir` if it holds a checkpoint), evaluates, writes results.json.

  Args:
    config: the run's config (see animesion_jax/config_schema.py).
    workdir: the run directory (relative, absolute, `~` or gs://).
    devices: devices of the mesh (default: all).

  Returns:
    The results dictionary also written to `workdir/results.json`.
  """
  run = run_dir_lib.RunDir(workdir)
  devices = list(jax.devices() if devices is None else devices)
  config_validation.validate(config, num_devices=len(devices))
  mesh = sharding.create_mesh(devices, fsdp_size=config.fsdp_size)
  data = open_data(config)
  check_resumable(run, config)
  setup = model_setup.create(
    config, len(data.class_names), mesh, data.steps_per_epoch, data.total_steps
  )
  config = setup.config  # With the numerics an init_from checkpoint dictates.
  run.save_config(config)
  run.save_class_names(data.class_names)
  checkpoints = checkpointing.Checkpoints(
    run,
    keep=config.keep_checkpoints,
    every_steps=config.checkpoint_every_steps,
    every_minutes=config.checkpoint_every_minutes,
  )
  train_iter, fetch_batch = train_batches(config, data, mesh)
  state = setup.state
  restored = checkpoints.restore_newest(setup.abstract_state, train_iter)
  if restored is not None:
    state, _, _ = restored
    logging.warning("Resumed from %s at step %d.", checkpoints.run.checkpoints_dir, int(state.step))
  start_step = int(state.step)
  run.drop_metrics_after(start_step)  # Steps after the checkpoint are trained (and logged) again.
  logging.info(
    "Training %s on %s: %d classes, %d train examples, %d steps (%d per epoch), %d devices.",
    config.model.name,
    config.dataset,
    len(data.class_names),
    len(data.train_source),
    data.total_steps,
    data.steps_per_epoch,
    mesh.size,
  )
  loop = Loop(
    config=config,
    data=data,
    mesh=mesh,
    checkpoints=checkpoints,
    summaries=summaries_lib.Summaries(run),
    progress=summaries_lib.Progress(data.total_steps, start_step, config.batch_size),
    eval_fn=(
      detector_task.make_detect_fn(setup.model, config)
      if config.task == "detect"
      else evaluation.make_eval_fn(setup.model, config.normalization)
    ),
  )
  train_fns = {
    mode: functools.partial(jit_step.jit_train_step, setup, config, mesh, mode, data.logit_offsets)
    for mode in (True, False)
  }  # Compiled on first use.
  try:
    state, step, eval_results = run_steps(
      loop, state, train_fns, train_iter, fetch_batch, start_step
    )
  finally:  # Also after a stop signal or an error: nothing may keep the process from exiting.
    checkpoints.wait()
    checkpoints.close()
    loop.summaries.close()
    if train_iter is not None:
      train_iter.close()  # Stops grain's prefetch threads (and workers).
  results = {
    **eval_results,
    "config": config.to_dict(),
    "steps": step,
    "completed": step >= data.total_steps,
    "best": checkpoints.best(),
  }
  if step >= data.total_steps:
    run.save_results(results)
  return results


def run_steps(
  loop: Loop,
  state: steps.TrainState,
  train_fns: dict[bool, Callable[[], Any]],
  train_iter: Any,
  fetch_batch: Callable[[int], Any],
  start_step: int,
):
  """Trains from `start_step` to the end (or a halt); returns (state, step, last eval results).

  `train_fns[model_train_mode]()` builds the jitted step; with
  config.original_eval_mode_after_first_epoch the model trains in eval mode after the first
  evaluation, as the original code did.
  """
  config, total_steps = loop.config, loop.data.total_steps
  eval_every = max(1, int(round(config.eval_every_epochs * loop.data.steps_per_epoch)))
  compiled = {}
  step, train_metrics, eval_results = start_step, None, {}
  with preemption.StopRequest() as stop:
    next_batch = fetch_batch(step) if step < total_steps else None
    while step < total_steps:
      # Between log steps nothing may wait for the device: the guard turns any implicit
      # transfer (a hidden sync) into an error when config.transfer_guard='disallow'.
      mode = not (config.original_eval_mode_after_first_epoch and step >= eval_every)
      train_fn = compiled[mode] = compiled.get(mode) or train_fns[mode]()
      with jax.transfer_guard(config.transfer_guard):
        state, step_metrics = train_fn(state, next_batch)
        train_metrics = step_metrics if train_metrics is None else train_metrics.merge(step_metrics)
      step += 1
      if step % config.log_every_steps == 0 or step == total_steps:
        check_finite(state, config, loop.checkpoints)
        loop.log_train(step, train_metrics)
        train_metrics = None
      metrics = None
      if step % eval_every == 0 or step == total_steps:
        eval_results = loop.evaluate(state, step)
        if "validation" in eval_results:  # Never select a model on the test split.
          # The detector is ranked by its validation AP50, under the same key.
          key = "ap50" if config.task == "detect" else "top1"
          metrics = {checkpointing.BEST_METRIC: eval_results["validation"][key]}
      stopping = stop.should_stop(step)
      halting = 0 < config.halt_after_steps <= step - start_step
      loop.save(
        step,
        state,
        train_iter,
        metrics=metrics,
        force=stopping or halting or metrics is not None or step == total_steps,
      )
      if stopping:
        loop.checkpoints.wait()
        logging.warning("Saved step %d after a stop signal; run the same command to resume.", step)
        raise preemption.Preempted(step)
      if halting:
        logging.info("Halting after %d steps (config.halt_after_steps); rerun to resume.", step)
        break
      if step < total_steps:
        with jax.transfer_guard(config.transfer_guard):
          next_batch = fetch_batch(step)  # Host work overlaps the step dispatched above.
  if step >= total_steps and not eval_results:
    eval_results = loop.evaluate(state, step)  # Resumed at the very end: report the final model.
  return state, step, eval_results


def check_finite(
  state: steps.TrainState, config: ml_collections.ConfigDict, checkpoints: checkpointing.Checkpoints
) -> None:
  """Stops the run once a NaN/Inf step happened, unless the config allows skipping them."""
  bad = int(state.nonfinite_steps)
  if bad == 0:
    return
  first = int(state.first_nonfinite_step)
  if config.skip_nonfinite_steps:
    logging.warning(
      "%d steps had a NaN/Inf loss or gradient and were skipped (first: step %d).", bad, first
    )
    return
  checkpoints.wait()
  last = checkpoints.latest_step()
  where = (
    f"{checkpoints.run.checkpoints_dir / str(last)}"
    if last is not None
    else "none (no checkpoint saved yet)"
  )
  raise NonFiniteLoss(
    f"Loss or gradient became NaN/Inf at step {first}; that update was not applied. Last good "
    f"checkpoint: {where}. Lower the learning rate or set "
    "--config.skip_nonfinite_steps=True to skip such steps."
  )
