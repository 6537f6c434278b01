"""The host loader (cl_jax/data/pipeline.py): per-host batches, seeded shuffles, worker processes, resumable
iterator state, and evaluation order, on an in-memory source whose records hold their own index."""
import numpy as np

from cl_jax.data import pipeline
from tests.harness import one_line_error


class ArraySource:
  """n records whose image holds its own index."""

  def __init__(self, n):
    self.n, self.name, self.split = n, f"array{n}", "train"

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    return {"image": np.full((2, 2, 3), i % 256, np.uint8), "index": np.asarray(i, np.int32)}


def indices(loader, num_batches=None):
  out = []
  for b, batch in enumerate(loader):
    if num_batches is not None and b == num_batches:
      break
    out.append(batch["index"].tolist())
  return out


def test_local_batch_size_and_errors():
  assert pipeline.local_batch_size(64, 4) == 16
  one_line_error(lambda: pipeline.local_batch_size(10, 4), "10", "multiple of 4")
  one_line_error(lambda: pipeline.make_loader(ArraySource(10), global_batch=16, seed=0,
                                              shuffle=True, num_epochs=None, process_index=0,
                                              process_count=2), "larger than the 10 records")


def test_hosts_get_disjoint_records_covering_the_dataset():
  src = ArraySource(20)
  per_host = [sum(indices(pipeline.make_loader(src, global_batch=4, seed=3, shuffle=True,
                                               num_epochs=1, process_index=h, process_count=2)),
                  []) for h in range(2)]
  assert len(per_host[0]) == len(per_host[1]) == 10
  assert sorted(per_host[0] + per_host[1]) == list(range(20))
  assert per_host[0] != sorted(per_host[0])  # shuffled


def test_shuffle_is_seeded():
  src = ArraySource(32)

  def order(seed):
    return indices(pipeline.make_loader(src, global_batch=8, seed=seed, shuffle=True,
                                        num_epochs=None, process_index=0, process_count=1), 8)

  first = order(1)
  assert first == order(1) and first != order(2)
  assert sorted(sum(first[:4], [])) == list(range(32))  # each epoch is a permutation
  assert sum(first[:4], []) != sum(first[4:], [])       # reshuffled each epoch


def test_worker_processes_give_the_same_batches_in_the_same_order():
  """grain's multiprocess prefetch (data.worker_count 2, outside an absl app as in a notebook) changes no batch."""
  src = ArraySource(32)

  def order(workers):
    return indices(pipeline.make_loader(src, global_batch=8, seed=3, shuffle=True, num_epochs=None,
                                        worker_count=workers, process_index=0, process_count=1), 6)

  assert order(2) == order(0)


def test_iterator_state_resumes_exactly():
  src = ArraySource(10)

  def loader():
    return pipeline.make_loader(src, global_batch=4, seed=7, shuffle=True, num_epochs=None,
                                process_index=1, process_count=2)

  it = iter(loader())
  for _ in range(3):
    next(it)
  state = it.get_state()
  expected = [next(it)["index"].tolist() for _ in range(6)]  # crosses epoch boundaries
  for resumed in (it, iter(loader())):  # the same iterator, and a fresh loader's iterator
    resumed.set_state(state)
    assert [next(resumed)["index"].tolist() for _ in range(6)] == expected
  full = pipeline.make_loader(src, global_batch=4, seed=7, shuffle=True, num_epochs=None, process_index=0,
                              process_count=1)
  full_it = iter(full)
  global_batches = [next(full_it)["index"].tolist() for _ in range(9)]
  assert expected == [b[2:] for b in global_batches[3:]]   # host 1 of 2 reads rows 2..3 of each global batch


def test_hosts_assemble_the_one_host_global_batches():
  """Same global batches (rows in the same order) on 1, 2 and 4 hosts: the run's numbers do not depend on them."""
  src = ArraySource(24)

  def batches(h, n):
    return indices(pipeline.make_loader(src, global_batch=8, seed=5, shuffle=True, num_epochs=None,
                                        process_index=h, process_count=n), 7)

  one = batches(0, 1)
  for n in (2, 4):
    per_host = [batches(h, n) for h in range(n)]
    assert [sum((per_host[h][b] for h in range(n)), []) for b in range(7)] == one


def test_eval_mode_yields_every_record_once():
  src = ArraySource(11)
  single = indices(pipeline.make_loader(src, global_batch=4, seed=0, shuffle=False, num_epochs=1,
                                        drop_remainder=False, process_index=0, process_count=1))
  assert [len(b) for b in single] == [4, 4, 3] and sum(single, []) == list(range(11))
  hosts = [sum(indices(pipeline.make_loader(src, global_batch=4, seed=0, shuffle=False,
                                            num_epochs=1, drop_remainder=False, process_index=h,
                                            process_count=2)), []) for h in range(2)]
  assert sorted(hosts[0] + hosts[1]) == list(range(11))
