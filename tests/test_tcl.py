"""TCL: each loss term and the whole objective against a float64 NumPy transcription of the official code
(Hzzone/TCL tcl_wrapper.py forward_cls_loss / forward_reg_loss / mixup, utils/infonce.py InstanceLoss, tcl.py
noise_detect), the objective's value and gradient on 8 devices vs 1, one method step on 8 devices vs 1 with plain
SGD (warm-up and bootstrapped), the epoch-start noise detection on synthetic splits, the loss reading nothing but
the crops, the noisy label and the index, and one-line errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sklearn.metrics
from jax.sharding import PartitionSpec as P
from sklearn.mixture import GaussianMixture

from cl_jax import parallel
from cl_jax.data.augment import view_groups
from cl_jax.losses import tcl as L
from tests.harness import (assert_trees_close, build_method, make_method_step, one_line_error,
                           tiny_method_config)

B, C, D, T = 16, 5, 8, 0.25


# ------------------------------------------------------------------------------- float64 transcriptions (official)


def _softmax(x):
  e = np.exp(x - x.max(axis=1, keepdims=True))
  return e / e.sum(axis=1, keepdims=True)


def _log_softmax(x):
  x = x - x.max(axis=1, keepdims=True)
  return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def ref_instance_loss(z_i, z_j, temperature):
  """utils/infonce.py InstanceLoss.forward: [positive, negatives without self and positive], CE summed / N."""
  b = len(z_i)
  n = 2 * b
  mask = np.ones((n, n), bool)
  np.fill_diagonal(mask, False)
  for i in range(b):
    mask[i, b + i] = mask[b + i, i] = False
  z = np.concatenate([z_i, z_j])
  sim = z @ z.T / temperature
  positives = np.concatenate([np.diag(sim, b), np.diag(sim, -b)]).reshape(n, 1)
  logits = np.concatenate([positives, sim[mask].reshape(n, -1)], axis=1)
  return float(-_log_softmax(logits)[:, 0].sum() / n)


def ref_reg_loss(pred_logits):
  """Wrapper.forward_reg_loss."""
  p = _softmax(pred_logits)
  ent = -(p * _log_softmax(pred_logits)).sum(axis=1).mean()
  prob_mean = p.mean(axis=0)
  return float(ent), float((prob_mean * np.log(prob_mean)).sum())


def ref_mixup(x, randind, lam):
  """tcl_wrapper.py mixup with a given permutation and lambda (already max(lam, 1 - lam))."""
  return lam * x + (1.0 - lam) * x[randind]


def _ce(logits, targets):
  return float(-(targets * _log_softmax(logits)).sum(-1).mean())


def ref_cls_loss(w_logits, q_logits1, q_logits2, mix_logits, q_mix, randind, lam, labels, confidences, prototypes,
                 temperature, scale1, scale2, warmup):
  """Wrapper.forward_cls_loss line by line (q_w and w_logits unused there too)."""
  del w_logits
  c = confidences[:, None]
  onehot = np.eye(C)[labels]
  q_prob1, q_prob2 = _softmax(q_logits1), _softmax(q_logits2)

  def comb(p1, p2, lam):
    return (1 - lam) * p1 + lam * p2

  targets_corrected1 = comb(q_prob2, onehot, c * scale1)
  targets_corrected2 = comb(q_prob1, onehot, c * scale1)
  targets_mix_corrected = comb((q_prob1 + q_prob2) * 0.5, onehot, c * scale2)
  targets_mix_corrected = np.tile(targets_mix_corrected, (len(q_mix) // len(q_logits1), 1))
  targets_mix_corrected = comb(targets_mix_corrected[randind], targets_mix_corrected, lam)
  targets_mix_noise = np.tile(onehot, (len(q_mix) // len(q_logits1), 1))
  targets_mix_noise = comb(targets_mix_noise[randind], targets_mix_noise, lam)
  align_logits = q_mix @ prototypes.T / temperature
  if warmup:
    cls1 = _ce(q_logits1, onehot) + _ce(q_logits2, onehot)   # F.cross_entropy(q_logits, labels)
    return cls1, _ce(mix_logits, targets_mix_noise), _ce(align_logits, targets_mix_noise)
  cls1 = _ce(q_logits1, targets_corrected1) + _ce(q_logits2, targets_corrected2)
  return cls1, _ce(mix_logits, targets_mix_corrected), _ce(align_logits, targets_mix_corrected)


def ref_total(outputs, randind, lam, warmup, scale1=0.6, scale2=0.6):
  """TCL.train's sum of SimCLRWrapper.forward_loss's terms (all weights 1)."""
  o = {k: np.asarray(v, np.float64) for k, v in outputs.items()}
  contrastive = ref_instance_loss(o["z1"], o["z2"], T)
  cls1, cls2, align = ref_cls_loss(o["logits_w"], o["logits1"], o["logits2"], o["logits_mix"], o["z_mix"], randind,
                                   lam, outputs["labels"], o["confidence"], o["prototypes"], T, scale1, scale2,
                                   warmup)
  ent, ne = ref_reg_loss(np.concatenate([o["logits1"], o["logits2"], o["logits_mix"]]))
  return contrastive + cls1 + cls2 + ent + ne + align


def ref_noise_detect(cluster_labels, labels, features, temperature):
  """TCL.noise_detect (sep_gmm off) in float64."""
  centers = cluster_labels.T @ features
  centers = centers / np.linalg.norm(centers, axis=1, keepdims=True)
  context_assignments = _softmax(features @ centers.T / temperature)
  losses = -context_assignments[np.arange(len(labels)), labels][:, None]
  losses = (losses - losses.min()) / (losses.max() - losses.min())
  gm = GaussianMixture(n_components=2, random_state=0).fit(losses)
  pdf = gm.predict_proba(losses)
  return (pdf / pdf.sum(1)[:, None])[:, np.argmin(gm.means_)], centers, losses[:, 0], gm


# ------------------------------------------------------------------------------------------------ loss terms


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def outputs():
  """One forward's outputs of a batch of B: unit projections and logits of each row kind, labels, P(clean)."""
  rng = np.random.default_rng(0)
  f = lambda *s: rng.normal(size=s).astype(np.float32)
  return {"z_w": _unit(f(B, D)), "z_mix": _unit(f(3 * B, D)), "z1": _unit(f(B, D)), "z2": _unit(f(B, D)),
          "logits_w": 2 * f(B, C), "logits_mix": 2 * f(3 * B, C), "logits1": 2 * f(B, C), "logits2": 2 * f(B, C),
          "labels": rng.integers(0, C, B).astype(np.int32), "confidence": rng.uniform(size=B).astype(np.float32),
          "prototypes": _unit(f(C, D))}


def test_contrastive_term_is_the_official_instance_loss(outputs):
  from cl_jax.losses.contrastive import nt_xent
  loss, _ = nt_xent(jnp.asarray(outputs["z1"]), jnp.asarray(outputs["z2"]), T)
  np.testing.assert_allclose(float(loss), ref_instance_loss(*(np.float64(outputs[k]) for k in ("z1", "z2")), T),
                             rtol=1e-5)


def test_regularisers_match_forward_reg_loss(outputs):
  logits = np.concatenate([outputs["logits1"], outputs["logits2"], outputs["logits_mix"]])
  ent, ne = L.regularisers(jnp.asarray(logits))
  ref_ent, ref_ne = ref_reg_loss(np.float64(logits))
  np.testing.assert_allclose([float(ent), float(ne)], [ref_ent, ref_ne], rtol=1e-5)


def test_bootstrap_targets_and_soft_ce_match_forward_cls_loss(outputs):
  o = outputs
  onehot = np.eye(C, dtype=np.float32)[o["labels"]]
  t1, t2, tm = L.bootstrap_targets(jnp.asarray(o["logits1"]), jnp.asarray(o["logits2"]), jnp.asarray(onehot),
                                   jnp.asarray(o["confidence"]), 0.7, 0.4)
  p1, p2, c = _softmax(np.float64(o["logits1"])), _softmax(np.float64(o["logits2"])), o["confidence"][:, None]
  np.testing.assert_allclose(np.asarray(t1), (1 - 0.7 * c) * p2 + 0.7 * c * onehot, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(np.asarray(t2), (1 - 0.7 * c) * p1 + 0.7 * c * onehot, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(np.asarray(tm), (1 - 0.4 * c) * (p1 + p2) / 2 + 0.4 * c * onehot, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(float(L.soft_cross_entropy(jnp.asarray(o["logits1"]), t1)),
                             _ce(np.float64(o["logits1"]), np.asarray(t1, np.float64)), rtol=1e-5)


def test_mix_rows_is_the_official_mixup():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(3 * B, 4, 4, 3)).astype(np.float32)
  perm, lam = rng.permutation(3 * B), 0.7
  got = L.mix_rows(jnp.asarray(x), L.mixup_rows(B), jnp.asarray(perm), jnp.float32(lam))
  np.testing.assert_allclose(np.asarray(got), ref_mixup(np.float64(x), perm, lam), rtol=1e-6, atol=1e-6)
  lams = np.asarray(jax.vmap(lambda k: L.mixup_lambda(k, 1.0))(jax.random.split(jax.random.key(0), 256)))
  assert lams.min() >= 0.5 and lams.max() <= 1.0 and 0.7 < lams.mean() < 0.8   # E[max(U, 1-U)] = 0.75


def _objective_inputs(o):
  z = np.concatenate([o["z_w"], o["z_mix"], o["z1"], o["z2"]])
  logits = np.concatenate([o["logits_w"], o["logits_mix"], o["logits1"], o["logits2"]])
  return z, logits, np.eye(C, dtype=np.float32)[o["labels"]]


@pytest.mark.parametrize("warmup", [True, False])
def test_objective_matches_the_official_forward(outputs, warmup):
  o = outputs
  z, logits, onehot = _objective_inputs(o)
  perm, lam = np.random.default_rng(2).permutation(3 * B), 0.8
  loss, metrics = L.tcl_objective(jnp.asarray(z), jnp.asarray(logits), jnp.asarray(onehot),
                                  jnp.asarray(o["confidence"]), jnp.asarray(o["prototypes"]), 0.6, 0.6,
                                  jnp.asarray(warmup), jnp.asarray(perm), jnp.float32(lam), T)
  np.testing.assert_allclose(float(loss), ref_total(o, perm, lam, warmup), rtol=1e-5)
  cls1, cls2, align = ref_cls_loss(*(np.float64(o[k]) for k in ("logits_w", "logits1", "logits2", "logits_mix",
                                                                "z_mix")), perm, lam, o["labels"],
                                   np.float64(o["confidence"]), np.float64(o["prototypes"]), T, 0.6, 0.6, warmup)
  np.testing.assert_allclose([float(metrics[k]) for k in ("cls_loss1", "cls_loss2", "align_loss")],
                             [cls1, cls2, align], rtol=1e-5)


def test_objective_eight_devices_equal_one_value_and_gradient(outputs):
  """Rows laid out per device as the method does: [weak, its 3 mixup rows per view, strong1, strong2]."""
  o = outputs
  perm, lam = jnp.asarray(np.random.default_rng(3).permutation(3 * B)), jnp.float32(0.8)
  onehot = jnp.asarray(np.eye(C, dtype=np.float32)[o["labels"]])
  z_mix, l_mix = o["z_mix"].reshape(3, B, D), o["logits_mix"].reshape(3, B, C)

  def loss_fn(zs, ls, onehot, conf, axis_name):
    z = jnp.concatenate([zs[0], zs[1].reshape(-1, D), zs[2], zs[3]])
    logits = jnp.concatenate([ls[0], ls[1].reshape(-1, C), ls[2], ls[3]])
    return L.tcl_objective(z, logits, onehot, conf, jnp.asarray(o["prototypes"]), 0.6, 0.5, jnp.asarray(False),
                           perm, lam, T, axis_name=axis_name)[0]

  zs = tuple(jnp.asarray(x) for x in (o["z_w"], z_mix, o["z1"], o["z2"]))
  ls = tuple(jnp.asarray(x) for x in (o["logits_w"], l_mix, o["logits1"], o["logits2"]))
  args = (zs, ls, onehot, jnp.asarray(o["confidence"]))
  rows = (P("data"), P(None, "data"), P("data"), P("data"))
  specs = (rows, rows, P("data"), P("data"))
  results = []
  for n in (1, 8):
    fn = jax.jit(jax.shard_map(lambda *a: jax.value_and_grad(loss_fn, argnums=(0, 1))(*a, parallel.DATA),
                               mesh=parallel.make_mesh(n), in_specs=specs, out_specs=(P(), (rows, rows))))
    results.append(fn(*args))
  (one, one_grad), (eight, eight_grad) = results
  np.testing.assert_allclose(float(eight), float(one), rtol=1e-6)
  assert_trees_close(eight_grad, one_grad, rtol=1e-5, atol=1e-7)
  ref = loss_fn(*args, None)   # and the one-device loss without an axis is the same function
  np.testing.assert_allclose(float(one), float(ref), rtol=1e-6)


# --------------------------------------------------------------------------------------------- noise detection


def synthetic_split(n=600, noise=0.4, seed=0):
  """Features near their TRUE class's direction, classifier probabilities favouring the true class, and labels
  flipped (symmetric) for a `noise` fraction: a trained twin's split."""
  rng = np.random.default_rng(seed)
  true = rng.integers(0, C, n)
  flip = rng.uniform(size=n) < noise
  labels = np.where(flip, (true + rng.integers(1, C, n)) % C, true)
  directions = _unit(rng.normal(size=(C, D)))
  features = _unit(directions[true] + 0.2 * rng.normal(size=(n, D))).astype(np.float32)
  probs = _softmax(3.0 * np.eye(C)[true] + rng.normal(size=(n, C))).astype(np.float32)
  return {"features": features, "probs": probs, "label": labels.astype(np.int32),
          "index": np.arange(n, dtype=np.int32)}, flip


def test_noise_detect_matches_the_official_and_finds_the_flips():
  split, flip = synthetic_split()
  clean, centres = L.noise_detect(split["probs"], split["features"], split["label"], T)
  ref_clean, ref_centres, losses, gm = ref_noise_detect(np.float64(split["probs"]), split["label"],
                                                        np.float64(split["features"]), T)
  np.testing.assert_allclose(centres, ref_centres, rtol=1e-9, atol=1e-12)
  np.testing.assert_allclose(clean, ref_clean, rtol=1e-6, atol=1e-9)
  # The posterior of the low-loss component from the fitted mixture's own parameters, by Bayes' rule.
  mu, var, w = gm.means_[:, 0], gm.covariances_.reshape(-1), gm.weights_
  dens = w * np.exp(-0.5 * (losses[:, None] - mu) ** 2 / var) / np.sqrt(2 * np.pi * var)
  np.testing.assert_allclose(clean, (dens / dens.sum(1, keepdims=True))[:, np.argmin(mu)], atol=1e-6)
  assert sklearn.metrics.roc_auc_score(~flip, clean) > 0.95
  assert abs((clean > 0.5).mean() - (1 - flip.mean())) < 0.1


def test_per_class_gmm_fits_one_mixture_per_label():
  split, flip = synthetic_split(seed=1)
  clean, _ = L.noise_detect(split["probs"], split["features"], split["label"], T, per_class=True)
  _, losses = L.detection_losses(split["probs"], split["features"], split["label"], T)
  k = split["label"] == 2
  np.testing.assert_allclose(clean[k], L.gmm_clean_probability(losses[k]), rtol=1e-12)
  assert sklearn.metrics.roc_auc_score(~flip, clean) > 0.9


def _zeros_state(method, n=8):
  """The method state's structure with zero leaves, from shapes only (no compilation)."""
  views = {"crops": tuple(np.zeros((g.views, n, g.size, g.size, 3), np.float32)
                          for _, g in view_groups(method.config.augment)),
           "label": np.zeros(n, np.int32), "index": np.arange(n, dtype=np.int32)}
  shapes = jax.eval_shape(method.init, jax.random.key(0), views)
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes[1]), views, shapes[0]


def _config(**overrides):
  c = tiny_method_config("tcl", **{"model.stem": "small", "augment.weak.size": 16, "augment.strong.size": 16,
                                   "method.feat_dim": 16, "method.num_classes": C, **overrides})
  return c


def test_epoch_start_sets_confidence_by_index_centres_and_scale():
  split, flip = synthetic_split(n=64)
  order = np.random.default_rng(5).permutation(64)   # the state is indexed by example id, whatever the order
  shuffled = {k: v[order] for k, v in split.items()}
  method = build_method(_config(**{"method.feat_dim": D}), num_train=64)
  state = _zeros_state(method)[0]
  assert method.clean_scores(jax.device_get(state)) is None   # before the first detection
  new, metrics = method.epoch_start(state, shuffled, 0)
  ref_clean, ref_centres, _, _ = ref_noise_detect(np.float64(split["probs"]), split["label"],
                                                  np.float64(split["features"]), T)
  np.testing.assert_allclose(method.clean_scores(new), ref_clean, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(new["prototypes"], ref_centres, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(float(new["scale"]), (ref_clean > 0.5).mean(), rtol=1e-6)
  assert metrics["clean_fraction"] == pytest.approx((ref_clean > 0.5).mean())
  for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(state)):
    assert np.shape(a) == b.shape and np.result_type(a) == b.dtype
  assert int(new["passes"]) == 1
  bad = {**split, "label": np.where(np.arange(64) == 3, C, split["label"]).astype(np.int32)}
  one_line_error(lambda: method.epoch_start(state, bad, 0), f"label {C} outside [0, {C})", "method.num_classes")


# ------------------------------------------------------------------------------------------- the method's step


@pytest.fixture(scope="module")
def step_setup():
  num_train = 64
  method = build_method(_config(**{"method.warmup_epochs": 1}), num_train=num_train, steps_per_epoch=4,
                        total_steps=8)
  rng = np.random.default_rng(0)
  views = {"crops": tuple(rng.normal(size=(g.views, 16, g.size, g.size, 3)).astype(np.float32)
                          for _, g in view_groups(method.config.augment)),
           "label": rng.integers(0, C, 16).astype(np.int32),
           "index": rng.permutation(num_train)[:16].astype(np.int32)}
  params, state = jax.jit(method.init)(jax.random.key(0), views)
  state = {**state, "confidence": jnp.asarray(rng.uniform(size=num_train), jnp.float32),
           "scale": jnp.float32(0.6), "passes": jnp.int32(1)}
  steps = {n: make_method_step(method, state, views, n, sgd_lr=0.1) for n in (1, 8)}
  return method, params, state, views, steps


@pytest.mark.parametrize("step", [0, 5], ids=["warmup", "bootstrapped"])
def test_method_step_eight_devices_equal_one(step_setup, step):
  method, params, state, views, steps = step_setup
  one = steps[1](params, state, views, step)
  eight = steps[8](params, state, views, step)
  assert float(one.metrics["warmup"]) == float(step < method.warmup_steps)
  np.testing.assert_allclose(float(eight.loss), float(one.loss), rtol=1e-5)
  assert_trees_close(eight.params, one.params, rtol=1e-5, atol=1e-5)
  assert_trees_close(eight.state_after_update, one.state_after_update, rtol=1e-4, atol=1e-5)
  assert np.isfinite(float(one.loss))


def test_loss_reads_only_crops_noisy_label_and_index(step_setup):
  """The loop strips the kept truths; even if a batch carried them, the loss never reads them."""
  method, params, state, views, _ = step_setup
  read = set()

  class Recording(dict):
    def __getitem__(self, k):
      read.add(k)
      return super().__getitem__(k)

    def __contains__(self, k):
      read.add(k)
      return super().__contains__(k)

  full = {**views, "clean_label": np.zeros(16, np.int32), "is_noisy": np.ones(16, bool)}
  mesh = parallel.make_mesh(1)
  fn = jax.shard_map(lambda p, s, v: method.loss(p, s, Recording(v), jax.random.key(0), jnp.int32(5))[0],
                     mesh=mesh, in_specs=(P(), P(), {k: (tuple(P(None, "data") for _ in v) if k == "crops"
                                                         else P("data")) for k, v in full.items()}),
                     out_specs=P())
  jax.eval_shape(fn, params, state, full)
  assert read <= {"crops", "label", "index"} and {"crops", "label", "index"} <= read


def test_labels_change_the_loss(step_setup):
  method, params, state, views, steps = step_setup
  other = {**views, "label": (views["label"] + 1) % C}
  assert float(steps[1](params, state, other, 5).loss) != pytest.approx(float(steps[1](params, state, views, 5).loss))


# --------------------------------------------------------------------------------------------- one-line errors


def test_missing_labels_and_bad_configs_are_one_line():
  method = build_method(_config(), num_train=64)
  state, views, params = _zeros_state(method)
  params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), params)
  del views["label"]
  one_line_error(lambda: make_method_step(method, state, views, 1)(params, state, views), "no 'label'",
                 "data.label_noise")
  one_line_error(lambda: build_method(_config(**{"augment.strong.views": 1}), num_train=64),
                 "crop group 'strong' with 2 view(s), got 1 views", "config.augment")
  one_line_error(lambda: build_method(_config(**{"method.scale1": 1.5}), num_train=64), "method.scale1=1.5")
  one_line_error(lambda: build_method(_config(**{"method.objective": "mse"}), num_train=64),
                 "method.objective='mse'", "'tcl', 'ce'")
  one_line_error(lambda: build_method(_config(), num_train=0), "num_train >= 1")
  one_line_error(lambda: build_method(_config(**{"augment.weak.size": 24}), num_train=64), "one size")
