"""The train step jitted over the mesh, and what of the train state it updates in place.

Donating the state to the step lets XLA write the new state over the old (one copy in memory
instead of two). On CPU, XLA's fusion puts the new SGD momentum into both the fusion that writes
it and the one that writes the parameters, so a donated momentum buffer is copied every step
(docs/recipe_differences.md): there the parameters alone are donated by default.
"""

import functools

import jax
import ml_collections
import numpy as np

from animesion_jax import sharding
from animesion_jax.training import detector_task
from animesion_jax.training import model_setup
from animesion_jax.training import steps


def donated(config: ml_collections.ConfigDict) -> str:
  """What the train step updates in place: 'state' (all of it), 'params' or ''.

  config.donate_state True: the state; False: nothing; None (the default): the state on
  accelerators, the parameters alone on CPU, where XLA would copy every donated momentum buffer
  each step (docs/recipe_differences.md has the numbers).
  """
  if config.donate_state is None:
    return "state" if jax.default_backend() != "cpu" else "params"
  return "state" if config.donate_state else ""


class _ParamsApart:
  """A step jitted as (params, the rest of the state, batch), called, lowered and compiled with
  (state, batch) like the others (so that the parameters alone can be donated)."""

  def __init__(self, fn):
    self._fn = fn

  @staticmethod
  def _split(state, batch):
    return state.params, state.replace(params=None), batch

  def __call__(self, state, batch):
    return self._fn(*self._split(state, batch))

  def lower(self, state, batch):
    return _ParamsApart(self._fn.lower(*self._split(state, batch)))

  def compile(self):
    return _ParamsApart(self._fn.compile())

  def __getattr__(self, name):  # cost_analysis, memory_analysis, as_text, ...
    return getattr(self._fn, name)


def jit_train_step(
  setup: model_setup.Setup,
  config: ml_collections.ConfigDict,
  mesh,
  model_train_mode: bool = True,
  logit_offsets: np.ndarray | None = None,
):
  """The configured train step, jitted over the mesh, called as step(state, batch); what it
  updates in place (donated) is `donated(config)`."""
  if config.task == "detect":
    step = detector_task.train_step(setup.model, setup.tx, config)
  else:
    step = functools.partial(
      steps.train_step,
      model=setup.model,
      tx=setup.tx,
      normalization=config.normalization,
      label_smoothing=config.label_smoothing,
      accumulation_steps=config.grad_accumulation_steps,
      model_train_mode=model_train_mode,
      logit_offsets=logit_offsets,
    )
  outputs = (setup.state_sharding, sharding.replicated(mesh))
  part = donated(config)
  if part != "params":
    return jax.jit(
      step,
      in_shardings=(setup.state_sharding, sharding.batch_sharding(mesh)),
      out_shardings=outputs,
      donate_argnums=(0,) if part == "state" else (),
    )
  return _ParamsApart(
    jax.jit(
      lambda params, rest, batch: step(rest.replace(params=params), batch),
      in_shardings=_ParamsApart._split(setup.state_sharding, sharding.batch_sharding(mesh)),
      out_shardings=outputs,
      donate_argnums=(0,),
    )
  )
