"""The output layer every model family ends with: linear (the paper's) or cosine (NormFace).

'linear': a Dense layer, logits = W^T f + b.
'cosine': logits = s * cos(f, w_j): the features f and each class's weight vector w_j are L2-
  normalised (no bias), times a fixed scale s (NormFace, Wang et al. 2017). The class weights then
  live in the same unit-norm space as the picture embeddings (`models.logits_and_embedding`), which
  is the premise of weight imprinting: an enrolled prototype is a class weight like the others.
Optionally a margin on the target class's logit, in training only (`margin_logits`, applied by the
train step, which has the labels): 'additive' s * (cos - m) (CosFace, Wang et al. 2018) or
'angular' s * cos(theta + m) (ArcFace, Deng et al. 2019). Evaluation and inference use the plain
scaled cosines.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

HEADS = ("linear", "cosine")
MARGIN_TYPES = ("none", "additive", "angular")

_EPSILON = 1e-12
# The cosine head's weights start as a scaled normal: any non-zero start works (the weights are
# normalised), a zero one does not (the normalisation's gradient at zero is undefined).
_COSINE_KERNEL_INIT = nn.initializers.normal(stddev=0.01)


def l2_normalize(x: jax.Array, axis: int = -1) -> jax.Array:
  """float32 `x` divided by its L2 norm along `axis` (zero vectors stay zero)."""
  x = x.astype(jnp.float32)
  norm = jnp.linalg.norm(x, axis=axis, keepdims=True)
  return x / jnp.maximum(norm, _EPSILON)


class CosineClassifier(nn.Module):
  """logits = scale * normalize(features) @ normalize(kernel, per class); float32 [N, classes].

  The parameter is called `kernel` ([features, classes], as a Dense layer's) so that code reading
  a classifier's weights (tau-normalisation, freezing the backbone) treats both heads alike.
  """

  num_classes: int
  scale: float

  @nn.compact
  def __call__(self, features: jax.Array) -> jax.Array:
    kernel = self.param(
      "kernel", _COSINE_KERNEL_INIT, (features.shape[-1], self.num_classes), jnp.float32
    )
    return self.scale * (l2_normalize(features) @ l2_normalize(kernel, axis=0))


def output_layer(model: Any, features: jax.Array, name: str, **dense_init: Any) -> jax.Array:
  """float32 logits of the model's output layer `name` on `features`: a Dense layer with the
  family's initialisers `dense_init` (kernel_init, bias_init) or, with `model.head == 'cosine'`,
  a CosineClassifier."""
  if model.head == "cosine":
    return CosineClassifier(model.num_classes, model.cosine_scale, name=name)(features)
  dense = nn.Dense(
    model.num_classes, dtype=model.dtype, param_dtype=jnp.float32, name=name, **dense_init
  )
  return dense(features).astype(jnp.float32)


def check_fields(model: Any) -> None:
  """Raises ValueError for head fields a model cannot be built with."""
  if model.head not in HEADS:
    raise ValueError(f"head={model.head!r}: choose one of {list(HEADS)}.")
  if model.margin_type not in MARGIN_TYPES:
    raise ValueError(f"margin_type={model.margin_type!r}: choose one of {list(MARGIN_TYPES)}.")
  if model.head != "cosine" and model.margin_type != "none":
    raise ValueError(
      f"margin_type={model.margin_type!r} needs head='cosine' (a margin on cosines)."
    )
  if model.cosine_scale <= 0:
    raise ValueError(f"cosine_scale={model.cosine_scale} must be > 0.")
  if model.margin_type != "none" and not 0 < model.margin < 1:
    raise ValueError(f"margin={model.margin} must be between 0 and 1 (exclusive).")


def margin_logits(logits: jax.Array, labels: jax.Array, model: Any) -> jax.Array:
  """The training logits: `logits` with the model's margin on each row's target class.

  `logits` are the cosine head's s * cos; unchanged for a linear head or margin_type 'none'.
  'angular' past theta + m > pi uses cos - m * sin(m) (ArcFace's fallback, which keeps the
  target logit decreasing in theta).
  """
  margin_type = getattr(model, "margin_type", "none")
  if getattr(model, "head", "linear") != "cosine" or margin_type == "none":
    return logits
  scale, m = model.cosine_scale, model.margin
  target = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.bool_)
  if margin_type == "additive":
    return jnp.where(target, logits - scale * m, logits)
  cos = jnp.clip(logits / scale, -1.0, 1.0)
  # Clipped away from 0: the square root's gradient there is infinite.
  sin = jnp.sqrt(jnp.clip(1.0 - cos * cos, 1e-7, 1.0))
  cos_plus = cos * jnp.cos(m) - sin * jnp.sin(m)
  cos_plus = jnp.where(cos > jnp.cos(jnp.pi - m), cos_plus, cos - m * jnp.sin(m))
  return jnp.where(target, scale * cos_plus, logits)
