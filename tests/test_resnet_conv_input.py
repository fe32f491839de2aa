"""ResNet's convolutions read their input as stored on CPU (resnet._conv_of_stored_input).

The barrier exists only for speed (docs/performance.md, ResNet-18 train step on CPU), so it must
be there on CPU, in every convolution, and leave the loss and every gradient as they were.
"""

import jax
import jax.numpy as jnp
import numpy as np

from animesion_jax.models import resnet


def _small_resnet():
  return resnet.ResNet(num_classes=5, stage_sizes=(1, 1), base_width=8)


def _loss_and_grads(model, variables, images, labels):
  def loss_fn(params):
    logits, _ = model.apply(
      {**variables, "params": params}, images, train=True, mutable=["batch_stats"]
    )
    return jnp.mean(-jax.nn.log_softmax(logits)[jnp.arange(len(labels)), labels])

  return jax.jit(jax.value_and_grad(loss_fn))(variables["params"])


def _inputs():
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.standard_normal((4, 32, 32, 3)), jnp.float32)
  return images, jnp.arange(4) % 5


def test_every_convolution_reads_a_stored_input_on_cpu():
  model = _small_resnet()
  images, _ = _inputs()
  variables = model.init(jax.random.PRNGKey(0), images, train=False)
  hlo = (
    jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))
    .lower(variables, images)
    .as_text()
  )
  # Stem, two per block, one downsample: 1 + 2 + 2 + 1.
  assert hlo.count("stablehlo.convolution") == 6
  assert hlo.count("stablehlo.optimization_barrier") == 6


def test_loss_and_gradients_equal_the_plain_convolution(monkeypatch):
  model = _small_resnet()
  images, labels = _inputs()
  variables = model.init(jax.random.PRNGKey(0), images, train=False)
  loss, grads = _loss_and_grads(model, variables, images, labels)
  monkeypatch.setattr(resnet, "_conv_of_stored_input", jax.lax.conv_general_dilated)
  plain_loss, plain_grads = _loss_and_grads(model, variables, images, labels)
  assert abs(float(loss) - float(plain_loss)) <= 1e-6 * abs(float(plain_loss))
  flat, plain_flat = jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(plain_grads)
  assert len(flat) == len(plain_flat) == 20  # 6 kernels, 6 x 2 BatchNorm, 1 x 2 Dense.
  for got, want in zip(flat, plain_flat, strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
