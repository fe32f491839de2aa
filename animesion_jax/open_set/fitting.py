"""Fitting a model's open-set calibration (#18): embeddings of its splits -> calibration.json.

  fitted = fitting.fit_for_run(model, train_source, validation_source)
  answering.save_calibration(fitted, directory)

The training split's embeddings give the class prototypes, the validation split the
temperature, the score and its threshold, and generated no-character pictures the no-character
rule (the numbers are animesion_jax/open_set/calibration.py's). `model` is a loaded
`animesion_jax.Recognizer` (anything with its `device_embed`, `embed`, `mesh`, `config`). The train
command calibrates a finished run (`calibrate.calibrate_trained_run`); `python -m
animesion_jax.calibrate` does it later.
"""

from collections.abc import Sequence
from typing import Any

from absl import logging
import numpy as np

from animesion_jax.data import datasets
from animesion_jax.data import holdout
from animesion_jax.data import pipeline
from animesion_jax.open_set import answering
from animesion_jax.open_set import calibration as calibration_lib
from animesion_jax.open_set import grouping
from animesion_jax.training import evaluation

NO_CHARACTER_PICTURES = 300  # No-character pictures the calibration is fitted with.
_NO_CHARACTER_SEED = 1234  # Benchmarks draw theirs with other seeds.


def embed_source(
  run: Any, source: Sequence[Any], batch_size: int = 256, desc: str = "", keep_logits: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(logits, embeddings, labels) of every record of `source`, in record order, all processes.

  keep_logits=False returns logits of width 0 (the training split of a 3,263-class model would
  otherwise hold gigabytes of them).
  """
  batch_size = max(run.mesh.size, batch_size // run.mesh.size * run.mesh.size)
  batches = pipeline.eval_batches(
    source, global_batch_size=batch_size, image_size=run.config.image_size
  )

  def dispatch():
    for local in batches:  # The recognizer's one jitted embedding forward.
      yield (local["index"], local["label"]), run.device_embed(local["image"])

  parts = {"index": [], "label": [], "logits": [], "embedding": []}
  for (index, label), (logits, embedding) in evaluation.lagged(dispatch(), run.mesh):
    logits = logits if keep_logits else logits[:, :0]
    for key, value in zip(parts, (index, label, logits, embedding)):
      parts[key].append(value)
  rows = {key: evaluation.gather(np.concatenate(values)) for key, values in parts.items()}
  real = rows["index"] >= 0
  order = np.argsort(rows["index"][real], kind="stable")
  rows = {key: value[real][order] for key, value in rows.items()}
  logging.info("Embedded %d pictures%s.", len(rows["index"]), f" ({desc})" if desc else "")
  return rows["logits"], rows["embedding"], rows["label"].astype(np.int64)


def fit_for_run(
  run: Any,
  train_source: Sequence[Any],
  validation_source: Sequence[Any],
  *,
  accept: float = calibration_lib.DEFAULT_ACCEPT,
  batch_size: int = 256,
) -> calibration_lib.Calibration:
  """Fits the calibration of a loaded model from its training and validation records."""
  _, train_embeddings, train_labels = embed_source(
    run, train_source, batch_size, "train", keep_logits=False
  )
  logits, embeddings, labels = embed_source(run, validation_source, batch_size, "validation")
  prototypes = calibration_lib.prototypes(train_embeddings, train_labels, run.num_classes)
  empty = calibration_lib.no_character_pictures(
    NO_CHARACTER_PICTURES, run.config.image_size, _NO_CHARACTER_SEED
  )
  fitted = calibration_lib.fit(
    logits,
    embeddings,
    labels,
    prototypes,
    run.embed(empty, batch_size),
    accept=accept,
    provenance=answering.provenance(run),
  )
  fitted.cluster_distance = grouping.fit_cluster_distance(embeddings, labels)
  fitted.class_counts = [int(n) for n in np.bincount(train_labels, minlength=run.num_classes)]
  fitted.enrolled_quantiles = calibration_lib.enrolment_quantiles(
    train_embeddings, train_labels, embeddings, labels
  )
  return fitted


def calibration_sources(config: Any, builder: Any) -> tuple[Any, Any | None]:
  """(train records, validation records or None) of the model's known classes."""
  train_split = datasets.get_spec(config.dataset).train_split
  fraction = config.get("validation_fraction", 0.0)
  splits = [train_split]
  if "validation" in builder.info.splits or datasets.carves_validation(builder, fraction):
    splits.append("validation")
  sources = {s: datasets.split_source(builder, s, config.dataset, fraction) for s in splits}
  sources, _ = holdout.known_sources(builder, config, sources)
  return sources[train_split], sources.get("validation")
