"""grain loader: per-host shard, seeded shuffle, batches of numpy dicts, a checkpointable iterator.

Training (`drop_remainder=True`): every host walks the same seeded global order and reads its own rows of each
global batch (host p: rows p*L .. (p+1)*L-1 of the G = P*L rows), so the assembled global batch, and with it
every number of the run, is the same on 1 or N hosts. Evaluation (`drop_remainder=False`): each host reads a
contiguous block of the records (cut here rather than by grain's sampler: grain 0.2.18's `IndexSampler`
silently drops a record when the blocks are uneven), so the hosts' blocks in order are the split in order.
`iter(loader).get_state()` / `.set_state(state)` resume exactly (the state is a JSON-able dict).
"""
from __future__ import annotations

from typing import Any

import grain.python as grain
import jax
import numpy as np
from absl import flags


def local_batch_size(global_batch: int, process_count: int) -> int:
  """Per-host batch: `global_batch // process_count`; one-line error when it does not divide."""
  if process_count < 1:
    raise ValueError(f"process_count must be >= 1, got {process_count}.")
  if global_batch < 1 or global_batch % process_count:
    raise ValueError(f"global batch {global_batch} is not a positive multiple of the "
                     f"{process_count} hosts; set the batch size to a multiple of {process_count}.")
  return global_batch // process_count


def host_block(num_records: int, process_index: int, process_count: int,
               drop_remainder: bool) -> tuple[int, int]:
  """[start, end) of this host's records: equal blocks, the remainder dropped or spread."""
  size, extra = divmod(num_records, process_count)
  if drop_remainder:
    return process_index * size, (process_index + 1) * size
  start = process_index * size + min(process_index, extra)
  return start, start + size + (process_index < extra)


class HostShard:
  """Random-access view of records [start, end) of a source, with a stable repr for checkpoints."""

  def __init__(self, source: Any, start: int, end: int):
    self.source, self.start, self.end = source, start, end

  def __len__(self) -> int:
    return self.end - self.start

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    if not 0 <= i < len(self):
      raise IndexError(f"index {i} out of range for a host shard of {len(self)} records.")
    return self.source[self.start + int(i)]

  def __repr__(self) -> str:
    # A stable description (name, split, size, block; no memory address) for logs and error messages.
    name = getattr(self.source, "name", type(self.source).__name__)
    split = getattr(self.source, "split", "")
    return (f"HostShard(source={name!r}, split={split!r}, num_records={len(self.source)}, "
            f"start={self.start}, end={self.end})")


def make_loader(source: Any, *, global_batch: int, seed: int, shuffle: bool,
                num_epochs: int | None, drop_remainder: bool = True, worker_count: int = 0,
                process_index: int | None = None,
                process_count: int | None = None) -> "Loader":
  """A grain dataset of this host's batches of `global_batch // process_count` records.

  Evaluation: `shuffle=False, num_epochs=1, drop_remainder=False` yields every record once, the
  last batch possibly smaller. `worker_count > 0` reads batches in that many worker processes
  (grain's multiprocessing prefetch; the order does not depend on the worker count).
  """
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is not in [0, {process_count}); pass the "
                     "host's index among process_count hosts.")
  batch = local_batch_size(global_batch, process_count)
  if not 0 <= seed < 2**32:
    raise ValueError(f"seed must be in [0, 2**32), got {seed}; set config.seed accordingly.")
  name = getattr(source, "name", type(source).__name__)
  if drop_remainder:
    if global_batch > len(source):
      raise ValueError(f"global batch {global_batch} is larger than the {len(source)} records of '{name}'; "
                       "lower the batch size or use more data.")
    dataset = grain.MapDataset.source(source)
    if shuffle:
      dataset = dataset.shuffle(seed=seed)   # before repeat: a fresh permutation every epoch
    dataset = dataset.repeat(num_epochs)
    if hasattr(source, "epoch_text"):   # captioned sources re-pick each example's text every epoch
      dataset = dataset.map_with_index(source.epoch_text())
    dataset = HostRows(dataset, global_batch, batch, process_index)
    return Loader(dataset.batch(batch, drop_remainder=True), worker_count)
  start, end = host_block(len(source), process_index, process_count, drop_remainder)
  shard = HostShard(source, start, end)
  if len(shard) < 1:
    raise ValueError(f"'{name}' has {len(source)} records, too few to give each of "
                     f"{process_count} hosts one; use more data or fewer hosts.")
  if drop_remainder and batch > len(shard):
    raise ValueError(f"global batch {global_batch} ({batch} per host) is larger than the "
                     f"{len(shard)} records per host of '{name}' ({len(source)} records, "
                     f"{process_count} hosts); lower the batch size or use more data.")
  dataset = grain.MapDataset.source(shard)
  if shuffle:
    dataset = dataset.shuffle(seed=seed)   # before repeat: a fresh permutation every epoch
  dataset = dataset.repeat(num_epochs).batch(batch, drop_remainder=drop_remainder)
  return Loader(dataset, worker_count)


class HostRows(grain.MapDataset):
  """This host's rows of each global batch of `parent`: element k is parent[(k // L) * G + p * L + k % L]."""

  def __init__(self, parent: grain.MapDataset, global_batch: int, host_batch: int, process_index: int):
    super().__init__(parent)
    self._global, self._local, self._offset = global_batch, host_batch, process_index * host_batch

  def __len__(self) -> int:
    return len(self._parent) // self._global * self._local

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    batch, row = divmod(int(index), self._local)
    return self._parent[batch * self._global + self._offset + row]

  def __str__(self) -> str:
    return f"HostRows(global_batch={self._global}, host_batch={self._local}, offset={self._offset})"


class Loader:
  """Iterable of this host's batches; `iter(loader)` has `get_state()` / `set_state(state)` (a JSON-able dict)."""

  def __init__(self, dataset: grain.MapDataset, worker_count: int = 0):
    self.dataset, self.worker_count = dataset, worker_count

  def __iter__(self):
    # Records are read in the main thread: the sources here are in memory or random-access files, and
    # grain's prefetch machinery costs more than it saves for them unless worker processes are asked for.
    it = self.dataset.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
    if self.worker_count > 0:
      if not flags.FLAGS.is_parsed():   # grain's workers read absl flags; a notebook or a test never parsed them
        flags.FLAGS.mark_as_parsed()
      it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.worker_count))
    return iter(it)
