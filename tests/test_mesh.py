"""The device mesh follows the interconnect: the fsdp axis stays within a host (or TPU slice)."""

import dataclasses

import jax
import numpy as np
import pytest

from animesion_jax import sharding


@dataclasses.dataclass(frozen=True)
class FakeGpu:
  """What mesh_utils reads from a device: a global id, its process, platform and kind."""

  id: int
  process_index: int
  platform: str = "gpu"
  device_kind: str = "NVIDIA H200"


def _two_hosts_interleaved() -> list[FakeGpu]:
  # 2 hosts x 4 GPUs, listed in an order that mixes the hosts (as a device list may come).
  devices = [
    FakeGpu(id=host * 4 + local, process_index=host) for host in (0, 1) for local in range(4)
  ]
  return [devices[i] for i in (0, 4, 1, 5, 2, 6, 3, 7)]


def test_fsdp_axis_stays_within_a_host():
  grid = sharding.device_grid(_two_hosts_interleaved(), fsdp_size=4)
  assert grid.shape == (2, 4)
  # Each fsdp row is one host's four GPUs; the hosts differ along 'data'.
  assert [{d.process_index for d in row} for row in grid] == [{0}, {1}]
  assert [[d.id for d in row] for row in grid] == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_fsdp_two_per_host_keeps_hosts_contiguous_along_data():
  grid = sharding.device_grid(_two_hosts_interleaved(), fsdp_size=2)
  assert grid.shape == (4, 2)
  assert [[d.process_index for d in row] for row in grid] == [[0, 0], [0, 0], [1, 1], [1, 1]]


def test_fsdp_across_hosts_is_refused_with_the_reason():
  with pytest.raises(ValueError, match="fsdp_size=8 must divide the 4 devices of one host"):
    sharding.device_grid(_two_hosts_interleaved(), fsdp_size=8)


def test_fsdp_must_divide_the_device_count():
  with pytest.raises(ValueError, match="fsdp_size=3 must divide the device count 8"):
    sharding.create_mesh(fsdp_size=3)


def test_single_host_mesh_over_local_devices():
  assert jax.device_count() == 8  # tests/conftest.py: 8 host-platform devices.
  mesh = sharding.create_mesh(fsdp_size=4)
  assert dict(mesh.shape) == {"data": 2, "fsdp": 4}
  assert np.array_equal(np.vectorize(lambda d: d.id)(mesh.devices), np.arange(8).reshape(2, 4))
  assert dict(sharding.create_mesh(jax.devices()[:2]).shape) == {"data": 2, "fsdp": 1}
