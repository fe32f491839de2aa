"""Device-resident training data: decode a split once, augment on the accelerator.

For small-image datasets the host cannot decode fast enough to feed a fast accelerator (ResNet-18
at 128 px wants tens of thousands of images per second). This mode decodes the training split
once to uint8 at (S + margin)^2, keeps it in device memory split over the batch axis of the
mesh, and does the paper's random crop and flip (and the optional colour jitter) on the device.
Each device shuffles its own part every epoch; the batch for a step is a pure function of
(seed, step), so resuming needs no iterator state.

An epoch is ceil(N / batch) steps, as the host pipeline: the examples are spread over the devices
as evenly as possible (counts differ by at most one), so every step but an epoch's last is full;
the last one's missing rows repeat real examples and get mask 0.
"""

from collections.abc import Sequence
import math
from typing import Any

import grain.python as grain
import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P
import numpy as np

from animesion_jax import sharding
from animesion_jax.data import color_jitter as color_jitter_lib
from animesion_jax.data import pipeline
from animesion_jax.data import preprocess


def _decode_resized(
  source: Sequence[Any], start: int, stop: int, size: int, workers: int
) -> tuple[np.ndarray, np.ndarray]:
  """Examples [start, stop) of `source` as uint8 (n, size, size, 3) images and int32 labels."""
  resize = preprocess.EvalPreprocess(size)
  examples = grain.MapDataset.source(source)[start:stop].map(resize).batch(256).to_iter_dataset()
  if workers > 0:
    examples = examples.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  images = np.empty((stop - start, size, size, 3), np.uint8)
  labels = np.empty((stop - start,), np.int32)
  offset = 0
  for batch in examples:
    count = len(batch["label"])
    images[offset : offset + count] = batch["image"]
    labels[offset : offset + count] = batch["label"]
    offset += count
  return images, labels


class DeviceCache:
  """A training split held on the devices, with on-device augmentation."""

  def __init__(
    self,
    source: Sequence[Any],
    *,
    mesh: Mesh,
    global_batch_size: int,
    image_size: int,
    resize_margin: int,
    horizontal_flip: bool,
    seed: int,
    workers: int = 0,
    color_jitter: float = 0.0,
  ):
    self.mesh = mesh
    self.image_size = image_size
    self.resize_margin = resize_margin
    self.horizontal_flip = horizontal_flip
    self.seed = seed
    self.color_jitter = color_jitter
    color_jitter_lib.check_strength(color_jitter)
    num_shards = mesh.size
    if global_batch_size % num_shards:
      raise ValueError(f"Batch size {global_batch_size} is not divisible by {num_shards} devices.")
    self.local_batch = global_batch_size // num_shards
    self._num_examples = len(source)
    self.steps_per_epoch = pipeline.steps_per_epoch(len(source), global_batch_size)
    # Device d holds examples [starts[d], starts[d + 1]), padded to `per_device` rows.
    self.per_device = math.ceil(len(source) / num_shards)
    counts = [self._valid_rows(d, len(source), num_shards) for d in range(num_shards)]
    starts = np.concatenate([[0], np.cumsum(counts)])
    local_devices = len(mesh.local_devices)
    first = local_devices * jax.process_index()
    size = image_size + resize_margin
    decoded, labels = _decode_resized(
      source, int(starts[first]), int(starts[first + local_devices]), size, workers
    )
    images = np.zeros((local_devices * self.per_device, size, size, 3), np.uint8)
    local_labels = np.zeros((local_devices * self.per_device,), np.int32)
    for j in range(local_devices):
      rows = slice(starts[first + j] - starts[first], starts[first + j + 1] - starts[first])
      count = rows.stop - rows.start
      images[j * self.per_device : j * self.per_device + count] = decoded[rows]
      local_labels[j * self.per_device : j * self.per_device + count] = labels[rows]
    data_sharding = sharding.batch_sharding(mesh)
    self.images = jax.make_array_from_process_local_data(data_sharding, images)
    self.labels = jax.make_array_from_process_local_data(data_sharding, local_labels)
    self._sample = jax.jit(self._build_sampler(), out_shardings=data_sharding)

  @staticmethod
  def _valid_rows(device, num_examples: int, num_shards: int):
    """Real examples on `device` (an int, or a traced device index)."""
    return num_examples // num_shards + (device < num_examples % num_shards)

  @property
  def num_examples(self) -> int:
    return self._num_examples

  def _build_sampler(self):
    size, margin, flip = self.image_size, self.resize_margin, self.horizontal_flip
    local_batch, per_device, steps_per_epoch = (
      self.local_batch,
      self.per_device,
      self.steps_per_epoch,
    )
    jitter, num_examples, num_shards = self.color_jitter, self._num_examples, self.mesh.size
    base_key = jax.random.PRNGKey(self.seed)

    def per_device_batch(images, labels, step):
      device = jax.lax.axis_index(sharding.DATA_AXES)
      valid = self._valid_rows(device, num_examples, num_shards)
      epoch, position = step // steps_per_epoch, step % steps_per_epoch
      epoch_key = jax.random.fold_in(jax.random.fold_in(base_key, epoch), device)
      shuffled = jax.random.permutation(epoch_key, per_device)
      # This epoch's order of the real rows (padding rows, if any, sorted to the end).
      order = shuffled[jnp.argsort(shuffled >= valid, stable=True)]
      slots = position * local_batch + jnp.arange(local_batch)
      mask = slots < valid
      chosen = order[jnp.where(mask, slots, slots % jnp.maximum(valid, 1))]
      step_key = jax.random.fold_in(jax.random.fold_in(epoch_key, position), 1)
      crop_key, flip_key, jitter_key = jax.random.split(step_key, 3)
      corners = jax.random.randint(crop_key, (local_batch, 2), 0, margin + 1)
      flips = (
        jax.random.bernoulli(flip_key, 0.5, (local_batch,))
        if flip
        else jnp.zeros((local_batch,), bool)
      )

      def crop_one(index, corner, flipped):
        crop = jax.lax.dynamic_slice(images[index], (corner[0], corner[1], 0), (size, size, 3))
        return jnp.where(flipped, crop[:, ::-1], crop)

      crops = jax.vmap(crop_one)(chosen, corners, flips)
      if jitter:
        factors, jitter_order = color_jitter_lib.draw_parameters_jax(
          jitter_key, local_batch, jitter
        )
        crops = color_jitter_lib.jitter_uint8_batch_jax(crops, factors, jitter_order)
      return crops, labels[chosen], mask.astype(jnp.float32)

    spec = P(sharding.DATA_AXES)
    mapped = jax.shard_map(
      per_device_batch, mesh=self.mesh, in_specs=(spec, spec, P()), out_specs=(spec, spec, spec)
    )
    return lambda images, labels, step: dict(
      zip(("image", "label", "mask"), mapped(images, labels, step))
    )

  def batch(self, step: int) -> dict[str, jax.Array]:
    """The global batch of training step `step` (uint8 images, int32 labels, float32 mask)."""
    # An explicit (not hidden) 4-byte transfer: the only host input of the step.
    step = jax.device_put(np.int32(step), sharding.replicated(self.mesh))
    return self._sample(self.images, self.labels, step)
