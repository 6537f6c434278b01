"""CLIP's text Transformer (causal, pooled at the end-of-text token) and CLIP's attention-pooling ResNet."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cl_jax.models import build_backbone
from cl_jax.models.clip_resnet import AttentionPool2d
from cl_jax.models.text import TextTransformer, build_text_model

VOCAB, CTX, EOT = 50, 12, 49


@pytest.fixture(scope="module")
def text_model():
  model = TextTransformer(vocab_size=VOCAB, context_length=CTX, width=32, depth=2, num_heads=4, embed_dim=16)
  tokens = np.zeros((3, CTX), np.int32)
  params = jax.jit(model.init)(jax.random.key(0, impl="rbg"), tokens)
  apply = jax.jit(lambda p, t: model.apply(p, t, return_tokens=True))
  return model, params, apply


def _row(ids):
  row = np.zeros(CTX, np.int32)
  row[:len(ids)] = ids
  return row


def test_shapes_and_clip_init(text_model):
  _, params, apply = text_model
  out = apply(params, np.stack([_row([48, 5, 6, EOT]), _row([48, EOT]), _row([48, 7, 8, 9, 10, EOT])]))
  assert out["pooled"].shape == (3, 16) and out["tokens"].shape == (3, CTX, 32)
  p = params["params"]
  np.testing.assert_allclose(np.std(p["positional_embedding"]), 0.01, rtol=0.2)
  np.testing.assert_allclose(np.std(p["token_embedding"]["embedding"]), 0.02, rtol=0.1)
  np.testing.assert_allclose(np.std(p["text_projection"]), 32 ** -0.5, rtol=0.2)


def test_causal_mask_and_eot_pooling(text_model):
  _, params, apply = text_model
  a = _row([48, 5, 6, EOT])
  b = a.copy()
  b[5:] = [3, 4, 5, 6, 7, 8, 9]    # different tokens after the end-of-text token
  c = a.copy()
  c[2] = 9                         # a different token before it
  out = apply(params, np.stack([a, b, c]))
  tok, pooled = np.asarray(out["tokens"]), np.asarray(out["pooled"])
  # causal: position j sees only positions <= j
  np.testing.assert_allclose(tok[0, :5], tok[1, :5], atol=1e-6)
  np.testing.assert_allclose(tok[0, :2], tok[2, :2], atol=1e-6)
  assert np.abs(tok[0, 2:] - tok[2, 2:]).max() > 1e-4
  # pooled at the end-of-text token (argmax id) and projected: later tokens do not matter
  np.testing.assert_allclose(pooled[0], pooled[1], atol=1e-6)
  assert np.abs(pooled[0] - pooled[2]).max() > 1e-4
  np.testing.assert_allclose(pooled[0], tok[0, 3] @ np.asarray(params["params"]["text_projection"]), rtol=1e-5,
                             atol=1e-6)


def test_text_model_config_errors():
  with pytest.raises(ValueError, match="act"):
    build_text_model({"act": "relu6"}, 10, 8, 4)
  with pytest.raises(ValueError, match="vocab_size"):
    build_text_model({"vocab_size": 5}, 10, 8, 4)
  model = build_text_model({"width": 16, "depth": 1, "heads": 2}, 10, 8, 4)
  assert (model.vocab_size, model.context_length, model.embed_dim) == (10, 8, 4)
  with pytest.raises(ValueError, match="context_length"):
    model.init(jax.random.key(0), np.zeros((1, 9), np.int32))


def test_clip_resnet_registered_and_resolution_flexible():
  model = build_backbone({"name": "clip_resnet_tiny", "output_dim": 24})
  x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
  out, variables = jax.jit(lambda x: model.init_with_output(jax.random.key(0, impl="rbg"), x, train=False))(x)
  assert "batch_stats" in variables and model.feature_dim == 24
  # 3 stem convs, 4 stages, attention pool
  assert {"stem_conv1", "stem_conv2", "stem_conv3", "layer4_block1", "attnpool"} <= set(variables["params"])
  assert variables["params"]["attnpool"]["positional_embedding"].shape == (1, 1, 1, 512)
  assert out.shape == (2, 24) and np.isfinite(out).all()
  big = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, np.tile(x, (1, 2, 2, 1)))
  assert big.shape == (2, 24)
  with pytest.raises(ValueError, match="too small"):
    model.init(jax.random.key(0), np.zeros((1, 16, 16, 3)), train=False)


def test_attention_pool_queries_with_the_mean_and_is_order_free_without_positions():
  pool = AttentionPool2d(num_heads=2, output_dim=6)
  x = np.random.default_rng(1).normal(size=(2, 3, 3, 8)).astype(np.float32)
  params = pool.init(jax.random.key(0), x)
  apply = jax.jit(pool.apply)
  p = dict(params["params"])
  p["positional_embedding"] = jnp.zeros_like(p["positional_embedding"])
  p["mean_positional_embedding"] = jnp.zeros_like(p["mean_positional_embedding"])
  perm = np.random.default_rng(2).permutation(9)
  shuffled = x.reshape(2, 9, 8)[:, perm].reshape(2, 3, 3, 8)
  a, b = apply({"params": p}, x), apply({"params": p}, shuffled)
  assert a.shape == (2, 6)
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
  # with the learned positions the spatial order matters
  c, d = apply(params, x), apply(params, shuffled)
  assert np.abs(np.asarray(c) - np.asarray(d)).max() > 1e-5
