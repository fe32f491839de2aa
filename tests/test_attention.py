"""Attention maps of ViTs: per-layer class-token attention, rollout and overlays."""

import flax
import jax
import numpy as np
from PIL import Image
import pytest

from animesion_jax import models
from animesion_jax.inference import attention


def _tiny_vit(**overrides):
  fields = dict(patch_size=4, hidden_size=16, mlp_dim=32, num_heads=2, num_layers=3)
  fields.update(overrides)
  return models.create_model("vit_tiny", num_classes=3, **fields)


def _images(n=2, height=16, width=16, seed=1):
  return np.random.default_rng(seed).normal(size=(n, height, width, 3)).astype(np.float32)


def _variables(model, images, seed=0):
  """Initialised variables with sharpened queries, so attention is far from uniform."""
  variables = model.init({"params": jax.random.key(seed)}, images, train=False)
  flat = flax.traverse_util.flatten_dict(variables["params"], sep="/")
  rng = np.random.default_rng(seed)
  for key, value in flat.items():
    value = np.asarray(value) + 0.1 * rng.normal(size=value.shape).astype(np.float32)
    flat[key] = value * (4.0 if "query/kernel" in key else 1.0)
  return {"params": flax.traverse_util.unflatten_dict(flat, sep="/")}


def _layer_norm(x, p):
  mean = x.mean(-1, keepdims=True)
  var = x.var(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + 1e-6) * p["scale"] + p["bias"]


def _reference_attention(params, images, patch, heads):
  """Head-averaged attention of each block, in numpy, written from the ViT's definition."""
  n, h, w, c = images.shape
  gh, gw = h // patch, w // patch
  patches = images.reshape(n, gh, patch, gw, patch, c).transpose(0, 1, 3, 2, 4, 5)
  kernel = params["embedding"]["kernel"]
  x = patches.reshape(n, gh * gw, -1) @ kernel.reshape(-1, kernel.shape[-1])
  x = x + params["embedding"]["bias"]
  cls = np.broadcast_to(params["cls"], (n, 1, x.shape[-1]))
  x = np.concatenate([cls, x], axis=1) + params["Transformer"]["posembed_input"]["pos_embedding"]
  result = []
  for i in range(len([k for k in params["Transformer"] if k.startswith("encoderblock_")])):
    block = params["Transformer"][f"encoderblock_{i}"]
    mha = block["MultiHeadDotProductAttention_1"]
    y = _layer_norm(x, block["LayerNorm_0"])
    q, k, v = (
      np.einsum("btd,dhk->bthk", y, mha[name]["kernel"]) + mha[name]["bias"]
      for name in ("query", "key", "value")
    )
    logits = np.einsum("bqhk,bshk->bhqs", q, k) / np.sqrt(q.shape[-1])
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    result.append(probs.mean(axis=1))
    out = np.einsum("bhqs,bshk->bqhk", probs, v)
    x = x + np.einsum("bqhk,hkd->bqd", out, mha["out"]["kernel"]) + mha["out"]["bias"]
    y = _layer_norm(x, block["LayerNorm_2"])
    mlp = block["MlpBlock_3"]
    y = y @ mlp["Dense_0"]["kernel"] + mlp["Dense_0"]["bias"]
    y = np.asarray(jax.nn.gelu(y, approximate=True))
    x = x + y @ mlp["Dense_1"]["kernel"] + mlp["Dense_1"]["bias"]
  return np.stack(result, axis=1)


@pytest.mark.parametrize("height, width", [(16, 16), (16, 8)])
def test_class_token_attention_matches_numpy_reference(height, width):
  model = _tiny_vit()
  images = _images(height=height, width=width)
  variables = _variables(model, images)
  params = jax.tree.map(np.asarray, variables["params"])
  expected = _reference_attention(params, images.astype(np.float64), 4, 2)
  layers = attention.maps(model, variables, images)["layers"]
  gh, gw = height // 4, width // 4
  assert layers.shape == (2, 3, gh, gw)
  np.testing.assert_allclose(layers, expected[:, :, 0, 1:].reshape(2, 3, gh, gw), atol=2e-5)
  # Not uniform: the test would not see a wrong token order otherwise.
  assert layers.max() > 3 * layers.mean()
  full = attention.full_attention(model, variables, images)
  np.testing.assert_allclose(full.sum(-1), 1.0, atol=1e-5)


def test_rollout_multiplies_residual_augmented_layers():
  rng = np.random.default_rng(0)
  raw = rng.uniform(size=(2, 3, 5, 5))
  raw /= raw.sum(-1, keepdims=True)
  # Explicit product A3' A2' A1' with A' = (A + I) / 2 (rows of A + I sum to 2).
  aug = (raw + np.eye(5)) / 2
  joint = aug[:, 2] @ aug[:, 1] @ aug[:, 0]
  got = attention.rollout(raw)
  np.testing.assert_allclose(got, joint[:, 0, 1:].reshape(2, 2, 2), rtol=1e-6)
  # Per-head input is averaged over heads first.
  heads = np.stack([raw, raw], axis=2)
  np.testing.assert_allclose(attention.rollout(heads), got, rtol=1e-6)
  # One layer: the class row of (A + I) / 2 without the class token.
  np.testing.assert_allclose(
    attention.rollout(raw[:, :1]), aug[:, 0, 0, 1:].reshape(2, 2, 2), rtol=1e-6
  )
  with pytest.raises(ValueError, match="grid"):
    attention.rollout(raw, grid=(1, 3))


def test_maps_combines_layers_and_rollout():
  model = _tiny_vit()
  images = _images()
  variables = _variables(model, images)
  result = attention.maps(model, variables, images)
  full = attention.full_attention(model, variables, images)
  np.testing.assert_allclose(result["layers"], full[:, :, 0, 1:].reshape(2, 3, 4, 4))
  np.testing.assert_allclose(
    result["rollout"],
    attention.rollout(attention.full_attention(model, variables, images)),
    rtol=1e-6,
  )
  assert result["rollout"].shape == (2, 4, 4)


def test_intermediate_head_vit_has_attention_maps_too():
  model = _tiny_vit(head_type="intermediate_features")
  images = _images()
  variables = _variables(model, images)
  assert attention.maps(model, variables, images)["layers"].shape == (2, 3, 4, 4)


def test_non_vit_models_are_refused():
  model = models.create_model("resnet18", num_classes=3, base_width=8)
  images = _images(n=1, height=32, width=32)
  with pytest.raises(ValueError, match="ResNet.*no attention"):
    attention.maps(model, {}, images)  # Refused by the model's kind, before any variable is read.


def test_overlay_scales_the_image_by_the_normalised_map():
  image = Image.new("RGB", (40, 40), (200, 100, 50))
  heat = np.zeros((4, 4), np.float32)
  heat[0, 0] = 2.0  # The hot patch: top left.
  out = np.asarray(attention.overlay(image, heat)).astype(int)
  assert out.shape == (40, 40, 3)
  np.testing.assert_allclose(out[0, 0], [200, 100, 50], atol=2)
  np.testing.assert_array_equal(out[-1, -1], [0, 0, 0])
  assert out[0, 0, 0] > out[10, 10, 0] > out[-1, -1, 0]
  # Scale does not matter; a negative map is shifted to start at 0.
  np.testing.assert_array_equal(np.asarray(attention.overlay(image, 5 * heat)), out)
  np.testing.assert_array_equal(np.asarray(attention.overlay(image, heat - 1.0)), out)
  # A zero map leaves the image as it is; a greyscale image becomes RGB.
  np.testing.assert_array_equal(np.asarray(attention.overlay(image, 0 * heat)), np.asarray(image))
  assert attention.overlay(image.convert("L"), heat).mode == "RGB"
  with pytest.raises(ValueError, match="NaN"):
    attention.overlay(image, heat * np.nan)
