"""Training losses for long-tailed data: plain softmax, balanced softmax, logit adjustment.

Both long-tail losses add a per-class offset to the logits before the softmax cross-entropy,
during training only (predictions use the raw logits):
  balanced_softmax (Ren et al., NeurIPS 2020): + log(n_j), n_j the training images of class j;
  logit_adjusted (Menon et al., ICLR 2021):    + tau * log(pi_j), pi_j = n_j / sum(n).
With tau = 1 the two give the same loss (they differ by a constant per example, log sum(n)).
The counts are the ones the dataset builders store at build time (metadata 'class_counts').
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

LOSSES = ("softmax", "balanced_softmax", "logit_adjusted")


def logit_offsets(
  loss: str, train_counts: np.ndarray | None, tau: float = 1.0
) -> np.ndarray | None:
  """The per-class logit offsets of `loss` (None for plain softmax), float32 [num_classes].

  Raises:
    ValueError: unknown loss, missing counts, or a class with no training images (its log count
      would be -inf).
  """
  if loss not in LOSSES:
    raise ValueError(f"config.loss={loss!r}: choose one of {list(LOSSES)}.")
  if loss == "softmax":
    return None
  if train_counts is None:
    raise ValueError(f"config.loss={loss!r} needs the training images per class.")
  counts = np.asarray(train_counts, np.float64)
  if (counts <= 0).any():
    empty = np.flatnonzero(counts <= 0)[:10].tolist()
    raise ValueError(
      f"config.loss={loss!r}: classes {empty} have no training images, so their prior is 0 "
      "and log(0) = -inf; use config.loss='softmax' for this dataset."
    )
  if loss == "balanced_softmax":
    return np.log(counts).astype(np.float32)
  return (tau * np.log(counts / counts.sum())).astype(np.float32)


def config_offsets(
  config: ml_collections.ConfigDict, train_counts: np.ndarray | None
) -> np.ndarray | None:
  """`logit_offsets` of the config's loss."""
  return logit_offsets(config.loss, train_counts, config.logit_adjust_tau)


def cross_entropy(
  logits: jnp.ndarray,
  labels: jnp.ndarray,
  label_smoothing: float = 0.0,
  offsets: jnp.ndarray | None = None,
) -> jnp.ndarray:
  """Per-example softmax cross-entropy with integer labels, of logits + offsets (if given)."""
  if offsets is not None:
    logits = logits + jnp.asarray(offsets, logits.dtype)
  if label_smoothing == 0.0:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)
