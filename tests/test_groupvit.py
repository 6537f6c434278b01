"""GroupViT: the multi-label loss against float64 NumPy and on 8 devices vs 1; Gumbel / hard straight-through
assignment (one-hot forward, softmax gradient); noun sampling; one method step with plain SGD on 8 devices vs 1
(value, gradient, update, Gumbel draws); the dense readout (shape, each patch = its final group's embedding); a
short run whose loss decreases; one-line config errors."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from cl_jax import parallel
from cl_jax.data import augment, scenes
from cl_jax.losses.groupvit import multi_label_loss
from cl_jax.methods.groupvit import GroupViTCLIP, select_nouns
from cl_jax.models import groupvit as gv
from tests.harness import assert_trees_close, build_method, make_method_step, one_line_error, override, \
    tiny_method_config

# ----------------------------------------------------------------------------- float64 reference


def multi_label_reference(img, txt, log_scale):
  """Sec. 3.2 Eq. 6-8 in float64 one row at a time: image i vs all N*K prompts with targets 1/K on its own K;
  prompt (i, j) vs all N images with target i; the mean of the two directions."""
  unit = lambda x: np.asarray(x, np.float64) / np.linalg.norm(np.asarray(x, np.float64), axis=-1, keepdims=True)
  img, txt = unit(img), unit(txt)
  n, k, _ = txt.shape
  s = math.exp(min(log_scale, math.log(100)))
  flat = txt.reshape(n * k, -1)
  lse = lambda v: v.max() + math.log(np.exp(v - v.max()).sum())
  loss_i = 0.0
  for i in range(n):
    logits = s * flat @ img[i]
    loss_i += sum(-(1 / k) * (logits[i * k + j] - lse(logits)) for j in range(k)) / n
  loss_t = 0.0
  for i in range(n):
    for j in range(k):
      logits = s * img @ txt[i, j]
      loss_t += -(logits[i] - lse(logits)) / (n * k)
  return 0.5 * (loss_i + loss_t)


@pytest.fixture(scope="module")
def embeddings():
  rng = np.random.default_rng(0)
  img = rng.normal(size=(16, 12)).astype(np.float32)
  txt = (rng.normal(size=(16, 3, 12)) + 0.5 * img[:, None]).astype(np.float32)
  txt[5, 2] = txt[5, 0]                       # a repeated prompt (a caption filling a missing noun) stays fine
  return img, txt


@pytest.mark.parametrize("log_scale", [0.0, math.log(1 / 0.07), 5.0])
def test_multi_label_loss_matches_float64_reference(embeddings, log_scale):
  img, txt = embeddings
  loss, metrics = jax.jit(multi_label_loss)(img, txt, jnp.float32(log_scale))
  np.testing.assert_allclose(float(loss), multi_label_reference(img, txt, log_scale), rtol=1e-5)
  assert 0 <= float(metrics["i2p_acc"]) <= 1 and 0 <= float(metrics["p2i_acc"]) <= 1
  # gradient against central differences of the float64 reference in one image and one prompt coordinate
  g_img, g_txt = jax.grad(lambda a, b: multi_label_loss(a, b, jnp.float32(log_scale))[0], argnums=(0, 1))(img, txt)
  eps = 1e-4
  for (which, idx), g in ((("img", (3, 4)), g_img), (("txt", (7, 1, 2)), g_txt)):
    up, dn = [x.astype(np.float64).copy() for x in (img, txt)], [x.astype(np.float64).copy() for x in (img, txt)]
    slot = 0 if which == "img" else 1
    up[slot][idx] += eps
    dn[slot][idx] -= eps
    fd = (multi_label_reference(*up, log_scale) - multi_label_reference(*dn, log_scale)) / (2 * eps)
    np.testing.assert_allclose(float(np.asarray(g)[idx]), fd, rtol=1e-3, atol=1e-5)


def test_multi_label_loss_8_devices_vs_1(embeddings):
  img, txt = embeddings
  f = lambda a, b, s, axis_name=None: multi_label_loss(a, b, s, axis_name)[0]
  ref, ref_g = jax.value_and_grad(f, argnums=(0, 1, 2))(img, txt, jnp.float32(2.0))
  mesh = parallel.make_mesh()
  assert mesh.size == 8
  rows = P(parallel.DATA)
  fn = jax.jit(jax.shard_map(lambda a, b, s: jax.value_and_grad(f, argnums=(0, 1, 2))(a, b, s, parallel.DATA),
                             mesh=mesh, in_specs=(rows, rows, P()), out_specs=(P(), (rows, rows, P()))))
  put = lambda x, spec: jax.device_put(x, NamedSharding(mesh, spec))
  loss, g = fn(put(img, rows), put(txt, rows), put(jnp.float32(2.0), P()))
  np.testing.assert_allclose(float(loss), float(ref), rtol=1e-6)
  for a, b in zip(g, ref_g):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- assignment


def test_gumbel_hard_assignment_is_one_hot_forward_with_the_soft_gradient():
  rng = np.random.default_rng(1)
  logits = jnp.asarray(rng.normal(size=(2, 5, 7)), jnp.float32)     # [b, groups, segments]
  noise = jax.random.gumbel(jax.random.key(0), logits.shape)
  hard = np.asarray(gv.gumbel_softmax(logits, noise, 1.0, True, axis=-2))
  np.testing.assert_allclose(hard.sum(axis=1), 1.0, atol=1e-6)      # every segment to exactly one group
  assert set(np.round(hard, 6).ravel().tolist()) <= {0.0, 1.0}
  np.testing.assert_array_equal(hard.argmax(axis=1), np.asarray(jnp.argmax(logits + noise, axis=1)))
  w = jnp.asarray(rng.normal(size=logits.shape), jnp.float32)
  g_hard = jax.grad(lambda x: jnp.sum(w * gv.gumbel_softmax(x, noise, 0.5, True, axis=-2)))(logits)
  g_soft = jax.grad(lambda x: jnp.sum(w * jax.nn.softmax((x + noise) / 0.5, axis=-2)))(logits)
  np.testing.assert_allclose(np.asarray(g_hard), np.asarray(g_soft), rtol=1e-6, atol=1e-7)
  assert float(jnp.abs(g_hard).max()) > 0
  # without noise (inference): the argmax of the logits, still with softmax's gradient
  h = np.asarray(gv.hard_softmax(logits, axis=-2))
  np.testing.assert_array_equal(h.argmax(axis=1), np.asarray(jnp.argmax(logits, axis=1)))
  g = jax.grad(lambda x: jnp.sum(w * gv.hard_softmax(x, axis=-2)))(logits)
  np.testing.assert_allclose(np.asarray(g), np.asarray(jax.grad(
      lambda x: jnp.sum(w * jax.nn.softmax(x, axis=-2)))(logits)), rtol=1e-6, atol=1e-7)


def test_select_nouns_present_distinct_and_keyed():
  nouns = np.zeros((6, 10), np.int32)
  for i, present in enumerate([[3], [0, 9], [1, 2, 5], [1, 2, 5, 7], [4, 6, 8, 9], []]):
    nouns[i, present] = 1
  keys = augment.example_keys(jax.random.key(3), jnp.arange(6))
  idx, valid = (np.asarray(a) for a in select_nouns(keys, jnp.asarray(nouns), 3))
  np.testing.assert_array_equal(valid.sum(axis=1), [1, 2, 3, 3, 3, 0])
  for i in range(6):
    chosen = idx[i][valid[i]]
    assert len(set(chosen.tolist())) == len(chosen) and nouns[i, chosen].all()
  draws = {tuple(np.asarray(select_nouns(augment.example_keys(jax.random.key(s), jnp.arange(6)),
                                         jnp.asarray(nouns), 3)[0][3]).tolist()) for s in range(20)}
  assert len({tuple(sorted(d)) for d in draws}) > 1       # a 4-noun scene: different subsets of 3 by key


# ----------------------------------------------------------------------------- the method


def tiny_config(**overrides):
  """The GroupViT quick start shrunk: width 32, 1-layer text tower of width 32, embed 32."""
  return tiny_method_config("groupvit", **{
      "data.num_train": 64, "data.num_test": 64, "batch_size": 16, "eval.batch_size": 32,
      "model.width": 32, "text_model.width": 32, "text_model.depth": 1, "text_model.heads": 2,
      "method.embed_dim": 32, **overrides})


@pytest.fixture(scope="module")
def setup():
  method = build_method(tiny_config(), total_steps=10, steps_per_epoch=4)
  data = scenes.generate(16, split="train", seed=0, image_size=32)
  tokens = method.tokenizer.encode(list(data["caption"]))
  images = jax.jit(augment.eval_preprocess, static_argnums=1)(data["image"], 32)[None]
  views = {"crops": (np.asarray(images),), "tokens": tokens, "nouns": data["nouns"]}
  params, state = jax.jit(method.init)(jax.random.key(0), views)
  return method, params, state, views


def test_prompts_are_the_class_names():
  method = build_method(tiny_config())
  words = [method.tokenizer.decode(t) for t in method.prompt_tokens]
  assert words == [f"a photo of a {n.lower()}." for n in scenes.CLASS_NAMES]   # the tokenizer lower-cases
  assert (method.prompt_tokens != method.tokenizer.unk_token).all()


def test_step_8_devices_vs_1_value_gradient_update_and_gumbel_draws(setup):
  method, params, state, views = setup
  one = make_method_step(method, state, views, 1, seed=5, sgd_lr=0.1)(params, state, views, 3)
  eight = make_method_step(method, state, views, 8, seed=5, sgd_lr=0.1)(params, state, views, 3)
  np.testing.assert_allclose(float(eight.loss), float(one.loss), rtol=1e-6)
  for name in ("clip_loss", "multi_label_loss", "groups_used", "noun_prompts", "i2p_acc"):
    np.testing.assert_allclose(float(eight.metrics[name]), float(one.metrics[name]), rtol=1e-6, err_msg=name)
  # float32 reduction order: each leaf to 1e-5 of its own scale; leaves whose gradient is zero in exact arithmetic
  # (the biases of MLPs over the token axis that a LayerNorm then removes: one constant per group token) below
  # 1e-5 of the largest leaf on both (the zero-initialised group_token1 behind a LayerNorm gets |g| ~ 350)
  top = max(float(np.abs(np.asarray(b)).max()) for b in jax.tree.leaves(one.grads))
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(eight.grads), jax.tree.leaves(one.grads)):
    a, b = np.asarray(a), np.asarray(b)
    if np.abs(b).max() < 1e-5 * top:
      assert np.abs(a).max() < 1e-5 * top, jax.tree_util.keystr(path)
    else:
      assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max(), jax.tree_util.keystr(path)
  assert_trees_close(eight.params, one.params, rtol=1e-5, atol=0.1 * 1e-5 * top)   # SGD at lr 0.1: the same bound
  g = one.grads
  assert float(np.abs(np.asarray(g["multi_label_logit_scale"]))) > 0
  for leaf in ("group_token0", "grouping0", "grouping1", "group_projector1_mlp"):   # gradient through the groups
    assert max(float(np.abs(x).max()) for x in jax.tree.leaves(g["model"]["image"][leaf])) > 0, leaf
  for stage in ("grouping0", "grouping1"):   # the assignment logits learn only through the straight-through soft part
    for proj in ("q_proj", "k_proj"):
      assert float(np.abs(np.asarray(g["model"]["image"][stage]["assign"][proj]["kernel"])).max()) > 0, (stage, proj)
  # the Gumbel draws depend on the key: another seed gives another loss, the same seed the same
  other = make_method_step(method, state, views, 1, seed=6)(params, state, views, 3)
  again = make_method_step(method, state, views, 1, seed=5)(params, state, views, 3)
  assert float(other.loss) != float(one.loss)
  assert float(again.loss) == float(one.loss)


def test_loss_is_clip_plus_multi_label_with_gumbel_noise(setup):
  method, params, state, views = setup
  images = views["crops"][0][0]
  step = make_method_step(method, state, views, 1, seed=2)(params, state, views, 0)
  keys = augment.example_keys(jax.random.key(2), jnp.arange(16))
  noise_keys = jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys)
  out, z_img = method.model.apply({"params": params["model"]}, images, noise_keys, method=GroupViTCLIP.encode_image)
  for a in out["assign"]:                                            # training forward: one-hot rows
    a = np.asarray(a)
    np.testing.assert_allclose(a.sum(axis=-1), 1.0, atol=1e-5)
    assert (np.isclose(a, 0, atol=1e-6) | np.isclose(a, 1, atol=1e-6)).all()
  z_txt = method.model.apply({"params": params["model"]}, views["tokens"], method=GroupViTCLIP.encode_text)
  z_cls = method.model.apply({"params": params["model"]}, method.prompt_tokens, method=GroupViTCLIP.encode_text)
  idx, valid = select_nouns(jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys), jnp.asarray(views["nouns"]), 3)
  prompts = np.where(np.asarray(valid)[..., None], np.asarray(z_cls)[np.asarray(idx)], np.asarray(z_txt)[:, None])
  ml = multi_label_reference(np.asarray(z_img), prompts, float(params["multi_label_logit_scale"]))
  np.testing.assert_allclose(float(step.metrics["multi_label_loss"]), ml, rtol=1e-4)
  np.testing.assert_allclose(float(step.loss), float(step.metrics["clip_loss"]) + ml, rtol=1e-4)
  # without noise (inference) the assignment differs for some segment: the noise is really used
  clean, _ = method.model.apply({"params": params["model"]}, images, method=GroupViTCLIP.encode_image)
  assert any((np.asarray(a).argmax(-1) != np.asarray(c).argmax(-1)).any() for a, c in zip(out["assign"],
                                                                                         clean["assign"]))


@pytest.mark.parametrize("mode", ["hard", "soft"])
def test_encode_dense_gives_each_patch_its_final_group(setup, mode):
  method, params, state, views = setup
  method.hp.dense_assignment = mode
  images = views["crops"][0][0][:4]
  dense = np.asarray(jax.jit(method.encode_dense)(params, state, images))
  assert dense.shape == (4, 8, 8, 32)                               # 32 px / patch 4, embed_dim 32
  np.testing.assert_allclose(np.linalg.norm(dense, axis=-1), 1.0, rtol=1e-5)
  final, groups = (np.asarray(a) for a in method.assignment_maps(params, state, images))
  assert final.shape == (4, 8, 8, 4) and groups.shape == (4, 4, 32)
  np.testing.assert_array_equal(final.sum(-1), 1.0)
  for i in range(4):
    sims = dense[i].reshape(64, 32) @ groups[i].T                     # [patches, final groups]
    np.testing.assert_allclose(sims.max(axis=1), 1.0, rtol=1e-5)      # each patch IS one group's embedding
    np.testing.assert_array_equal(sims.argmax(axis=1), final[i].reshape(64, 4).argmax(axis=1))
  # hard: the composition of the stages' inference assignments, patch -> stage-1 group -> final group
  out, _ = method.model.apply({"params": params["model"]}, images, method=GroupViTCLIP.encode_image)
  a1, a2 = (np.asarray(a).argmax(-1) for a in (out["assign"] if mode == "hard" else out["soft"]))
  if mode == "hard":
    np.testing.assert_array_equal(final.reshape(4, 64, 4).argmax(-1), np.take_along_axis(a2, a1, axis=1))
  # the image embedding is the projected mean of the final groups (before normalisation)
  emb = np.asarray(method.encode_image_embedding(params, state, images))
  np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
  method.hp.dense_assignment = "hard"


def test_loss_decreases(setup):
  method, params, state, views = setup
  tx = optax.adam(3e-3)
  opt_state = tx.init(params)
  step = make_method_step(method, state, views, 8, tx=tx)
  losses = []
  for i in range(8):
    out = step(params, state, views, i, opt_state)
    params, opt_state, state = out.params, out.opt_state, out.state_after_update
    losses.append(float(out.loss))
  assert np.isfinite(losses).all()
  assert losses[-1] < losses[0] - 0.3, losses


@pytest.mark.parametrize("overrides, needles", [
    ({"model": dict(name="vit_micro", patch_size=4)}, ("groupvit needs the grouping image tower", "vit_micro")),
    ({"method.multi_label": 11}, ("multi_label=11", "10 nouns")),
    ({"method.prompt_template": "a photo"}, ("prompt_template", "'{}'")),
    ({"model.num_output_groups": (16,)}, ("len(num_output_groups)", "depths")),
    ({"model.num_group_tokens": (16, 4, 2)}, ("num_group_tokens", "the last none")),
    ({"method.dense_assignment": "argmax"}, ("dense_assignment", "hard")),
    ({"dataset": "shapes"}, ("needs per-example nouns", "multi_label=0")),
])
def test_bad_config_is_one_line(overrides, needles):
  config = override(tiny_config(), overrides)
  one_line_error(lambda: build_method(config), *needles)


def test_missing_nouns_in_the_batch_is_one_line(setup):
  method, params, state, views = setup
  bad = {k: v for k, v in views.items() if k != "nouns"}
  one_line_error(lambda: method.loss(params, state, bad, jax.random.key(0), 0), "needs multi-hot 'nouns'")
