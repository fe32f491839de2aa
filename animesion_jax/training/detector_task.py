"""What the loop does differently for the head detector (config.task='detect').

Its data are pictures with head boxes (synthetic_scenes), its step detection_train_step (the
loss of detection/heads.py), its evaluation COCO AP50, AP50:95, recall and precision at the
operating threshold (detection/coco.py, pycocotools); everything else (checkpoints, resume,
preemption, summaries, the mesh) is the loop's own.
"""

import functools
from typing import Any

from absl import logging
import ml_collections
import optax

from animesion_jax.data import datasets
from animesion_jax.detection import evaluation as detection_evaluation
from animesion_jax.detection import pipeline as detection_pipeline
from animesion_jax.training import steps

# The detector's heatmap classes (saved as the run's class names).
CLASSES = ("head",)


def scene_sources(config: ml_collections.ConfigDict, builder: Any) -> tuple[Any, dict[str, Any]]:
  """(train records, {eval split: records}) of the scenes dataset."""
  train_source = datasets.data_source(builder, datasets.get_spec(config.dataset).train_split)
  eval_splits = datasets.available_eval_splits(builder, tuple(config.eval_splits))
  return train_source, {split: datasets.data_source(builder, split) for split in eval_splits}


def train_loader(config: ml_collections.ConfigDict, train_source: Any):
  """The checkpointable stream of augmented scene batches (detection/pipeline.py)."""
  return detection_pipeline.train_loader(
    train_source,
    global_batch_size=config.batch_size,
    image_size=config.image_size,
    max_boxes=config.detection.max_boxes,
    min_zoom=config.detection.min_zoom,
    horizontal_flip=config.horizontal_flip,
    seed=config.seed,
    workers=config.data_workers,
  )


def train_step(model: Any, tx: optax.GradientTransformation, config: ml_collections.ConfigDict):
  """The detector's pure train step with the run's model, optimizer and normalisation."""
  return functools.partial(
    steps.detection_train_step, model=model, tx=tx, normalization=config.normalization
  )


def make_detect_fn(model: Any, config: ml_collections.ConfigDict):
  return detection_evaluation.make_detect_fn(
    model, config.normalization, config.detection.max_detections
  )


def evaluate_split(
  config: ml_collections.ConfigDict,
  detect_fn: Any,
  state: steps.TrainState,
  split: str,
  source: Any,
  step: int,
) -> dict[str, float]:
  """COCO metrics of the state's detector on every picture of `source`, logged."""
  threshold = config.detection.score_threshold
  result = detection_evaluation.evaluate_split(
    detect_fn,
    steps.model_variables(state),
    source,
    batch_size=config.eval_batch_size,
    image_size=config.image_size,
    threshold=threshold,
  )
  logging.info(
    "step %d %s: AP50 %.4f AP50:95 %.4f recall %.4f precision %.4f at score %.2f, "
    "no box on %.1f%% of empty pictures (%d pictures)",
    step,
    split,
    result["ap50"],
    result["ap"],
    result["recall"],
    result["precision"],
    threshold,
    100 * result["empty_clean"],
    result["num_examples"],
  )
  return result
