"""MaskCLIP: the masked distillation losses against float64 NumPy (value and gradient) and on 8 devices vs 1;
block-wise and token masks (ratio, blocks, per-example keys independent of the device count); the ViT / text
tower mask inputs; one method step with plain SGD and the EMA teacher on 8 devices vs 1; one-line config errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from cl_jax import parallel
from cl_jax.data import masking, shapes
from cl_jax.losses import masked_distill
from cl_jax.methods.common import cosine_momentum
from cl_jax.models.text import TextTransformer
from cl_jax.models.vit import ViT
from tests.harness import assert_trees_close, build_method, make_method_step, one_line_error, tiny_method_config

# ----------------------------------------------------------------------------- float64 references


def softmax64(x):
  x = np.asarray(x, np.float64)
  e = np.exp(x - x.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def msd_reference(student, teacher, mask, center, tau_s, tau_t):
  """L_MSD written from its definition one example and position at a time, float64, with its gradient in the
  student: d/ds of -sum_k q_k log softmax(s / tau_s)_k is (softmax(s / tau_s) - q) / tau_s."""
  b, n, _ = student.shape
  loss, grad = 0.0, np.zeros(student.shape, np.float64)
  for i in range(b):
    masked = [j for j in range(n) if mask[i, j]]
    for j in masked:
      q = softmax64((teacher[i, j] - center) / tau_t)
      p = softmax64(student[i, j] / tau_s)
      loss += -np.sum(q * np.log(p)) / len(masked) / b
      grad[i, j] = (p - q) / tau_s / len(masked) / b
  return loss, grad


def feature_reference(student, teacher, mask):
  b, n, _ = student.shape
  loss = 0.0
  for i in range(b):
    masked = [j for j in range(n) if mask[i, j]]
    for j in masked:
      s = student[i, j].astype(np.float64) / np.linalg.norm(student[i, j].astype(np.float64))
      t = teacher[i, j].astype(np.float64) / np.linalg.norm(teacher[i, j].astype(np.float64))
      loss += np.sum((s - t) ** 2) / len(masked) / b
  return loss


@pytest.fixture(scope="module")
def tokens_and_mask():
  rng = np.random.default_rng(0)
  student = (rng.normal(size=(16, 6, 10)) * 2).astype(np.float32)
  teacher = (rng.normal(size=(16, 6, 10)) * 2).astype(np.float32)
  mask = rng.random((16, 6)) < 0.4
  mask[3] = False                       # an example with nothing masked contributes 0
  center = (rng.normal(size=(10,)) * 0.3).astype(np.float32)
  return student, teacher, mask, center


def test_msd_loss_and_gradient_match_float64_reference(tokens_and_mask):
  student, teacher, mask, center = tokens_and_mask
  f = lambda s: masked_distill.masked_distillation_loss(s, jnp.asarray(teacher), jnp.asarray(mask),
                                                        jnp.asarray(center), 0.1, 0.04)
  (loss, metrics), grad = jax.value_and_grad(f, has_aux=True)(jnp.asarray(student))
  ref_loss, ref_grad = msd_reference(student, teacher, mask, center, 0.1, 0.04)
  np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(grad), ref_grad, rtol=1e-4, atol=1e-7)
  assert float(metrics["kl"]) >= 0 and float(metrics["teacher_entropy"]) > 0
  # No gradient into the teacher.
  g_t = jax.grad(lambda t: masked_distill.masked_distillation_loss(
      jnp.asarray(student), t, jnp.asarray(mask), jnp.asarray(center), 0.1, 0.04)[0])(jnp.asarray(teacher))
  assert float(jnp.abs(g_t).max()) == 0.0


def test_feature_loss_and_centre_match_float64_reference(tokens_and_mask):
  student, teacher, mask, center = tokens_and_mask
  loss, metrics = masked_distill.masked_feature_loss(jnp.asarray(student), jnp.asarray(teacher), jnp.asarray(mask))
  np.testing.assert_allclose(float(loss), feature_reference(student, teacher, mask), rtol=1e-5)
  valid = mask.copy()
  valid[:, 0] = True
  new = masked_distill.update_masked_center(jnp.asarray(center), jnp.asarray(teacher), jnp.asarray(valid), 0.9)
  ref = 0.9 * center.astype(np.float64) + 0.1 * teacher.astype(np.float64)[valid].mean(axis=0)
  np.testing.assert_allclose(np.asarray(new), ref, rtol=1e-5, atol=1e-7)


def test_losses_on_eight_devices_equal_one(tokens_and_mask):
  student, teacher, mask, center = tokens_and_mask

  def losses(s, t, m, c, axis_name=None):
    ce, _ = masked_distill.masked_distillation_loss(s, t, m, c, 0.1, 0.04, axis_name=axis_name)
    l2, _ = masked_distill.masked_feature_loss(s, t, m, axis_name=axis_name)
    return ce + 0.5 * l2, masked_distill.update_masked_center(c, t, m, 0.9, axis_name=axis_name)

  args = (jnp.asarray(student), jnp.asarray(teacher), jnp.asarray(mask), jnp.asarray(center))
  (ref, ref_c), ref_g = jax.value_and_grad(losses, has_aux=True)(*args)
  mesh = parallel.make_mesh()
  assert mesh.size == 8
  rows = P(parallel.DATA)
  fn = jax.jit(jax.shard_map(lambda s, t, m, c: jax.value_and_grad(losses, has_aux=True)(s, t, m, c, parallel.DATA),
                             mesh=mesh, in_specs=(rows, rows, rows, P()), out_specs=((P(), P()), rows)))
  put = lambda x, spec: jax.device_put(x, NamedSharding(mesh, spec))
  (loss, c8), g8 = fn(*(put(x, rows) for x in args[:3]), put(args[3], P()))
  np.testing.assert_allclose(float(loss), float(ref), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(c8), np.asarray(ref_c), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(np.asarray(g8), np.asarray(ref_g), rtol=1e-4, atol=1e-7)


# ----------------------------------------------------------------------------- masks


def _has_masked_neighbour(mask, grid):
  m = np.asarray(mask).reshape(grid)
  p = np.pad(m, 1)
  return (p[:-2, 1:-1] | p[2:, 1:-1] | p[1:-1, :-2] | p[1:-1, 2:])[m]


def test_block_masks_ratio_and_blocks():
  grid = (14, 14)
  masks = np.asarray(jax.jit(lambda k: masking.block_masks(k, 256, grid, 0.4, 16, axis_name=None))(
      jax.random.key(0)))
  counts = masks.sum(axis=1)
  target = masking.num_masked_patches(grid, 0.4)
  assert target == 78
  assert counts.max() <= target and counts.mean() >= 0.95 * target, (counts.min(), counts.mean())
  # Blocks (every block is >= 16 patches with aspect in [0.3, 3.3]: at least 1 x 4), not scattered patches.
  assert all(_has_masked_neighbour(m, grid).all() for m in masks)
  rng = np.random.default_rng(0)
  scattered = np.zeros(196, bool)
  scattered[rng.permutation(196)[:78]] = True
  assert not _has_masked_neighbour(scattered, grid).all()
  # Every patch is masked sometimes (corners least, as uniform block positions give) and masks differ per example.
  assert masks.mean(axis=0).min() > 0.02 and len({m.tobytes() for m in masks}) >= 250
  # A tiny grid: blocks capped at the target, still about the ratio.
  small = np.asarray(masking.block_masks(jax.random.key(1), 64, (4, 4), 0.4, 16, axis_name=None))
  assert small.sum(axis=1).max() <= 6 and small.sum(axis=1).mean() >= 5


def test_token_masks_pick_only_content_tokens():
  rng = np.random.default_rng(0)
  lengths = rng.integers(0, 20, size=32)
  maskable = np.arange(24)[None, :] < lengths[:, None]
  masks = np.asarray(masking.token_masks(jax.random.key(0), jnp.asarray(maskable), 0.15, axis_name=None))
  assert not (masks & ~maskable).any()
  expected = np.where(lengths > 0, np.maximum(1, np.round(0.15 * lengths)), 0)
  np.testing.assert_array_equal(masks.sum(axis=1), expected)


@pytest.mark.parametrize("num_devices", [8, 2])
def test_masks_do_not_depend_on_the_device_count(num_devices):
  maskable = jnp.asarray(np.arange(12)[None, :] < np.arange(16)[:, None] % 11 + 1)

  def masks(n):
    mesh = parallel.make_mesh(n)
    fn = jax.jit(jax.shard_map(
        lambda k, m: (masking.block_masks(k, m.shape[0], (6, 6), 0.4, 4), masking.token_masks(k, m, 0.3)),
        mesh=mesh, in_specs=(P(), P(parallel.DATA)), out_specs=(P(parallel.DATA), P(parallel.DATA))))
    return [np.asarray(x) for x in fn(jax.random.key(3), jax.device_put(maskable, NamedSharding(mesh, P("data"))))]

  one, many = masks(1), masks(num_devices)
  np.testing.assert_array_equal(many[0], one[0])
  np.testing.assert_array_equal(many[1], one[1])
  assert len({r.tobytes() for r in one[0]}) == 16   # per-example, not one mask for the batch


# ----------------------------------------------------------------------------- towers with a mask input


def test_vit_and_text_tower_mask_inputs_keep_the_old_parameters():
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
  vit = ViT(dim=16, depth=1, num_heads=2, patch_size=4)
  plain = vit.init(jax.random.key(1), x, train=False)
  masked_vars = vit.init(jax.random.key(1), x, train=False, mask=jnp.zeros((2, 16), bool))
  assert "mask_token" not in plain["params"] and "mask_token" in masked_vars["params"]
  same = {k: v for k, v in masked_vars["params"].items() if k != "mask_token"}
  assert jax.tree.structure(same) == jax.tree.structure(plain["params"])
  full = vit.apply(masked_vars, x, train=False, return_tokens=True)
  none = vit.apply(masked_vars, x, train=False, return_tokens=True, mask=jnp.zeros((2, 16), bool))
  np.testing.assert_allclose(np.asarray(none["patches"]), np.asarray(full["patches"]), rtol=1e-6)
  some = vit.apply(masked_vars, x, train=False, return_tokens=True, mask=jnp.arange(16)[None].repeat(2, 0) < 5)
  assert float(jnp.abs(some["patches"] - full["patches"]).max()) > 1e-3
  # A masked patch's input is the mask token: its pixels are invisible to the encoder.
  mask = jnp.arange(16)[None].repeat(2, 0) < 5
  x2 = x.at[:, :4, :4].add(3.0)   # patch 0 (masked)
  out2 = vit.apply(masked_vars, x2, train=False, return_tokens=True, mask=mask)
  np.testing.assert_allclose(np.asarray(out2["patches"]), np.asarray(some["patches"]), rtol=1e-6, atol=1e-6)

  tokens = jnp.asarray([[5, 3, 4, 9, 0, 0], [5, 2, 9, 0, 0, 0]])
  text = TextTransformer(vocab_size=10, context_length=6, width=16, depth=1, num_heads=2, embed_dim=8)
  t_plain = text.init(jax.random.key(2), tokens)
  t_vars = text.init(jax.random.key(2), tokens, mask=jnp.zeros(tokens.shape, bool))
  assert "mask_embedding" in t_vars["params"] and "mask_embedding" not in t_plain["params"]
  np.testing.assert_allclose(np.asarray(text.apply(t_vars, tokens)),
                             np.asarray(text.apply(t_vars, tokens, mask=jnp.zeros(tokens.shape, bool))), rtol=1e-6)
  tm = jnp.asarray([[0, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]], bool)
  a = text.apply(t_vars, tokens, mask=tm)
  b = text.apply(t_vars, tokens.at[0, 1].set(7), mask=tm)   # a masked word's id is invisible
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)


# ----------------------------------------------------------------------------- the method


def maskclip_config(**overrides):
  """The quick start's settings, tiny: vit_micro on 8 px patches of 32 px images (a 4 x 4 grid), 1-layer text;
  the softmax ('ce') distillation, whose head and centre the fixture covers (the quick start ships 'l2')."""
  return tiny_method_config("maskclip", **{"method.msd_loss": "ce",
      "data.num_train": 64, "data.num_test": 64, "batch_size": 16, "eval.batch_size": 32,
      "model.patch_size": 8, "text_model.width": 32, "text_model.depth": 1, "text_model.heads": 2,
      "method.embed_dim": 16, "method.head_dim": 32, "method.mask_min_patches": 2, "method.text_msd": True,
      "data.text.context_length": 20, **overrides})


def initialised(config, rng):
  """The method, its parameters and state on 16 noise images with the shapes' captions; the teacher differs
  from the student (x 0.95) so the step covers its use."""
  method = build_method(config, total_steps=10)
  data = shapes.generate(16, split="train", seed=0, image_size=32)
  images = rng.normal(size=(1, 16, 32, 32, 3)).astype(np.float32)
  views = {"crops": (images,), "tokens": method.tokenizer.encode(list(data["caption"]))}
  params, state = jax.jit(method.init)(jax.random.key(0), views)
  state["ema"]["params"] = jax.tree.map(lambda p: p * 0.95, state["ema"]["params"])
  return method, params, state, views


@pytest.fixture(scope="module")
def method_and_views():
  rng = np.random.default_rng(0)
  method, params, state, views = initialised(maskclip_config(), rng)
  # Non-zero centres, so the step covers their use.
  state["center"] = jnp.asarray(rng.normal(size=state["center"].shape).astype(np.float32)) * 0.1
  step1 = make_method_step(method, state, views, 1, seed=1, sgd_lr=0.1)   # compiled once for both tests
  return method, params, state, views, step1


def test_method_step_with_sgd_on_eight_devices_equals_one(method_and_views):
  method, params, state, views, step1 = method_and_views
  one = step1(params, state, views, 3)
  eight = make_method_step(method, state, views, 8, seed=1, sgd_lr=0.1)(params, state, views, 3)
  for name in ("clip_loss", "msd_loss", "text_msd_loss", "mask_ratio"):
    assert np.isfinite(float(one.metrics[name])) and float(one.metrics[name]) > 0, name
  np.testing.assert_allclose(float(eight.loss), float(one.loss), rtol=1e-5)
  assert_trees_close(eight.grads, one.grads, rtol=2e-4, atol=2e-6)
  assert_trees_close(eight.params, one.params, rtol=1e-5, atol=1e-5)
  assert_trees_close(eight.state_after_update, one.state_after_update, rtol=1e-5, atol=1e-5)
  # Every distillation parameter and both mask embeddings get a gradient.
  assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(one.grads["msd"]))
  assert float(jnp.abs(one.grads["model"]["backbone"]["mask_token"]).max()) > 0
  assert float(jnp.abs(one.grads["model"]["text"]["mask_embedding"]).max()) > 0
  # The teacher moved as the mean teacher: m * teacher + (1 - m) * the updated student, m cosine at step 3.
  m = float(cosine_momentum(method.hp.momentum, 3, method.total_steps, method.hp.final_momentum))
  online = {"model": one.params["model"], "msd": one.params["msd"]}
  expected = jax.tree.map(lambda t, s: m * t + (1 - m) * s, state["ema"]["params"], online)
  assert_trees_close(one.state_after_update["ema"]["params"], expected, rtol=1e-5, atol=1e-6)
  assert float(jnp.abs(one.state_after_loss["center"] - state["center"]).max()) > 1e-4


def test_l2_distillation_step_on_eight_devices_equals_one():
  """The quick start's form: cosine regression of the teacher's tokens, no head and no centre."""
  method, params, state, views = initialised(
      maskclip_config(**{"method.msd_loss": "l2", "method.text_msd": False}), np.random.default_rng(1))
  one = make_method_step(method, state, views, 1, seed=1, sgd_lr=0.1)(params, state, views, 3)
  eight = make_method_step(method, state, views, 8, seed=1, sgd_lr=0.1)(params, state, views, 3)
  assert float(one.metrics["msd_loss"]) > 0
  np.testing.assert_allclose(float(eight.loss), float(one.loss), rtol=1e-5)
  assert_trees_close(eight.grads, one.grads, rtol=2e-4, atol=5e-5)   # gradients ~1; 8x scaling shows
  assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(one.grads["msd"]))


def test_loss_decreases_with_sgd(method_and_views):
  _, params, state, views, step1 = method_and_views
  losses = []
  for i in range(5):
    out = step1(params, state, views, i)
    params, state = out.params, out.state_after_update
    losses.append(float(out.loss))
  assert np.isfinite(losses).all() and losses[-1] < losses[0], losses


def test_bad_configs_are_one_line_errors():
  one_line_error(lambda: build_method(maskclip_config(**{"model": dict(name="resnet_tiny")})),
                 "needs a ViT image tower", "config.model.name='resnet_tiny'")
  one_line_error(lambda: build_method(maskclip_config(**{"method.final_momentum": 0.5})),
                 "method.final_momentum=0.5")
  one_line_error(lambda: build_method(maskclip_config(**{"method.msd_loss": "mse"})), "method.msd_loss='mse'")
  one_line_error(lambda: build_method(maskclip_config(**{"method.mask_ratio": 1.0})), "method.mask_ratio=1.0")
  one_line_error(lambda: build_method(maskclip_config(**{"method.mask_ratoi": 0.5})), "did you mean mask_ratio?")
