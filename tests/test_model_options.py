"""The model table and the original code's model options: dropout placement, intermediate-features
head with exclusion loss, ResNet initialisation, and the config checks that depend on them."""

import functools

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from animesion_jax import convert
from animesion_jax import models
from animesion_jax import sharding
from animesion_jax.models import vit
from animesion_jax.training import config_validation
from animesion_jax.training import model_setup
from animesion_jax.training import optim
from animesion_jax.training import steps
from configs import resnet18
from configs import shallow as shallow_config
from configs import vit_b16

_KEY = jax.random.key(0)
_TINY_VIT = dict(patch_size=4, hidden_size=16, mlp_dim=32, num_heads=2, num_layers=3)


def _abstract_params(model, size):
  images = jnp.zeros((1, size, size, 3), jnp.float32)
  return jax.eval_shape(lambda: model.init(_KEY, images, train=False))["params"]


def _images(n=4, size=16, seed=1):
  return np.random.default_rng(seed).normal(size=(n, size, size, 3)).astype(np.float32)


# ------------------------------------------------------------------------------------ the table


@pytest.mark.parametrize(
  "name, overrides, size",
  [
    ("vit_tiny", {}, 8),
    ("vit_tiny", {"head_type": "intermediate_features"}, 8),
    ("resnet18", {"base_width": 4}, 32),
    ("shallow", {}, 32),
  ],
)
def test_classifier_params_of_the_table_exist_in_each_model(name, overrides, size):
  model = models.create_model(name, 5, **overrides)
  params = _abstract_params(model, size)
  names = models.spec(name).family.classifier_params
  mask = optim.classifier_mask(params, names)
  trainable = sorted(k for k, v in flax.traverse_util.flatten_dict(mask, sep="/").items() if v)
  expected = {
    "vit_tiny": ["head/bias", "head/kernel"],
    "resnet18": ["fc/bias", "fc/kernel"],
    "shallow": ["fc2/bias", "fc2/kernel"],
  }[name]
  if overrides.get("head_type"):  # Intermediate features: the layer mix, LayerNorm, Dense.
    expected = sorted(
      expected
      + [
        "interm_aggregate/bias",
        "interm_aggregate/kernel",
        "interm_norm/bias",
        "interm_norm/scale",
      ]
    )
  assert trainable == expected


def test_family_configs_use_the_tables_normalisation_and_sources():
  for config in (vit_b16.get_config(), resnet18.get_config(), shallow_config.get_config()):
    family = models.spec(config.model.name).family
    assert config.normalization == family.normalization, config.model.name
  assert models.family_of("shallow").normalization == "half"  # Only the ResNets use ImageNet's.
  assert set(models.checkpoint_sources()) <= set(convert.SOURCES)
  assert models.family_of(models.create_model("resnet18", 3)) is models.RESNET


def _valid(config):
  config_validation.validate(config, num_devices=1, num_processes=1)


@pytest.mark.slow
def test_freeze_backbone_with_shallownet_validates_and_freezes_fc2_only():
  config = shallow_config.get_config()
  config.freeze_backbone = True
  config.schedule = "constant"
  _valid(config)
  model = models.create_model("shallow", 5, channels=(2, 3), hidden=4)
  params = jax.jit(lambda: model.init(_KEY, jnp.zeros((1, 32, 32, 3)), train=False))()["params"]
  tx = optim.create_optimizer(config, 10, 100, params=params)
  ones = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(ones, tx.init(params), params)
  moved = sorted(
    k for k, v in flax.traverse_util.flatten_dict(updates, sep="/").items() if np.any(np.asarray(v))
  )
  assert moved == ["fc2/bias", "fc2/kernel"]


@pytest.mark.parametrize(
  "get_config, field, value, message",
  [
    (
      resnet18.get_config,
      "dropout_placement",
      "vit_jax",
      r"model.dropout_placement is an option of VisionTransformer models only.*ResNet",
    ),
    (
      shallow_config.get_config,
      "head_type",
      "class_token",
      r"head_type is an option of VisionTransformer models only",
    ),
    (
      vit_b16.get_config,
      "init_scheme",
      "animesion",
      r"init_scheme is an option of ResNet models only",
    ),
    (vit_b16.get_config, "dropout_placement", "timm", r"dropout_placement='timm'"),
    (vit_b16.get_config, "exclusion_loss_weight", 0.01, r"needs head_type='intermediate_features'"),
    (resnet18.get_config, "init_scheme", "kaiming", r"init_scheme 'kaiming'"),
    (vit_b16.get_config, "no_such_field", 1, r"no_such_field is not a model option"),
  ],
)
def test_model_options_are_checked_against_the_model(get_config, field, value, message):
  config = get_config()
  config.model[field] = value
  with pytest.raises(config_validation.ConfigError, match=message):
    _valid(config)


def test_exclusion_options_are_checked():
  config = vit_b16.get_config()
  config.model.head_type = "intermediate_features"
  config.model.exclusion_loss_weight = 0.01
  config.model.exclusion_layer_distance = 12
  with pytest.raises(config_validation.ConfigError, match="between 1 and num_layers - 1 = 11"):
    _valid(config)
  config.model.exclusion_layer_distance = 2
  _valid(config)


def test_init_from_source_must_hold_the_models_family():
  config = vit_b16.get_config()
  config.init_from.source = "torchvision_resnet"
  config.init_from.path = "resnet18.pth"
  with pytest.raises(
    config_validation.ConfigError,
    match=r"holds no VisionTransformer.*\['vit_npz', 'pytorch_vit', 'animesion'\]",
  ):
    _valid(config)


# --------------------------------------------------------------------------- ViT dropout placement


def _dropout_sites(model, images):
  """Module paths of the Dropout layers a train-mode call goes through."""
  sites = []

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.Dropout) and context.method_name == "__call__":
      sites.append("/".join(context.module.path))
    return next_fun(*args, **kwargs)

  variables = model.init(_KEY, images, train=False)
  with nn.intercept_methods(record):
    model.apply(variables, images, train=True, rngs={"dropout": _KEY})
  return sites


@pytest.mark.slow
def test_pytorch_pretrained_vit_dropout_placement():
  images = _images(1, 8)
  fields = dict(
    patch_size=4, hidden_size=8, mlp_dim=16, num_heads=2, num_layers=1, dropout_rate=0.1
  )
  jax_sites = _dropout_sites(models.create_model("vit_tiny", 3, **fields), images)
  torch_sites = _dropout_sites(
    models.create_model("vit_tiny", 3, dropout_placement="pytorch_pretrained_vit", **fields), images
  )
  block = "Transformer/encoderblock_0"
  assert jax_sites == [
    "Transformer/Dropout_0",
    f"{block}/Dropout_0",
    f"{block}/MlpBlock_3/Dropout_0",
    f"{block}/MlpBlock_3/Dropout_1",
  ]
  # After the attention projection and after the MLP; none on the embeddings or inside the MLP.
  assert torch_sites == [f"{block}/Dropout_0", f"{block}/MlpBlock_3/Dropout_0"]


@pytest.mark.slow
def test_attention_probabilities_dropout_in_both_placements():
  images = _images(2, 8)
  for placement in vit.DROPOUT_PLACEMENTS:
    model = models.create_model(
      "vit_tiny", 3, attention_dropout_rate=0.5, dropout_placement=placement
    )
    variables = model.init(_KEY, images, train=False)
    rng = np.random.default_rng(0)  # Random values everywhere, the head included.
    variables = jax.tree.map(
      lambda p, rng=rng: p + rng.normal(size=p.shape).astype(np.float32), variables
    )
    apply_fn = jax.jit(functools.partial(model.apply, variables, images, train=True))
    apply = lambda k, apply_fn=apply_fn: apply_fn(rngs={"dropout": k})
    assert np.abs(apply(jax.random.key(1)) - apply(jax.random.key(2))).max() > 1e-3


# -------------------------------------------------------- intermediate-features head and its loss


def _tiny_interm(**overrides):
  fields = dict(_TINY_VIT, head_type="intermediate_features")
  fields.update(overrides)
  return models.create_model("vit_tiny", 5, **fields)


@pytest.mark.slow
def test_intermediate_head_parameters_and_torch_default_init():
  model = _tiny_interm()
  params = jax.jit(lambda x: model.init(_KEY, x, train=False))(_images(1))["params"]
  flat = {k: np.asarray(v) for k, v in flax.traverse_util.flatten_dict(params, sep="/").items()}
  assert "Transformer/encoder_norm/scale" not in flat  # No final LayerNorm, as the original.
  assert flat["interm_aggregate/kernel"].shape == (3, 1)
  assert flat["head/kernel"].shape == (16, 5)
  # torch.nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias.
  bound = 1 / np.sqrt(16)
  assert (
    np.abs(flat["head/kernel"]).max() <= bound and np.abs(flat["head/kernel"]).max() > 0.8 * bound
  )
  assert 0 < np.abs(flat["head/bias"]).max() <= bound


@pytest.mark.slow
def test_exclusion_loss_is_added_to_the_training_loss_only_when_on():
  images = _images()
  labels = np.array([0, 1, 2, 3], np.int32)
  batch = {
    "image": ((images - images.min()) / np.ptp(images) * 255).astype(np.uint8),
    "label": labels,
    "mask": np.ones(4, bool),
  }
  tx = optax.sgd(1.0)

  def step(model, variables):
    state = steps.create_train_state(variables, tx, _KEY)
    new_state, _ = jax.jit(
      lambda s, b: steps.train_step(s, b, model=model, tx=tx, normalization="half")
    )(state, batch)
    return jax.tree.map(
      lambda new, old: np.asarray(old) - np.asarray(new), new_state.params, state.params
    )  # = the gradient (SGD, lr 1).

  def expected_grad(model, variables, weight):
    x = (batch["image"].astype(np.float32) / 255 - 0.5) / 0.5

    def loss(params):
      logits, inter = model.apply(
        {"params": params}, x, train=True, capture_intermediates=True, mutable=["intermediates"]
      )
      _, tokens = inter["intermediates"]["Transformer"]["__call__"][0]
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      return ce - weight * 1.5**2 * vit.exclusion_loss(tokens, 1, 1.5).mean()

    return jax.grad(loss)(variables["params"])

  off = _tiny_interm()
  variables = jax.jit(lambda: off.init(_KEY, images, train=False))()
  on = _tiny_interm(
    exclusion_loss_weight=0.5, exclusion_temperature=1.5, exclusion_layer_distance=1
  )
  got_off, got_on = step(off, variables), step(on, variables)
  for got, weight in ((got_off, 0.0), (got_on, 0.5)):
    jax.tree.map(
      lambda g, e: np.testing.assert_allclose(g, e, rtol=2e-5, atol=2e-6),
      got,
      expected_grad(off, variables, weight),
    )
  # The term reaches the encoder (the class tokens), not only the head.
  block = lambda g: g["Transformer"]["encoderblock_0"]["MlpBlock_3"]["Dense_0"]["kernel"]
  assert np.abs(block(got_on) - block(got_off)).max() > 1e-4


# ---------------------------------------------------------------------------- ResNet initialisation


@pytest.mark.slow
def test_resnet_init_schemes():
  images = jnp.zeros((1, 32, 32, 3))
  stats = {}
  for scheme in ("torchvision", "animesion"):
    model = models.create_model("resnet18", 10, base_width=16, init_scheme=scheme)
    params = jax.jit(functools.partial(model.init, _KEY, images, train=False))()["params"]
    stats[scheme] = (
      np.asarray(params["layer3_0"]["conv2"]["kernel"]),
      np.asarray(params["fc"]["bias"]),
    )
  (tv_kernel, tv_bias), (an_kernel, an_bias) = stats["torchvision"], stats["animesion"]
  fan_in, fan_out = 3 * 3 * 64, 3 * 3 * 64
  # torchvision: kaiming normal, fan_out; std sqrt(2 / fan_out).
  assert tv_kernel.std() == pytest.approx(np.sqrt(2 / fan_out), rel=0.05)
  # The original: xavier uniform, bound sqrt(6 / (fan_in + fan_out)).
  bound = np.sqrt(6 / (fan_in + fan_out))
  assert np.abs(an_kernel).max() <= bound and np.abs(an_kernel).max() > 0.99 * bound
  assert an_kernel.std() == pytest.approx(bound / np.sqrt(3), rel=0.05)
  # Classifier bias: zero (torchvision scheme) vs torch's Linear default U(+-1/sqrt(128)).
  assert not np.any(tv_bias)
  assert 0.5 / np.sqrt(128) < np.abs(an_bias).max() <= 1 / np.sqrt(128)


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["torchvision", "animesion"])
def test_pretrained_resnet_new_classifier_init(tmp_path, scheme):
  pretrained = models.create_model("resnet18", 7, base_width=4)
  size = 32
  variables = jax.jit(lambda: pretrained.init(_KEY, jnp.zeros((1, size, size, 3)), train=False))()
  convert.save(str(tmp_path / "ckpt"), pretrained, variables, {"image_size": size})
  config = resnet18.get_config()
  config.model.base_width = 4
  config.model.init_scheme = scheme
  config.image_size = size
  config.init_from.source = "animesion"
  config.init_from.path = str(tmp_path / "ckpt")
  setup = model_setup.create(config, 5, sharding.create_mesh(jax.devices()[:1]), 10, 10)
  fc = jax.tree.map(np.asarray, setup.state.params["fc"])
  conv = np.asarray(setup.state.params["conv1"]["kernel"])
  np.testing.assert_array_equal(conv, np.asarray(variables["params"]["conv1"]["kernel"]))
  assert fc["kernel"].shape == (32, 5)
  if scheme == "torchvision":  # The converters' shared recipe: a new head starts at zero.
    assert not np.any(fc["kernel"]) and not np.any(fc["bias"])
  else:  # The original: a fresh torch nn.Linear.
    assert 0.5 / np.sqrt(32) < np.abs(fc["kernel"]).max() <= 1 / np.sqrt(32)
    assert 0 < np.abs(fc["bias"]).max() <= 1 / np.sqrt(32)


@pytest.mark.slow
def test_intermediate_head_starts_from_a_class_token_vits_backbone(tmp_path):
  pretrained = models.create_model("vit_tiny", 7, **_TINY_VIT)
  variables = jax.jit(lambda: pretrained.init(_KEY, jnp.zeros((1, 16, 16, 3)), train=False))()
  variables = jax.tree.map(lambda p: p + 0.5, variables)  # Every leaf distinguishable from init.
  convert.save(str(tmp_path / "ckpt"), pretrained, variables, {"image_size": 16})
  config = vit_b16.get_config()
  config.model.update(name="vit_tiny", head_type="intermediate_features", **_TINY_VIT)
  config.image_size = 16
  config.init_from.source = "animesion"
  config.init_from.path = str(tmp_path / "ckpt")
  setup = model_setup.create(config, 5, sharding.create_mesh(jax.devices()[:1]), 10, 10)
  got = {
    k: np.asarray(v)
    for k, v in flax.traverse_util.flatten_dict(setup.state.params, sep="/").items()
  }
  start = flax.traverse_util.flatten_dict(variables["params"], sep="/")
  backbone = [k for k in start if k.startswith(("Transformer/encoderblock", "embedding", "cls"))]
  for key in backbone:
    np.testing.assert_array_equal(got[key], np.asarray(start[key]))
  assert "Transformer/encoder_norm/scale" not in got
  # The new head has the model's own (torch-default) initialisation, not placeholders.
  assert got["head/kernel"].shape == (16, 5) and 0 < np.abs(got["head/kernel"]).max() <= 0.25
  np.testing.assert_array_equal(got["interm_norm/scale"], np.ones(16))
  assert np.any(got["interm_aggregate/kernel"])
