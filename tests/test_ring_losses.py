"""Ring-chunked contrastive losses (cl_jax/losses/ring.py): value, gradient and metrics equal the all-gather losses
on 8 fake devices and on one device, NT-Xent against a float64 NumPy reference (value and finite-difference
gradient), SimCLR and CLIP method steps with contrastive_impl='ring' equal 'gather', the config's one-line error,
and the compiled programs' temp memory (ring below gather and flat in the device count)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from cl_jax import bench, parallel
from cl_jax.data import augment, shapes
from cl_jax.losses import clip, contrastive, infonce, ring, siglip, unicl
from tests import harness

B, D = 32, 8   # 4 rows per device on 8 devices


@pytest.fixture(scope="module")
def data():
  rng = np.random.default_rng(0)
  a = rng.normal(size=(B, D)).astype(np.float32)
  b = (a + 0.7 * rng.normal(size=(B, D))).astype(np.float32)   # correlated, so some positives win
  labels = rng.choice([-1, -1, 0, 1, 2, 3], size=B).astype(np.int32)   # UniCL: captions and 4 classes
  return a, b, labels


# ----------------------------------------------------------------------------- NT-Xent against float64 NumPy


def nt_xent_np(z1: np.ndarray, z2: np.ndarray, tau: float) -> float:
  """SimCLR Eq. 1 in float64, vectorised: l(i, j) = -log exp(s_ij / tau) / sum_{k != i} exp(s_ik / tau)."""
  z = np.concatenate([z1, z2]).astype(np.float64)
  z /= np.linalg.norm(z, axis=1, keepdims=True)
  n = len(z1)
  s = z @ z.T / tau
  np.fill_diagonal(s, -np.inf)
  m = s.max(axis=1, keepdims=True)
  lse = m[:, 0] + np.log(np.exp(s - m).sum(axis=1))
  pos = s[np.arange(2 * n), (np.arange(2 * n) + n) % (2 * n)]
  return float(np.mean(lse - pos))


def nt_xent_np_grad(z1: np.ndarray, z2: np.ndarray, tau: float, eps: float = 1e-6) -> tuple[np.ndarray, ...]:
  """Central finite differences of nt_xent_np in float64."""
  x = [z1.astype(np.float64), z2.astype(np.float64)]
  grads = [np.zeros_like(v) for v in x]
  for which in range(2):
    for idx in np.ndindex(x[which].shape):
      up, down = [v.copy() for v in x], [v.copy() for v in x]
      up[which][idx] += eps
      down[which][idx] -= eps
      grads[which][idx] = (nt_xent_np(*up, tau) - nt_xent_np(*down, tau)) / (2 * eps)
  return tuple(grads)


# ----------------------------------------------------------------------------- the losses, gather vs ring

TAU = 0.2
LOSSES = {
    "nt_xent": lambda a, b, l, p, ax, impl: contrastive.nt_xent(a, b, TAU, axis_name=ax, impl=impl),
    "clip": lambda a, b, l, p, ax, impl: clip.clip_loss(a, b, p["s"], axis_name=ax, impl=impl),
    "unicl": lambda a, b, l, p, ax, impl: unicl.unicl_loss(a, b, l, p["s"], axis_name=ax, impl=impl),
    "moco_v3": lambda a, b, l, p, ax, impl: infonce.moco_v3_ctr(a, b, TAU, axis_name=ax, impl=impl),
    # SigLIP has only its ring (with axis_name); its one-device loss is the reference.
    "siglip": lambda a, b, l, p, ax, impl: siglip.siglip_loss(a, b, p["s"], p["b"], axis_name=ax),
}
PARAMS = {"s": jnp.float32(1.7), "b": jnp.float32(-3.0)}


def sharded_value_grad_metrics(name, impl, a, b, labels, params=PARAMS):
  """(loss, grads wrt (a, b, params), metrics) of LOSSES[name] with `impl` inside shard_map on 8 devices."""
  mesh = parallel.make_mesh()
  assert mesh.size == 8
  fn = LOSSES[name]

  def per_device(a, b, l, p):
    (loss, metrics), grads = jax.value_and_grad(lambda a, b, p: fn(a, b, l, p, parallel.DATA, impl),
                                                argnums=(0, 1, 2), has_aux=True)(a, b, p)
    return loss, grads, metrics

  d = P(parallel.DATA)
  step = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(d, d, d, P()), out_specs=(P(), (d, d, P()), P())))
  put = lambda x: jax.device_put(x, parallel.sharded(mesh))
  return step(put(a), put(b), put(labels), jax.device_put(params, parallel.replicated(mesh)))


def one_device(name, impl, a, b, labels, params=PARAMS):
  fn = LOSSES[name]
  (loss, metrics), grads = jax.jit(jax.value_and_grad(lambda a, b, p: fn(a, b, labels, p, None, impl),
                                                      argnums=(0, 1, 2), has_aux=True))(a, b, params)
  return loss, grads, metrics


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_ring_equals_gather_and_one_device(data, name):
  """Value, gradient (both embeddings and the learned scalars) and metrics: ring on 8 devices == gather on 8
  devices == the one-device loss over the global batch; ring on one device too."""
  a, b, labels = data
  ref = one_device(name, "gather", a, b, labels)
  rings = sharded_value_grad_metrics(name, "ring", a, b, labels)
  others = {"one device ring": one_device(name, "ring", a, b, labels)}
  if name != "siglip":
    others["8 devices gather"] = sharded_value_grad_metrics(name, "gather", a, b, labels)
  for label, (loss, grads, metrics) in {"8 devices ring": rings, **others}.items():
    np.testing.assert_allclose(float(loss), float(ref[0]), rtol=2e-6, err_msg=label)
    harness.assert_trees_close(grads, ref[1], rtol=2e-5, atol=2e-7)
    harness.assert_trees_close(metrics, ref[2], rtol=1e-6, atol=0)
  if name in ("clip", "unicl", "siglip"):
    assert abs(float(ref[1][2]["s"])) > 1e-4   # the scale is learned: its gradient is checked, not zero
  if name == "moco_v3":
    assert not np.any(np.asarray(rings[1][1]))   # keys: stop_gradient
  if name == "nt_xent":
    assert 0 < float(ref[2]["contrast_acc"]) < 1


def test_nt_xent_ring_matches_float64_numpy(data):
  """Independent of the gathered loss: value and finite-difference gradient of SimCLR Eq. 1 in float64."""
  a, b, labels = data
  loss, grads, _ = sharded_value_grad_metrics("nt_xent", "ring", a, b, labels)
  np.testing.assert_allclose(float(loss), nt_xent_np(a, b, TAU), rtol=1e-5)
  for g, r in zip(grads[:2], nt_xent_np_grad(a, b, TAU)):
    np.testing.assert_allclose(np.asarray(g), r, rtol=1e-3, atol=1e-5)


def test_ring_online_logsumexp_is_stable_at_large_logits(data):
  """Logits of ~100 (CLIP's maximal scale; tau = 0.01 here): the online log-sum-exp neither overflows nor loses the
  answer of the stable gathered form."""
  a, b, labels = data
  ring_loss = sharded_value_grad_metrics("clip", "ring", a, b, labels, {"s": jnp.float32(4.6), "b": PARAMS["b"]})
  ref = one_device("clip", "gather", a, b, labels, {"s": jnp.float32(4.6), "b": PARAMS["b"]})
  assert np.isfinite(float(ring_loss[0]))
  np.testing.assert_allclose(float(ring_loss[0]), float(ref[0]), rtol=2e-6)
  harness.assert_trees_close(ring_loss[1], ref[1], rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("name", ["nt_xent", "clip"])
def test_ring_program_permutes_and_never_gathers(data, name):
  """The ring's compiled loss has collective-permutes and no all-gather (the gathered one has an all-gather)."""
  a, b, labels = data
  mesh = parallel.make_mesh()
  fn = LOSSES[name]
  texts = {}
  for impl in ("gather", "ring"):
    per_device = jax.value_and_grad(lambda a, b, l, p: fn(a, b, l, p, parallel.DATA, impl)[0], argnums=(0, 1))
    d = P(parallel.DATA)
    step = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(d, d, d, P()), out_specs=(P(), (d, d))))
    put = lambda x: jax.device_put(x, parallel.sharded(mesh))
    texts[impl] = step.lower(put(a), put(b), put(labels), PARAMS).compile().as_text()
  assert "all-gather" in texts["gather"]
  assert "all-gather" not in texts["ring"] and "collective-permute" in texts["ring"]


def test_unknown_impl_is_a_one_line_error(data):
  a, b, _ = data
  harness.one_line_error(lambda: contrastive.nt_xent(a, b, 0.1, impl="rings"), "'rings'", "gather, ring")
  config = harness.tiny_config()
  config.parallel = {"contrastive_impl": "allgather"}
  harness.one_line_error(lambda: harness.build_method(config), "config.parallel.contrastive_impl", "gather, ring")
  config.parallel = {"contrastive_impl": "ring"}
  assert harness.build_method(config).impl == "ring"
  assert ring.contrastive_impl(harness.tiny_config()) == "gather"   # the default


# ----------------------------------------------------------------------------- method steps, gather vs ring


def _with_impl(config, impl):
  c = config.copy_and_resolve_references()
  c.parallel = {"contrastive_impl": impl}
  return c


def _step_both_ways(config, views, init_views):
  """One plain-SGD method step with each impl from the same params; returns {impl: StepOut}."""
  methods = {impl: harness.build_method(_with_impl(config, impl)) for impl in ("gather", "ring")}
  params, state = jax.jit(methods["gather"].init)(jax.random.key(0), init_views)
  return {impl: harness.method_step(m, params, state, views, sgd_lr=0.5) for impl, m in methods.items()}


def _assert_same_step(outs):
  g, r = outs["gather"], outs["ring"]
  np.testing.assert_allclose(float(r.loss), float(g.loss), rtol=1e-6)
  harness.assert_trees_close(r.grads, g.grads, rtol=1e-4, atol=1e-6)
  harness.assert_trees_close(r.params, g.params, rtol=1e-5, atol=1e-6)
  assert any(np.abs(np.asarray(x)).max() > 0 for x in jax.tree.leaves(g.grads))


def test_simclr_step_ring_equals_gather():
  config = harness.tiny_method_config("simclr", **{"model": dict(name="vit_micro", patch_size=8),
                                                   "method.proj_hidden": 32, "method.proj_dim": 16})
  rng = np.random.default_rng(0)
  crops = rng.normal(size=(2, config.batch_size, 16, 16, 3)).astype(np.float32)
  outs = _step_both_ways(config, {"crops": (crops,)}, {"crops": (crops,)})
  _assert_same_step(outs)
  np.testing.assert_allclose(float(outs["ring"].metrics["contrast_acc"]), float(outs["gather"].metrics["contrast_acc"]))


def test_clip_step_ring_equals_gather():
  config = harness.tiny_method_config("clip", **{
      "batch_size": 8, "model": dict(name="vit_micro", patch_size=8), "text_model.width": 16,
      "text_model.depth": 1, "text_model.heads": 1, "method.embed_dim": 16, "data.text.context_length": 8})
  data = shapes.generate(8, split="train", seed=0, image_size=16)   # one pair per device: 1 x 1 blocks
  tokens = harness.build_method(config).tokenizer.encode(list(data["caption"]))
  images = jax.jit(augment.eval_preprocess, static_argnums=1)(data["image"], 16)[None]
  views = {"crops": (np.asarray(images),), "tokens": np.asarray(tokens)}
  outs = _step_both_ways(config, views, views)
  _assert_same_step(outs)
  assert abs(float(outs["ring"].grads["logit_scale"])) > 0


# ----------------------------------------------------------------------------- compiled temp memory


def test_ring_temp_memory_is_below_gather_and_flat_in_the_device_count():
  """At a fixed 64 examples per device (D = 32), 2 vs 8 devices (sub-meshes): the gathered NT-Xent's temp bytes grow
  with the global batch, the ring's stay the same and are below the gathered ones (memory_analysis only)."""
  temp = {(impl, n): bench.loss_memory_bytes("nt_xent", impl, n, 64, 32) for impl in ("gather", "ring")
          for n in (2, 8)}
  assert temp["ring", 8] < temp["gather", 8]
  assert temp["ring", 8] <= 1.1 * temp["ring", 2]
  assert temp["gather", 8] > 2 * temp["gather", 2]
  assert temp["ring", 8] - temp["ring", 2] < (temp["gather", 8] - temp["gather", 2]) / 10
