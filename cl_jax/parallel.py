"""The device mesh, shardings, multi-host setup and cross-device helpers (axis 'data')."""
from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from cl_jax.schema import Field, validate

DATA = "data"


# config.parallel: num_devices (0: every device), shard_state (ZeRO-style optimizer/EMA state over 'data'),
# contrastive_impl (gather | ring: cl_jax/losses/ring.py), peer_timeout_seconds (cl_jax/peers.py).
SCHEMA = {"num_devices": Field(0, low=0), "shard_state": Field(False, choices=(True, False)),
          "contrastive_impl": Field("gather", choices=("gather", "ring")),
          "peer_timeout_seconds": Field(60.0, low=0, open_low=True)}


def parallel_section(config: Any) -> dict[str, Any]:
  """config.parallel validated (None: the default); an unknown field or a bad value is one line."""
  section = dict(config.get("parallel", None) or {})
  return validate("parallel", {k: v for k, v in section.items() if v is not None}, SCHEMA, ignore=())


def initialize_distributed(peer_timeout_seconds: float = 60.0) -> None:
  """Joins a multi-host run when the environment describes one (TPU pods, SLURM, or explicit variables).

  Set CL_JAX_COORDINATOR=host:port, CL_JAX_NUM_PROCESSES and CL_JAX_PROCESS_ID for an explicit cluster
  (e.g. two local processes in the tests); TPU pods and SLURM are detected by jax itself when
  CL_JAX_DISTRIBUTED=1. JAX's own heartbeat timeout is set well past `peer_timeout_seconds`, so cl_jax's peer
  watch (cl_jax/peers.py) names a lost process before JAX aborts with a fatal stack dump.
  """
  if jax.distributed.is_initialized():
    return
  timeouts = {"heartbeat_timeout_seconds": int(max(100, 2 * peer_timeout_seconds + 30))}
  coordinator = os.environ.get("CL_JAX_COORDINATOR")
  if coordinator:
    jax.distributed.initialize(
        coordinator_address=coordinator,
        num_processes=int(os.environ["CL_JAX_NUM_PROCESSES"]),
        process_id=int(os.environ["CL_JAX_PROCESS_ID"]), **timeouts)
  elif os.environ.get("CL_JAX_DISTRIBUTED") == "1":
    jax.distributed.initialize(**timeouts)


def make_mesh(num_devices: int | None = None) -> Mesh:
  """A 1-D mesh with axis 'data' over all devices of all hosts (or the first `num_devices`; 0 or None: all)."""
  devices = jax.devices()
  if num_devices:
    if num_devices > len(devices):
      raise ValueError(f"Asked for {num_devices} devices but only {len(devices)} exist; lower parallel.num_devices.")
    devices = devices[:num_devices]
  return Mesh(np.asarray(devices), (DATA,), axis_types=(jax.sharding.AxisType.Auto,))


def check_batch_size(global_batch: int, mesh: Mesh) -> int:
  """Returns the per-device batch size, or fails in one line when the batch does not split evenly."""
  n = mesh.size
  if global_batch < 1:
    raise ValueError(f"batch_size={global_batch}: must be a positive multiple of the {n} devices.")
  if global_batch % n:
    raise ValueError(f"Global batch {global_batch} is not divisible by the {n} devices; "
                     f"set batch_size to a multiple of {n}.")
  return global_batch // n


def sharded(mesh: Mesh) -> NamedSharding:
  """Leading axis split over 'data'."""
  return NamedSharding(mesh, P(DATA))


def replicated(mesh: Mesh) -> NamedSharding:
  """The same copy on every device."""
  return NamedSharding(mesh, P())


def host_to_global(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles each host's local batch into global arrays sharded over 'data'."""
  sharding = sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def to_host(x: Any) -> Any:
  """Fetches (possibly multi-host sharded) arrays as full numpy arrays on every host."""
  if jax.process_count() == 1:
    return jax.tree.map(np.asarray, jax.device_get(x))
  return multihost_utils.process_allgather(x, tiled=True)


def from_host(tree: Any, shardings: Any) -> Any:
  """Host values (the same full arrays on every host) placed with `shardings` (a matching pytree of shardings);
  jax Arrays already laid out that way are kept as they are."""
  def place(x, sharding):
    if isinstance(x, jax.Array) and x.sharding == sharding:
      return x
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
  return jax.tree.map(place, tree, shardings)


def global_example_index(local_batch: int) -> jax.Array:
  """Inside shard_map: the global batch position of each local example (topology independent)."""
  return jax.lax.axis_index(DATA) * local_batch + jnp.arange(local_batch)


def is_varying(x: jax.Array, axis_name: str = DATA) -> bool:
  """Inside shard_map: whether `x` may differ across `axis_name` (its varying-manual-axes type)."""
  aval = jax.typeof(x)
  mat = getattr(aval, "manual_axis_type", None)   # jax >= 0.9; earlier releases call it `vma`
  return axis_name in (mat.varying if mat is not None else getattr(aval, "vma", ()))


def pmean_varying(tree: Any, axis_name: str = DATA) -> Any:
  """Averages the leaves that differ across devices, leaving replicated leaves untouched."""
  return jax.tree.map(lambda x: jax.lax.pmean(x, axis_name) if is_varying(x, axis_name) else x, tree)


# Collectives over an optional mesh axis: `axis_name=None` means one device (the losses' contract).

def all_gather(x: jax.Array, axis_name: str | None) -> jax.Array:
  """All rows of `x` over the axis, concatenated in device order (identity on one device)."""
  return x if axis_name is None else jax.lax.all_gather(x, axis_name, tiled=True)


def psum(x: jax.Array, axis_name: str | None) -> jax.Array:
  """Sum over devices (identity on one device)."""
  return x if axis_name is None else jax.lax.psum(x, axis_name)


def pmax(x: jax.Array, axis_name: str | None) -> jax.Array:
  """Max over devices (identity on one device)."""
  return x if axis_name is None else jax.lax.pmax(x, axis_name)


def pmean(x: jax.Array, axis_name: str | None) -> jax.Array:
  """Mean over devices (identity on one device)."""
  return x if axis_name is None else jax.lax.pmean(x, axis_name)


def axis_size(axis_name: str | None) -> int:
  """Number of devices along the axis (1 on one device)."""
  return 1 if axis_name is None else jax.lax.axis_size(axis_name)


def row_offset(local_rows: int, axis_name: str | None) -> jax.Array:
  """Global index of this device's first row when each holds `local_rows` contiguous rows (0 on one device)."""
  if axis_name is None:
    return jnp.zeros((), jnp.int32)
  return jax.lax.axis_index(axis_name) * local_rows


def zero_specs(tree: Any, specs: Any, num_devices: int) -> Any:
  """ZeRO-style storage specs: each leaf whose spec is replicated (P()) is split over 'data' along its largest
  axis divisible by `num_devices` (kept replicated if none is); leaves already sharded keep their spec.
  `specs` may be a prefix of `tree` (e.g. one P() for a whole subtree)."""
  def leaf_spec(x: Any, spec: P) -> P:
    if spec != P() or not getattr(x, "ndim", 0):
      return spec
    axes = [a for a in range(x.ndim) if x.shape[a] % num_devices == 0]
    if not axes:
      return spec
    axis = max(axes, key=lambda a: x.shape[a])
    return P(*([None] * axis), DATA)

  is_spec = lambda x: isinstance(x, P)
  return jax.tree.map(lambda spec, sub: jax.tree.map(lambda x: leaf_spec(x, spec), sub), specs, tree,
                      is_leaf=is_spec)
