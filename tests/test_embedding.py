"""models.logits_and_embedding: one forward pass, every family, the classifier's own input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from animesion_jax import models

_TINY_VIT = dict(patch_size=4, hidden_size=16, mlp_dim=32, num_heads=2, num_layers=2)
_CASES = {
  "vit_class_token": ("vit_tiny", dict(_TINY_VIT), "head"),
  "vit_pre_logits": ("vit_tiny", dict(_TINY_VIT, representation_size=8), "head"),
  "vit_intermediate": ("vit_tiny", dict(_TINY_VIT, head_type="intermediate_features"), "head"),
  "resnet": ("resnet18", dict(base_width=4), "fc"),
  "shallow": ("shallow", dict(channels=(4, 8), hidden=12), "fc2"),
}


def _random_variables(model, images):
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), images, train=False))
  rng = np.random.default_rng(0)
  return jax.tree.map(
    lambda leaf: (
      (rng.normal(size=leaf.shape) * 0.3 + (1.0 if leaf.ndim == 1 else 0.0)).astype(np.float32)
      if leaf.ndim
      else leaf
    ),
    abstract,
  )


@pytest.mark.parametrize("case", sorted(_CASES))
def test_embedding_is_the_normalised_input_of_the_output_layer(case):
  name, fields, head = _CASES[case]
  model = models.create_model(name, 5, **fields)
  images = jnp.asarray(np.random.default_rng(1).normal(size=(3, 32, 32, 3)), jnp.float32)
  variables = _random_variables(model, images)
  assert set(jax.eval_shape(lambda: model.init(jax.random.key(0), images, train=False))) <= {
    "params",
    "batch_stats",
  }, "initialising must not create an embeddings collection"
  logits, embedding = jax.jit(lambda v, x: models.logits_and_embedding(model, v, x))(
    variables, images
  )
  plain = model.apply(variables, images, train=False)
  np.testing.assert_allclose(logits, plain, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(embedding, axis=-1), 1.0, rtol=1e-5)
  # logits = |f| * (e @ W) + b: the ratio (logits - b) / (e @ W) is one positive number per row.
  kernel = np.asarray(variables["params"][head]["kernel"])
  bias = np.asarray(variables["params"][head]["bias"])
  assert kernel.shape[0] == embedding.shape[1]
  ratio = (np.asarray(logits) - bias) / (np.asarray(embedding) @ kernel)
  np.testing.assert_allclose(ratio, ratio[:, :1].repeat(5, axis=1), rtol=1e-3)
  assert (ratio > 0).all()
