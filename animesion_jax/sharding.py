"""Device mesh, batch placement and parameter sharding rules (all in one place).

The mesh has two axes: 'data' (batch split, parameters replicated) and 'fsdp' (batch split
too, and parameters / optimizer state split along their largest divisible dimension). With the
default fsdp size 1 this is plain data parallelism.
"""

from typing import Any, Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

DATA_AXES = ("data", "fsdp")  # Batch dimension is split over both axes.


def create_mesh(devices: Sequence[jax.Device] | None = None, fsdp_size: int = 1) -> Mesh:
  """A (data, fsdp) mesh over `devices` (default: every device of every process)."""
  devices = list(jax.devices() if devices is None else devices)
  if fsdp_size < 1 or len(devices) % fsdp_size:
    raise ValueError(f"fsdp_size={fsdp_size} must divide the device count {len(devices)}.")
  grid = np.asarray(devices).reshape(len(devices) // fsdp_size, fsdp_size)
  return Mesh(grid, DATA_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def to_global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This process's slice of the batch -> one global jax.Array per field, split over devices."""
  sharding = batch_sharding(mesh)
  return {name: jax.make_array_from_process_local_data(sharding, value)
          for name, value in local_batch.items()}


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
      abstract_tree)
