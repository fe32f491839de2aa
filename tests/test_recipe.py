"""The original recipe's details: exact GELU when fine-tuning the .npz weights, one BatchNorm
update per accumulated batch, torch's patch-embedding initialisation, the exclusion loss masked
on padding rows."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from animesion_jax import config_schema
from animesion_jax import models
from animesion_jax import sharding
from animesion_jax.models import batch_norm
from animesion_jax.training import model_setup
from animesion_jax.training import steps
from configs import paper

_KEY = jax.random.key(0)


def _uint8_images(n, size, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), np.uint8)


def _step(model, variables, batch, accumulation_steps=1, model_train_mode=True):
  """One SGD (lr 1) train step; returns the new state."""
  tx = optax.sgd(1.0)
  state = steps.create_train_state(dict(variables), tx, _KEY)
  step = jax.jit(
    lambda s, b: steps.train_step(
      s,
      b,
      model=model,
      tx=tx,
      normalization="half",
      accumulation_steps=accumulation_steps,
      model_train_mode=model_train_mode,
    )
  )
  return state, step(state, batch)[0]


# ------------------------------------------------------------------------------------ 6. GELU


def _write_npz(path, model, size):
  variables = jax.jit(lambda: model.init(_KEY, jnp.zeros((1, size, size, 3)), train=False))()
  flat = flax.traverse_util.flatten_dict(variables["params"], sep="/")
  np.savez(path, **{key: np.asarray(value) for key, value in flat.items()})


@pytest.mark.parametrize("approximate", [False, True])
def test_npz_fine_tuning_uses_the_configs_gelu(tmp_path, approximate):
  tiny = dict(patch_size=4, hidden_size=16, mlp_dim=32, num_heads=2, num_layers=2)
  path = tmp_path / "vit.npz"
  _write_npz(path, models.create_model("vit_tiny", 7, **tiny), 16)
  config = config_schema.vit_config("vit_tiny", "moeimouto")
  config.model.update(tiny)
  config.image_size = 16
  config.init_from.source = "vit_npz"
  config.init_from.path = str(path)
  config.model.gelu_approximate = approximate
  setup = model_setup.create(config, 5, sharding.create_mesh(), 10, 10)
  assert setup.model.gelu_approximate is approximate
  assert setup.config.model.gelu_approximate is approximate  # What the run records.


def test_paper_vit_rows_use_the_originals_gelu_and_patch_embedding_init():
  vit_rows = [row for row in paper.paper_rows() if row.model.startswith(("B-", "L-"))]
  assert len(vit_rows) == 20
  for row in vit_rows:
    config = paper.row_config(row)
    assert config.model.gelu_approximate is False, row
    assert config.model.patch_embedding_init == "torch_default", row


# ------------------------------------------------------------------- 7. accumulation, BatchNorm


def test_merged_microbatch_updates_equal_one_update_from_the_whole_batch():
  rng = np.random.default_rng(0)
  x = rng.normal(2.0, 3.0, (32, 5)) * rng.uniform(0.5, 2.0, 5)
  old = {"mean": rng.normal(size=5), "var": rng.uniform(0.5, 2.0, 5)}
  m = batch_norm.MOMENTUM

  def update(rows):
    return {
      "mean": m * old["mean"] + (1 - m) * rows.mean(0),
      "var": m * old["var"] + (1 - m) * rows.var(0),  # Flax: the biased variance.
    }

  micro = [update(part) for part in np.split(x, 4)]
  stacked = {"bn": {k: jnp.asarray(np.stack([u[k] for u in micro])) for k in ("mean", "var")}}
  merged = batch_norm.merge_microbatch_updates(stacked)
  whole = update(x)
  np.testing.assert_allclose(merged["bn"]["mean"], whole["mean"], rtol=1e-5)
  np.testing.assert_allclose(merged["bn"]["var"], whole["var"], rtol=1e-5)


def _resnet_and_batch():
  model = models.create_model("resnet18", 5, base_width=4, stage_sizes=(1, 1))
  images = _uint8_images(8, 16)
  variables = jax.jit(lambda: model.init(_KEY, jnp.zeros((1, 32, 32, 3)), train=False))()
  batch = {"image": images, "label": np.arange(8, dtype=np.int32) % 5, "mask": np.ones(8)}
  return model, variables, batch


def test_accumulated_step_updates_batchnorm_statistics_once_from_the_whole_batch():
  model, variables, batch = _resnet_and_batch()
  _, whole = _step(model, variables, batch)
  start, accumulated = _step(model, variables, batch, accumulation_steps=4)
  # The stem's BatchNorm sees the same activations either way (nothing normalised before it):
  # its running statistics match the unsplit step's exactly.
  for key in ("mean", "var"):
    want = np.asarray(whole.batch_stats["bn1"][key])
    got = np.asarray(accumulated.batch_stats["bn1"][key])
    assert np.abs(want - np.asarray(start.batch_stats["bn1"][key])).max() > 1e-3  # It moved.
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_accumulated_step_in_eval_mode_keeps_the_statistics():
  model, variables, batch = _resnet_and_batch()
  start, after = _step(model, variables, batch, accumulation_steps=4, model_train_mode=False)
  jax.tree.map(np.testing.assert_array_equal, after.batch_stats, start.batch_stats)


# --------------------------------------------------------------------- 8. patch-embedding init


def test_torch_default_patch_embedding_init_statistics():
  fields = dict(patch_size=16, hidden_size=192, mlp_dim=32, num_heads=2, num_layers=1)
  fan_in = 16 * 16 * 3
  bound = 1 / np.sqrt(fan_in)
  embedding = {}
  for scheme in ("torch_default", "vit_jax"):
    model = models.create_model("vit_tiny", 5, patch_embedding_init=scheme, **fields)
    params = jax.jit(lambda m=model: m.init(_KEY, jnp.zeros((1, 32, 32, 3)), train=False))()
    embedding[scheme] = {k: np.asarray(v) for k, v in params["params"]["embedding"].items()}
  kernel, bias = embedding["torch_default"]["kernel"], embedding["torch_default"]["bias"]
  assert kernel.shape == (16, 16, 3, 192)
  # U(-1/sqrt(fan_in), 1/sqrt(fan_in)): std 1/sqrt(3 fan_in); 147k draws.
  np.testing.assert_allclose(kernel.std(), 1 / np.sqrt(3 * fan_in), rtol=0.02)
  assert bound * 0.99 < np.abs(kernel).max() <= bound
  assert abs(kernel.mean()) < 0.02 * bound
  assert 0.9 * bound < np.abs(bias).max() <= bound
  np.testing.assert_allclose(bias.std(), bound / np.sqrt(3), rtol=0.2)
  # The JAX original's: lecun normal (std ~1/sqrt(fan_in), truncated at 2 std), zero bias.
  np.testing.assert_allclose(embedding["vit_jax"]["kernel"].std(), bound, rtol=0.05)
  assert not embedding["vit_jax"]["bias"].any()


def test_unknown_patch_embedding_init_is_refused():
  model = models.create_model("vit_tiny", 5, patch_embedding_init="xavier")
  with pytest.raises(ValueError, match="patch_embedding_init='xavier'"):
    model.init(_KEY, jnp.zeros((1, 8, 8, 3)), train=False)


# ------------------------------------------------------------- 9. exclusion loss and padding


@pytest.mark.parametrize("accumulation_steps", [1, 2])
def test_exclusion_loss_ignores_padding_rows(accumulation_steps):
  model = models.create_model(
    "vit_tiny",
    5,
    patch_size=4,
    hidden_size=16,
    mlp_dim=32,
    num_heads=2,
    num_layers=3,
    head_type="intermediate_features",
    exclusion_loss_weight=0.5,
    exclusion_temperature=1.5,
    exclusion_layer_distance=1,
  )
  variables = jax.jit(lambda: model.init(_KEY, jnp.zeros((1, 16, 16, 3)), train=False))()
  images, labels = _uint8_images(4, 16, seed=3), np.array([0, 1, 2, 3], np.int32)
  padded = {"image": images, "label": labels, "mask": np.array([1, 1, 1, 0], np.float32)}
  real = {"image": images[:3], "label": labels[:3], "mask": np.ones(3, np.float32)}
  start, got = _step(model, variables, padded, accumulation_steps)
  _, want = _step(model, variables, real)
  moved = lambda s: jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), s.params, start.params)
  jax.tree.map(
    lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6), moved(got), moved(want)
  )
