"""Logit parity of the original Animesion's own torch models after conversion.

References written here from the original code (classification/models/models.py):
its ShallowNet, and the ViT with the intermediate-features head of its later work
(`interm_features_fc`, with the exclusion loss), both random-initialised and tiny.
"""

import flax
import jax
import numpy as np
import pytest
import torch  # First: importing torch after tensorflow segfaults.
from torch import nn
from torch.nn import functional as F

from animesion_jax import convert
from tests.test_convert_torch import _perturb
from tests.test_convert_torch import calibrate_batch_norm
from tests.test_convert_torch import images
from tests.test_convert_torch import logits_of
from tests.test_convert_torch import tiny_torch_vit
from tests.test_convert_torch import torch_logits


class TorchShallowNet(nn.Module):
  """The original ShallowNet, with its widths as arguments (16, 32, 512 there; 224 px -> 53)."""

  def __init__(self, num_classes, channels=(16, 32), side=53, hidden=512):
    super().__init__()
    self.layer1 = nn.Sequential(
      nn.Conv2d(3, channels[0], kernel_size=5, stride=1, padding=0),
      nn.BatchNorm2d(channels[0]),
      nn.ReLU(),
      nn.MaxPool2d(kernel_size=2, stride=2),
    )
    self.layer2 = nn.Sequential(
      nn.Conv2d(channels[0], channels[1], 5, stride=1, padding=0),
      nn.BatchNorm2d(channels[1]),
      nn.ReLU(),
      nn.MaxPool2d(kernel_size=2, stride=2),
    )
    self.fc = nn.Sequential(
      nn.Flatten(),
      nn.Linear(side * side * channels[1], hidden),
      nn.ReLU(),
      nn.Dropout(p=0.2),
      nn.Linear(hidden, num_classes),
    )

  def forward(self, x):
    return self.fc(self.layer2(self.layer1(x)))


class _Squeeze(nn.Module):
  """einops' Rearrange('b d 1 -> b d') of the original head."""

  def forward(self, x):
    return x[..., 0]


class TorchIntermViT(nn.Module):
  """The original's later VisionTransformer with `interm_features_fc` (and exclusion loss).

  The network (`self.model`) has no final norm or classifier; the class token after every block
  is stacked on a last axis and mixed by `inter_class_head`.
  """

  def __init__(self, vit, num_classes, temperature, distance):
    super().__init__()
    del vit.norm, vit.fc
    for m in vit.modules():
      if isinstance(m, nn.LayerNorm):
        m.eps = 1e-12  # The later code's ViT config (layer_norm_eps=1e-12).
    self.model = vit
    layers, dim = len(vit.transformer.blocks), vit.class_token.shape[-1]
    self.inter_class_head = nn.Sequential(
      nn.Linear(layers, 1),
      _Squeeze(),
      nn.ReLU(),
      nn.LayerNorm(dim, eps=1e-12),
      nn.Linear(dim, num_classes),
    )
    self.exclusion = nn.KLDivLoss(reduction="batchmean")
    self.temperature, self.distance = temperature, distance

  def forward(self, x):
    vit = self.model
    x = vit.patch_embedding(x).flatten(2).transpose(1, 2)
    x = torch.cat((vit.class_token.expand(x.shape[0], -1, -1), x), dim=1)
    x = vit.positional_embedding(x)
    interm = []
    for block in vit.transformer.blocks:
      x = block(x, None)
      interm.append(x)
    loss = 0
    for i in range(len(interm) - self.distance):
      loss += self.exclusion(
        F.log_softmax(interm[i][:, 0, :] / self.temperature, dim=1),
        F.softmax(interm[i + self.distance][:, 0, :] / self.temperature, dim=1),
      )
    return self.inter_class_head(torch.stack(interm, dim=-1)[:, 0]), loss


def _tiny_shallow(seed=0):
  torch.manual_seed(seed)
  model = TorchShallowNet(num_classes=5, channels=(4, 8), side=5, hidden=16)
  _perturb(model, seed)
  calibrate_batch_norm(model, size=32)
  return model.eval()


def test_shallownet_logits_match(tmp_path):
  torch_model = _tiny_shallow()
  path = tmp_path / "shallow.pth"
  torch.save(torch_model.state_dict(), path)

  conversion = convert.load_with_summary("pytorch_shallownet", path)

  model = conversion.model
  assert (model.channels, model.hidden, model.num_classes) == ((4, 8), 16, 5)
  # 32 px -> conv 28 -> pool 14 -> conv 10 -> pool 5: the smallest size with a 5x5 map.
  assert conversion.summary["image_size"] == 32
  assert [d["key"] for d in conversion.summary["dropped"]] == [
    "layer1.1.num_batches_tracked",
    "layer2.1.num_batches_tracked",
  ]
  x = images(32)
  expected = torch_logits(torch_model, x)
  assert np.abs(expected).max() > 0.1
  np.testing.assert_allclose(logits_of(model, conversion.variables, x), expected, atol=1e-5, rtol=0)
  # 33 px gives the same 5x5 map (floor pooling), so the checkpoint serves it too.
  model, variables = convert.load("pytorch_shallownet", path, image_size=33)
  np.testing.assert_allclose(
    logits_of(model, variables, images(33)),
    torch_logits(torch_model, images(33)),
    atol=1e-5,
    rtol=0,
  )
  with pytest.raises(convert.ConversionError, match="tied to the image size"):
    convert.load("pytorch_shallownet", path, image_size=64)


def test_shallownet_new_class_count_and_foreign_files(tmp_path, monkeypatch):
  path = tmp_path / "shallow.pth"
  torch.save(_tiny_shallow().state_dict(), path)
  conversion = convert.load_with_summary("pytorch_shallownet", path, convert.Target(num_classes=9))
  params = flax.traverse_util.flatten_dict(conversion.variables["params"], sep="/")
  assert params["fc2/kernel"].shape == (16, 9) and not np.any(params["fc2/kernel"])
  assert conversion.summary["reinitialised"][0]["key"] == "fc2/kernel"
  vit_path = tmp_path / "vit.pth"
  torch.save(tiny_torch_vit(monkeypatch).state_dict(), vit_path)
  with pytest.raises(convert.ConversionError, match="not an Animesion ShallowNet"):
    convert.load("pytorch_shallownet", vit_path)


def _interm_torch_vit(monkeypatch, temperature=2.0, distance=1):
  torch.manual_seed(3)
  model = TorchIntermViT(tiny_torch_vit(monkeypatch), 5, temperature, distance)
  _perturb(model.inter_class_head, 4, scale=0.5)
  return model.eval()


@pytest.mark.parametrize("head_name", ["inter_class_head", "class_head"])
def test_intermediate_features_vit_logits_and_exclusion_loss_match(
  tmp_path, monkeypatch, head_name
):
  torch_model = _interm_torch_vit(monkeypatch)
  state = {
    k.replace("inter_class_head.", f"{head_name}."): v for k, v in torch_model.state_dict().items()
  }
  path = tmp_path / "interm.pth"
  torch.save(state, path)

  conversion = convert.load_with_summary("pytorch_vit", path, convert.Target(num_heads=2))

  model = conversion.model
  assert model.head_type == "intermediate_features" and model.layer_norm_epsilon == 1e-12
  assert "stripped the key prefix 'model.'" in conversion.summary["notes"]
  x = images()
  with torch.no_grad():
    expected, torch_exclusion = torch_model(torch.from_numpy(x.transpose(0, 3, 1, 2)))
  assert np.abs(expected.numpy()).max() > 0.1
  np.testing.assert_allclose(
    logits_of(model, conversion.variables, x), expected.numpy(), atol=1e-5, rtol=0
  )
  # The exclusion term the model adds to the loss: -weight * T^2 * (sum of KLs), as the original.
  weighted = model.clone(
    exclusion_loss_weight=0.01, exclusion_temperature=2.0, exclusion_layer_distance=1
  )
  _, sown = jax.jit(lambda v, x: weighted.apply(v, x, train=False, mutable=["losses"]))(
    conversion.variables, x
  )
  assert float(torch_exclusion) > 1e-4
  np.testing.assert_allclose(
    float(sown["losses"]["exclusion"][0].mean()), -0.01 * 4.0 * float(torch_exclusion), rtol=1e-4
  )


def test_intermediate_features_head_of_other_shape_is_refused(tmp_path, monkeypatch):
  state = _interm_torch_vit(monkeypatch).state_dict()
  state["inter_class_head.5.weight"] = torch.zeros(2)
  path = tmp_path / "interm.pth"
  torch.save(state, path)
  with pytest.raises(convert.ConversionError, match="inter_class_head"):
    convert.load("pytorch_vit", path, num_heads=2)
