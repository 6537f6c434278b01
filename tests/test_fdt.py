"""FDT (Chen et al. 2023): sparsemax against a float64 bisection reference, its properties and Jacobian; the FDT
pooling against a float64 NumPy loop; padding at -inf; the method's loss (value vs NumPy, value and gradient on 8
devices vs 1, decreasing over a few steps); the T_sd staircase; one-line config errors; the token report's tables."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cl_jax.data import augment, shapes
from cl_jax.eval import fdt_tokens
from cl_jax.losses.sparsemax import sparsemax
from cl_jax.methods.fdt import sd_temperature
from cl_jax.models import fdt as fdt_model
from tests.harness import (build_method, make_method_step, one_line_error, override,
                           tiny_method_config)


# ----------------------------------------------------------------------------- float64 references


def sparsemax_reference(z):
  """Sparsemax of one row in float64 by bisection on tau: sum(max(z - tau, 0)) = 1 (no sort, no cumsum)."""
  z = np.asarray(z, np.float64)
  lo, hi = z.max() - 1.0, z.max()          # f(lo) >= 1 >= f(hi) = 0
  for _ in range(200):
    mid = (lo + hi) / 2
    if np.maximum(z - mid, 0).sum() > 1:
      lo = mid
    else:
      hi = mid
  return np.maximum(z - (lo + hi) / 2, 0)


def pool_reference(q, c, mask, temperature, pad_fill="neg_inf", attention="sparsemax"):
  """FDT Eq. 1-4 in float64, one example and one entry at a time."""
  q, c = np.asarray(q, np.float64), np.asarray(c, np.float64)
  b, n, d = q.shape
  weights, embs = [], []
  for i in range(b):
    pooled = []
    for k in range(len(c)):
      scores = [(q[i, t] @ c[k] / math.sqrt(d) if mask is None or mask[i, t] else
                 (-math.inf if pad_fill == "neg_inf" else 0.0)) / temperature for t in range(n)]
      pooled.append(max(scores))
    pooled = np.array(pooled)
    w = sparsemax_reference(pooled) if attention == "sparsemax" else np.exp(pooled - pooled.max()) / np.exp(
        pooled - pooled.max()).sum()
    weights.append(w)
    embs.append(w @ c)
  return np.array(weights), np.array(embs)


def clip_reference(img, txt, log_scale):
  """CLIP's symmetric CE over the cosine logits in float64 (Radford et al. 2021, Fig. 3)."""
  unit = lambda x: np.asarray(x, np.float64) / np.linalg.norm(np.asarray(x, np.float64), axis=1, keepdims=True)
  logits = math.exp(min(log_scale, math.log(100))) * unit(img) @ unit(txt).T
  lse = lambda v: v.max() + math.log(np.exp(v - v.max()).sum())
  n = len(logits)
  return (np.mean([lse(logits[i]) - logits[i, i] for i in range(n)])
          + np.mean([lse(logits[:, j]) - logits[j, j] for j in range(n)])) / 2


# ----------------------------------------------------------------------------- sparsemax


def score_rows():
  rng = np.random.default_rng(0)
  rows = [rng.normal(size=37) * s for s in (0.01, 0.3, 1.0, 5.0)]
  rows.append(np.array([2.0, 2.0, 1.0, -1.0] + [0.0] * 33))              # ties at the top
  rows.append(np.full(37, 3.0))                                          # all equal: uniform
  return np.stack(rows).astype(np.float32)


def test_sparsemax_matches_float64_reference():
  z = score_rows()
  got = np.asarray(jax.jit(sparsemax)(z))
  want = np.stack([sparsemax_reference(r) for r in z])
  np.testing.assert_allclose(got, want, atol=2e-6)
  # along another axis, and in float64 as well
  np.testing.assert_allclose(np.asarray(sparsemax(z.T, axis=0)).T, want, atol=2e-6)
  with jax.enable_x64(True):
    np.testing.assert_allclose(np.asarray(sparsemax(jnp.asarray(z, jnp.float64))), want, atol=1e-12)


def test_sparsemax_properties():
  z = score_rows()
  p = np.asarray(sparsemax(z))
  np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-6)
  assert (p >= 0).all()
  assert (p[1:5] == 0).any(axis=1).all(), "spread scores must give exact zeros"
  np.testing.assert_allclose(p[-1], 1 / 37, rtol=1e-6)
  for zr, pr in zip(z, p):   # order preserving: z_i > z_j => p_i >= p_j; the argmax is softmax's
    i, j = np.nonzero(zr[:, None] > zr[None, :])
    assert (pr[i] >= pr[j]).all()
    assert np.argmax(pr) == np.argmax(np.asarray(jax.nn.softmax(zr)))
  np.testing.assert_allclose(np.asarray(sparsemax(z + 7.5)), p, atol=1e-6)               # shift invariant
  hot = np.asarray(sparsemax(z[2] / 1e-3))
  assert hot.max() == 1.0 and (hot > 0).sum() == 1                                        # T -> 0: one-hot
  assert (np.asarray(sparsemax(z[2] / 1e3)) > 0).all()                                    # T -> inf: all active
  minus_inf = np.asarray(sparsemax(jnp.array([1.0, -jnp.inf, 0.5, -jnp.inf])))
  np.testing.assert_allclose(minus_inf, [0.75, 0.0, 0.25, 0.0], atol=1e-7)


def test_sparsemax_jacobian_is_the_known_one_and_matches_finite_differences():
  z = score_rows()[2].astype(np.float64)
  p = sparsemax_reference(z)
  s = (p > 0).astype(np.float64)
  known = np.diag(s) - np.outer(s, s) / s.sum()                  # Martins & Astudillo 2016, Eq. 12
  with jax.enable_x64(True):
    jac_rev = np.asarray(jax.jacrev(sparsemax)(jnp.asarray(z)))
    jac_fwd = np.asarray(jax.jacfwd(sparsemax)(jnp.asarray(z)))
  np.testing.assert_allclose(jac_rev, known, atol=1e-12)
  np.testing.assert_allclose(jac_fwd, known, atol=1e-12)
  eps = 1e-6   # no score is within eps of the threshold, so the support does not change
  fd = np.stack([(sparsemax_reference(z + eps * e) - sparsemax_reference(z - eps * e)) / (2 * eps)
                 for e in np.eye(len(z))], axis=1)
  np.testing.assert_allclose(known, fd, atol=1e-6)
  # the float32 gradient of a scalar of the output
  v = np.random.default_rng(1).normal(size=len(z))
  g = np.asarray(jax.grad(lambda x: jnp.sum(sparsemax(x) * v))(jnp.asarray(z, jnp.float32)))
  np.testing.assert_allclose(g, known.T @ v, atol=1e-5)


# ----------------------------------------------------------------------------- FDT pooling and padding


@pytest.fixture(scope="module")
def pool_inputs():
  rng = np.random.default_rng(2)
  q = rng.normal(size=(3, 5, 8)).astype(np.float32)
  c = rng.normal(size=(11, 8)).astype(np.float32)
  mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], bool)
  return q, c, mask


@pytest.mark.parametrize("temperature", [0.05, 1.0, 30.0])
@pytest.mark.parametrize("attention", ["sparsemax", "softmax"])
def test_fdt_pool_matches_float64_reference(pool_inputs, temperature, attention):
  q, c, mask = pool_inputs
  w, emb = jax.jit(fdt_model.fdt_pool, static_argnums=(4, 5))(q, c, mask, jnp.float32(temperature), attention,
                                                                 "neg_inf")
  want_w, want_emb = pool_reference(q, c, mask, temperature, attention=attention)
  np.testing.assert_allclose(np.asarray(w), want_w, atol=2e-6)
  np.testing.assert_allclose(np.asarray(emb), want_emb, atol=1e-5)
  if attention == "sparsemax" and temperature == 0.05:
    assert (np.asarray(w) == 0).any(axis=1).all()
  # the official fill (0) against its reference too
  w0, _ = fdt_model.fdt_pool(q, c, mask, jnp.float32(temperature), attention, "zero")
  np.testing.assert_allclose(np.asarray(w0), pool_reference(q, c, mask, temperature, "zero", attention)[0],
                             atol=2e-6)


def test_padding_is_minus_inf_so_pads_change_nothing(pool_inputs):
  q, c, mask = pool_inputs
  t = jnp.float32(0.2)
  w, emb = fdt_model.fdt_pool(q, c, mask, t)
  noisy = np.where(mask[:, :, None], q, 100.0 * np.random.default_rng(3).normal(size=q.shape)).astype(np.float32)
  w2, emb2 = fdt_model.fdt_pool(noisy, c, mask, t)
  np.testing.assert_array_equal(np.asarray(w), np.asarray(w2))
  np.testing.assert_array_equal(np.asarray(emb), np.asarray(emb2))
  # = the caption without its padding
  w_short, _ = fdt_model.fdt_pool(q[2:, :1], c, None, t)
  np.testing.assert_allclose(np.asarray(w[2:]), np.asarray(w_short), atol=1e-7)
  # the official 0 fill is not: a pad's 0 beats every negative real score (at a T_sd that keeps them in the support)
  warm = jnp.float32(5.0)
  w_zero, _ = fdt_model.fdt_pool(q, c, mask, warm, "sparsemax", "zero")
  w_short, _ = fdt_model.fdt_pool(q[2:, :1], c, None, warm)
  assert not np.allclose(np.asarray(w_zero[2:]), np.asarray(w_short), atol=1e-3)


def test_text_mask_is_by_position_up_to_the_end_token():
  tokens = np.array([[5, 0, 3, 9, 0, 0], [5, 9, 0, 0, 0, 0]])   # 9 = <|endoftext|>; a real id-0 token kept
  np.testing.assert_array_equal(np.asarray(fdt_model.text_mask(tokens)),
                                [[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]])


def test_temperature_staircase():
  steps = jnp.arange(0, 50)
  t = np.asarray(sd_temperature(steps, 1000.0, 0.5, 10, 40.0))
  np.testing.assert_allclose(t[:10], 1000.0)
  np.testing.assert_allclose(t[10:20], 500.0)
  np.testing.assert_allclose(t[40:], 62.5)
  np.testing.assert_allclose(np.asarray(sd_temperature(steps, 1000.0, 0.1, 10, 40.0))[20:], 40.0)   # the floor
  np.testing.assert_allclose(np.asarray(sd_temperature(steps, 1000.0, 1.0, 7, 0.01)), 1000.0)     # official


# ----------------------------------------------------------------------------- the method


def tiny_config(**method):
  """The FDT quick start shrunk: micro ViT (16 patches), 1-layer text model, 64 tokens of width 32."""
  return tiny_method_config("fdt", **{
      "data.num_train": 64, "data.num_test": 64, "batch_size": 16, "eval.batch_size": 32,
      "model": dict(name="vit_micro", patch_size=8), "text_model.width": 32, "text_model.depth": 1,
      "text_model.heads": 2, "method.embed_dim": 32, "method.num_tokens": 64, "data.text.context_length": 20,
      **{f"method.{k}": v for k, v in method.items()}})


@pytest.fixture(scope="module")
def setup():
  config = tiny_config(sd_temperature=2.0, sd_decay=0.5, sd_decay_steps=1, sd_min=0.5)
  method = build_method(config, total_steps=10, steps_per_epoch=4)
  data = shapes.generate(16, split="train", seed=0, image_size=32)
  tokens = method.tokenizer.encode(list(data["caption"]))
  images = jax.jit(augment.eval_preprocess, static_argnums=1)(data["image"], 32)[None]
  views = {"crops": (np.asarray(images),), "tokens": tokens}
  params, state = jax.jit(method.init)(jax.random.key(0), views)
  return method, params, state, views


def test_loss_is_clip_on_the_fdt_embeddings(setup):
  method, params, state, views = setup
  step = make_method_step(method, state, views, 1)
  got = step(params, state, views, 2)     # T_sd at step 2: max(2 * 0.5^2, 0.5) = 0.5
  assert float(got.metrics["sd_temperature"]) == 0.5
  assert float(got.state_after_loss["sd_temperature"]) == 0.5
  out = method.model.apply({"params": params["model"]}, views["crops"][0][0], views["tokens"], jnp.float32(0.5),
                           train=True)
  want = clip_reference(np.asarray(out["image"]), np.asarray(out["text"]), float(params["logit_scale"]))
  np.testing.assert_allclose(float(got.loss), want, rtol=1e-5)
  assert 0 < float(got.metrics["active_tokens_image"]) <= 64


def test_loss_and_gradient_8_devices_vs_1(setup):
  method, params, state, views = setup
  one = make_method_step(method, state, views, 1)(params, state, views, 1)
  eight = make_method_step(method, state, views, 8)(params, state, views, 1)
  np.testing.assert_allclose(float(eight.loss), float(one.loss), rtol=1e-6)
  # float32 reduction order: each leaf to 1e-5 of its own scale (at T_sd 0.5 some leaves reach |g| ~ 10);
  # leaves whose gradient is zero in exact arithmetic (attention key biases) to 1e-7 of the largest leaf
  top = max(float(np.abs(np.asarray(b)).max()) for b in jax.tree.leaves(one.grads))
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(eight.grads), jax.tree.leaves(one.grads)):
    a, b = np.asarray(a), np.asarray(b)
    assert np.abs(a - b).max() <= 1e-5 * max(np.abs(b).max(), 1e-2 * top), jax.tree_util.keystr(path)
  assert float(np.abs(np.asarray(one.grads["model"]["dictionary"])).max()) > 0
  assert float(np.abs(np.asarray(one.grads["logit_scale"]))) > 0


def test_padded_token_ids_change_no_text_embedding(setup):
  method, params, state, views = setup
  tokens = np.array(views["tokens"][:4])
  emb = np.asarray(method.encode_text(params, state, tokens))
  mask = np.asarray(fdt_model.text_mask(tokens))
  assert not mask.all()
  other = np.where(mask, tokens, 7)       # any id at the padding
  np.testing.assert_allclose(np.asarray(method.encode_text(params, state, other)), emb, atol=1e-6)


def test_loss_decreases_and_logit_scale_clamp(setup):
  _, _, _, views = setup
  config = tiny_config(sd_temperature=1.0, logit_scale_clamp=(3.0, 6.0))
  method = build_method(config, total_steps=10, steps_per_epoch=4)
  params, state = jax.jit(method.init)(jax.random.key(0), views)
  tx = optax.adam(3e-3)
  opt_state = tx.init(params)
  step = make_method_step(method, state, views, 8, tx=tx)
  losses = []
  for i in range(6):
    out = step(params, state, views, i, opt_state)
    params, opt_state, state = out.params, out.opt_state, out.state_after_update
    losses.append(float(out.loss))
  assert np.isfinite(losses).all()
  assert losses[-1] < losses[0] - 0.05, losses
  assert 3.0 <= float(params["logit_scale"]) <= 6.0   # init log(1/0.07) = 2.66 is clamped up to 3 (official)
  img = method.encode_image_embedding(params, state, views["crops"][0][0][:4])
  np.testing.assert_allclose(np.linalg.norm(np.asarray(img), axis=1), 1.0, rtol=1e-5)
  w, winners = method.text_token_weights(params, state, views["tokens"][:4])
  np.testing.assert_allclose(np.asarray(w).sum(axis=1), 1.0, rtol=1e-5)
  assert (np.asarray(winners) <= np.argmax(views["tokens"][:4], axis=1)[:, None]).all()   # never a pad


@pytest.mark.parametrize("overrides, needles", [
    ({"method.sd_min": 2000.0}, ("sd_min=2000.0", "sd_temperature")),
    ({"method.logit_scale_clamp": (6.0, 3.0)}, ("logit_scale_clamp", "[low, high]")),
    ({"method.attention": "softmaxx"}, ("method.attention='softmaxx'", "sparsemax")),
    ({"method.sd_temprature": 5.0}, ("method.sd_temprature: unknown", "did you mean sd_temperature")),
    ({"method.sd_decay": 1.5}, ("method.sd_decay=1.5", "<= 1")),
    ({"model": dict(name="resnet_tiny")}, ("fdt needs patch tokens from a ViT", "resnet_tiny")),
])
def test_bad_config_is_one_line(overrides, needles):
  config = override(tiny_config(), overrides)
  one_line_error(lambda: build_method(config), *needles)


def test_missing_text_is_one_line():
  config = tiny_config()
  del config.data["text"]
  one_line_error(lambda: build_method(config), "config.data.text")


# ----------------------------------------------------------------------------- the token report


def test_token_report_tables():
  image_w = np.array([[0.7, 0.3, 0.0, 0.0], [0.6, 0.0, 0.4, 0.0], [0.0, 0.5, 0.5, 0.0]])
  text_w = np.array([[1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0], [0.0, 0.2, 0.8, 0.0]])
  winners = np.array([[2, 1, 1, 1], [2, 3, 1, 1], [1, 3, 2, 1]])   # token ids winning each entry's max
  counts = fdt_tokens.active_counts(image_w, text_w)
  assert counts == {"active_image": 3, "active_text": 3, "active_both": 3, "active_any": 3, "per_image": 2.0,
                    "per_text": 5 / 3, "num_tokens": 4}
  color = np.array([0, 0, 1])
  rows = fdt_tokens.token_table(image_w, text_w, winners, ["<pad>", "a", "red", "star"],
                                {"color": (color, ("red", "blue"))}, n=2)
  assert [r["entry"] for r in rows] == [0, 2]           # mass 0.433 + 0.5, then 0.3 + 0.267
  assert rows[0]["words"] == [("red", 1.0)]
  assert rows[0]["attributes"]["color"] == ("red", pytest.approx(0.65 / (1.3 / 3)))
  assert rows[0]["image_pct"] == pytest.approx(200 / 3)
  text = fdt_tokens.format_table(rows, counts)
  assert "3 of 4 entries active" in text and "red 100%" in text
