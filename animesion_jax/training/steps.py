"""Train state and the pure train / eval step functions (jitted by the loop)."""

import functools
from typing import Any

import flax
from flax import linen as nn
import jax
import jax.numpy as jnp
import optax

from animesion_jax import models
from animesion_jax.data import preprocess
from animesion_jax.detection import heads as detection_heads
from animesion_jax.models import batch_norm
from animesion_jax.models import heads
from animesion_jax.training import losses as losses_lib
from animesion_jax.training import metrics as metrics_lib
from animesion_jax.training import optim


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training; a pytree, checkpointed as a whole."""

  step: jax.Array  # Optimizer steps taken (including skipped non-finite ones).
  params: Any
  batch_stats: Any  # BatchNorm running statistics ({} for models without BatchNorm).
  opt_state: Any
  rng: jax.Array  # Base key; each step's dropout key is fold_in(rng, step).
  nonfinite_steps: jax.Array  # Steps whose loss or gradients were NaN/Inf (update skipped).
  first_nonfinite_step: jax.Array  # -1 until the first such step.


def create_train_state(
  variables: dict[str, Any], tx: optax.GradientTransformation, rng: jax.Array
) -> TrainState:
  params = variables["params"]
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    batch_stats=variables.get("batch_stats", {}),
    opt_state=tx.init(params),
    rng=rng,
    nonfinite_steps=jnp.zeros((), jnp.int32),
    first_nonfinite_step=jnp.full((), -1, jnp.int32),
  )


def model_variables(state: TrainState) -> dict[str, Any]:
  if state.batch_stats:
    return {"params": state.params, "batch_stats": state.batch_stats}
  return {"params": state.params}


cross_entropy = losses_lib.cross_entropy  # Known here as steps.cross_entropy.


def _all_finite(tree: Any) -> jnp.ndarray:
  # One fused reduction: a NaN/Inf anywhere makes the global norm non-finite. (Per-leaf checks
  # compiled 2-3x slower for ViT-B/16 and changed nothing else.)
  return jnp.isfinite(optax.global_norm(tree))


def _loss_and_grads(
  model: nn.Module,
  params: Any,
  batch_stats: Any,
  images: jnp.ndarray,
  labels: jnp.ndarray,
  weights: jnp.ndarray,
  dropout_rng: jax.Array,
  label_smoothing: float,
  model_train_mode: bool = True,
  logit_offsets: jnp.ndarray | None = None,
):
  """Per-example losses, top-1 hits, new BatchNorm statistics and gradients of the mean of
  weight * loss (weights: 0 on padding rows, see train_step). `logit_offsets` are added to the
  logits in the loss only (balanced softmax, logit adjustment; see losses.py)."""

  def loss_fn(params):
    variables = {"params": params}
    # Models sow extra per-example loss terms ([N]) into 'losses' (e.g. the ViT's exclusion loss),
    # weighted as the main loss, so padding rows count for nothing; none by default.
    mutable = ["losses"]
    if batch_stats:
      variables["batch_stats"] = batch_stats
      mutable.append("batch_stats")
    # model_train_mode=False: dropout off and BatchNorm on its running statistics (frozen).
    logits, updates = model.apply(
      variables, images, train=model_train_mode, rngs={"dropout": dropout_rng}, mutable=mutable
    )
    # A cosine head's margin on the target logit (CosFace / ArcFace) is part of the loss only.
    train_logits = heads.margin_logits(logits.astype(jnp.float32), labels, model)
    losses = cross_entropy(train_logits, labels, label_smoothing, logit_offsets)
    extra = sum(jnp.mean(term * weights) for term in jax.tree.leaves(updates.get("losses", {})))
    return (
      jnp.mean(losses * weights) + extra,
      (losses, logits, updates.get("batch_stats", batch_stats)),
    )

  (_, (losses, logits, new_batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  hits = metrics_lib.top_k_correct(logits.astype(jnp.float32), labels, 1)
  return losses, hits, new_batch_stats, grads


def _split_microbatches(array: jnp.ndarray, count: int) -> jnp.ndarray:
  """(N, ...) -> (count, N // count, ...), microbatch j = rows j, j+count, ...

  Taking strided rows keeps each device's rows on that device when the batch is split over
  devices in contiguous blocks (so accumulation adds no communication).
  """
  return jnp.swapaxes(array.reshape(array.shape[0] // count, count, *array.shape[1:]), 0, 1)


def train_step(
  state: TrainState,
  batch: dict[str, jnp.ndarray],
  *,
  model: nn.Module,
  tx: optax.GradientTransformation,
  normalization: str,
  label_smoothing: float = 0.0,
  accumulation_steps: int = 1,
  model_train_mode: bool = True,
  logit_offsets: jnp.ndarray | None = None,
) -> tuple[TrainState, metrics_lib.TrainMetrics]:
  """One optimizer step on a global batch of uint8 images.

  With accumulation_steps > 1 the batch is processed as that many microbatches whose gradients
  are averaged (one large step's update, in a fraction of the activation memory), and BatchNorm's
  running statistics get one update from the whole batch's statistics (each microbatch is still
  normalised with its own, see batch_norm.merge_microbatch_updates). A step whose
  loss or gradients are not finite changes nothing but the counters, so the parameters never
  absorb NaN/Inf; the loop decides whether to stop or carry on. model_train_mode=False runs the
  model as in evaluation (the original Animesion code did so from its second epoch on).
  `logit_offsets` ([num_classes], or None for plain softmax) shift the logits in the loss only.
  """
  images = preprocess.normalize(batch["image"], normalization, model.dtype)
  dropout_rng = jax.random.fold_in(state.rng, state.step)
  compute = functools.partial(
    _loss_and_grads,
    model,
    state.params,
    label_smoothing=label_smoothing,
    model_train_mode=model_train_mode,
    logit_offsets=logit_offsets,
  )
  # 'mask' is 0 on the padding rows of an epoch's short last batch. Weights mask * N / real make
  # the mean of weight * loss over any equal split of the batch (the microbatches) average to
  # the mean loss over the real examples of the whole batch.
  mask = batch.get("mask")
  mask = jnp.ones(batch["label"].shape, jnp.float32) if mask is None else mask.astype(jnp.float32)
  weights = mask * (mask.shape[0] / jnp.maximum(jnp.sum(mask), 1.0))
  if accumulation_steps == 1:
    losses, hits, new_batch_stats, grads = compute(
      state.batch_stats, images, batch["label"], weights, dropout_rng
    )
  else:
    micro_images = _split_microbatches(images, accumulation_steps)
    micro_labels = _split_microbatches(batch["label"], accumulation_steps)
    micro_weights = _split_microbatches(weights, accumulation_steps)
    mask = _split_microbatches(mask, accumulation_steps).reshape(-1)  # The losses' row order.

    def accumulate(grad_sum, inputs):
      index, micro_x, micro_y, micro_w = inputs
      # Every microbatch updates the step's own BatchNorm statistics; merged below into one
      # update from the whole batch's statistics (not one update per microbatch).
      losses, hits, micro_stats, grads = compute(
        state.batch_stats, micro_x, micro_y, micro_w, jax.random.fold_in(dropout_rng, index)
      )
      grad_sum = jax.tree.map(jnp.add, grad_sum, grads)
      return grad_sum, (losses, hits, micro_stats)

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    grad_sum, (losses, hits, micro_stats) = jax.lax.scan(
      accumulate, zeros, (jnp.arange(accumulation_steps), micro_images, micro_labels, micro_weights)
    )
    new_batch_stats = batch_norm.merge_microbatch_updates(micro_stats)
    grads = jax.tree.map(lambda g: g / accumulation_steps, grad_sum)
    losses, hits = losses.reshape(-1), hits.reshape(-1)

  loss = jnp.sum(losses * mask) / jnp.maximum(jnp.sum(mask), 1.0)
  new_state = _guarded_update(state, tx, grads, loss, new_batch_stats)
  # Masked averages over the real rows (the learning rate per row, so the mask applies to all).
  step_metrics = metrics_lib.TrainMetrics.single_from_model_output(
    loss=losses,
    top1_hits=hits,
    mask=mask,
    learning_rate=jnp.full(
      mask.shape, optim.applied_learning_rate(new_state.opt_state), jnp.float32
    ),
  )
  return new_state, step_metrics


def _guarded_update(
  state: TrainState, tx: optax.GradientTransformation, grads: Any, loss: jax.Array, batch_stats: Any
) -> TrainState:
  """The optimizer's update of `state`, kept only where the loss and gradients are finite (a
  non-finite step changes nothing but the counters that report it)."""
  param_updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
  new_params = optax.apply_updates(state.params, param_updates)
  finite = jnp.isfinite(loss) & _all_finite(grads)
  keep_if_bad = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
  return state.replace(
    step=state.step + 1,
    params=keep_if_bad(new_params, state.params),
    batch_stats=keep_if_bad(batch_stats, state.batch_stats),
    opt_state=keep_if_bad(new_opt_state, state.opt_state),
    nonfinite_steps=state.nonfinite_steps + (~finite).astype(jnp.int32),
    first_nonfinite_step=jnp.where(
      (state.first_nonfinite_step < 0) & ~finite, state.step, state.first_nonfinite_step
    ),
  )


def eval_step(
  state: TrainState | dict[str, Any],
  batch: dict[str, jnp.ndarray],
  *,
  model: nn.Module,
  normalization: str,
  with_outputs: bool = False,
) -> tuple[metrics_lib.EvalMetrics, Any]:
  """Masked metrics of one eval batch, and each example's top-5 class ids (best first).

  `state` is the TrainState, or (for inference) the model's variables themselves. With
  `with_outputs` the second result is {'top5', 'logits', 'embedding'} (the L2-normalised
  embedding of models.logits_and_embedding) from the same forward pass.
  """
  images = preprocess.normalize(batch["image"], normalization, model.dtype)
  variables = model_variables(state) if isinstance(state, TrainState) else state
  if with_outputs:
    logits, embedding = models.logits_and_embedding(model, variables, images)
  else:
    logits = model.apply(variables, images, train=False).astype(jnp.float32)
  loss = cross_entropy(logits, batch["label"])
  step_metrics = metrics_lib.EvalMetrics.single_from_model_output(
    loss=loss, logits=logits, labels=batch["label"], mask=batch["mask"]
  )
  top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
  if with_outputs:
    return step_metrics, {"top5": top5, "logits": logits, "embedding": embedding}
  return step_metrics, top5


def detection_train_step(
  state: TrainState,
  batch: dict[str, jnp.ndarray],
  *,
  model: nn.Module,
  tx: optax.GradientTransformation,
  normalization: str,
) -> tuple[TrainState, metrics_lib.DetectionTrainMetrics]:
  """One optimizer step of the head detector (config.task='detect') on a batch of letterboxed
  pictures with 'boxes' [N, K, 4] and 'box_mask' [N, K]; the loss is detection/heads.py's.

  As train_step: padding rows ('mask' 0) count for nothing, and a non-finite step changes nothing
  but the counters.
  """
  images = preprocess.normalize(batch["image"], normalization, model.dtype)
  mask = batch["mask"].astype(jnp.float32)
  weights = mask / jnp.maximum(jnp.sum(mask), 1.0)

  def loss_fn(params):
    variables = {"params": params}
    mutable = []
    if state.batch_stats:
      variables["batch_stats"] = state.batch_stats
      mutable.append("batch_stats")
    output, updates = model.apply(
      variables, images, train=True, rngs={"dropout": state.rng}, mutable=mutable
    )
    losses, terms = detection_heads.loss(output, batch["boxes"], batch["box_mask"])
    return jnp.sum(losses * weights), (losses, terms, updates.get("batch_stats", state.batch_stats))

  (loss, (losses, terms, new_batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
    state.params
  )
  new_state = _guarded_update(state, tx, grads, loss, new_batch_stats)
  step_metrics = metrics_lib.DetectionTrainMetrics.single_from_model_output(
    loss=losses,
    mask=mask,
    learning_rate=jnp.full(
      mask.shape, optim.applied_learning_rate(new_state.opt_state), jnp.float32
    ),
    **terms,
  )
  return new_state, step_metrics
