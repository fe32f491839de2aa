"""Device mesh, batch placement and parameter sharding rules (all in one place).

The mesh has two axes: 'data' (batch split, parameters replicated) and 'fsdp' (batch split
too, and parameters / optimizer state split along their largest divisible dimension). With the
default fsdp size 1 this is plain data parallelism.

The device grid follows the hardware (jax.experimental.mesh_utils): on one TPU slice the mesh is
laid over the chips' torus; across hosts of GPUs (or across TPU slices) the hosts (slices) form
the outer 'data' axis and each host's devices the inner one, so the 'fsdp' axis, whose
all-gathers and reduce-scatters run every step, stays on a host's NVLink (a slice's ICI) and only
the data-parallel gradient reduction crosses the slower network between hosts.
"""

import collections
from collections.abc import Sequence
from typing import Any

import jax
from jax.experimental import mesh_utils
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

DATA_AXES = ("data", "fsdp")  # Batch dimension is split over both axes.


def _granules(devices: Sequence[jax.Device]) -> tuple[str, dict[int, list[jax.Device]]]:
  """Devices grouped by what shares the fast interconnect: TPU slices, else processes (hosts)."""
  if devices[0].platform == "tpu" and hasattr(devices[0], "slice_index"):
    key, groups = "slice", collections.defaultdict(list)
    for device in devices:
      groups[device.slice_index].append(device)
  else:
    key, groups = "host", collections.defaultdict(list)
    for device in devices:
      groups[device.process_index].append(device)
  return key, dict(groups)


def device_grid(devices: Sequence[jax.Device], fsdp_size: int = 1) -> np.ndarray:
  """A (data, fsdp) array of `devices`, laid out for the interconnect (see the module doc)."""
  devices = list(devices)
  if fsdp_size < 1 or len(devices) % fsdp_size:
    raise ValueError(f"fsdp_size={fsdp_size} must divide the device count {len(devices)}.")
  kind, groups = _granules(devices)
  sizes = {len(group) for group in groups.values()}
  if len(groups) == 1:
    return mesh_utils.create_device_mesh(
      (len(devices) // fsdp_size, fsdp_size), devices, allow_split_physical_axes=True
    )
  if len(sizes) != 1:
    raise ValueError(
      f"Every {kind} must bring the same number of devices; got "
      f"{ {index: len(group) for index, group in sorted(groups.items())} }."
    )
  per_group = sizes.pop()
  if per_group % fsdp_size:
    raise ValueError(
      f"fsdp_size={fsdp_size} must divide the {per_group} devices of one {kind} "
      f"({len(groups)} {kind}s): the fsdp axis is kept within a {kind}'s fast interconnect."
    )
  return mesh_utils.create_hybrid_device_mesh(
    (per_group // fsdp_size, fsdp_size),
    (len(groups), 1),
    devices,
    process_is_granule=kind == "host",
    allow_split_physical_axes=True,
  )


def create_mesh(devices: Sequence[jax.Device] | None = None, fsdp_size: int = 1) -> Mesh:
  """A (data, fsdp) mesh over `devices` (default: every device of every process)."""
  devices = list(jax.devices() if devices is None else devices)
  return Mesh(device_grid(devices, fsdp_size), DATA_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def to_global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This process's slice of the batch -> one global jax.Array per field, split over devices."""
  sharding = batch_sharding(mesh)
  return {
    name: jax.make_array_from_process_local_data(sharding, value)
    for name, value in local_batch.items()
  }


def round_up_batch(batch_size: int, num_devices: int) -> int:
  """The smallest multiple of the device count that is >= batch_size (at least one per device)."""
  return max(num_devices, -(-batch_size // num_devices) * num_devices)


def _leaf_spec(shape: tuple[int, ...], fsdp_size: int, min_size: int) -> P:
  if fsdp_size == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return P()
  # Split the largest dimension that the fsdp axis divides; small tensors stay replicated.
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if shape[dim] % fsdp_size == 0:
      spec = [None] * len(shape)
      spec[dim] = "fsdp"
      return P(*spec)
  return P()


def state_shardings(abstract_tree: Any, mesh: Mesh, min_fsdp_size: int = 2**16) -> Any:
  """Shardings for a tree of arrays (params, optimizer state): FSDP-split big leaves."""
  fsdp_size = mesh.shape["fsdp"]
  return jax.tree.map(
    lambda leaf: NamedSharding(mesh, _leaf_spec(tuple(leaf.shape), fsdp_size, min_fsdp_size)),
    abstract_tree,
  )
