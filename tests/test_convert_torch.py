"""Logit parity of converted PyTorch checkpoints with the PyTorch networks.

References: `pytorch_pretrained_vit.ViT` (what the original Animesion code
trained and saved) and torchvision's ResNet, random-initialised and tiny.
"""

import flax
import jax
import numpy as np
import pytest
import pytorch_pretrained_vit
from pytorch_pretrained_vit import configs as ppvit_configs
from scipy import ndimage
import torch  # First: importing torch after tensorflow segfaults.
from torch import nn
import torchvision
from torchvision.models import resnet as tv_resnet

from animesion_jax import convert

_SIZE = 32
_TINY_VIT = {
  "config": dict(
    patches=(8, 8),
    dim=32,
    ff_dim=64,
    num_heads=2,
    num_layers=2,
    attention_dropout_rate=0.0,
    dropout_rate=0.0,
    representation_size=None,
    classifier="token",
  ),
  "num_classes": 5,
  "image_size": (_SIZE, _SIZE),
  "url": None,
}


class AnimesionWrapper(nn.Module):
  """Holds the network as `self.model`, as the Animesion training code did."""

  def __init__(self, model):
    super().__init__()
    self.model = model


class NarrowResNet(tv_resnet.ResNet):
  """torchvision's ResNet (its blocks, _make_layer, init and forward), with a
  stem / first-stage width other than torchvision's fixed 64."""

  def __init__(self, block, layers, width, num_classes, width_per_group=64):
    nn.Module.__init__(self)  # pylint: disable=non-parent-init-called
    self._norm_layer = nn.BatchNorm2d
    self.inplanes, self.dilation, self.groups = width, 1, 1
    self.base_width = width_per_group
    self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
    self.layer1 = self._make_layer(block, width, layers[0])
    self.layer2 = self._make_layer(block, 2 * width, layers[1], stride=2)
    self.layer3 = self._make_layer(block, 4 * width, layers[2], stride=2)
    self.layer4 = self._make_layer(block, 8 * width, layers[3], stride=2)
    self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    self.fc = nn.Linear(8 * width * block.expansion, num_classes)


def logits_of(model, variables, x):
  """Eval-mode logits, jitted: op-by-op dispatch is slow on a shared CPU."""
  return np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x))


def tiny_torch_vit(monkeypatch, image_size=_SIZE, seed=0):
  """A random pytorch_pretrained_vit.ViT (hidden 32, 2 layers, patch 8)."""
  monkeypatch.setitem(ppvit_configs.PRETRAINED_MODELS, "tiny_test", _TINY_VIT)
  torch.manual_seed(seed)
  model = pytorch_pretrained_vit.ViT(
    "tiny_test", pretrained=False, image_size=image_size, num_classes=5
  )
  _perturb(model, seed)
  return model.eval()


def tiny_torch_resnet(block, layers=(1, 2, 1, 1), width=8, seed=0, **kwargs):
  torch.manual_seed(seed)
  model = NarrowResNet(block, layers, width, num_classes=5, **kwargs)
  _perturb(model, seed)
  calibrate_batch_norm(model)
  return model.eval()


def calibrate_batch_norm(model, size=36):
  """Sets running statistics to those of random images, as training would.

  Without this, random weights with unit running statistics blow the
  activations up by orders of magnitude over the depth of the network.
  """
  batch_norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
  for m in batch_norms:
    m.reset_running_stats()
    m.momentum = None  # Cumulative average over the calibration batches.
  model.train()
  with torch.no_grad():
    model(torch.from_numpy(images(size, n=8, seed=7).transpose(0, 3, 1, 2)))
  for m in batch_norms:
    m.momentum = 0.1


def _perturb(model, seed, scale=0.2):
  """Noise on every parameter, so zero heads and unit scales matter."""
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for tensor in model.parameters():
      tensor.add_(scale * torch.randn(tensor.shape, generator=generator))


def save(model, path, prefix=False, legacy=False):
  state = (AnimesionWrapper(model) if prefix else model).state_dict()
  torch.save(state, path, _use_new_zipfile_serialization=not legacy)
  return path


def images(size=_SIZE, n=2, seed=1):
  return np.random.default_rng(seed).normal(size=(n, size, size, 3)).astype(np.float32)


def torch_logits(model, x):
  with torch.no_grad():
    return model(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()


def _flat(variables, collection="params"):
  return flax.traverse_util.flatten_dict(variables[collection], sep="/")


# ------------------------------------------------------------- pytorch_vit


@pytest.mark.parametrize(
  "prefix, legacy", [(False, False), (True, False), (False, True), (True, True)]
)
def test_pytorch_vit_logits_match(tmp_path, monkeypatch, prefix, legacy):
  torch_model = tiny_torch_vit(monkeypatch)
  path = save(torch_model, tmp_path / "vit.pth", prefix, legacy)

  conversion = convert.load_with_summary("pytorch_vit", path, convert.Target(num_heads=2))

  model = conversion.model
  assert (
    model.patch_size,
    model.hidden_size,
    model.mlp_dim,
    model.num_heads,
    model.num_layers,
    model.num_classes,
    model.representation_size,
  ) == (8, 32, 64, 2, 2, 5, None)
  assert not model.gelu_approximate and model.layer_norm_epsilon == 1e-6
  assert ("stripped the key prefix 'model.'" in conversion.summary["notes"]) == prefix
  x = images()
  logits = logits_of(model, conversion.variables, x)
  expected = torch_logits(torch_model, x)
  assert np.abs(expected).max() > 0.1
  np.testing.assert_allclose(logits, expected, atol=1e-5, rtol=0)
  # Sharp enough to see the GELU flavour.
  tanh_gelu = model.clone(gelu_approximate=True)
  assert np.abs(logits_of(tanh_gelu, conversion.variables, x) - expected).max() > 1e-5


def test_pytorch_vit_resize_matches_pytorch_at_new_size(tmp_path, monkeypatch):
  torch_model = tiny_torch_vit(monkeypatch)
  path = save(torch_model, tmp_path / "vit.pth", prefix=True)

  model, variables = convert.load("pytorch_vit", path, num_heads=2, image_size=48)

  # The same network at 48 px, its 4x4 grid zoomed to 6x6 independently.
  big = tiny_torch_vit(monkeypatch, image_size=48)
  state = torch_model.state_dict()
  posemb = state["positional_embedding.pos_embedding"].numpy()
  grid = ndimage.zoom(posemb[0, 1:].reshape(4, 4, -1), (1.5, 1.5, 1), order=1)
  state["positional_embedding.pos_embedding"] = torch.from_numpy(
    np.concatenate([posemb[:, :1], grid.reshape(1, 36, -1)], 1)
  )
  big.load_state_dict(state)
  x = images(48)
  np.testing.assert_allclose(
    logits_of(model, variables, x), torch_logits(big, x), atol=1e-5, rtol=0
  )


def test_pytorch_vit_new_class_count_gets_zero_head(tmp_path, monkeypatch):
  path = save(tiny_torch_vit(monkeypatch), tmp_path / "vit.pth")
  conversion = convert.load_with_summary(
    "pytorch_vit", path, convert.Target(num_heads=2, num_classes=9)
  )
  params = _flat(conversion.variables)
  assert params["head/kernel"].shape == (32, 9)
  assert not np.any(params["head/kernel"]) and not np.any(params["head/bias"])
  assert conversion.summary["reinitialised"][0] == {
    "key": "head/kernel",
    "from": [32, 5],
    "to": [32, 9],
    "init": "zeros",
  }


def test_pytorch_vit_head_count_is_required_when_not_standard(tmp_path, monkeypatch):
  path = save(tiny_torch_vit(monkeypatch), tmp_path / "vit.pth")
  with pytest.raises(convert.ConversionError, match="pass num_heads"):
    convert.load("pytorch_vit", path)
  with pytest.raises(convert.ConversionError, match="does not divide"):
    convert.load("pytorch_vit", path, num_heads=3)


def test_pytorch_vit_unknown_and_missing_keys_are_listed(tmp_path, monkeypatch):
  state = tiny_torch_vit(monkeypatch).state_dict()
  state["transformer.blocks.0.extra.weight"] = torch.zeros(3, 2)
  torch.save(state, tmp_path / "extra.pth")
  with pytest.raises(
    convert.ConversionError, match=r"transformer\.blocks\.0\.extra\.weight \(3, 2\)"
  ):
    convert.load("pytorch_vit", tmp_path / "extra.pth", num_heads=2)
  del state["transformer.blocks.0.extra.weight"]
  del state["transformer.blocks.1.norm2.bias"]
  torch.save(state, tmp_path / "missing.pth")
  with pytest.raises(convert.ConversionError, match="encoderblock_1/LayerNorm_2/bias"):
    convert.load("pytorch_vit", tmp_path / "missing.pth", num_heads=2)


# ------------------------------------------------------- torchvision_resnet


@pytest.mark.parametrize(
  "block, prefix, legacy",
  [(tv_resnet.BasicBlock, False, True), (tv_resnet.Bottleneck, True, False)],
)
def test_resnet_logits_match(tmp_path, block, prefix, legacy):
  torch_model = tiny_torch_resnet(block)
  path = save(torch_model, tmp_path / "resnet.pth", prefix, legacy)

  conversion = convert.load_with_summary("torchvision_resnet", path)

  model = conversion.model
  kind = "basic" if block is tv_resnet.BasicBlock else "bottleneck"
  assert (model.block, tuple(model.stage_sizes), model.base_width, model.num_classes) == (
    kind,
    (1, 2, 1, 1),
    8,
    5,
  )
  dropped = {d["key"] for d in conversion.summary["dropped"]}
  assert "bn1.num_batches_tracked" in dropped
  assert len(dropped) == sum(k.endswith("num_batches_tracked") for k in torch_model.state_dict())
  # Odd feature-map sides (36 -> 18 -> 9 -> 5 -> 3 -> 2) exercise padding.
  x = images(36)
  expected = torch_logits(torch_model, x)
  assert np.abs(expected).max() > 0.1
  np.testing.assert_allclose(logits_of(model, conversion.variables, x), expected, atol=1e-5, rtol=0)
  stats = _flat(conversion.variables, "batch_stats")
  np.testing.assert_array_equal(
    stats["layer2_0/downsample_bn/var"], torch_model.layer2[0].downsample[1].running_var.numpy()
  )


def test_torchvision_resnet18_itself_converts(tmp_path):
  torch.manual_seed(0)
  torch_model = torchvision.models.resnet18(num_classes=10)
  _perturb(torch_model, 0, scale=0.01)
  calibrate_batch_norm(torch_model)
  torch_model.eval()
  model, variables = convert.load("torchvision_resnet", save(torch_model, tmp_path / "r18.pth"))
  assert (model.block, tuple(model.stage_sizes), model.base_width) == ("basic", (2, 2, 2, 2), 64)
  x = images(36)
  np.testing.assert_allclose(
    logits_of(model, variables, x), torch_logits(torch_model, x), atol=1e-5, rtol=0
  )


def test_resnet_new_class_count_gets_zero_fc(tmp_path):
  path = save(tiny_torch_resnet(tv_resnet.Bottleneck), tmp_path / "r.pth")
  model, variables = convert.load("torchvision_resnet", path, num_classes=3)
  params = _flat(variables)
  assert model.num_classes == 3 and params["fc/kernel"].shape == (256, 3)
  assert not np.any(params["fc/kernel"]) and not np.any(params["fc/bias"])


def test_wide_resnet_does_not_fit_and_says_where(tmp_path):
  wide = tiny_torch_resnet(tv_resnet.Bottleneck, width_per_group=128)
  with pytest.raises(
    convert.ConversionError,
    match=r"layer1_0/conv1/kernel: checkpoint "
    r"\(1, 1, 8, 16\)",
  ):
    convert.load("torchvision_resnet", save(wide, tmp_path / "wide.pth"))


def test_resnet_unknown_keys_are_listed(tmp_path):
  state = tiny_torch_resnet(tv_resnet.BasicBlock).state_dict()
  state["layer1.0.se.weight"] = torch.zeros(4)
  torch.save(state, tmp_path / "se.pth")
  with pytest.raises(convert.ConversionError, match=r"layer1\.0\.se\.weight \(4,\)"):
    convert.load("torchvision_resnet", tmp_path / "se.pth")


# ------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("source", ["pytorch_vit", "torchvision_resnet"])
def test_rejects_files_that_are_not_state_dicts(tmp_path, source):
  (tmp_path / "text.pth").write_text("hello")
  with pytest.raises(convert.ConversionError, match="not a torch checkpoint"):
    convert.load(source, tmp_path / "text.pth")
  torch.save([torch.zeros(2)], tmp_path / "list.pth")
  with pytest.raises(convert.ConversionError, match="not a state dict"):
    convert.load(source, tmp_path / "list.pth")
  torch.save({"epoch": 3, "w": torch.zeros(2)}, tmp_path / "train.pth")
  with pytest.raises(convert.ConversionError, match=r"epoch \(int\)"):
    convert.load(source, tmp_path / "train.pth")


def test_each_torch_source_rejects_the_other_kind(tmp_path, monkeypatch):
  vit_path = save(tiny_torch_vit(monkeypatch), tmp_path / "vit.pth")
  resnet_path = save(tiny_torch_resnet(tv_resnet.BasicBlock), tmp_path / "r.pth")
  with pytest.raises(convert.ConversionError, match="not a torchvision ResNet state dict"):
    convert.load("torchvision_resnet", vit_path)
  with pytest.raises(convert.ConversionError, match="not a pytorch_pretrained_vit state dict"):
    convert.load("pytorch_vit", resnet_path)
