"""Tests for loading original ViT `.npz` checkpoints (convert source 'vit_npz').

The reference logits come from an independent numpy forward pass written here
(float64, tanh GELU, LayerNorm epsilon 1e-6, as the original implementation),
on tiny random checkpoints in both module-name generations.
"""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage
from scipy import special

from animesion_jax import convert
from animesion_jax.models import vit

_PATCH, _HIDDEN, _MLP, _HEADS, _LAYERS, _CLASSES, _SIZE = 8, 32, 64, 2, 2, 5, 32
_POS = "Transformer/posembed_input/pos_embedding"
_LINEN_NAMES = {
  "MultiHeadDotProductAttention_1": "MultiHeadDotProductAttention_0",
  "LayerNorm_2": "LayerNorm_1",
  "MlpBlock_3": "MlpBlock_0",
}


def logits_of(model, variables, x):
  """Eval-mode logits, jitted: op-by-op dispatch is slow on a shared CPU."""
  return np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x))


def _random_checkpoint(representation_size, seed=0):
  """Flat pre-Linen-named float32 arrays of a random tiny ViT.

  The names and shapes are those the model creates (jax.eval_shape of its
  init; compiling init is slow on a shared CPU); the values are random, so
  that the head, class token and LayerNorm scales all influence the logits.
  """
  model = vit.VisionTransformer(
    num_classes=_CLASSES,
    patch_size=_PATCH,
    hidden_size=_HIDDEN,
    mlp_dim=_MLP,
    num_heads=_HEADS,
    num_layers=_LAYERS,
    representation_size=representation_size,
  )
  params = jax.eval_shape(
    lambda: model.init(jax.random.key(0), jnp.zeros((1, _SIZE, _SIZE, 3)), train=False)
  )
  rng = np.random.default_rng(seed)
  arrays = {}
  for key, leaf in flax.traverse_util.flatten_dict(params["params"], sep="/").items():
    noise = 0.3 * rng.normal(size=leaf.shape)
    arrays[key] = (noise + (key.endswith("/scale"))).astype(np.float32)
  return arrays


def _to_linen_names(arrays):
  renamed = {}
  for key, value in arrays.items():
    for old, new in _LINEN_NAMES.items():
      key = key.replace(f"/{old}/", f"/{new}/")
    renamed[key] = value
  return renamed


def _layer_norm(x, scale, bias):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + 1e-6) * scale + bias


def _gelu(x, approximate):
  if approximate:
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
  return 0.5 * x * (1 + special.erf(x / np.sqrt(2)))


def _numpy_vit(p, images, approximate_gelu=True):
  """The original ViT forward pass in float64 numpy, from flat parameters."""
  p = {k: v.astype(np.float64) for k, v in p.items()}
  images = images.astype(np.float64)
  n, h, w, c = images.shape
  kernel = p["embedding/kernel"]
  ps = kernel.shape[0]
  patches = images.reshape(n, h // ps, ps, w // ps, ps, c)
  patches = patches.transpose(0, 1, 3, 2, 4, 5).reshape(n, -1, ps * ps * c)
  x = patches @ kernel.reshape(ps * ps * c, -1) + p["embedding/bias"]
  x = np.concatenate([np.broadcast_to(p["cls"], (n, 1, x.shape[-1])), x], 1)
  x = x + p[_POS]
  layer = 0
  while f"Transformer/encoderblock_{layer}/LayerNorm_0/scale" in p:
    b = f"Transformer/encoderblock_{layer}/"
    att = b + "MultiHeadDotProductAttention_1/"
    y = _layer_norm(x, p[b + "LayerNorm_0/scale"], p[b + "LayerNorm_0/bias"])
    q, k, v = (
      np.einsum("nsd,dhe->nshe", y, p[att + f"{m}/kernel"]) + p[att + f"{m}/bias"]
      for m in ("query", "key", "value")
    )
    logits = np.einsum("nqhe,nkhe->nhqk", q, k) / np.sqrt(q.shape[-1])
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    y = np.einsum("nhqk,nkhe->nqhe", weights, v)
    x = x + np.einsum("nqhe,hed->nqd", y, p[att + "out/kernel"]) + p[att + "out/bias"]
    y = _layer_norm(x, p[b + "LayerNorm_2/scale"], p[b + "LayerNorm_2/bias"])
    y = _gelu(
      y @ p[b + "MlpBlock_3/Dense_0/kernel"] + p[b + "MlpBlock_3/Dense_0/bias"], approximate_gelu
    )
    x = x + y @ p[b + "MlpBlock_3/Dense_1/kernel"] + p[b + "MlpBlock_3/Dense_1/bias"]
    layer += 1
  x = _layer_norm(x, p["Transformer/encoder_norm/scale"], p["Transformer/encoder_norm/bias"])[:, 0]
  if "pre_logits/kernel" in p:
    x = np.tanh(x @ p["pre_logits/kernel"] + p["pre_logits/bias"])
  return x @ p["head/kernel"] + p["head/bias"]


def _images(size, n=2, seed=1):
  return np.random.default_rng(seed).normal(size=(n, size, size, 3)).astype(np.float32)


def _zoomed(posemb, grid):
  """Independent resize: scipy.ndimage.zoom order=1 on the token grid."""
  old = int(np.sqrt(posemb.shape[1] - 1))
  tokens = posemb[0, 1:].reshape(old, old, -1)
  tokens = ndimage.zoom(tokens, (grid / old, grid / old, 1), order=1)
  return np.concatenate([posemb[:, :1], tokens.reshape(1, grid * grid, -1)], 1)


@pytest.mark.parametrize("generation", ["pre-linen", "linen"])
@pytest.mark.parametrize("representation_size", [None, 16])
def test_logits_match_numpy_reference(tmp_path, generation, representation_size):
  arrays = _random_checkpoint(representation_size)
  stored = arrays if generation == "pre-linen" else _to_linen_names(arrays)
  np.savez(tmp_path / "vit.npz", **stored)

  conversion = convert.load_with_summary("vit_npz", tmp_path / "vit.npz")

  model = conversion.model
  assert (
    model.patch_size,
    model.hidden_size,
    model.mlp_dim,
    model.num_heads,
    model.num_layers,
    model.num_classes,
  ) == (_PATCH, _HIDDEN, _MLP, _HEADS, _LAYERS, _CLASSES)
  assert model.representation_size == representation_size
  assert model.gelu_approximate and model.layer_norm_epsilon == 1e-6
  assert f"module names: {generation}" in conversion.summary["notes"]
  assert conversion.summary["image_size"] == _SIZE
  images = _images(_SIZE)
  logits = logits_of(model, conversion.variables, images)
  expected = _numpy_vit(arrays, images)
  assert np.abs(expected).max() > 0.5  # Not a degenerate reference.
  np.testing.assert_allclose(logits, expected, atol=1e-5, rtol=0)
  # The comparison is sharp enough to tell exact from tanh GELU.
  assert np.abs(_numpy_vit(arrays, images, approximate_gelu=False) - logits).max() > 1e-4


def test_fine_tuning_recipe_resizes_and_reinitialises(tmp_path):
  arrays = _random_checkpoint(representation_size=16)
  np.savez(tmp_path / "vit.npz", **_to_linen_names(arrays))

  conversion = convert.load_with_summary(
    "vit_npz", tmp_path / "vit.npz", convert.Target(num_classes=7, image_size=48)
  )

  model, variables, summary = conversion
  assert model.representation_size is None and model.num_classes == 7
  params = flax.traverse_util.flatten_dict(variables["params"], sep="/")
  assert not any(k.startswith("pre_logits") for k in params)
  assert params["head/kernel"].shape == (_HIDDEN, 7)
  assert not np.any(params["head/kernel"]) and not np.any(params["head/bias"])
  np.testing.assert_allclose(params[_POS], _zoomed(arrays[_POS], 6), atol=1e-6)
  # Everything but the position embedding and the head is carried over.
  for key, value in arrays.items():
    if key != _POS and not key.startswith(("head", "pre_logits")):
      np.testing.assert_array_equal(params[key], value)
  assert [d["key"] for d in summary["dropped"]] == ["pre_logits/kernel", "pre_logits/bias"]
  assert summary["resized"] == [
    {
      "key": _POS,
      "from": [1, 17, _HIDDEN],
      "to": [1, 37, _HIDDEN],
      "how": "class token kept; grid bilinear, align_corners=True",
    }
  ]
  assert [(d["key"], d["to"]) for d in summary["reinitialised"]] == [
    ("head/kernel", [_HIDDEN, 7]),
    ("head/bias", [7]),
  ]
  # The resized network is the original one with the zoomed grid.
  reference = {k: np.asarray(v) for k, v in params.items()}
  reference["head/kernel"] = np.asarray(
    0.3 * np.random.default_rng(3).normal(size=(_HIDDEN, 7)), np.float32
  )
  variables = {
    "params": flax.traverse_util.unflatten_dict(
      {k: jnp.asarray(v) for k, v in reference.items()}, sep="/"
    )
  }
  images = _images(48)
  np.testing.assert_allclose(
    logits_of(model, variables, images), _numpy_vit(reference, images), atol=1e-5, rtol=0
  )


@pytest.mark.parametrize("grid", [2, 3, 8])
def test_position_embedding_resize_matches_scipy_zoom(grid):
  posemb = np.random.default_rng(grid).normal(size=(1, 26, 6)).astype(np.float32)  # A 5x5 grid.
  resized = convert.conversion.resize_pos_embedding(posemb, grid)
  np.testing.assert_allclose(resized, _zoomed(posemb, grid), atol=1e-6)
  np.testing.assert_array_equal(resized[:, 0], posemb[:, 0])


def test_same_class_count_keeps_head(tmp_path):
  arrays = _random_checkpoint(representation_size=16)
  np.savez(tmp_path / "vit.npz", **arrays)
  model, variables = convert.load(
    "vit_npz", tmp_path / "vit.npz", num_classes=_CLASSES, image_size=_SIZE
  )
  assert model.representation_size == 16
  np.testing.assert_array_equal(variables["params"]["head"]["kernel"], arrays["head/kernel"])


def test_unknown_missing_and_misshapen_keys_are_listed(tmp_path):
  arrays = _random_checkpoint(representation_size=None)
  arrays["Transformer/extra/kernel"] = np.zeros((3, 4), np.float32)
  del arrays["Transformer/encoderblock_1/LayerNorm_2/bias"]
  arrays["Transformer/encoder_norm/scale"] = np.ones((31,), np.float32)
  np.savez(tmp_path / "bad.npz", **arrays)
  with pytest.raises(convert.ConversionError) as error:
    convert.load("vit_npz", tmp_path / "bad.npz")
  message = str(error.value)
  assert "params/Transformer/extra/kernel (3, 4)" in message
  assert "params/Transformer/encoderblock_1/LayerNorm_2/bias (32,)" in message
  assert ("params/Transformer/encoder_norm/scale: checkpoint (31,), model (32,)") in message


def test_rejects_files_that_are_not_vit_checkpoints(tmp_path):
  (tmp_path / "notes.npz").write_text("not a zip file")
  with pytest.raises(convert.ConversionError, match="not an .npz"):
    convert.load("vit_npz", tmp_path / "notes.npz")
  np.save(tmp_path / "single.npy", np.zeros((2, 2), np.float32))
  with pytest.raises(convert.ConversionError, match="single .npy array"):
    convert.load("vit_npz", tmp_path / "single.npy")
  np.savez(tmp_path / "other.npz", weights=np.zeros((2, 2), np.float32))
  with pytest.raises(convert.ConversionError, match="not a ViT checkpoint"):
    convert.load("vit_npz", tmp_path / "other.npz")
  with pytest.raises(FileNotFoundError):
    convert.load("vit_npz", tmp_path / "missing.npz")


def test_mixed_module_name_generations_are_rejected(tmp_path):
  arrays = _random_checkpoint(representation_size=None)
  key = "Transformer/encoderblock_1/MlpBlock_3/Dense_0/bias"
  arrays[key.replace("MlpBlock_3", "MlpBlock_0")] = arrays.pop(key)
  np.savez(tmp_path / "mixed.npz", **arrays)
  with pytest.raises(convert.ConversionError, match="mixes Linen"):
    convert.load("vit_npz", tmp_path / "mixed.npz")


def test_bad_arguments_are_explained(tmp_path):
  np.savez(tmp_path / "vit.npz", **_random_checkpoint(None))
  with pytest.raises(convert.ConversionError, match="num_heads=4 contradicts"):
    convert.load("vit_npz", tmp_path / "vit.npz", num_heads=4)
  with pytest.raises(convert.ConversionError, match="not a multiple of the"):
    convert.load("vit_npz", tmp_path / "vit.npz", image_size=36)
  with pytest.raises(ValueError, match="Unknown checkpoint source"):
    convert.load("npz", tmp_path / "vit.npz")
