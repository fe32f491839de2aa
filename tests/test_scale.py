"""Scale-out pieces: gradient accumulation, device-resident data, FSDP sharding, bf16."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from animesion_jax import sharding
from animesion_jax.data import device_cache
from animesion_jax.training import loop
from animesion_jax.training import model_setup
from animesion_jax.training import steps
from tests import helpers


def _random_batch(seed, size=32, image_size=16):
  rng = np.random.default_rng(seed)
  return {
    "image": rng.integers(0, 256, (size, image_size, image_size, 3), dtype=np.uint8),
    "label": rng.integers(0, 28, (size,), dtype=np.int32),
  }


def _run_steps(config, batches, accumulation, mesh):
  setup = model_setup.create(config, 28, mesh, steps_per_epoch=17, total_steps=10)
  step_fn = jax.jit(
    functools.partial(
      steps.train_step,
      model=setup.model,
      tx=setup.tx,
      normalization="half",
      accumulation_steps=accumulation,
    )
  )
  state, losses = setup.state, []
  for batch in batches:
    state, metrics = step_fn(state, sharding.to_global_batch(batch, mesh))
    losses.append(float(metrics.compute()["loss"]))
  return losses, state


@pytest.mark.slow
def test_gradient_accumulation_matches_one_large_step():
  config = helpers.tiny_config()
  batches = [_random_batch(seed) for seed in range(3)]
  mesh = sharding.create_mesh()
  losses_1, state_1 = _run_steps(config, batches, 1, mesh)
  losses_4, state_4 = _run_steps(config, batches, 4, mesh)
  np.testing.assert_allclose(losses_1, losses_4, rtol=1e-5)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5),
    state_1.params,
    state_4.params,
  )


@pytest.mark.slow
def test_fsdp_mesh_shards_parameters_and_matches_data_parallel():
  config = helpers.tiny_config()
  config.model.hidden_size = 64
  config.model.mlp_dim = 1024  # 64 x 1024 kernels: big enough (2**16) to be split.
  batches = [_random_batch(seed) for seed in range(2)]
  losses_dp, state_dp = _run_steps(config, batches, 1, sharding.create_mesh())
  fsdp_mesh = sharding.create_mesh(fsdp_size=4)
  setup = model_setup.create(config, 28, fsdp_mesh, 17, 10)
  mlp_kernel = setup.state.params["Transformer"]["encoderblock_0"]["MlpBlock_3"]["Dense_0"][
    "kernel"
  ]
  assert mlp_kernel.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp")
  assert mlp_kernel.addressable_shards[0].data.shape == (64, 256)  # 1024 / 4 per device.
  losses_fsdp, state_fsdp = _run_steps(config, batches, 1, fsdp_mesh)
  np.testing.assert_allclose(losses_dp, losses_fsdp, rtol=1e-5)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, atol=2e-6, rtol=1e-5),
    state_dp.params,
    state_fsdp.params,
  )


def test_bfloat16_compute_keeps_float32_params():
  config = helpers.tiny_config(dtype="bfloat16", momentum_dtype="bfloat16")
  losses, state = _run_steps(
    config, [_random_batch(0), _random_batch(1)], 1, sharding.create_mesh()
  )
  assert all(np.isfinite(losses))
  assert {leaf.dtype for leaf in jax.tree.leaves(state.params)} == {jnp.dtype(jnp.float32)}
  momentum = [leaf for leaf in jax.tree.leaves(state.opt_state) if leaf.ndim > 0]
  assert momentum and all(leaf.dtype == jnp.bfloat16 for leaf in momentum)


class _ArraySource:
  """A random-access source of encoded images whose pixels encode their own index."""

  def __init__(self, count, size):
    import io  # pylint: disable=g-import-not-at-top

    from PIL import Image  # pylint: disable=g-import-not-at-top

    self.records = []
    for index in range(count):
      # Column x holds x, row y holds y, channel 2 holds the index: crops reveal their offset.
      ys, xs = np.mgrid[0:size, 0:size]
      pixels = np.stack([ys, xs, np.full_like(xs, index)], axis=-1).astype(np.uint8)
      buffer = io.BytesIO()
      Image.fromarray(pixels).save(buffer, format="PNG")
      self.records.append({"image": buffer.getvalue(), "label": index % 7})

  def __len__(self):
    return len(self.records)

  def __getitem__(self, index):
    return self.records[index]


def test_device_cache_augmentation_matches_host_pipeline_distribution():
  mesh = sharding.create_mesh()
  source = _ArraySource(count=64, size=20)
  cache = device_cache.DeviceCache(
    source,
    mesh=mesh,
    global_batch_size=16,
    image_size=16,
    resize_margin=4,
    horizontal_flip=True,
    seed=0,
  )
  assert cache.steps_per_epoch == 4 and cache.num_examples == 64
  assert len(cache.images.sharding.device_set) == 8
  seen, corners, flips = [], [], []
  for step in range(4 * 25):
    batch = jax.device_get(cache.batch(step))
    assert batch["image"].shape == (16, 16, 16, 3) and batch["image"].dtype == np.uint8
    for image, label in zip(batch["image"], batch["label"]):
      index = int(image[0, 0, 2])
      assert label == index % 7
      flipped = image[0, 0, 1] > image[0, -1, 1]
      columns = image[0, :, 1][::-1] if flipped else image[0, :, 1]
      top, left = int(image[0, 0, 0]), int(columns[0])
      np.testing.assert_array_equal(columns, np.arange(left, left + 16))  # A real 16 px crop.
      corners.append((top, left))
      flips.append(flipped)
      seen.append(index)
    if step % 4 == 3:  # Every epoch covers every example exactly once.
      assert sorted(seen) == list(range(64))
      seen = []
  corners = np.asarray(corners)
  assert set(np.unique(corners[:, 0])) == set(range(5)) == set(np.unique(corners[:, 1]))
  assert abs(np.mean(flips) - 0.5) < 0.05  # 1600 draws: 5 sigma is ~0.06.
  counts = np.bincount(corners[:, 1], minlength=5) / len(corners)
  assert np.all(np.abs(counts - 0.2) < 0.04)
  # Resumable: the batch of a step is a pure function of (seed, step).
  np.testing.assert_array_equal(
    jax.device_get(cache.batch(7))["image"], jax.device_get(cache.batch(7))["image"]
  )


def test_training_with_device_resident_data(tmp_path):
  config = helpers.tiny_config(num_train_steps=6, data_on_device=True)
  results = loop.train_and_evaluate(config, str(tmp_path))
  assert results["steps"] == 6 and results["test"]["num_examples"] == 224
  assert np.isfinite(results["test"]["loss"])


@pytest.mark.parametrize("data_on_device", [False, True])
def test_step_loop_has_no_hidden_host_device_transfers(tmp_path, data_on_device):
  # Log, checkpoint and eval only at the end: steps 1-5 run under the 'disallow' guard.
  config = helpers.tiny_config(
    num_train_steps=6,
    log_every_steps=6,
    checkpoint_every_steps=6,
    transfer_guard="disallow",
    data_on_device=data_on_device,
  )
  results = loop.train_and_evaluate(config, str(tmp_path))
  assert results["steps"] == 6


def test_transfer_guard_catches_a_hidden_transfer_in_the_step_loop(tmp_path, monkeypatch):
  """An implicit transfer between log steps (here a host array mixed into a device computation
  in the batch hand-over) stops a run whose config.transfer_guard is 'disallow'. (On the CPU
  backend a float() of a device value here was not caught, so the injected one is host-to-device.)"""
  original = sharding.to_global_batch
  on_device = jnp.ones(3)

  def with_a_hidden_transfer(*args, **kwargs):
    jnp.add(on_device, np.ones(3, np.float32)).block_until_ready()
    return original(*args, **kwargs)

  monkeypatch.setattr(sharding, "to_global_batch", with_a_hidden_transfer)
  config = helpers.tiny_config(
    num_train_steps=3, log_every_steps=3, checkpoint_every_steps=3, transfer_guard="disallow"
  )
  with pytest.raises(Exception, match="Disallowed host-to-device transfer"):
    loop.train_and_evaluate(config, str(tmp_path))
