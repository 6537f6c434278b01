"""DCCL: the concept loss, the memory update and the whole objective against float64 NumPy transcriptions of the
official code, its GCD reduction at concept_weight=0, 8 devices vs 1 (value, gradient, and a method step with
plain SGD including the memory update), the clustering finding the number of well-separated blobs, the epoch-start
hook's state, and the one-line errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from cl_jax import parallel
from cl_jax.eval import concepts
from cl_jax.losses.contrastive import nt_xent
from cl_jax.losses.dccl import concept_loss, concept_weight, dccl_loss, labelled_supcon, memory_update
from tests.harness import (assert_trees_close, batch_views, build_method, explicit_method_config, make_method_step,
                           one_line_error)

B, DH, DP, K = 16, 8, 12, 6
HP = dict(sup_weight=0.35, temperature=1.0, supcon_temperature=0.07, supcon_base_temperature=0.07,
          concept_temperature=0.05)


def _unit(x):
  x = np.asarray(x, np.float64)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _log_softmax(v):
  v = np.asarray(v, np.float64)
  return v - v.max() - np.log(np.exp(v - v.max()).sum())


def infonce_ref(p, t):
  """GCD's info_nce_logits + CrossEntropyLoss: anchor a of 2b, positive its other view, the other 2b - 2 negatives."""
  p = _unit(p)
  n = len(p)
  out = []
  for a in range(n):
    others = [j for j in range(n) if j != a]
    lp = _log_softmax([p[a] @ p[j] / t for j in others])
    out.append(-lp[others.index((a + n // 2) % n)])
  return float(np.mean(out))


def supcon_ref(p, labels, t, base):
  """SupConLoss (contrast_mode='all') on the labelled examples only, as `sup_con_crit(sup_con_feats[mask], ...)`."""
  b = len(labels)
  sel = np.flatnonzero(labels >= 0)
  if not len(sel):
    return 0.0
  feats = _unit(np.concatenate([p[:b][sel], p[b:][sel]]))          # torch.cat(torch.unbind(features, 1))
  lab = np.tile(labels[sel], 2)
  out = []
  for a in range(len(feats)):
    others = [j for j in range(len(feats)) if j != a]
    lp = _log_softmax([feats[a] @ feats[j] / t for j in others])
    pos = [k for k, j in enumerate(others) if lab[j] == lab[a]]
    out.append(-(t / base) * lp[pos].mean())
  return float(np.mean(out))


def concept_ref(h, targets, memory, valid, t):
  """ClusterMemory.forward: cross-entropy of normalize(h) @ memory.T / t over the memory's (valid) rows."""
  rows = np.flatnonzero(valid)
  h, mem = _unit(h), np.asarray(memory, np.float64)[rows]
  out = [-_log_softmax(h[i] @ mem.T / t)[list(rows).index(y)] for i, y in enumerate(targets) if y >= 0]
  return float(np.mean(out)) if out else 0.0


def memory_ref(memory, feats, targets, momentum):
  """CM.backward's loop: for x, y in zip(inputs, targets): m[y] = momentum m[y] + (1 - momentum) x; m[y] /= |m[y]|."""
  mem = np.array(memory, np.float64)
  for x, y in zip(_unit(feats), targets):
    if y >= 0:
      mem[y] = momentum * mem[y] + (1 - momentum) * x
      mem[y] /= np.linalg.norm(mem[y])
  return mem


@pytest.fixture(scope="module")
def data():
  rng = np.random.default_rng(0)
  h = rng.normal(size=(2 * B, DH)).astype(np.float32)
  p = rng.normal(size=(2 * B, DP)).astype(np.float32)
  labels = np.where(rng.random(B) < 0.5, rng.integers(0, 3, B), -1).astype(np.int32)
  ids = rng.integers(-1, 4, B).astype(np.int32)                        # concept 4, 5 rows invalid: never a target
  memory = _unit(rng.normal(size=(K, DH))).astype(np.float32)
  valid = np.arange(K) < 4
  return h, p, labels, ids, memory, valid


def test_concept_loss_matches_float64_official(data):
  h, _, _, ids, memory, valid = data
  targets = np.tile(ids, 2)
  loss, metrics = concept_loss(jnp.asarray(h), jnp.asarray(targets), jnp.asarray(memory), jnp.asarray(valid), 0.05)
  np.testing.assert_allclose(float(loss), concept_ref(h, targets, memory, valid, 0.05), rtol=1e-5)
  np.testing.assert_allclose(float(metrics["concept_coverage"]), np.mean(targets >= 0), rtol=1e-6)
  empty, _ = concept_loss(jnp.asarray(h), jnp.full((2 * B,), -1), jnp.asarray(memory), jnp.asarray(valid), 0.05)
  assert float(empty) == 0.0                                            # no anchor with a concept: 0, not NaN


def test_memory_update_is_the_official_sequential_loop(data):
  h, _, _, ids, memory, _ = data
  targets = np.tile(ids, 2)
  targets[:3] = 2                                                       # one concept hit several times in a row
  new = memory_update(jnp.asarray(memory), jnp.asarray(h), jnp.asarray(targets), 0.1)
  np.testing.assert_allclose(np.asarray(new), memory_ref(memory, h, targets, 0.1), rtol=1e-5, atol=1e-6)
  untouched = np.setdiff1d(np.arange(K), targets)
  np.testing.assert_array_equal(np.asarray(new)[untouched], memory[untouched])


@pytest.mark.parametrize("cw", [0.0, 0.04, 0.4])
def test_objective_matches_float64_official(data, cw):
  h, p, labels, ids, memory, valid = data
  loss, metrics = dccl_loss(*map(jnp.asarray, data), concept_w=cw, **HP)
  ref = (0.65 * infonce_ref(p, 1.0) + 0.35 * supcon_ref(p, labels, 0.07, 0.07)
         + cw * concept_ref(h, np.tile(ids, 2), memory, valid, 0.05))
  np.testing.assert_allclose(float(loss), ref, rtol=1e-5)
  np.testing.assert_allclose(float(metrics["supcon"]), supcon_ref(p, labels, 0.07, 0.07), rtol=1e-5)


def test_concept_weight_zero_is_exactly_gcd(data):
  h, p, labels, ids, memory, valid = data
  gcd, metrics = dccl_loss(*map(jnp.asarray, data), concept_w=None, **HP)
  nce, _ = nt_xent(jnp.asarray(p[:B]), jnp.asarray(p[B:]), 1.0)
  sup, _ = labelled_supcon(jnp.asarray(p).reshape(2, B, -1), jnp.asarray(labels), 0.07, 0.07)
  assert float(gcd) == float(0.65 * nce + 0.35 * sup) and "concept" not in metrics
  zero, _ = dccl_loss(*map(jnp.asarray, data), concept_w=0.0, **HP)
  assert float(zero) == float(gcd)
  np.testing.assert_allclose(float(gcd), 0.65 * infonce_ref(p, 1.0) + 0.35 * supcon_ref(p, labels, 0.07, 0.07),
                             rtol=1e-5)


def test_supcon_without_labelled_examples_is_zero(data):
  _, p, _, _, _, _ = data
  loss = labelled_supcon(jnp.asarray(p).reshape(2, B, -1), jnp.full((B,), -1), 0.07, 0.07)[0]
  grad = jax.grad(lambda x: labelled_supcon(x, jnp.full((B,), -1), 0.07, 0.07)[0])(jnp.asarray(p).reshape(2, B, -1))
  assert float(loss) == 0.0 and np.all(np.asarray(grad) == 0)


def test_eight_devices_equal_one_value_and_gradient(data):
  h, p, labels, ids, memory, valid = data

  def fn(h, p, labels, ids, axis_name=None):
    h, p = h.reshape(-1, DH), p.reshape(-1, DP)                          # [2, b, .] -> views-major [2b, .]
    return dccl_loss(h, p, labels, ids, jnp.asarray(memory), jnp.asarray(valid), concept_w=0.4,
                     axis_name=axis_name, **HP)[0]

  args = (jnp.asarray(h).reshape(2, B, DH), jnp.asarray(p).reshape(2, B, DP), jnp.asarray(labels), jnp.asarray(ids))
  ref, ref_grads = jax.value_and_grad(fn, argnums=(0, 1))(*args)
  sharded = jax.jit(jax.shard_map(lambda *a: jax.value_and_grad(fn, argnums=(0, 1))(*a, axis_name=parallel.DATA),
                                  mesh=parallel.make_mesh(),
                                  in_specs=(P(None, "data"), P(None, "data"), P("data"), P("data")),
                                  out_specs=(P(), (P(None, "data"), P(None, "data")))))
  loss, grads = sharded(*args)
  np.testing.assert_allclose(float(loss), float(ref), rtol=1e-5)
  for g, r in zip(grads, ref_grads):
    np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-4, atol=1e-6)


def test_concept_weight_ramp_is_the_official_schedule():
  schedule = np.concatenate([np.linspace(0.04, 0.4, 100), np.full(100, 0.4)])
  got = [float(concept_weight(jnp.asarray(e * 7 + 3), 7, 0.4, 0.1, 100)) for e in range(200)]
  np.testing.assert_allclose(got, schedule, rtol=1e-6)


# ------------------------------------------------------------------------------------------ the clustering


def blobs(k=6, per=60, d=32, seed=0, noise=0.05):
  rng = np.random.default_rng(seed)
  centres = _unit(rng.normal(size=(k, d)))
  x = (np.repeat(centres, per, 0) + noise * rng.normal(size=(k * per, d))).astype(np.float32)
  y = np.repeat(np.arange(k), per)
  labels = np.where((y < k // 2) & (rng.random(len(y)) < 0.5), y, -1).astype(np.int32)   # old half, 50% labelled
  return x, y, labels


@pytest.mark.parametrize("method", ["infomap", "kmeans"])
@pytest.mark.parametrize("seed", [0, 1])
def test_clustering_finds_the_number_of_blobs(method, seed):
  if method == "infomap" and not concepts.have_infomap():
    pytest.skip("infomap is not installed (pip install 'cl_jax[dccl]')")
  x, y, labels = blobs(seed=seed)
  found = concepts.find_concepts(x * 3.0, labels, method=method, max_concepts=32)   # raw scale does not matter
  assert found.num == 6 and found.dropped == 0
  assert concepts.labelled_accuracy(found.ids, y) == 1.0
  np.testing.assert_allclose(np.linalg.norm(found.centroids, axis=1), 1.0, rtol=1e-5)


def test_small_clusters_are_outliers_and_the_cap_keeps_the_largest():
  if not concepts.have_infomap():
    pytest.skip("infomap is not installed")
  x, y, labels = blobs(k=4, per=40, d=32)
  rng = np.random.default_rng(5)
  x = np.concatenate([x[:120], x[120:123], _unit(rng.normal(size=(3, 32))).astype(np.float32)])   # blob 3: 3 left
  labels = np.concatenate([labels[:123], [-1, -1, -1]]).astype(np.int32)
  found = concepts.find_concepts(x, labels, method="infomap", min_size=4, max_concepts=32)
  assert found.num == 3 and np.all(found.ids[120:] == -1)
  capped = concepts.find_concepts(x, labels, method="infomap", min_size=4, max_concepts=2)
  assert capped.num == 2 and capped.dropped == 1 and np.sum(capped.ids >= 0) == 80


def test_semi_supervised_edges_raise_same_label_neighbours():
  nbrs = np.array([[0, 1, 2], [1, 0, 2], [2, 1, 0]])
  sims = np.array([[1.0, 0.7, 0.65], [1.0, 0.7, 0.5], [1.0, 0.65, 0.65]], np.float32)
  src, dst, w = concepts.semi_links(nbrs, sims, np.array([3, 3, -1]), min_sim=0.6, max_sim=True)
  edges = {(int(s), int(d)): float(v) for s, d, v in zip(src, dst, w)}
  # 0 -> 1: same label, raised to 0's best neighbour (0.7); 1 -> 2 below min_sim: no edge; unlabelled keep sims.
  assert edges == pytest.approx({(0, 1): 0.7, (0, 2): 0.65, (1, 0): 0.7, (2, 1): 0.65, (2, 0): 0.65})
  _, _, w = concepts.semi_links(nbrs, sims, np.array([3, 3, -1]), min_sim=0.6, max_sim=False)
  assert w[0] == pytest.approx(0.999999999)


# ------------------------------------------------------------------------------------------ the method


def _config(**method):
  return explicit_method_config(dict(name="dccl", head_hidden=32, head_bottleneck=16, head_out=64, max_concepts=8,
                                     **method), views=2)


@pytest.fixture(scope="module")
def method_setup():
  c = _config()
  method = build_method(c, total_steps=10, steps_per_epoch=5, num_train=32)
  views = batch_views(c, 16, num_train=32)
  views["label"] = np.array([0, 1, -1, 2, -1, -1, 0, 1, -1, -1, 2, -1, 1, -1, -1, 0], np.int32)
  params, state = jax.jit(method.init)(jax.random.key(0), views)
  rng = np.random.default_rng(1)
  dim = state["memory"].shape[1]
  state = {**state, "memory": jnp.asarray(_unit(rng.normal(size=(8, dim))), jnp.float32),
           "valid": jnp.arange(8) < 5, "concept_ids": jnp.asarray(rng.integers(-1, 5, 32), jnp.int32)}
  one = make_method_step(method, state, views, 1, sgd_lr=0.1)(params, state, views, step=6)
  return c, method, views, params, state, one


def _train_features(method, params, state, crops):
  """Backbone features [2b, d] (views-major) of a train-mode forward on one device, as the method's loss sees them."""
  def forward(params, batch_stats, crops):
    x = crops.reshape((-1,) + crops.shape[2:])
    (h, _), _ = method.model.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                                   mutable=["batch_stats"])
    return h
  fn = jax.jit(jax.shard_map(forward, mesh=parallel.make_mesh(1), in_specs=(P(), P(), P(None, "data")),
                             out_specs=P("data")))
  return np.asarray(fn(params, state["batch_stats"], crops))


def test_method_step_eight_devices_equal_one_with_the_memory_update(method_setup):
  _, method, views, params, state, one = method_setup
  eight = make_method_step(method, state, views, 8, sgd_lr=0.1)(params, state, views, step=6)
  np.testing.assert_allclose(float(eight.loss), float(one.loss), rtol=1e-5)
  assert_trees_close(eight.grads, one.grads, rtol=1e-3, atol=1e-5)
  assert_trees_close(eight.params, one.params, rtol=1e-5, atol=1e-5)
  assert_trees_close(eight.state_after_update, one.state_after_update, rtol=1e-4, atol=1e-5)
  # The memory moved by the official sequential rule over the global batch's anchors (all first views, then all
  # second views), from the backbone features of this step's train-mode forward.
  ids = np.asarray(state["concept_ids"])[views["index"]]
  h = _train_features(method, params, state, views["crops"][0])
  expected = memory_ref(np.asarray(state["memory"]), h, np.tile(ids, 2), 0.1)
  np.testing.assert_allclose(np.asarray(one.state_after_update["memory"]), expected, rtol=1e-4, atol=1e-5)
  moved = np.any(np.asarray(one.state_after_update["memory"]) != np.asarray(state["memory"]), axis=1)
  np.testing.assert_array_equal(np.flatnonzero(moved), np.unique(ids[ids >= 0]))
  np.testing.assert_allclose(float(one.metrics["concept_weight"]), np.linspace(0.04, 0.4, 100)[1], rtol=1e-6)
  assert np.isfinite(float(one.loss)) and float(one.metrics["concept"]) > 0


def test_method_with_concept_weight_zero_is_gcd(method_setup):
  c, method, views, params, state, one = method_setup
  gcd = build_method(_config(concept_weight=0.0), total_steps=10, steps_per_epoch=5, num_train=32)
  assert gcd.EPOCH_START is False and method.EPOCH_START is True
  out = make_method_step(gcd, state, views, 1)(params, state, views, step=6)
  concept = float(one.metrics["concept"]) * float(one.metrics["concept_weight"])
  np.testing.assert_allclose(float(out.loss), float(one.loss) - concept, rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(out.state_after_update["memory"]), np.asarray(state["memory"]))
  assert "concept" not in out.metrics


def test_epoch_start_sets_the_concepts_by_index(method_setup):
  _, method, _, _, state, _ = method_setup
  dim = state["memory"].shape[1]
  x, y, labels = blobs(k=4, per=8, d=dim, noise=0.02)
  order = np.random.default_rng(2).permutation(32)
  split = {"features": x[order], "label": labels[order], "index": order}
  host = jax.tree.map(np.asarray, state)
  new, metrics = method.epoch_start(host, split, 0)
  assert jax.tree.structure(new) == jax.tree.structure(host)
  for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(host)):
    assert np.shape(a) == b.shape and np.result_type(a) == b.dtype
  assert metrics["num_concepts"] == 4 and metrics["labelled_purity"] == 1.0 and new["valid"].sum() == 4
  ids = new["concept_ids"]                                              # in dataset order, whatever the split's
  assert concepts.labelled_accuracy(ids, y) == 1.0
  for concept in range(4):
    np.testing.assert_allclose(new["memory"][concept], _unit(x[ids == concept].mean(0)), rtol=1e-4, atol=1e-5)


def test_one_line_errors(method_setup):
  c, method, views, params, state, _ = method_setup
  host = jax.tree.map(np.asarray, state)
  split = {"features": np.ones((32, state["memory"].shape[1]), np.float32), "label": np.full(32, -1, np.int32),
           "index": np.arange(32)}
  one_line_error(lambda: method.epoch_start(host, split, 0), "every training label is -1", "data.discovery")
  one_line_error(lambda: build_method(_config(concept_wieght=0.4), num_train=32), "did you mean concept_weight")
  one_line_error(lambda: build_method(_config(clustering="spectral"), num_train=32), "method.clustering")
  one_line_error(lambda: build_method(_config(min_sim=2.0), num_train=32), "method.min_sim", "<= 1")
  one_line_error(lambda: build_method(_config(knn_k=7.5), num_train=32), "method.knn_k", "whole number")
  one_line_error(lambda: build_method(_config(), num_train=0), "num_train")
  no_label = {k: v for k, v in views.items() if k != "label"}
  one_line_error(lambda: make_method_step(method, state, no_label, 1)(params, state, no_label), "no 'label'",
                 "data.discovery")
  one_view = {**views, "crops": (views["crops"][0][:1],)}
  one_line_error(lambda: make_method_step(method, state, one_view, 1)(params, state, one_view), "2 views")
