"""PACL (Mukhoti et al. 2023): the patch-aligned compatibility and loss against float64 NumPy loops, its reduction
to CLIP when all patches agree, value and gradient on 8 devices vs 1, frozen towers get no gradient, the loss
decreases, start from a CLIP run's towers (init_from), the dense readout, and one-line config errors."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cl_jax import parallel, train
from cl_jax.data import augment, scenes
from cl_jax.losses.clip import clip_loss
from cl_jax.losses.pacl import patch_compatibility, pacl_loss
from tests.harness import adam_steps, build_method, make_method_step, one_line_error, override, tiny_method_config


def unit(x):
  x = np.asarray(x, np.float64)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def compat_reference(patches, texts):
  """Eq. 2-3 one image and one caption at a time: softmax over patches of the cosines, weighted sum, cosine."""
  out = np.zeros((len(patches), len(texts)))
  for i, x in enumerate(unit(patches)):
    for j, y in enumerate(unit(texts)):
      s = x @ y
      a = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
      out[i, j] = unit(a @ x) @ y
  return out


def loss_reference(patches, texts, log_scale):
  logits = math.exp(min(log_scale, math.log(100))) * compat_reference(patches, texts)
  lse = lambda v: v.max() + math.log(np.exp(v - v.max()).sum())
  n = len(logits)
  return (np.mean([lse(logits[i]) - logits[i, i] for i in range(n)])
          + np.mean([lse(logits[:, j]) - logits[j, j] for j in range(n)])) / 2


@pytest.fixture(scope="module")
def arrays():
  rng = np.random.default_rng(0)
  return rng.normal(size=(16, 9, 12)).astype(np.float32), rng.normal(size=(16, 12)).astype(np.float32)


def test_compatibility_and_loss_match_float64_loops(arrays):
  patches, texts = arrays
  np.testing.assert_allclose(np.asarray(patch_compatibility(patches, texts)), compat_reference(patches, texts),
                             rtol=1e-5, atol=1e-6)
  loss, metrics = pacl_loss(patches, texts, jnp.float32(2.0))
  np.testing.assert_allclose(float(loss), loss_reference(patches, texts, 2.0), rtol=1e-5)
  assert 0 <= float(metrics["i2t_acc"]) <= 1


def test_identical_patches_reduce_to_clip(arrays):
  _, texts = arrays
  img = np.random.default_rng(1).normal(size=(16, 12)).astype(np.float32)
  patches = np.repeat(img[:, None], 5, axis=1)          # softmax weights are uniform over equal patches
  got, _ = pacl_loss(patches, texts, jnp.float32(2.5))
  want, _ = clip_loss(img, texts, jnp.float32(2.5))
  np.testing.assert_allclose(float(got), float(want), rtol=1e-5)


def test_loss_and_gradient_on_8_devices_equal_1(arrays):
  patches, texts = arrays
  mesh = parallel.make_mesh(8)
  P = jax.sharding.PartitionSpec

  def sharded(p, t, s):
    return jax.shard_map(lambda a, b, c: pacl_loss(a, b, c, axis_name=parallel.DATA)[0], mesh=mesh,
                         in_specs=(P(parallel.DATA), P(parallel.DATA), P()), out_specs=P())(p, t, s)

  one = jax.value_and_grad(lambda p, t, s: pacl_loss(p, t, s)[0], argnums=(0, 1, 2))
  eight = jax.value_and_grad(sharded, argnums=(0, 1, 2))
  (l1, g1), (l8, g8) = one(patches, texts, jnp.float32(2.0)), jax.jit(eight)(patches, texts, jnp.float32(2.0))
  np.testing.assert_allclose(float(l8), float(l1), rtol=1e-6)
  for a, b in zip(g8, g1):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
  assert float(np.abs(g1[0]).max()) > 0 and float(np.abs(g1[1]).max()) > 0


# ----------------------------------------------------------------------------- the method


def tiny_config(**method):
  """The PACL quick start shrunk: the micro ViT on 32 px scenes (64 patches), a 1-layer text tower of width 32."""
  return tiny_method_config("pacl", **{
      "data.num_train": 64, "data.num_test": 64, "batch_size": 16, "eval.batch_size": 32,
      "text_model.width": 32, "text_model.depth": 1, "text_model.heads": 2, "method.embed_dim": 32,
      **{f"method.{k}": v for k, v in method.items()}})


def scene_views(method, n=16):
  data = scenes.generate(n, split="train", seed=0, image_size=32)
  images = jax.jit(augment.eval_preprocess, static_argnums=1)(data["image"], 32)[None]
  return {"crops": (np.asarray(images),), "tokens": method.tokenizer.encode(list(data["caption"]))}


@pytest.fixture(scope="module")
def setup():
  method = build_method(tiny_config(), total_steps=10, steps_per_epoch=4)
  views = scene_views(method)
  params, state = jax.jit(method.init)(jax.random.key(0), views)
  return method, params, state, views


def test_method_loss_is_pacl_on_the_embedder_and_text(setup):
  method, params, state, views = setup
  got = make_method_step(method, state, views, 1)(params, state, views, 0)
  _, z, t = method.model.apply({"params": params["model"]}, views["crops"][0][0], views["tokens"], train=True)
  assert z.shape == (16, 64, 32)                        # 8 x 8 patches of 4 px, joint width 32
  np.testing.assert_allclose(float(got.loss), loss_reference(z, t, float(params["logit_scale"])), rtol=1e-5)
  assert "image_projection" not in params["model"] and "patch_embedder" in params["model"]


def test_method_8_devices_vs_1_with_sgd(setup):
  method, params, state, views = setup
  one = make_method_step(method, state, views, 1, sgd_lr=0.1)(params, state, views, 0)
  eight = make_method_step(method, state, views, 8, sgd_lr=0.1)(params, state, views, 0)
  np.testing.assert_allclose(float(eight.loss), float(one.loss), rtol=1e-6)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(eight.params), jax.tree.leaves(one.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6, err_msg=jax.tree_util.keystr(path))
  moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()), one.params, params)
  assert moved["model"]["backbone"]["patch_embed"]["kernel"] > 0   # trained from scratch: the towers move


def test_frozen_towers_get_no_gradient(setup):
  _, _, _, views = setup
  config = tiny_config(freeze_towers=True)
  config.init_from, config.optim.frozen = "/somewhere", ("backbone", "text")
  method = build_method(config, total_steps=10, steps_per_epoch=4)
  params, state = jax.jit(method.init)(jax.random.key(0), views)
  grads = make_method_step(method, state, views, 1)(params, state, views, 0).grads["model"]
  for part in ("backbone", "text"):
    assert all(float(np.abs(np.asarray(g)).max()) == 0 for g in jax.tree.leaves(grads[part])), part
  assert float(np.abs(np.asarray(grads["patch_embedder"]["linear"]["kernel"])).max()) > 0


def test_loss_decreases_and_the_dense_readout(setup):
  method, params, state, views = setup
  params, losses = adam_steps(method, params, state, views, 6)
  assert losses[-1] < losses[0] - 0.05, losses
  images = views["crops"][0][0][:3]
  dense = np.asarray(method.encode_dense(params, state, images))
  assert dense.shape == (3, 8, 8, 32)
  _, z, _ = method.model.apply({"params": params["model"]}, images, views["tokens"][:3], train=False)
  np.testing.assert_allclose(dense.reshape(3, 64, 32), unit(z), rtol=1e-4, atol=1e-5)
  img = np.asarray(method.encode_image_embedding(params, state, images))
  np.testing.assert_allclose(img, unit(unit(z).mean(axis=1)), rtol=1e-4, atol=1e-5)


def test_starts_from_a_clip_runs_towers(tmp_path):
  clip_dir, pacl_dir = str(tmp_path / "clip"), str(tmp_path / "pacl")
  shared = {"data.num_train": 64, "data.num_test": 64, "batch_size": 16, "eval.batch_size": 32, "total_steps": 1,
            "eval.every": -1, "text_model.width": 32, "text_model.depth": 1, "text_model.heads": 2,
            "method.embed_dim": 32}
  train.train_and_evaluate(tiny_method_config("clip_scenes", **shared), clip_dir)
  c = tiny_method_config("pacl", **{**shared, "init_from": clip_dir, "method.freeze_towers": True,
                                    "optim.frozen": ("backbone", "text"), "total_steps": 2})
  train.train_and_evaluate(c, pacl_dir)
  _, clip_state, _, _ = train.load_run(clip_dir)
  _, pacl_state, _, _ = train.load_run(pacl_dir)
  for part in ("backbone", "text"):       # copied, then frozen: still the CLIP run's after 2 steps
    for a, b in zip(jax.tree.leaves(pacl_state["params"]["model"][part]),
                    jax.tree.leaves(clip_state["params"]["model"][part])):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("overrides, needles", [
    ({"method.freeze_towers": True}, ("freeze_towers=True", "config.init_from", "freeze_towers=False")),
    ({"method.freeze_towers": True, "init_from": "/x"}, ("config.optim.frozen", "'backbone'")),
    ({"model": dict(name="resnet_tiny")}, ("ViT image tower", "resnet_tiny")),
])
def test_bad_config_is_one_line(overrides, needles):
  config = override(tiny_config(), overrides)
  one_line_error(lambda: build_method(config), *needles)


def test_init_from_a_run_of_another_model_is_one_line(tmp_path):
  simclr_dir = str(tmp_path / "simclr")
  train.train_and_evaluate(tiny_method_config("simclr", **{"total_steps": 1, "eval.every": -1}), simclr_dir)
  c = tiny_config(freeze_towers=True)
  c.init_from, c.optim.frozen, c.total_steps, c.eval.every = simclr_dir, ("backbone", "text"), 1, -1
  one_line_error(lambda: train.train_and_evaluate(c, str(tmp_path / "pacl")), f"config.init_from={simclr_dir}")


def test_init_from_a_missing_workdir_is_one_line(tmp_path):
  c = tiny_config(freeze_towers=True)
  c.init_from, c.optim.frozen, c.total_steps, c.eval.every = str(tmp_path / "nope"), ("backbone", "text"), 1, -1
  one_line_error(lambda: train.train_and_evaluate(c, str(tmp_path / "pacl")), "config.init_from=",
                 "nope holds no cl_jax run")
