"""The output-layer option of every family: linear (the paper's) or cosine (NormFace) + margins."""

import functools

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from animesion_jax import models
from animesion_jax.models import heads
from animesion_jax.training import checkpointing
from animesion_jax.training import config_validation
from animesion_jax.training import loop
from animesion_jax.training import model_setup
from animesion_jax.training import steps
from tests import helpers

CLASSES = 5
# (model name, small overrides, image side): one of each family (ViT with both of its heads).
FAMILIES = [
  ("vit_tiny", {"num_layers": 1}, 16),
  ("vit_tiny", {"head_type": "intermediate_features"}, 16),
  ("resnet18", {"base_width": 4, "stage_sizes": (1,)}, 32),
  ("shallow", {"channels": (4, 8), "hidden": 16}, 32),
]


def _model(name, overrides, **head):
  return models.create_model(name, CLASSES, **overrides, **head)


def _images(side, n=3, seed=1):
  return jax.random.normal(jax.random.key(seed), (n, side, side, 3))


@pytest.mark.parametrize("name,overrides,side", FAMILIES)
def test_cosine_logits_are_scaled_cosines_of_the_embedding(name, overrides, side):
  model = _model(name, overrides, head="cosine", cosine_scale=10.0)
  variables = model.init(jax.random.key(0), _images(side, 1), train=False)
  forward = jax.jit(functools.partial(models.logits_and_embedding, model))
  logits, embedding = forward(variables, _images(side))
  assert logits.shape == (3, CLASSES)
  head = models.family_of(model).head
  kernel = np.asarray(variables["params"][head]["kernel"])
  assert set(variables["params"][head]) == {"kernel"}  # No bias.
  np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1.0, rtol=1e-5)
  # The embedding is exactly what the head reads: logits = s * e . w_j / |w_j|.
  weights = kernel / np.linalg.norm(kernel, axis=0)
  np.testing.assert_allclose(logits, 10.0 * np.asarray(embedding) @ weights, atol=1e-4)
  assert np.abs(logits).max() <= 10.0 + 1e-4 and np.abs(logits).max() > 0.1


@pytest.mark.parametrize("name,overrides,side", FAMILIES)
def test_cosine_head_has_the_linear_heads_parameters_but_the_bias(name, overrides, side):
  counts = {}
  for head in heads.HEADS:
    model = _model(name, overrides, head=head)
    shapes = jax.eval_shape(
      lambda m=model: m.init(jax.random.key(0), _images(side, 1), train=False)
    )
    counts[head] = models.count_params(shapes["params"])
  assert counts["cosine"] == counts["linear"] - CLASSES


def test_margins_move_only_the_target_logit():
  model = _model("vit_tiny", {}, head="cosine", cosine_scale=8.0, margin=0.3)
  cos = jnp.array([[0.9, 0.2, -0.5], [0.1, -1.0, 0.7]])
  labels = jnp.array([0, 2])
  logits = 8.0 * cos
  additive = heads.margin_logits(logits, labels, model.clone(margin_type="additive"))
  angular = heads.margin_logits(logits, labels, model.clone(margin_type="angular"))
  expected_add, expected_ang = np.array(logits), np.array(logits)
  for row, label in enumerate([0, 2]):
    c = float(cos[row, label])
    expected_add[row, label] = 8.0 * (c - 0.3)
    expected_ang[row, label] = 8.0 * np.cos(np.arccos(c) + 0.3)
  np.testing.assert_allclose(additive, expected_add, rtol=1e-5)
  np.testing.assert_allclose(angular, expected_ang, rtol=1e-5)
  # Beyond theta + m > pi the angular target logit keeps falling (ArcFace's fallback).
  far = heads.margin_logits(
    jnp.array([[-8.0, 0.0]]), jnp.array([0]), model.clone(margin_type="angular")
  )
  assert float(far[0, 0]) < -8.0
  # No margin for 'none' or a linear head.
  for other in (model, _model("vit_tiny", {})):
    np.testing.assert_array_equal(heads.margin_logits(logits, labels, other), logits)


def test_margin_is_in_the_training_loss_only():
  side, labels = 16, jnp.array([0, 1, 2])
  plain = _model("vit_tiny", {"num_layers": 1}, head="cosine")
  variables = plain.init(jax.random.key(0), _images(side, 1), train=False)
  tx = optax.sgd(0.1)
  state = steps.create_train_state(variables, tx, jax.random.key(0))
  batch = {
    "image": jax.random.randint(jax.random.key(2), (3, side, side, 3), 0, 256).astype(jnp.uint8),
    "label": labels,
    "mask": jnp.ones(3, jnp.int32),
  }
  results = {}
  for margin_type in ("none", "additive"):
    model = plain.clone(margin_type=margin_type, margin=0.35)
    train = functools.partial(steps.train_step, model=model, tx=tx, normalization="half")
    _, train_metrics = jax.jit(train)(state, batch)
    evaluate = functools.partial(steps.eval_step, model=model, normalization="half")
    eval_metrics, _ = jax.jit(evaluate)(state, batch)
    results[margin_type] = [float(m.compute()["loss"]) for m in (train_metrics, eval_metrics)]
  # The margin lowers the target logit in training, so the training loss grows; evaluation
  # sees the plain cosines either way.
  assert results["additive"][0] > results["none"][0] + 0.1
  assert results["additive"][1] == pytest.approx(results["none"][1], abs=1e-6)


@pytest.mark.parametrize(
  "fields,match",
  [
    ({"head": "arc"}, "head='arc'"),
    ({"margin_type": "additive", "margin": 0.2}, "needs head='cosine'"),
    ({"head": "cosine", "margin_type": "angular", "margin": 0.0}, "margin=0.0"),
    ({"head": "cosine", "cosine_scale": 0.0}, "cosine_scale"),
    ({"head": "cosine", "margin_type": "cos"}, "margin_type='cos'"),
  ],
)
def test_bad_head_fields_are_config_errors(fields, match):
  config = helpers.tiny_config()
  config.model.update(fields)
  with pytest.raises(config_validation.ConfigError, match=match):
    config_validation.validate(config, num_devices=1, num_processes=1)


def test_tau_norm_with_a_cosine_head_is_a_config_error():
  config = helpers.tiny_config(tau_norm=1.0)
  config.model.head = "cosine"
  with pytest.raises(config_validation.ConfigError, match="tau_norm"):
    config_validation.validate(config, num_devices=1, num_processes=1)


def test_a_linear_checkpoints_bias_leaves_a_cosine_head():
  config = helpers.tiny_config()
  config.model.head = "cosine"
  model = model_setup.build_model(config, CLASSES)
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), _images(16, 1), train=False))
  linear = model_setup.build_model(helpers.tiny_config(), CLASSES)
  variables = linear.init(jax.random.key(0), _images(16, 1), train=False)
  kept, fresh = model_setup._without_output_layer(config, variables, abstract, keep=True)
  flat = flax.traverse_util.flatten_dict(kept["params"], sep="/")
  assert "head/bias" not in flat and fresh == []
  np.testing.assert_array_equal(flat["head/kernel"], variables["params"]["head"]["kernel"])
  dropped, fresh = model_setup._without_output_layer(config, variables, abstract, keep=False)
  assert fresh == ["head/kernel"] and not np.any(dropped["params"]["head"]["kernel"])


def test_a_run_from_before_the_head_option_loads_and_resumes():
  current = helpers.tiny_config()
  saved = ml_collections.ConfigDict(current.to_dict())
  for field in ("head", "cosine_scale", "margin_type", "margin"):
    del saved.model[field]
  assert model_setup.build_model(saved, CLASSES).head == "linear"
  assert checkpointing.config_differences(saved, current) == []
  current.model.head = "cosine"
  assert checkpointing.config_differences(saved, current) == [
    "config.model.head: 'linear' in the run, now 'cosine'"
  ]


@pytest.mark.slow
def test_cosine_margin_run_with_held_out_classes_and_long_tail_options(tmp_path):
  config = helpers.tiny_config(
    num_train_steps=60, loss="balanced_softmax", class_balanced_sampling=True
  )
  config.model.update({"head": "cosine", "margin_type": "additive", "margin": 0.1})
  config.open_set.holdout_count = 3
  results = loop.train_and_evaluate(config, str(tmp_path))
  assert results["test"]["top1"] > 3 / 25, results["test"]
