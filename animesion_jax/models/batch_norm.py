"""The models' BatchNorm (torch's settings), and one update of its running statistics per batch
when a train step splits the batch into microbatches (gradient accumulation).
"""

from typing import Any

import flax
import flax.linen as nn
import jax.numpy as jnp

# Flax's momentum weights the old statistics, torch's (0.1) the new batch: the same update.
MOMENTUM = 0.9
EPSILON = 1e-5


def batch_norm(train: bool, dtype: Any, name: str) -> nn.BatchNorm:
  """torch's BatchNorm2d defaults (momentum 0.1, epsilon 1e-5); statistics and scale in float32."""
  return nn.BatchNorm(
    use_running_average=not train,
    momentum=MOMENTUM,
    epsilon=EPSILON,
    dtype=dtype,
    param_dtype=jnp.float32,
    name=name,
  )


def merge_microbatch_updates(updates: Any, momentum: float = MOMENTUM) -> Any:
  """The running statistics after one update from the whole batch.

  `updates` is the 'batch_stats' tree with a leading microbatch axis: microbatch k's update
  m * old + (1 - m) * s_k of the SAME old statistics, s_k its (equal-sized) microbatch's mean or
  biased variance. The whole batch's mean is the average of the microbatch means, so the average
  of the updates is its update; its variance also counts the spread of the microbatch means,
  Var_k(mean_k) = Var_k(update of the mean) / (1 - m)^2, added with weight (1 - m).

  What remains different from one unsplit batch: each layer's input was normalised with its
  microbatch's statistics (as any accumulation does), so layers after the first BatchNorm see
  slightly different activations, and their statistics differ accordingly.
  """
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(updates))
  merged = {}
  for path, stacked in flat.items():
    merged[path] = jnp.mean(stacked, axis=0)
    mean_path = path[:-1] + ("mean",)
    if path[-1] == "var" and mean_path in flat:
      spread = jnp.var(flat[mean_path], axis=0) / (1.0 - momentum)
      merged[path] = merged[path] + spread
  return flax.traverse_util.unflatten_dict(merged)
