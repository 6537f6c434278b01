"""Optimizers and schedules from config, each checked against an independent numpy computation."""
import math

import jax
import ml_collections
import numpy as np
import optax
import pytest

from cl_jax.optim import build_optimizer


def make_cfg(**kw):
  return ml_collections.ConfigDict(kw)


def build(total_steps=100, steps_per_epoch=10, batch_size=256, **kw):
  return build_optimizer(make_cfg(**kw), total_steps=total_steps, steps_per_epoch=steps_per_epoch,
                         batch_size=batch_size)


@pytest.fixture(scope="module")
def tree():
  """Tiny params and two gradient trees: a 2-D kernel and 1-D BatchNorm scale/bias."""
  rng = np.random.default_rng(0)
  mk = lambda: {"conv": {"kernel": rng.normal(size=(3, 4)).astype(np.float32)},
                "bn": {"scale": rng.normal(size=(4,)).astype(np.float32),
                       "bias": rng.normal(size=(4,)).astype(np.float32)}}
  return mk(), mk(), mk()


def run(tx, params, grads_list):
  """Apply `tx` to a sequence of gradients; return the list of updates as numpy trees."""
  state, out = tx.init(params), []
  for g in grads_list:
    upd, state = tx.update(g, state, params)
    params = optax.apply_updates(params, upd)
    out.append(jax.tree.map(np.asarray, upd))
  return out


def assert_tree_close(a, b, rtol=1e-5, atol=1e-7):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)


def np_schedule(step, peak, warmup, total, end=0.0):
  step = np.asarray(step, np.float64)
  cos = end + (peak - end) * 0.5 * (1 + np.cos(np.pi * np.clip((step - warmup) / (total - warmup), 0, 1)))
  return np.where(step < warmup, peak * step / max(warmup, 1), cos)


@pytest.mark.parametrize("scaling,lr,base,batch,peak", [
    ("linear", 0.3, 256, 1024, 1.2),              # SimCLR: 0.3 x B/256
    ("sqrt", 0.075, 1, 4096, 0.075 * 64),         # SimCLR: 0.075 x sqrt(B)
    ("none", 0.5, 256, 4096, 0.5)])
def test_schedule_values(scaling, lr, base, batch, peak):
  _, sched = build(total_steps=110, steps_per_epoch=10, batch_size=batch, name="sgd", lr=lr,
                   lr_scaling=scaling, base_batch=base, warmup_epochs=1.0, end_lr=0.01)
  steps = np.arange(0, 111)
  got = np.asarray(jax.vmap(sched)(steps))
  np.testing.assert_allclose(got, np_schedule(steps, peak, 10, 110, 0.01), rtol=1e-5, atol=1e-6)
  assert got[0] == 0.0 and got[5] == pytest.approx(peak / 2, rel=1e-6)       # warmup ramp
  assert got[10] == pytest.approx(peak, rel=1e-6)                            # peak = scaled lr
  assert got[60] == pytest.approx((peak + 0.01) / 2, rel=1e-5)               # cosine midpoint
  assert got[110] == pytest.approx(0.01, rel=1e-5)                           # end value


def test_constant_schedule_and_warmup_steps_win():
  _, sched = build(total_steps=50, name="sgd", lr=0.2, schedule="constant", warmup_steps=4, warmup_epochs=3.0)
  np.testing.assert_allclose([float(sched(s)) for s in (0, 2, 4, 30, 50)], [0, 0.1, 0.2, 0.2, 0.2], rtol=1e-6)


def np_lars(params, grads_list, lr, wd, eta, momentum, nesterov, exclude):
  """The SimCLR LARSOptimizer (tf/lars_optimizer.py, classic_momentum=True) in numpy float64."""
  params = jax.tree.map(lambda x: x.astype(np.float64), params)
  vel = jax.tree.map(np.zeros_like, params)
  out = []
  for grads in grads_list:
    def step(w, g, v):
      use = not exclude or w.ndim > 1          # exclude_from_weight_decay / exclude_from_layer_adaptation
      g = g + wd * w if use else g
      tr = eta * np.linalg.norm(w) / np.linalg.norm(g) if use else 1.0
      v_new = momentum * v + lr * tr * g
      upd = momentum * v_new + lr * tr * g if nesterov else v_new
      return -upd, v_new
    res = jax.tree.map(step, params, grads, vel)
    upd = jax.tree.map(lambda r: r[0], res, is_leaf=lambda x: isinstance(x, tuple))
    vel = jax.tree.map(lambda r: r[1], res, is_leaf=lambda x: isinstance(x, tuple))
    params = jax.tree.map(np.add, params, upd)
    out.append(upd)
  return out


@pytest.mark.parametrize("exclude,nesterov", [(True, False), (True, True), (False, False)])
def test_lars_matches_simclr(tree, exclude, nesterov):
  params, g1, g2 = tree
  tx, _ = build(name="lars", lr=0.5, schedule="constant", weight_decay=0.1, momentum=0.9,
                nesterov=nesterov, exclude_bias_and_norm=exclude)
  got = run(tx, params, [g1, g2])
  want = np_lars(params, [g1, g2], lr=0.5, wd=0.1, eta=0.001, momentum=0.9, nesterov=nesterov, exclude=exclude)
  assert_tree_close(got, want)
  if exclude and not nesterov:  # 1-D params: plain momentum SGD, no decay, no trust ratio.
    np.testing.assert_allclose(got[0]["bn"]["bias"], -0.5 * g1["bn"]["bias"], rtol=1e-6)


@pytest.mark.parametrize("exclude", [True, False])
def test_adamw_decay_mask(tree, exclude):
  params, g1, _ = tree
  tx, _ = build(name="adamw", lr=0.1, schedule="constant", weight_decay=0.5, exclude_bias_and_norm=exclude)
  (got,) = run(tx, params, [g1])
  # First Adam step: m_hat = g, v_hat = g^2; decoupled decay lr*wd*w on decayed params.
  want = jax.tree.map(lambda w, g: -0.1 * (g / (np.abs(g) + 1e-8) + (0.5 * w if exclude is False or w.ndim > 1
                                                                     else 0.0)), params, g1)
  assert_tree_close(got, want, rtol=1e-4)


def test_adamw_weight_decay_schedule(tree):
  params, _, _ = tree
  zeros = jax.tree.map(np.zeros_like, params)  # Adam moments stay 0, so the update is pure decay.
  tx, _ = build(total_steps=2, name="adamw", lr=0.1, schedule="constant", weight_decay_schedule=(0.04, 0.4))
  got = run(tx, params, [zeros] * 3)
  w = params["conv"]["kernel"]
  for t, wd in enumerate([0.04, 0.22, 0.4]):   # cosine 0.04 -> 0.4 over 2 steps (DINO)
    w_t = w * np.prod([1 - 0.1 * d for d in [0.04, 0.22, 0.4][:t]])
    np.testing.assert_allclose(got[t]["conv"]["kernel"], -0.1 * wd * w_t, rtol=1e-5)
    np.testing.assert_array_equal(got[t]["bn"]["scale"], 0.0)


def test_lamb_trust_ratio_mask(tree):
  params, g1, _ = tree
  tx, _ = build(name="lamb", lr=0.1, schedule="constant")
  (got,) = run(tx, params, [g1])
  r = jax.tree.map(lambda g: g / (np.abs(g) + 1e-6), g1)
  k, rk = params["conv"]["kernel"], r["conv"]["kernel"]
  np.testing.assert_allclose(got["conv"]["kernel"], -0.1 * np.linalg.norm(k) / np.linalg.norm(rk) * rk, rtol=1e-5)
  np.testing.assert_allclose(got["bn"]["scale"], -0.1 * r["bn"]["scale"], rtol=1e-5)


def test_step_schedule():
  """MoCo v1: lr 0.03, x0.1 at epochs 120 and 160 of 200 (here 10 steps per epoch)."""
  _, schedule = build(total_steps=2000, name="sgd", lr=0.03, schedule="step", decay_epochs=(120, 160))
  got = [float(schedule(s)) for s in (0, 1199, 1200, 1599, 1600, 1999)]
  np.testing.assert_allclose(got, [0.03, 0.03, 0.003, 0.003, 0.0003, 0.0003], rtol=1e-5)
  with pytest.raises(ValueError, match="schedule='step' needs optim.decay_epochs"):
    build(name="sgd", lr=0.03, schedule="step")


def test_clip_norm(tree):
  params, g1, _ = tree
  norm = math.sqrt(sum(float(np.sum(g ** 2)) for g in jax.tree.leaves(g1)))
  tx, _ = build(name="sgd", lr=1.0, momentum=0.0, schedule="constant", clip_norm=0.5)
  (got,) = run(tx, params, [g1])
  assert_tree_close(got, jax.tree.map(lambda g: -g * 0.5 / norm, g1))
  tx, _ = build(name="sgd", lr=1.0, momentum=0.0, schedule="constant", clip_norm=10 * norm)
  assert_tree_close(run(tx, params, [g1])[0], jax.tree.map(lambda g: -g, g1))


def test_clip_norm_is_global_over_frozen_and_trained_params(tree):
  """The norm is taken over every gradient, frozen included (DINO clips, then cancels the last layer's grads)."""
  params, g1, _ = tree
  norm = math.sqrt(sum(float(np.sum(g ** 2)) for g in jax.tree.leaves(g1)))
  tx, _ = build(name="sgd", lr=1.0, momentum=0.0, schedule="constant", clip_norm=0.5, frozen=("bn",))
  (got,) = run(tx, params, [g1])
  np.testing.assert_array_equal(got["bn"]["scale"], 0.0)
  np.testing.assert_allclose(got["conv"]["kernel"], -g1["conv"]["kernel"] * 0.5 / norm, rtol=1e-5)


def test_clip_per_param(tree):
  """DINO's clip_gradients: each tensor scaled by min(1, c / (|g| + 1e-6)) on its own."""
  params, g1, _ = tree
  c = 0.5 * float(np.linalg.norm(g1["conv"]["kernel"]))   # the conv kernel is clipped, a tiny BN grad is not
  tx, _ = build(name="sgd", lr=1.0, momentum=0.0, schedule="constant", clip_norm=c, clip_mode="per_param")
  (got,) = run(tx, params, [g1])
  want = jax.tree.map(lambda g: -g * min(1.0, c / (float(np.linalg.norm(g)) + 1e-6)), g1)
  assert_tree_close(got, want)
  assert any(float(np.linalg.norm(g)) < c for g in jax.tree.leaves(g1))   # both branches are exercised
  with pytest.raises(ValueError, match="optim.clip_mode='layer': must be one of 'global', 'per_param'"):
    build(name="sgd", lr=1.0, clip_norm=1.0, clip_mode="layer")


def test_grad_accum(tree):
  params, g1, g2 = tree
  cfg = dict(name="sgd", lr=0.3, momentum=0.9, total_steps=2)  # cosine: lr(0)=0.3, lr(1)=0.15
  acc, _ = build(grad_accum_steps=2, **cfg)
  got = run(acc, params, [g1, g2, g2, g1])
  for i in (0, 2):
    jax.tree.map(lambda u: np.testing.assert_array_equal(u, 0.0), got[i])
  mean = jax.tree.map(lambda a, b: (a + b) / 2, g1, g2)
  # numpy momentum SGD on the mean gradient, lr counted in optimizer updates.
  want1 = jax.tree.map(lambda g: -0.3 * g, mean)
  want2 = jax.tree.map(lambda g: -0.15 * (0.9 * g + g), mean)
  assert_tree_close(got[1], want1)
  assert_tree_close(got[3], want2)


def test_frozen(tree):
  params, g1, _ = tree
  tx, _ = build(name="adamw", lr=0.1, weight_decay=0.5, schedule="constant", frozen=("bn",))
  (got,) = run(tx, params, [g1])
  np.testing.assert_array_equal(got["bn"]["scale"], 0.0)
  np.testing.assert_array_equal(got["bn"]["bias"], 0.0)
  k, g = params["conv"]["kernel"], g1["conv"]["kernel"]
  np.testing.assert_allclose(got["conv"]["kernel"], -0.1 * (g / (np.abs(g) + 1e-8) + 0.5 * k), rtol=1e-4)


def test_frozen_steps_only_freeze_the_first_updates(tree):
  """DINO's last layer: zero updates (no weight decay) for 2 steps, then plain SGD with the scheduled lr."""
  params, g1, g2 = tree
  tx, _ = build(total_steps=4, name="sgd", lr=0.2, momentum=0.0, weight_decay=0.0, frozen=("bn",),
                frozen_steps=2)
  got = run(tx, params, [g1, g2, g1])
  for step in (0, 1):
    np.testing.assert_array_equal(got[step]["bn"]["scale"], 0.0)
    np.testing.assert_allclose(got[step]["conv"]["kernel"], -np_schedule(step, 0.2, 0, 4) * [g1, g2][step]["conv"]["kernel"],
                               rtol=1e-5)
  np.testing.assert_allclose(got[2]["bn"]["scale"], -np_schedule(2, 0.2, 0, 4) * g1["bn"]["scale"], rtol=1e-5)


def test_constant_lr_keeps_the_peak_lr_for_matching_params(tree):
  """SimSiam's predictor: plain SGD updates are -lr*g, with lr cosine-decayed except for the `bn` params."""
  params, g1, g2 = tree
  tx, _ = build(total_steps=4, name="sgd", lr=0.2, momentum=0.0, constant_lr=("bn",))
  got = run(tx, params, [g1, g2])
  lr1 = np_schedule(1, 0.2, 0, 4)
  np.testing.assert_allclose(got[1]["conv"]["kernel"], -lr1 * g2["conv"]["kernel"], rtol=1e-5)
  np.testing.assert_allclose(got[1]["bn"]["scale"], -0.2 * g2["bn"]["scale"], rtol=1e-5)


def test_poly_schedule():
  """lang-seg / DeepLab: peak x (1 - t)^0.9 after the warm-up, t counted from its end."""
  _, schedule = build(total_steps=100, name="sgd", lr=0.04, schedule="poly", warmup_steps=10)
  steps = np.array([0, 5, 10, 40, 99, 100])
  t = np.clip((steps - 10) / 90, 0, 1)
  want = np.where(steps < 10, 0.04 * steps / 10, 0.04 * (1 - t) ** 0.9)
  np.testing.assert_allclose([float(schedule(s)) for s in steps], want, rtol=1e-5, atol=1e-9)
  _, schedule = build(total_steps=100, name="sgd", lr=0.04, schedule="poly", poly_power=2.0)
  np.testing.assert_allclose(float(schedule(50)), 0.04 * 0.25, rtol=1e-5)


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_lr_multipliers_scale_the_lr_and_decay_of_matching_params(tree, name):
  """lang-seg's decoder at 10x the backbone lr: a matching param's update (weight decay included) is 10x the
  plain one, the others are unchanged; the lr schedule returned (the one logged) is the base one."""
  params, g1, g2 = tree
  kw = dict(total_steps=4, name=name, lr=0.2, weight_decay=0.1, exclude_bias_and_norm=False)
  base, _ = build(**kw)
  tx, schedule = build(lr_multipliers=(("conv", 10.0), ("co", 3.0)), **kw)   # the first matching pair counts
  want, got = run(base, params, [g1, g2]), run(tx, params, [g1, g2])
  np.testing.assert_allclose(got[0]["conv"]["kernel"], 10 * want[0]["conv"]["kernel"], rtol=1e-5)
  assert not np.allclose(got[1]["conv"]["kernel"], want[1]["conv"]["kernel"])
  for step in (0, 1):
    assert_tree_close(got[step]["bn"], want[step]["bn"])
  np.testing.assert_allclose(float(schedule(1)), np_schedule(1, 0.2, 0, 4), rtol=1e-6)


def test_lr_multipliers_name_a_missing_path_in_one_line(tree):
  tx, _ = build(name="sgd", lr=0.1, lr_multipliers=(("decodr", 10.0),))
  with pytest.raises(ValueError, match=r"^optim.lr_multipliers names 'decodr', which is in no parameter's path"):
    tx.init(tree[0])


@pytest.mark.parametrize("kw,match", [
    (dict(name="adam", lr=0.1), r"Unknown optimizer 'adam'; known optimizers: adamw, lamb, lars, sgd"),
    (dict(name="sgd", lr=0.0), r"optim.lr must be > 0"),
    (dict(name="sgd", lr=0.1, lr_scaling="cubic"), r"optim.lr_scaling='cubic': must be one of 'linear', 'sqrt', "),
    (dict(name="sgd", lr=0.1, schedule="poly2"), r"optim.schedule='poly2': must be one of 'cosine', 'constant', 'step'"),
    (dict(name="sgd", lr=0.1, lr_multipliers=(("decoder", 0.0),)), r"lr_multipliers has \('decoder', 0.0\).*positive"),
    (dict(name="sgd", lr=0.1, lr_multipliers=("decoder",)), r"lr_multipliers=\('decoder',\) must be .*pairs"),
    (dict(name="sgd", lr=0.1, warmup_epochs=20.0), r"exceeds total_steps=100.*lower optim.warmup"),
    (dict(name="sgd", lr=0.1, momentun=0.5), r"^optim.momentun: unknown; did you mean momentum\? known: "),
    (dict(name="adamw", lr=0.1, momentum=0.0), r"^optim.momentum=0.0: adamw does not read it \(only lars, sgd do\)"),
    (dict(name="lars", lr=0.1, momentum=1.5), r"^optim.momentum=1.5: must be <= 1\.$"),
    (dict(name="sgd", lr=0.1, grad_accum_steps=0), r"optim.grad_accum_steps=0: must be >= 1"),
])
def test_errors(kw, match):
  with pytest.raises(ValueError, match=match) as err:
    build(**kw)
  assert "\n" not in str(err.value)


def test_fields_of_another_optimizer_may_stay_at_their_defaults():
  """A config may declare sgd's momentum and run adamw (or switch with --config.optim.name); the value is dropped."""
  from cl_jax.optim import FIELDS, optim_section  # pylint: disable=g-import-not-at-top
  hp = optim_section(make_cfg(name="adamw", lr=0.1, momentum=0.9, nesterov=False))
  assert set(hp) == set(FIELDS["adamw"]) | {"name"} and "momentum" not in hp
  assert optim_section(make_cfg(lr=0.1))["name"] == "sgd" and optim_section(make_cfg(lr=0.1))["momentum"] == 0.9
