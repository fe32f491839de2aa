"""Tests for animesion_jax.models: parameter layout, counts and behaviour."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from animesion_jax import models

_KEY = jax.random.key(0)
# Random ops compile much faster with the 'rbg' generator than with threefry
# on CPU; used where a test only needs some randomness, not a fixed stream.
_FAST_RNG = "rbg"
_FAST_KEY = jax.random.key(0, impl=_FAST_RNG)


def _abstract_variables(model, size):
  """Variables of `model` at `size` px without allocating or computing them."""
  images = jnp.zeros((1, size, size, 3), jnp.float32)
  return jax.eval_shape(lambda: model.init(_KEY, images, train=False))


def _shapes(tree):
  flat = flax.traverse_util.flatten_dict(tree, sep="/")
  return {k: tuple(v.shape) for k, v in flat.items()}


def _images(n, height, width=None, seed=1):
  width = height if width is None else width
  rng = np.random.default_rng(seed)
  return rng.normal(size=(n, height, width, 3)).astype(np.float32)


def _apply(model, variables, images, **kwargs):
  """`model.apply` under jit: one compile beats op-by-op dispatch on CPU."""
  rngs = kwargs.pop("rngs", None)
  fn = jax.jit(lambda v, x, r: model.apply(v, x, rngs=r, **kwargs))
  return fn(variables, images, rngs)


def _random_variables(model, images, seed=0):
  """Random variables for `model`, built in numpy to skip compiling its init.

  Every leaf is random (unlike a fresh init: zero heads, unit scales), so
  each parameter influences the output.
  """
  abstract = jax.eval_shape(lambda: model.init(_KEY, images, train=False))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    shape = leaf.shape
    if path[-1] == "var":
      return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    if len(shape) > 1:
      fan_in = np.prod(shape[:-1])
      return (rng.normal(size=shape) / np.sqrt(fan_in)).astype(np.float32)
    offset = 1.0 if path[-1] == "scale" else 0.0
    return (offset + 0.1 * rng.normal(size=shape)).astype(np.float32)

  flat = flax.traverse_util.flatten_dict(abstract)
  return flax.traverse_util.unflatten_dict({path: fill(path, leaf) for path, leaf in flat.items()})


def _dropout_trainer(model, variables, images):
  """Returns seed -> train-mode logits, compiled once for all seeds."""

  @jax.jit
  def logits(key):
    out, _ = model.apply(
      variables, images, train=True, mutable=["batch_stats"], rngs={"dropout": key}
    )
    return out

  return lambda seed: logits(jax.random.key(seed, impl=_FAST_RNG))


def _vit_count(patch, hidden, mlp, layers, image, classes):
  """ViT parameter count from its formula (no representation layer)."""
  tokens = (image // patch) ** 2 + 1
  embedding = patch * patch * 3 * hidden + hidden
  block = (
    2 * 2 * hidden + 4 * (hidden * hidden + hidden) + (hidden * mlp + mlp + mlp * hidden + hidden)
  )
  return (
    embedding + hidden + tokens * hidden + layers * block + 2 * hidden + hidden * classes + classes
  )


@pytest.mark.parametrize("size, expected", [(224, 86_567_656), (128, 86_466_280)])
def test_vit_b16_param_count(size, expected):
  variables = _abstract_variables(models.create_model("vit_b16", 1000), size)
  assert models.count_params(variables["params"]) == expected


@pytest.mark.parametrize(
  "name, patch, hidden, mlp, layers",
  [
    ("vit_b32", 32, 768, 3072, 12),
    ("vit_l16", 16, 1024, 4096, 24),
    ("vit_l32", 32, 1024, 4096, 24),
  ],
)
def test_vit_param_counts_match_formula(name, patch, hidden, mlp, layers):
  for size, classes in [(224, 1000), (128, 173)]:
    model = models.create_model(name, classes)
    count = models.count_params(_abstract_variables(model, size)["params"])
    assert count == _vit_count(patch, hidden, mlp, layers, size, classes)


@pytest.mark.parametrize(
  "name, expected",
  [
    ("resnet18", 11_689_512),
    ("resnet34", 21_797_672),
    ("resnet50", 25_557_032),
    ("resnet101", 44_549_160),
    ("resnet152", 60_192_808),
  ],
)
def test_resnet_param_counts_equal_torchvision(name, expected):
  variables = _abstract_variables(models.create_model(name, 1000), 64)
  assert models.count_params(variables["params"]) == expected


def test_vit_tiny_parameter_tree_uses_original_names():
  model = models.create_model("vit_tiny", 5, representation_size=16)
  got = _shapes(_abstract_variables(model, 8)["params"])
  expected = {
    "embedding/kernel": (4, 4, 3, 32),
    "embedding/bias": (32,),
    "cls": (1, 1, 32),
    "Transformer/posembed_input/pos_embedding": (1, 5, 32),
    "Transformer/encoder_norm/scale": (32,),
    "Transformer/encoder_norm/bias": (32,),
    "pre_logits/kernel": (32, 16),
    "pre_logits/bias": (16,),
    "head/kernel": (16, 5),
    "head/bias": (5,),
  }
  for i in range(2):
    block = f"Transformer/encoderblock_{i}"
    attention = f"{block}/MultiHeadDotProductAttention_1"
    for ln in ("LayerNorm_0", "LayerNorm_2"):
      expected[f"{block}/{ln}/scale"] = (32,)
      expected[f"{block}/{ln}/bias"] = (32,)
    for proj in ("query", "key", "value"):
      expected[f"{attention}/{proj}/kernel"] = (32, 2, 16)
      expected[f"{attention}/{proj}/bias"] = (2, 16)
    expected[f"{attention}/out/kernel"] = (2, 16, 32)
    expected[f"{attention}/out/bias"] = (32,)
    expected[f"{block}/MlpBlock_3/Dense_0/kernel"] = (32, 64)
    expected[f"{block}/MlpBlock_3/Dense_0/bias"] = (64,)
    expected[f"{block}/MlpBlock_3/Dense_1/kernel"] = (64, 32)
    expected[f"{block}/MlpBlock_3/Dense_1/bias"] = (32,)
  assert got == expected


def _bn(prefix, width):
  return {f"{prefix}/scale": (width,), f"{prefix}/bias": (width,)}


def test_basic_resnet_parameter_tree_is_torchvision_layout():
  model = models.create_model("resnet18", 5, stage_sizes=(1, 1), base_width=4)
  variables = _abstract_variables(model, 32)
  expected = {
    "conv1/kernel": (7, 7, 3, 4),
    **_bn("bn1", 4),
    "layer1_0/conv1/kernel": (3, 3, 4, 4),
    **_bn("layer1_0/bn1", 4),
    "layer1_0/conv2/kernel": (3, 3, 4, 4),
    **_bn("layer1_0/bn2", 4),
    "layer2_0/conv1/kernel": (3, 3, 4, 8),
    **_bn("layer2_0/bn1", 8),
    "layer2_0/conv2/kernel": (3, 3, 8, 8),
    **_bn("layer2_0/bn2", 8),
    "layer2_0/downsample_conv/kernel": (1, 1, 4, 8),
    **_bn("layer2_0/downsample_bn", 8),
    "fc/kernel": (8, 5),
    "fc/bias": (5,),
  }
  assert _shapes(variables["params"]) == expected
  stats = {
    k.replace("/scale", "/mean").replace("/bias", "/var"): v
    for k, v in expected.items()
    if "bn" in k
  }
  assert _shapes(variables["batch_stats"]) == stats


def test_bottleneck_resnet_parameter_tree_is_torchvision_layout():
  model = models.create_model("resnet50", 5, stage_sizes=(2, 1), base_width=2)
  got = _shapes(_abstract_variables(model, 32)["params"])
  expected = {
    "conv1/kernel": (7, 7, 3, 2),
    **_bn("bn1", 2),
    # The first block widens 2 -> 8 channels, so it needs a downsample.
    "layer1_0/conv1/kernel": (1, 1, 2, 2),
    **_bn("layer1_0/bn1", 2),
    "layer1_0/conv2/kernel": (3, 3, 2, 2),
    **_bn("layer1_0/bn2", 2),
    "layer1_0/conv3/kernel": (1, 1, 2, 8),
    **_bn("layer1_0/bn3", 8),
    "layer1_0/downsample_conv/kernel": (1, 1, 2, 8),
    **_bn("layer1_0/downsample_bn", 8),
    "layer1_1/conv1/kernel": (1, 1, 8, 2),
    **_bn("layer1_1/bn1", 2),
    "layer1_1/conv2/kernel": (3, 3, 2, 2),
    **_bn("layer1_1/bn2", 2),
    "layer1_1/conv3/kernel": (1, 1, 2, 8),
    **_bn("layer1_1/bn3", 8),
    "layer2_0/conv1/kernel": (1, 1, 8, 4),
    **_bn("layer2_0/bn1", 4),
    "layer2_0/conv2/kernel": (3, 3, 4, 4),
    **_bn("layer2_0/bn2", 4),
    "layer2_0/conv3/kernel": (1, 1, 4, 16),
    **_bn("layer2_0/bn3", 16),
    "layer2_0/downsample_conv/kernel": (1, 1, 8, 16),
    **_bn("layer2_0/downsample_bn", 16),
    "fc/kernel": (16, 5),
    "fc/bias": (5,),
  }
  assert got == expected


def test_vit_head_starts_at_zero():
  model = models.create_model("vit_tiny", 5)
  init = jax.jit(lambda x: model.init(_FAST_KEY, x, train=False))
  params = init(_images(1, 8))["params"]
  assert not np.any(params["head"]["kernel"])
  assert not np.any(params["head"]["bias"])
  logits = _apply(model, {"params": params}, _images(2, 8), train=False)
  np.testing.assert_array_equal(logits, np.zeros((2, 5)))


_TINY = {
  "vit_tiny": ("vit_tiny", {}, 8),
  "resnet_basic": ("resnet18", {"base_width": 4}, 32),
  "resnet_bottleneck": ("resnet50", {"base_width": 2, "stage_sizes": (1, 1, 1, 1)}, 32),
  "shallow": ("shallow", {"channels": (2, 3), "hidden": 8}, 32),
}


@pytest.mark.parametrize("tiny", sorted(_TINY))
def test_tiny_forward_shapes(tiny):
  name, overrides, size = _TINY[tiny]
  model = models.create_model(name, 7, **overrides)
  variables = _random_variables(model, _images(1, size))
  logits = _apply(model, variables, _images(3, size), train=False)
  assert logits.shape == (3, 7) and logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))


@pytest.mark.parametrize(
  "name", sorted(n for n in models.MODELS if models.spec(n).family.task == "classify")
)
def test_every_model_builds_abstractly(name):
  model = models.create_model(name, 7)
  size = 28 if name == "vit_h14" else 32
  images = jnp.zeros((2, size, size, 3), jnp.float32)
  logits, variables = jax.eval_shape(lambda: model.init_with_output(_KEY, images, train=False))
  assert logits.shape == (2, 7) and logits.dtype == jnp.float32
  assert models.count_params(variables["params"]) > 0


def test_unknown_model_name_lists_valid_names():
  with pytest.raises(ValueError, match="vit_b17") as info:
    models.create_model("vit_b17", 10)
  for name in models.MODELS:
    assert name in str(info.value)


def test_unknown_override_is_a_clear_error():
  with pytest.raises(ValueError, match="resnet18.*patch_size"):
    models.create_model("resnet18", 10, patch_size=16)


def _layer_norm(x, scale, bias):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + 1e-6) * scale + bias


def _reference_vit(p, images, patch, approximate):
  """Plain float64 numpy ViT forward over the original parameter names."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
  n, h, w, c = images.shape
  x = np.asarray(images, np.float64).reshape(n, h // patch, patch, w // patch, patch, c)
  x = np.einsum("nypxqc,pqcd->nyxd", x, p["embedding"]["kernel"])
  x = x.reshape(n, -1, x.shape[-1]) + p["embedding"]["bias"]
  cls = np.broadcast_to(p["cls"], (n, 1, x.shape[-1]))
  t = p["Transformer"]
  x = np.concatenate([cls, x], 1) + t["posembed_input"]["pos_embedding"]
  for i in range(2):
    b = t[f"encoderblock_{i}"]
    a = b["MultiHeadDotProductAttention_1"]
    y = _layer_norm(x, **b["LayerNorm_0"])
    q, k, v = (
      np.einsum("nld,dhk->nlhk", y, a[m]["kernel"]) + a[m]["bias"]
      for m in ("query", "key", "value")
    )
    logits = np.einsum("nqhk,nlhk->nhql", q, k) / np.sqrt(q.shape[-1])
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    y = np.einsum("nhql,nlhk->nqhk", weights, v)
    x = x + np.einsum("nqhk,hkd->nqd", y, a["out"]["kernel"]) + a["out"]["bias"]
    mlp = b["MlpBlock_3"]
    y = _layer_norm(x, **b["LayerNorm_2"])
    y = y @ mlp["Dense_0"]["kernel"] + mlp["Dense_0"]["bias"]
    if approximate:
      y = 0.5 * y * (1 + np.tanh(np.sqrt(2 / np.pi) * (y + 0.044715 * y**3)))
    else:
      y = 0.5 * y * (1 + special.erf(y / np.sqrt(2)))
    x = x + y @ mlp["Dense_1"]["kernel"] + mlp["Dense_1"]["bias"]
  x = _layer_norm(x, **t["encoder_norm"])[:, 0]
  return x @ p["head"]["kernel"] + p["head"]["bias"]


def _shrink_token_stream(params, factor):
  """Scales the embedded tokens so LayerNorm's epsilon shows in the logits."""
  params["embedding"] = jax.tree.map(lambda a: a * factor, params["embedding"])
  params["cls"] = params["cls"] * factor
  pos = params["Transformer"]["posembed_input"]
  pos["pos_embedding"] = pos["pos_embedding"] * factor
  return params


@pytest.mark.parametrize("token_scale", [1.0, 0.01])
def test_vit_matches_reference_and_gelu_flavour_matters(token_scale):
  images = _images(2, 8, 12)
  outputs = {}
  for approximate in (True, False):
    model = models.create_model("vit_tiny", 5, gelu_approximate=approximate)
    params = _random_variables(model, images)["params"]
    params = _shrink_token_stream(params, token_scale)
    outputs[approximate] = _apply(model, {"params": params}, images, train=False)
    expected = _reference_vit(params, images, 4, approximate)
    np.testing.assert_allclose(outputs[approximate], expected, atol=1e-5)
  # Same parameters (same numpy seed); only the GELU flavour differs.
  assert np.max(np.abs(outputs[True] - outputs[False])) > 1e-4


@pytest.mark.parametrize("height, width", [(8, 8), (16, 12), (4, 20)])
def test_vit_accepts_any_size_divisible_by_patch(height, width):
  model = models.create_model("vit_tiny", 3)
  variables = _random_variables(model, _images(1, height, width))
  tokens = (height // 4) * (width // 4) + 1
  pos = variables["params"]["Transformer"]["posembed_input"]["pos_embedding"]
  assert pos.shape == (1, tokens, 32)
  logits = _apply(model, variables, _images(2, height, width), train=False)
  assert logits.shape == (2, 3)


def test_vit_rejects_bad_image_sizes():
  model = models.create_model("vit_tiny", 3)
  with pytest.raises(ValueError, match=r"10x8.*patch size 4"):
    model.init(_KEY, _images(1, 10, 8), train=False)
  variables = _random_variables(model, _images(1, 8))
  with pytest.raises(ValueError, match=r"\(1, 5, 32\).*17 tokens"):
    _apply(model, variables, _images(1, 16), train=False)


def test_vit_dropout_only_in_train_mode():
  images = _images(2, 8)
  model = models.create_model("vit_tiny", 5, dropout_rate=0.2, attention_dropout_rate=0.2)
  plain = models.create_model("vit_tiny", 5)
  variables = _random_variables(plain, images)
  reference = _apply(plain, variables, images, train=False)
  # Eval mode needs no rng and equals the dropout-free model.
  np.testing.assert_array_equal(_apply(model, variables, images, train=False), reference)

  train = _dropout_trainer(model, variables, images)
  first = train(1)
  np.testing.assert_array_equal(first, train(1))
  assert np.max(np.abs(first - train(2))) > 1e-3
  assert np.max(np.abs(first - reference)) > 1e-3
  # Differently compiled programs agree to float noise only.
  np.testing.assert_allclose(_dropout_trainer(plain, variables, images)(1), reference, atol=1e-5)
  with pytest.raises(flax.errors.InvalidRngError, match="dropout"):
    _apply(model, variables, images, train=True)


def test_resnet_convs_pad_symmetrically_like_torch():
  model = models.create_model("resnet18", 4, stage_sizes=(1, 1), base_width=4)
  images = _images(2, 32)
  variables = _random_variables(model, images)
  _, state = _apply(model, variables, images, train=False, capture_intermediates=True)
  inter = state["intermediates"]
  params = variables["params"]

  def conv(x, kernel, stride, pad):
    return jax.lax.conv_general_dilated(
      x,
      kernel,
      (stride, stride),
      ((pad, pad), (pad, pad)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )

  # 'SAME' would pad (2, 3) here and (0, 1) below instead of (3, 3), (1, 1).
  np.testing.assert_allclose(
    inter["conv1"]["__call__"][0], conv(images, params["conv1"]["kernel"], 2, 3), atol=1e-5
  )
  block_in = inter["layer1_0"]["__call__"][0]
  np.testing.assert_allclose(
    inter["layer2_0"]["conv1"]["__call__"][0],
    conv(block_in, params["layer2_0"]["conv1"]["kernel"], 2, 1),
    atol=1e-5,
  )


def test_batchnorm_stats_update_only_in_train_mode():
  model = models.create_model("resnet18", 4, stage_sizes=(1, 1), base_width=4)
  images = _images(4, 32) + 1.0
  variables = _random_variables(model, images)
  old = variables["batch_stats"]["bn1"]

  _, state = _apply(
    model,
    variables,
    images,
    train=True,
    mutable=["batch_stats", "intermediates"],
    capture_intermediates=True,
  )
  stem = state["intermediates"]["conv1"]["__call__"][0]
  # Flax momentum 0.9 == torch momentum 0.1: new = 0.9 * old + 0.1 * batch.
  new = state["batch_stats"]["bn1"]
  batch_mean = stem.mean(axis=(0, 1, 2))
  batch_var = stem.var(axis=(0, 1, 2))
  np.testing.assert_allclose(
    new["mean"], 0.9 * old["mean"] + 0.1 * batch_mean, rtol=1e-4, atol=1e-6
  )
  # Flax keeps the biased batch variance (torch's running_var is unbiased).
  np.testing.assert_allclose(new["var"], 0.9 * old["var"] + 0.1 * batch_var, rtol=1e-4)
  assert np.abs(new["mean"] - old["mean"]).max() > 1e-2

  _, eval_state = _apply(model, variables, images, train=False, mutable=["batch_stats"])
  jax.tree.map(np.testing.assert_array_equal, eval_state["batch_stats"], variables["batch_stats"])
  # Eval mode uses running stats: a sample's logits ignore its batch-mates.
  alone = _apply(model, variables, images[:1], train=False)
  batched = _apply(model, variables, images, train=False)
  np.testing.assert_allclose(alone, batched[:1], atol=1e-5)


def test_resnet_rejects_unknown_block():
  model = models.create_model("resnet18", 4, block="wide")
  with pytest.raises(ValueError, match="'wide'.*basic.*bottleneck"):
    model.init(_KEY, _images(1, 32), train=False)


def test_shallow_dropout_and_size_checks():
  model = models.create_model("shallow", 6)
  images = _images(4, 32)
  variables = _random_variables(model, images)
  # 32 -> conv 28 -> pool 14 -> conv 10 -> pool 5; 32 * 5 * 5 features.
  assert variables["params"]["fc1"]["kernel"].shape == (800, 512)
  # The original at 224 px: 224 -> 220 -> 110 -> 106 -> 53; Linear(53 * 53 * 32 -> 512).
  assert _shapes(_abstract_variables(model, 224)["params"]) == {
    "conv1/kernel": (5, 5, 3, 16),
    "conv1/bias": (16,),
    "bn1/scale": (16,),
    "bn1/bias": (16,),
    "conv2/kernel": (5, 5, 16, 32),
    "conv2/bias": (32,),
    "bn2/scale": (32,),
    "bn2/bias": (32,),
    "fc1/kernel": (53 * 53 * 32, 512),
    "fc1/bias": (512,),
    "fc2/kernel": (512, 6),
    "fc2/bias": (6,),
  }
  assert model.dropout_rate == 0.2

  train = _dropout_trainer(model, variables, images)
  assert np.max(np.abs(train(1) - train(2))) > 1e-4
  no_dropout = models.create_model("shallow", 6, dropout_rate=0.0)
  train = _dropout_trainer(no_dropout, variables, images)
  np.testing.assert_array_equal(train(1), train(2))
  np.testing.assert_array_equal(
    _apply(model, variables, images, train=False),
    _apply(no_dropout, variables, images, train=False),
  )
  with pytest.raises(ValueError, match="15x15 is too small"):
    model.init(_KEY, _images(1, 15), train=False)


@pytest.mark.slow
@pytest.mark.parametrize("tiny", sorted(_TINY))
def test_bfloat16_compute_keeps_float32_params_and_logits(tiny):
  name, overrides, size = _TINY[tiny]
  images = _images(2, size)
  full = models.create_model(name, 5, **overrides)
  half = models.create_model(name, 5, dtype=jnp.bfloat16, **overrides)
  for leaf in jax.tree.leaves(_abstract_variables(half, size)):
    assert leaf.dtype == jnp.float32
  variables = _random_variables(half, images)
  logits, state = _apply(
    half, variables, images, train=False, capture_intermediates=True, mutable=["intermediates"]
  )
  assert logits.dtype == jnp.float32
  first = "embedding" if name.startswith("vit") else "conv1"
  assert state["intermediates"][first]["__call__"][0].dtype == jnp.bfloat16
  reference = _apply(full, variables, images, train=False)
  scale = np.abs(reference).max()
  assert scale > 0.1
  np.testing.assert_allclose(logits, reference, atol=0.05 * scale)
  assert np.abs(logits - reference).max() > 0  # bf16 really was used.
