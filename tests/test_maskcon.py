"""MaskCon (cl_jax.methods.maskcon, cl_jax.losses.maskcon): the loss against a float64 NumPy transcription of the
official MaskCon.forward, its MoCo special cases, value and gradient on 8 devices vs 1, and a method step on 8
devices vs 1 with plain SGD (queue keys and coarse labels pushed in global order); fine labels never read."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from cl_jax import parallel
from cl_jax.losses.maskcon import maskcon_loss
from cl_jax.losses.queue import queue_info_nce
from tests.harness import (assert_trees_close, batch_views, build_method, explicit_method_config, make_method_step,
                           method_step, one_line_error)

B, D, K, C = 16, 8, 64, 3


def official_reference(q, k, queue, queue_labels, labels, t1, t2, w):
  """models/model.py MaskCon.forward after the encoders, step by step in float64 (queue as rows, not columns)."""
  q = np.asarray(q, np.float64)
  k = np.asarray(k, np.float64)
  q /= np.linalg.norm(q, axis=1, keepdims=True)
  k /= np.linalg.norm(k, axis=1, keepdims=True)
  queue = np.asarray(queue, np.float64)
  coarse_z = (labels.reshape(-1, 1) == queue_labels.reshape(1, -1)).astype(np.float64)
  logits_pd = k @ queue.T / t2
  logits_pd = logits_pd * coarse_z
  logits_pd = logits_pd - logits_pd.max(axis=1, keepdims=True)
  pseudo_soft_z = np.exp(logits_pd) * coarse_z
  tmp = pseudo_soft_z / pseudo_soft_z.sum(axis=1, keepdims=True)
  tmp = tmp / tmp.max(axis=1, keepdims=True)
  maskcon_z = np.concatenate([np.ones((len(q), 1)), tmp], axis=1)
  maskcon_z = maskcon_z / maskcon_z.sum(axis=1, keepdims=True)
  self_z = np.zeros_like(maskcon_z)
  self_z[:, 0] = 1.0
  target = w * maskcon_z + (1 - w) * self_z
  logits = np.concatenate([np.sum(q * k, axis=1, keepdims=True), q @ queue.T], axis=1) / t1
  log_softmax = logits - logits.max(axis=1, keepdims=True)
  log_softmax -= np.log(np.exp(log_softmax).sum(axis=1, keepdims=True))
  return float(-np.sum(log_softmax * target, axis=1).mean())


@pytest.fixture(scope="module")
def data():
  rng = np.random.default_rng(0)
  queue = rng.normal(size=(K, D))
  queue /= np.linalg.norm(queue, axis=1, keepdims=True)
  queue_labels = rng.integers(0, C, K).astype(np.int32)
  queue_labels[::7] = -1                                  # empty rows: negatives, in no coarse class
  q = rng.normal(size=(B, D)).astype(np.float32)
  k = (q + 0.5 * rng.normal(size=(B, D))).astype(np.float32)
  labels = rng.integers(0, C, B).astype(np.int32)
  return q, k, queue.astype(np.float32), queue_labels, labels


def _loss(q, k, queue, queue_labels, labels, t1=0.1, t2=0.05, w=0.5, axis_name=None):
  return maskcon_loss(jnp.asarray(q), jnp.asarray(k), jnp.asarray(queue), jnp.asarray(queue_labels),
                      jnp.asarray(labels), t1, t2, w, axis_name=axis_name)


@pytest.mark.parametrize("t1,t2,w", [(0.1, 0.05, 0.5), (0.1, 0.05, 1.0), (0.2, 0.1, 0.8), (0.07, 0.5, 0.3)])
def test_matches_float64_official_transcription(data, t1, t2, w):
  q, k, queue, queue_labels, labels = data
  loss, metrics = _loss(q, k, queue, queue_labels, labels, t1, t2, w)
  np.testing.assert_allclose(float(loss), official_reference(q, k, queue, queue_labels, labels, t1, t2, w),
                             rtol=2e-5)
  assert 1 - w < float(metrics["self_weight"]) < 1      # some mass went to same-coarse rows
  expected_same = np.mean(labels[:, None] == queue_labels[None, :])
  np.testing.assert_allclose(float(metrics["same_coarse"]), expected_same, rtol=1e-6)


def _official_jnp(q, k, queue, queue_labels, labels, t1, t2, w):
  """The same transcription in jnp on one device, for the gradient (targets detached, as the official labels)."""
  q = q / jnp.linalg.norm(q, axis=1, keepdims=True)
  k = k / jnp.linalg.norm(k, axis=1, keepdims=True)
  coarse_z = (labels[:, None] == queue_labels[None, :]).astype(jnp.float32)
  logits_pd = (k @ queue.T / t2) * coarse_z
  pseudo = jnp.exp(logits_pd - logits_pd.max(axis=1, keepdims=True)) * coarse_z
  tmp = pseudo / pseudo.sum(axis=1, keepdims=True)
  tmp = tmp / tmp.max(axis=1, keepdims=True)
  maskcon_z = jnp.concatenate([jnp.ones((len(q), 1)), tmp], axis=1)
  maskcon_z = maskcon_z / maskcon_z.sum(axis=1, keepdims=True)
  target = jax.lax.stop_gradient(w * maskcon_z + (1 - w) * jnp.eye(1, maskcon_z.shape[1]))
  logits = jnp.concatenate([jnp.sum(q * k, axis=1, keepdims=True), q @ queue.T], axis=1) / t1
  return -jnp.mean(jnp.sum(jax.nn.log_softmax(logits, axis=1) * target, axis=1))


def test_gradient_matches_the_official_transcription(data):
  q, k, queue, queue_labels, labels = data
  ref = jax.grad(lambda a: _official_jnp(a, k, queue, queue_labels, labels, 0.1, 0.05, 0.7))(jnp.asarray(q))
  grad = jax.grad(lambda a: _loss(a, k, queue, queue_labels, labels, 0.1, 0.05, 0.7)[0])(jnp.asarray(q))
  np.testing.assert_allclose(np.asarray(grad), np.asarray(ref), rtol=1e-4, atol=1e-6)
  assert float(jnp.max(jnp.abs(grad - jax.grad(lambda a: _loss(a, k, queue, queue_labels, labels, w=0.0)[0])(
      jnp.asarray(q))))) > 1e-3   # the soft target really moves the gradient


def test_w_zero_is_moco_info_nce_value_and_gradient(data):
  q, k, queue, queue_labels, labels = data
  ref, ref_grad = jax.value_and_grad(lambda a: queue_info_nce(a, k, queue, 0.1)[0])(jnp.asarray(q))
  loss, grad = jax.value_and_grad(lambda a: _loss(a, k, queue, queue_labels, labels, w=0.0)[0])(jnp.asarray(q))
  np.testing.assert_allclose(float(loss), float(ref), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(grad), np.asarray(ref_grad), rtol=1e-5, atol=1e-7)


def test_w_one_without_same_coarse_rows_is_moco_info_nce(data):
  """With no queue row of the query's coarse class (an unlabelled query, label -1, or a class absent from the
  queue) the target is the own key alone at any w: MoCo's InfoNCE, not the official 0/0."""
  q, k, queue, queue_labels, _ = data
  ref, _ = queue_info_nce(jnp.asarray(q), jnp.asarray(k), jnp.asarray(queue), 0.1)
  for labels in (np.full(B, -1, np.int32), np.full(B, C + 5, np.int32)):
    loss, metrics = _loss(q, k, queue, queue_labels, labels, w=1.0)
    np.testing.assert_allclose(float(loss), float(ref), rtol=1e-6)
    assert float(metrics["self_weight"]) == 1.0


def test_soft_targets_follow_key_similarity_within_the_coarse_class():
  """A queue row equal to the key (same class) gets tmp = 1; the target then puts w/2 on it, more than on the key's
  own other rows of other classes (0): the loss falls when the query moves towards that row."""
  key = np.eye(4, dtype=np.float32)[:1]
  queue = np.eye(4, dtype=np.float32)                      # row 0 = the key, rows 1-3 orthogonal
  queue_labels = np.array([0, 1, 1, 1], np.int32)
  far = _loss(key + np.array([[0, 0, 0, 1]], np.float32), key, queue, queue_labels, np.zeros(1, np.int32), w=1.0)
  near = _loss(key, key, queue, queue_labels, np.zeros(1, np.int32), w=1.0)
  assert float(near[0]) < float(far[0])
  np.testing.assert_allclose(float(near[1]["self_weight"]), 0.5, rtol=1e-6)


def test_eight_devices_equal_one_value_and_gradient(data):
  q, k, queue, queue_labels, labels = data
  fn1 = lambda a: _loss(a, k, queue, queue_labels, labels)[0]
  ref, ref_grad = jax.value_and_grad(fn1)(jnp.asarray(q))

  def per_device(q, k, queue, queue_labels, labels):
    return jax.value_and_grad(lambda a: maskcon_loss(a, k, queue, queue_labels, labels, 0.1, 0.05, 0.5,
                                                     axis_name=parallel.DATA)[0])(q)

  mesh = parallel.make_mesh()
  fn = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P("data"),) * 5, out_specs=(P(), P("data"))))
  put = lambda x: jax.device_put(x, parallel.sharded(mesh))
  loss, grad = fn(*(put(x) for x in (q, k, queue, queue_labels, labels)))
  np.testing.assert_allclose(float(loss), float(ref), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(grad), np.asarray(ref_grad), rtol=1e-4, atol=1e-7)


# ----------------------------------------------------------------------------- the method


def _config(**method):
  return explicit_method_config({**dict(name="maskcon", temperature=0.1, soft_temperature=0.05, w=0.5, momentum=0.9,
                                        queue_size=128, proj_hidden=32, proj_dim=16), **method})


@pytest.fixture(scope="module")
def setup():
  c = _config()
  method = build_method(c)
  views = batch_views(c, 32)
  rng = np.random.default_rng(3)
  views["label"] = rng.integers(0, C, 32).astype(np.int32)
  views["fine_label"] = (views["label"] * 4 + rng.integers(0, 4, 32)).astype(np.int32)
  params, state = jax.jit(method.init)(jax.random.key(0), views)
  # A queue already holding labelled keys, so the soft targets are at work, and the pointer mid-queue.
  state = {**state, "queue_labels": jnp.asarray(rng.integers(0, C, 128).astype(np.int32)),
           "ptr": jnp.asarray(64, jnp.int32)}
  step1 = make_method_step(method, state, views, 1, sgd_lr=0.1)
  return method, params, state, views, step1, step1(params, state, views)


def test_method_step_eight_devices_equal_one_loss_grads_queue_and_labels(setup):
  method, params, state, views, _, one = setup
  eight = method_step(method, params, state, views, 8, sgd_lr=0.1)
  np.testing.assert_allclose(float(eight.loss), float(one.loss), rtol=1e-5)
  assert_trees_close(eight.grads, one.grads, rtol=1e-3, atol=1e-4)
  assert_trees_close(eight.params, one.params, rtol=1e-4, atol=1e-5)
  assert_trees_close(eight.state_after_update, one.state_after_update, rtol=1e-4, atol=1e-5)
  assert 0.5 < float(one.metrics["self_weight"]) < 1.0 and 0.2 < float(one.metrics["same_coarse"]) < 0.5


def test_queue_takes_this_steps_keys_and_coarse_labels_in_batch_order(setup):
  """Official _dequeue_and_enqueue(k, coarse_label): rows ptr..ptr+B <- the keys (unit vectors of the key encoder)
  and their coarse labels, every other row untouched."""
  method, _, state, views, _, one = setup
  new = one.state_after_loss
  assert int(new["ptr"]) == 96
  np.testing.assert_array_equal(np.asarray(new["queue_labels"])[64:96], views["label"])
  np.testing.assert_array_equal(np.delete(np.asarray(new["queue_labels"]), np.s_[64:96]),
                                np.delete(np.asarray(state["queue_labels"]), np.s_[64:96]))
  key_encoder = jax.shard_map(lambda v, x: method._apply(v, x)[0][1], mesh=parallel.make_mesh(1),
                              in_specs=(P(), P("data")), out_specs=P("data"))   # sync BN needs the 'data' axis
  keys = jax.jit(key_encoder)(state["ema"], views["crops"][0][1])
  keys = np.asarray(keys, np.float64)
  keys /= np.linalg.norm(keys, axis=1, keepdims=True)
  np.testing.assert_allclose(np.asarray(new["queue"])[64:96], keys, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(np.delete(np.asarray(new["queue"]), np.s_[64:96], 0),
                                np.delete(np.asarray(state["queue"]), np.s_[64:96], 0))


def test_key_encoder_is_the_momentum_ema_of_the_query_encoder(setup):
  """theta_k <- m theta_k + (1 - m) theta_q (official _momentum_update_key_encoder, m = 0.9 here) with the
  SGD-updated theta_q; the key encoder's BN statistics are its own forward's."""
  method, _, state, _, _, one = setup
  expected = jax.tree.map(lambda e, p: 0.9 * np.asarray(e, np.float64) + 0.1 * np.asarray(p, np.float64),
                          state["ema"]["params"], one.params)
  assert_trees_close(one.state_after_update["ema"]["params"], expected, rtol=1e-6, atol=1e-7)
  assert_trees_close(one.state_after_update["ema"]["batch_stats"], one.state_after_loss["ema"]["batch_stats"], 0, 0)


def test_loss_reads_coarse_labels_never_fine_labels(setup):
  _, params, state, views, step1, one = setup
  other_fine = step1(params, state, {**views, "fine_label": views["fine_label"][::-1] * 7 + 1})
  assert float(other_fine.loss) == float(one.loss)
  assert_trees_close(other_fine.grads, one.grads, rtol=0, atol=0)
  other_coarse = step1(params, state, {**views, "label": (views["label"] + 1) % C})
  assert abs(float(other_coarse.loss) - float(one.loss)) > 1e-4


def test_key_and_query_groups_feed_key_and_query():
  """Two one-view groups named 'key' and 'query' (the official weak key / strong query) are read by name."""
  from cl_jax.data.augment import group
  c = _config()
  c.augment = {"key": group(size=16, views=1, jitter_p=0.0, grayscale_p=0.0, blur_p=(0.0,)),
               "query": group(size=16, views=1, blur_p=(0.0,))}
  method = build_method(c)
  key_crops, query_crops = np.zeros((1, 4, 16, 16, 3)), np.ones((1, 4, 16, 16, 3))   # make_views' sorted order
  q, k = method._query_key({"crops": (key_crops, query_crops)})
  assert np.all(q == 1) and np.all(k == 0)


def _trace_loss(method, views):
  params, state = jax.eval_shape(method.init, jax.random.key(0), views)
  return jax.eval_shape(jax.shard_map(lambda p, s, v: method.loss(p, s, v, jax.random.key(0), 0)[0],
                                      mesh=parallel.make_mesh(1), in_specs=(P(), P(), P("data")), out_specs=P()),
                        params, state, views)


def test_missing_labels_one_view_and_queue_size_are_one_line_errors():
  c = _config()
  views = batch_views(c, 16)
  del views["label"]
  one_line_error(lambda: _trace_loss(build_method(c), views), "no 'label'", "coarse_labels=shapes")
  c = explicit_method_config(dict(name="maskcon", queue_size=128, proj_hidden=32, proj_dim=16), views=1)
  one_line_error(lambda: _trace_loss(build_method(c), batch_views(c, 16)), "2 views", "augment['global'].views=2")
  c = _config(queue_size=40)
  one_line_error(lambda: _trace_loss(build_method(c), batch_views(c, 16)), "queue_size 40",
                 "divisible by the global batch 16")
