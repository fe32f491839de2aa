"""Training-dynamics parity: converted weights train like the PyTorch originals.

From the same weights and on the same batches, 10 SGD+momentum steps in this
project (the optimizer of `animesion_jax.training.optim.create_optimizer` and the train
step of `animesion_jax.training.steps`, the ones the training loop uses) and in PyTorch
(torch.optim.SGD, same learning rate and momentum) give the same loss at every
step, for a small ViT and a small ResNet with BatchNorm in train mode.
optax's momentum trace and torch's SGD momentum are the same recursion
(dampening 0, no Nesterov).
"""

import functools

import flax
import jax
import numpy as np
import pytest
import pytorch_pretrained_vit
from pytorch_pretrained_vit import configs as ppvit_configs
import torch  # Before tensorflow: the other order segfaults.
from torch.nn import functional as F
from torchvision.models import resnet as tv_resnet

from animesion_jax import config_schema as base
from animesion_jax import convert
from animesion_jax.data import preprocess
from animesion_jax.training import optim
from animesion_jax.training import steps
from tests.test_convert_torch import NarrowResNet

_STEPS, _BATCH, _CLASSES = 10, 8, 5
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
  "num_classes": _CLASSES,
  "image_size": (32, 32),
  "url": None,
}


def _config(learning_rate):
  config = base.get_base_config()
  config.optimizer = "sgd"
  config.learning_rate = learning_rate
  config.momentum = 0.9
  config.weight_decay = 0.0
  config.schedule = "constant"
  config.warmup_epochs = 0.0
  config.grad_clip_norm = 0.0
  config.label_smoothing = 0.0
  config.freeze_backbone = False
  return config


def _batches(size, seed=0):
  """Two fixed batches, alternated: the loss falls as they are memorised."""
  rng = np.random.default_rng(seed)
  data = [
    {
      "image": rng.integers(0, 256, (_BATCH, size, size, 3), np.uint8),
      "label": rng.integers(0, _CLASSES, (_BATCH,), np.int32),
    }
    for _ in range(2)
  ]
  return [data[i % 2] for i in range(_STEPS)]


def _jax_losses(model, variables, batches, config, normalization):
  tx = optim.create_optimizer(config, steps_per_epoch=_STEPS, total_steps=_STEPS)
  state = steps.create_train_state(variables, tx, jax.random.key(0))
  train_step = jax.jit(
    functools.partial(steps.train_step, model=model, tx=tx, normalization=normalization)
  )
  losses = []
  for batch in batches:
    state, metrics = train_step(state, batch)
    losses.append(float(metrics.compute()["loss"]))
  return losses, state


def _torch_losses(model, batches, learning_rate, normalization):
  mean, std = (np.asarray(v, np.float32) for v in preprocess.NORMALIZATIONS[normalization])
  optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate, momentum=0.9)
  model.train()
  losses = []
  for batch in batches:
    images = (batch["image"].astype(np.float32) / 255.0 - mean) / std
    logits = model(torch.from_numpy(images.transpose(0, 3, 1, 2)))
    loss = F.cross_entropy(logits, torch.from_numpy(batch["label"]).long())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    losses.append(loss.item())
  return losses


def _perturb(model, scale):
  generator = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for tensor in model.parameters():
      tensor.add_(scale * torch.randn(tensor.shape, generator=generator))


def _check_same_training(
  tmp_path, source, torch_model, size, learning_rate, normalization, **load_args
):
  torch.save(torch_model.state_dict(), tmp_path / "start.pth")
  model, variables = convert.load(source, tmp_path / "start.pth", **load_args)
  batches = _batches(size)
  config = _config(learning_rate)

  jax_losses, state = _jax_losses(model, variables, batches, config, normalization)
  torch_losses = _torch_losses(torch_model, batches, learning_rate, normalization)

  # The run really learns (the comparison is not between constants).
  assert max(torch_losses[-2:]) < 0.8 * min(torch_losses[:2])
  np.testing.assert_allclose(jax_losses, torch_losses, rtol=1e-4, atol=0)
  # And ends at the same weights.
  torch.save(torch_model.state_dict(), tmp_path / "end.pth")
  _, trained = convert.load(source, tmp_path / "end.pth", **load_args)
  ours = flax.traverse_util.flatten_dict(state.params, sep="/")
  theirs = flax.traverse_util.flatten_dict(trained["params"], sep="/")
  for key in ours:
    np.testing.assert_allclose(ours[key], theirs[key], atol=2e-4, rtol=0, err_msg=key)
  return state, trained


@pytest.mark.slow
def test_vit_trains_like_pytorch_pretrained_vit(tmp_path, monkeypatch):
  monkeypatch.setitem(ppvit_configs.PRETRAINED_MODELS, "tiny_test", _TINY_VIT)
  torch.manual_seed(0)
  torch_model = pytorch_pretrained_vit.ViT(
    "tiny_test", pretrained=False, image_size=32, num_classes=_CLASSES
  )
  _perturb(torch_model, 0.1)  # A non-zero head, as after pre-training.
  _check_same_training(
    tmp_path, "pytorch_vit", torch_model, 32, learning_rate=0.05, normalization="half", num_heads=2
  )


@pytest.mark.slow
def test_resnet_trains_like_torchvision_with_batch_norm(tmp_path):
  torch.manual_seed(0)
  torch_model = NarrowResNet(tv_resnet.BasicBlock, [1, 1, 1, 1], width=8, num_classes=_CLASSES)
  # At 48 px the last stage still sees 2x2 maps. At 32 px (1x1 maps, BatchNorm
  # over 8 values) torch's own float32 run drifted from its float64 run by up
  # to 2e-2 in 10 steps when we tried, while this project's float32 run stayed
  # within 2e-6 of that float64 run: a torch float32 sensitivity, not a
  # conversion error.
  state, trained = _check_same_training(
    tmp_path, "torchvision_resnet", torch_model, 48, learning_rate=0.01, normalization="imagenet"
  )
  # Running means follow the same momentum (torch 0.1, Flax 0.9). Running
  # variances are not compared: torch accumulates the unbiased batch
  # variance, Flax the biased one.
  ours = flax.traverse_util.flatten_dict(state.batch_stats, sep="/")
  theirs = flax.traverse_util.flatten_dict(trained["batch_stats"], sep="/")
  assert np.abs(ours["bn1/mean"]).max() > 1e-3
  for key in ours:
    if key.endswith("/mean"):
      np.testing.assert_allclose(ours[key], theirs[key], atol=1e-4, rtol=0, err_msg=key)
