"""Row-sharded queues and memory banks (MoCo's queue, InstDisc's bank) split by rows over the 'data' axis.

A bank of R rows lives as a [R, D] array with PartitionSpec P('data'): inside shard_map each device holds the
contiguous rows [d * R/n, (d + 1) * R/n). Writes take the rows of the whole global batch (all-gathered, small) and
each device writes only the rows it owns; reads never gather the bank (the losses all-gather the [B, D] queries
and psum [B]-sized partial results instead, see cl_jax/losses/queue.py and nce.py), so a device stores and
touches R/n rows.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from cl_jax import parallel


def num_rows(config: Any, num_train: int, method: str) -> int:
  """Rows of a per-example memory bank = training examples: config.method.bank_size, else the training split's
  size (given by the loop), else config.data.num_train; a one-line error naming the fix if none is known."""
  n = config.method.get("bank_size", 0) or num_train or config.data.get("num_train", 0)
  if not n:
    raise ValueError(f"{method} needs the number of training examples for its memory bank; set "
                     "method.bank_size to the size of the training split (e.g. 50000 for CIFAR-10).")
  return int(n)


def uniform_bank(key: jax.Array, num_data: int, dim: int, num_devices: int) -> jax.Array:
  """A bank of `num_data` rows initialised as the official NCEAverage (uniform in +-1/sqrt(D/3), so E||v||^2 = 1;
  rows become unit vectors once visited), padded to a multiple of the devices so the rows split evenly (padding
  rows are never sampled or scored)."""
  stdv = 1.0 / (dim / 3) ** 0.5
  rows = -(-num_data // num_devices) * num_devices
  return jax.random.uniform(key, (rows, dim), jnp.float32, -stdv, stdv)


def one_crop_with_index(views: Any, method: str, why: str = "") -> tuple[jax.Array, jax.Array]:
  """The [b, H, W, C] single crop and int32 dataset indices a per-example bank method reads, or a one-line error
  naming the fix (InstDisc, CMC: one crop per image, the bank row of each example)."""
  crops = views["crops"][0]
  if crops.shape[0] != 1:
    raise ValueError(f"{method} takes 1 crop per image{why}, got {crops.shape[0]}; "
                     "set --config.augment['global'].views=1.")
  if "index" not in views:
    raise ValueError(f"{method} needs each example's dataset 'index' in the batch; use a source that provides it.")
  return crops[0], views["index"].astype(jnp.int32)


def noise_rows(key: jax.Array, index: jax.Array, num_negatives: int, num_data: int) -> jax.Array:
  """[b, m] uniform noise rows of the bank per example, from (step key, global example position): the same draw
  on any split of the batch over devices (inside shard_map over 'data')."""
  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(parallel.global_example_index(index.shape[0]))
  return jax.vmap(lambda k: jax.random.randint(k, (num_negatives,), 0, num_data))(keys)


def check_rows(name: str, rows: int, num_devices: int, fix: str) -> None:
  """Fails in one line when a bank of `rows` cannot be split evenly over the devices."""
  if rows % num_devices:
    raise ValueError(f"{name} of {rows} rows is not divisible by the {num_devices} devices; {fix}.")


def check_queue(name: str, queue_size: int, local_batch: int, axis_name: str) -> None:
  """Fails in one line when a queue cannot be split over the devices or filled by whole global batches."""
  n = jax.lax.axis_size(axis_name)
  check_rows(f"{name} queue", queue_size, n, "set method.queue_size to a multiple of the devices")
  if queue_size % (local_batch * n):
    raise ValueError(f"{name} queue_size {queue_size} is not divisible by the global batch {local_batch * n}; "
                     "set method.queue_size to a multiple of the batch.")


def enqueue(queue: jax.Array, ptr: jax.Array, keys: jax.Array,
            axis_name: str | None = None) -> tuple[jax.Array, jax.Array]:
  """MoCo's ring-buffer push (He et al. 2020, Alg. 1 'enqueue and dequeue'): global rows ptr..ptr+B <- keys.

  `queue` is this device's slice [K/n, D], `keys` the GLOBAL batch's keys [B, D] (all-gathered, in global order),
  `ptr` the replicated write position (a multiple of B, as the official code asserts K % B == 0). Each device
  writes the rows of its slice that the pointer covers; returns (new local slice, (ptr + B) % K).
  """
  local, b = queue.shape[0], keys.shape[0]
  total = local * parallel.axis_size(axis_name)
  if total % b:
    raise ValueError(f"MoCo queue_size {total} is not divisible by the global batch {b}; "
                     "set method.queue_size to a multiple of the batch.")
  rel = parallel.row_offset(local, axis_name) + jnp.arange(local) - ptr   # position of each owned row in the batch
  hit = (rel >= 0) & (rel < b)
  rows = jnp.take(keys.astype(queue.dtype), jnp.clip(rel, 0, b - 1), axis=0)
  return jnp.where(hit[:, None], rows, queue), (ptr + b) % total


def local_rows(bank: jax.Array, indices: jax.Array, axis_name: str | None = None) -> tuple[jax.Array, jax.Array]:
  """Rows of a row-sharded bank at GLOBAL `indices` that this device owns (zeros elsewhere), and the owned mask."""
  local = bank.shape[0]
  rel = indices - parallel.row_offset(local, axis_name)
  owned = (rel >= 0) & (rel < local)
  rows = jnp.take(bank, jnp.clip(rel, 0, local - 1), axis=0)
  return jnp.where(owned[..., None], rows, 0.0), owned


def scatter_rows(bank: jax.Array, indices: jax.Array, rows: jax.Array,
                 axis_name: str | None = None) -> jax.Array:
  """bank[indices] <- rows for the GLOBAL `indices` [B] this device owns; `rows` [B, D] are the global batch's."""
  local = bank.shape[0]
  rel = indices - parallel.row_offset(local, axis_name)
  owned = (rel >= 0) & (rel < local)
  target = jnp.where(owned, rel, local)                  # out of range -> dropped
  return bank.at[target].set(rows.astype(bank.dtype), mode="drop")


def momentum_update(bank: jax.Array, indices: jax.Array, features: jax.Array, momentum: float,
                    axis_name: str | None = None) -> jax.Array:
  """InstDisc's bank update (Wu et al. 2018, Sec. 3.2; official NCEAverage): v_i <- normalize(m v_i + (1 - m) f_i).

  `indices` [B] and `features` [B, D] are the GLOBAL batch's (all-gathered); each device updates the rows it owns.
  """
  old, _ = local_rows(bank, indices, axis_name)
  new = momentum * old + (1.0 - momentum) * jax.lax.stop_gradient(features).astype(bank.dtype)
  new = new * jax.lax.rsqrt(jnp.maximum(jnp.sum(new * new, axis=-1, keepdims=True), 1e-12))
  return scatter_rows(bank, indices, new, axis_name)


def row_sharding(state: Any, row_keys: tuple[str, ...]) -> dict[str, Any]:
  """PartitionSpec prefix of a method state dict: P('data') for the row-sharded banks in `row_keys`, else P()."""
  return {k: (P(parallel.DATA) if k in row_keys else P()) for k in state}


def state_memory_report(state: Any, specs: Any, mesh: Mesh,
                        step_fn: Callable[[Any], Any] | None = None) -> dict[str, int]:
  """Per-device bytes of a method state laid out by `specs` on `mesh`, from the compiled executable's memory analysis.

  Compiles jit(shard_map(step_fn)) of the state (by default a MoCo-style push that rewrites every leaf, so the
  state is both input and output) and returns {"argument_bytes", "output_bytes", "logical_bytes"}: the first two
  are XLA's per-device figures (`compiled.memory_analysis()`), the last is the unsharded size of the state.
  """
  fn = step_fn or (lambda s: jax.tree.map(lambda x: x + jnp.ones((), x.dtype), s))
  spec_tree = _broadcast_prefix(specs, state)
  shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), spec_tree, is_leaf=lambda x: isinstance(x, P))
  avals = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)
  mapped = jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=(spec_tree,), out_specs=spec_tree))
  analysis = mapped.lower(avals).compile().memory_analysis()
  logical = sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(state))
  return {"argument_bytes": int(analysis.argument_size_in_bytes), "output_bytes": int(analysis.output_size_in_bytes),
          "logical_bytes": logical}


def _broadcast_prefix(specs: Any, state: Any) -> Any:
  """Expands a PartitionSpec prefix tree to one spec per leaf of `state`."""
  if isinstance(specs, P):
    return jax.tree.map(lambda _: specs, state)
  if isinstance(specs, dict):
    return {k: _broadcast_prefix(specs[k], state[k]) for k in state}
  raise TypeError(f"Unsupported PartitionSpec prefix {type(specs).__name__}; use a P or a dict of them.")
