"""Optimizer and learning-rate schedules from the config."""

from typing import Any

import flax.traverse_util
import jax
import jax.numpy as jnp
import ml_collections
import optax

from animesion_jax import models


def create_schedule(
  config: ml_collections.ConfigDict, steps_per_epoch: int, total_steps: int
) -> optax.Schedule:
  """The learning rate at each step, as configured."""
  peak = config.learning_rate
  warmup_steps = int(round(config.warmup_epochs * steps_per_epoch))
  if config.schedule == "constant":
    main = optax.constant_schedule(peak)
  elif config.schedule == "step":
    # Multiply by decay_factor every decay_every_epochs (paper: 1/3 every 20 of 50 epochs).
    every = max(1, int(round(config.decay_every_epochs * steps_per_epoch)))
    boundaries = {
      step - warmup_steps: config.decay_factor
      for step in range(every, total_steps + 1, every)
      if step > warmup_steps
    }
    main = optax.piecewise_constant_schedule(peak, boundaries)
  elif config.schedule == "warmup_cosine":
    main = optax.cosine_decay_schedule(peak, max(1, total_steps - warmup_steps))
  else:
    raise ValueError(
      f"config.schedule={config.schedule!r}; choose 'step', 'warmup_cosine' or 'constant'."
    )
  if warmup_steps == 0:
    return main
  warmup = optax.linear_schedule(0.0, peak, warmup_steps)
  return optax.join_schedules([warmup, main], [warmup_steps])


def classifier_mask(params: Any, classifier_params: tuple[str, ...]) -> Any:
  """True for the classifier's parameters (top-level names `classifier_params`), else False."""
  flat = flax.traverse_util.flatten_dict(params)
  missing = not any(path[0] in classifier_params for path in flat)
  if missing:
    raise ValueError(
      f"freeze_backbone: no classifier parameters named {classifier_params} in "
      f"the model (top-level names: {sorted({p[0] for p in flat})})."
    )
  return flax.traverse_util.unflatten_dict({path: path[0] in classifier_params for path in flat})


def create_optimizer(
  config: ml_collections.ConfigDict, steps_per_epoch: int, total_steps: int, params: Any = None
) -> optax.GradientTransformation:
  """SGD+momentum (or AdamW) with the configured schedule, clipping and freezing.

  `params` (or an abstract tree of the same structure) is needed only for `freeze_backbone`.
  """
  schedule = create_schedule(config, steps_per_epoch, total_steps)
  chain = []
  if config.grad_clip_norm > 0:
    chain.append(optax.clip_by_global_norm(config.grad_clip_norm))
  if config.optimizer == "sgd":
    if config.weight_decay > 0:
      chain.append(optax.add_decayed_weights(config.weight_decay))
    # inject_hyperparams keeps the learning rate each update applied in the optimizer state, so
    # the logged rate is the applied one (also after skipped non-finite steps).
    chain.append(
      optax.inject_hyperparams(optax.sgd, static_args=("momentum", "accumulator_dtype"))(
        learning_rate=schedule,
        momentum=config.momentum or None,
        accumulator_dtype=config.momentum_dtype,
      )
    )
  elif config.optimizer == "adamw":
    chain.append(
      optax.inject_hyperparams(optax.adamw)(
        learning_rate=schedule, weight_decay=config.weight_decay
      )
    )
  else:
    raise ValueError(f"config.optimizer={config.optimizer!r}; choose 'sgd' or 'adamw'.")
  tx = optax.chain(*chain)
  if config.freeze_backbone:
    if params is None:
      raise ValueError("freeze_backbone needs the parameter tree to know what to freeze.")
    names = models.spec(config.model.name).family.classifier_params
    labels = jax.tree.map(
      lambda trainable: "train" if trainable else "frozen", classifier_mask(params, names)
    )
    tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
  return tx


def applied_learning_rate(opt_state: Any) -> jax.Array:
  """The learning rate of the last update applied (kept in the state by inject_hyperparams).

  NaN for an optimizer built elsewhere without inject_hyperparams (the rate is not recorded).
  """
  hyperparams = optax.tree_utils.tree_get(opt_state, "hyperparams", default={})
  return jnp.asarray(hyperparams.get("learning_rate", jnp.nan), jnp.float32)
