"""Backbones and heads: parameter counts, dtypes, sync BN under shard_map, ViT positions, errors."""
import functools

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from cl_jax.models import BACKBONES, MLP, build_backbone, simclr_head
from cl_jax.models.vit import interpolate_posemb


def _cfg(**kw):
  return mlc.ConfigDict(kw)


def _key(seed):
  # RngBitGenerator keys: threefry init programs take many seconds to compile on this CPU.
  return jax.random.key(seed, impl="rbg")


def _normal(seed, shape):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _init(model, x):
  return jax.jit(lambda k: model.init(k, x, train=False))(_key(0))


def _n_params(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _abstract_params(model, size):
  x = jnp.zeros((2, size, size, 3))
  return jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))["params"]


def _resnet_formula(stages, bottleneck, base, stem="imagenet"):
  """Independent count: conv k*k*cin*cout (no bias), BN 2*c, 1x1 projection if shape changes."""
  bn = lambda c: 2 * c
  total = (49 if stem == "imagenet" else 9) * 3 * base + bn(base)
  cin = base
  for i, n in enumerate(stages):
    c = base * 2**i
    cout = 4 * c if bottleneck else c
    for j in range(n):
      if bottleneck:
        total += cin * c + bn(c) + 9 * c * c + bn(c) + c * cout + bn(cout)
      else:
        total += 9 * cin * c + bn(c) + 9 * c * c + bn(c)
      if cin != cout or (i > 0 and j == 0):
        total += cin * cout + bn(cout)
      cin = cout
  return total


def _vit_formula(dim, depth, patch, size, ratio=4):
  """Independent count: patch proj, cls token, positions (cls + grid), blocks, final LN."""
  n = (size // patch)**2
  block = 2 * dim + (dim * 3 * dim + 3 * dim) + (dim * dim + dim) + 2 * dim \
      + (dim * ratio * dim + ratio * dim) + (ratio * dim * dim + dim)
  return patch * patch * 3 * dim + dim + dim + (n + 1) * dim + depth * block + 2 * dim


# ------------------------------------------------------------------------------- counts


def test_resnet_param_counts_match_torchvision_and_formula():
  r18 = _n_params(_abstract_params(build_backbone(_cfg(name="resnet18")), 224))
  r50 = _n_params(_abstract_params(build_backbone(_cfg(name="resnet50")), 224))
  assert r18 == 11_176_512 == _resnet_formula((2, 2, 2, 2), False, 64)
  assert r50 == 23_508_032 == _resnet_formula((3, 4, 6, 3), True, 64)
  r18_w2 = _n_params(_abstract_params(build_backbone(_cfg(name="resnet18", width=2.0)), 64))
  assert r18_w2 == _resnet_formula((2, 2, 2, 2), False, 128)
  assert 3.9 < r18_w2 / r18 < 4.0  # ~w^2 (BN parameters grow only ~w)
  tiny = _n_params(_abstract_params(build_backbone(_cfg(name="resnet_tiny", stem="cifar")), 16))
  assert tiny == _resnet_formula((1, 1, 1, 1), False, 16, stem="cifar")


def test_vit_param_counts_match_formula():
  vs = _n_params(_abstract_params(build_backbone(_cfg(name="vit_small")), 224))
  assert vs == _vit_formula(384, 12, 16, 224) == 21_665_664  # timm vit_small_patch16_224 minus head
  vm = _n_params(_abstract_params(build_backbone(_cfg(name="vit_micro", patch_size=8)), 32))
  assert vm == _vit_formula(64, 2, 8, 32)


def test_sincos_posemb_matches_moco_v3_formula_and_has_no_params():
  """MoCo v3's build_2d_sincos_position_embedding, written out in NumPy: [sin, cos](row * w_k), [sin, cos](col * w_k)."""
  from cl_jax.models.vit import sincos_posemb_2d
  gh, gw, dim = 3, 5, 16
  omega = 1.0 / 10000.0 ** (np.arange(4) / 4)
  want = np.zeros((gh * gw, dim))
  for r in range(gh):
    for c in range(gw):
      want[r * gw + c] = np.concatenate([np.sin(r * omega), np.cos(r * omega), np.sin(c * omega), np.cos(c * omega)])
  np.testing.assert_allclose(sincos_posemb_2d(gh, gw, dim), want, atol=1e-6)
  model = build_backbone(_cfg(name="vit_micro", patch_size=8, posemb="sincos2d"))
  params = _abstract_params(model, 32)
  assert _n_params(params) == _vit_formula(64, 2, 8, 32) - 16 * 64 - 64   # no position parameters
  with pytest.raises(ValueError, match="model.posemb='rope': must be one of 'learn', 'sincos2d'"):
    build_backbone(_cfg(name="vit_micro", posemb="rope"))


def test_feature_dims_without_running():
  dims = {"resnet_tiny": 128, "resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048,
          "resnet152": 2048, "vit_micro": 64, "vit_tiny": 192, "vit_small": 384, "vit_base": 768,
          "vit_large": 1024, "groupvit": 384,   # GroupViT-S: pooled final groups, before the projection
          # CLIP's modified ResNets: the attention pool's output is the pooled width (width x 32) before the
          # method's projection to the joint space (CLIP Sec. 2.4; RN50x4 has width 80).
          "clip_resnet_tiny": 512, "clip_rn50": 2048, "clip_rn101": 2048, "clip_rn50x4": 2560}
  assert sorted(dims) == BACKBONES.names()
  for name, d in dims.items():
    assert build_backbone(_cfg(name=name)).feature_dim == d
  assert build_backbone(_cfg(name="resnet50", width=2.0)).feature_dim == 4096
  assert build_backbone(_cfg(name="resnet18", width=0.25)).feature_dim == 128


# ------------------------------------------------------------------------------- config errors


def test_config_errors_are_one_line():
  cases = [(_cfg(name="resnet7"), "Unknown backbone 'resnet7'; known backbones: clip_resnet_tiny, .*resnet101"),
           (_cfg(name="resnet18", dtype="fp16"), "^model.dtype='fp16': must be one of 'float32', 'bfloat16'"),
           (_cfg(name="resnet18", bn="global"), "^model.bn='global': must be one of 'sync', 'local'"),
           (_cfg(name="resnet18", stem="tiny"), "^model.stem='tiny': must be one of 'imagenet', 'cifar', 'small'"),
           (_cfg(name="resnet18", width=0.0), r"^model.width=0.0: must be > 0\.$"),
           (_cfg(name="resnet18", depht=50), r"^model.depht: unknown;.* known: bn, dtype, stem, width, zero_init"),
           (_cfg(name="vit_micro", stem="cifar"), r"^model.stem='cifar': vit_micro does not read it \(only resnet"),
           (_cfg(name="vit_micro", patch_sise=8), r"^model.patch_sise: unknown; did you mean patch_size\?"),
           (_cfg(width=1.0), "no 'name'")]
  for cfg, msg in cases:
    with pytest.raises(ValueError, match=msg) as e:
      build_backbone(cfg)
    assert "\n" not in str(e.value)


def test_too_small_image_error():
  model = build_backbone(_cfg(name="resnet50"))
  with pytest.raises(ValueError) as e:
    _abstract_params(model, 16)
  assert str(e.value) == ("image size 16 is too small for resnet50 with the imagenet stem "
                          "(needs >= 32); use stem='cifar' or a larger data.image_size")
  with pytest.raises(ValueError, match=r"image size 4 is too small for resnet_tiny with the cifar "
                     r"stem \(needs >= 8\)"):
    _abstract_params(build_backbone(_cfg(name="resnet_tiny", stem="cifar")), 4)
  with pytest.raises(ValueError, match="not a multiple of the patch size 16 for vit_micro"):
    _abstract_params(build_backbone(_cfg(name="vit_micro")), 24)


# --------------------------------------------------------------------------------- ResNet runs


@pytest.fixture(scope="module")
def images():
  return _normal(1, (16, 16, 16, 3))


@pytest.fixture(scope="module")
def tiny_resnet(images):
  model = build_backbone(_cfg(name="resnet_tiny", stem="cifar", bn="local"))   # one device, no 'data' axis
  return model, _init(model, images)


def _train_apply(model):
  return jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))


@pytest.fixture(scope="module")
def tiny_train_ref(tiny_resnet):
  """Jitted fp32 one-device training-mode forward: (variables, images) -> (features, new state)."""
  return _train_apply(tiny_resnet[0])


def test_resnet_tiny_shapes_and_zero_init(tiny_resnet, images):
  model, variables = tiny_resnet
  out = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images)
  assert out.shape == (16, 128) and out.dtype == jnp.float32
  params = variables["params"]
  for i in range(1, 5):  # last BN gamma of each block is zero (Goyal et al. 2017)
    block = params[f"stage{i}_block1"]
    assert not np.any(np.asarray(block["BatchNorm_1"]["scale"]))
    assert np.all(np.asarray(block["BatchNorm_0"]["scale"]) == 1)
    assert ("proj_conv" in block) == (i > 1)  # projection shortcut where the shape changes
  imagenet = build_backbone(_cfg(name="resnet_tiny"))
  shapes = jax.eval_shape(lambda v: imagenet.apply(v, jnp.zeros((2, 32, 32, 3)), train=False),
                          _init_shapes(imagenet, 32))
  assert shapes.shape == (2, 128) and shapes.dtype == jnp.float32


def _init_shapes(model, size):
  x = jnp.zeros((2, size, size, 3))
  return jax.eval_shape(lambda: model.init(_key(0), x, train=False))


def test_bfloat16_compute_float32_params_and_outputs(tiny_resnet, tiny_train_ref, images):
  _, variables = tiny_resnet
  model16 = build_backbone(_cfg(name="resnet_tiny", stem="cifar", bn="local", dtype="bfloat16"))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(_init_shapes(model16, 16)))
  ref, _ = tiny_train_ref(variables, images)
  out, state = jax.jit(lambda v, x: model16.apply(
      v, x, train=True, mutable=["batch_stats", "intermediates"],
      capture_intermediates=True))(variables, images)
  assert state["intermediates"]["stem_conv"]["__call__"][0].dtype == jnp.bfloat16
  assert state["intermediates"]["stage4_block1"]["__call__"][0].dtype == jnp.bfloat16
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state["batch_stats"]))
  assert out.dtype == jnp.float32 and out.shape == ref.shape
  rel = float(jnp.linalg.norm(out - ref) / jnp.linalg.norm(ref))
  assert rel < 5e-2, rel


def test_sync_bn_under_shard_map_equals_global_batch(tiny_resnet, tiny_train_ref, images):
  _, variables = tiny_resnet
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  shard = lambda a: jax.device_put(a, jax.NamedSharding(mesh, P("data")))
  ref, ref_state = tiny_train_ref(variables, images)

  def run(bn):
    model = build_backbone(_cfg(name="resnet_tiny", stem="cifar", bn=bn))

    def per_device(v, x):
      out, new = model.apply(v, x, train=True, mutable=["batch_stats"])
      return out, new["batch_stats"]

    # Synchronised running statistics are replicated: check_vma accepts out_specs P() for them.
    stats_spec = P() if bn == "sync" else P("data")
    return jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P("data")),
                                 out_specs=(P("data"), stats_spec)))

  out, stats = run("sync")(variables, shard(images))
  np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               stats, ref_state["batch_stats"])

  local_fn = run("local")
  local, _ = local_fn(variables, shard(images))
  assert float(jnp.max(jnp.abs(local - ref))) > 1e-2
  # With local BN, device 0 sees only its 2 examples: same as a global batch of them tiled 8 times.
  tiled_ref, _ = tiny_train_ref(variables, jnp.tile(images[:2], (8, 1, 1, 1)))
  np.testing.assert_allclose(local[:2], tiled_ref[:2], rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------- ViT


def _np_bilinear(grid, out_h, out_w):
  """Reference resize with half-pixel centres and edge clamping (torch align_corners=False)."""
  h, w, _ = grid.shape

  def weights(n_in, n_out):
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
      src = min(max((i + 0.5) * n_in / n_out - 0.5, 0.0), n_in - 1)
      lo = int(np.floor(src))
      hi = min(lo + 1, n_in - 1)
      m[i, lo] += 1 - (src - lo)
      m[i, hi] += src - lo
    return m

  return np.einsum("ih,jw,hwc->ijc", weights(h, out_h), weights(w, out_w), grid)


def test_interpolate_posemb_matches_numpy_bilinear():
  grid = np.random.default_rng(0).normal(size=(1, 4, 6, 5)).astype(np.float32)
  for out in [(2, 3), (7, 9), (4, 6)]:
    got = interpolate_posemb(jnp.asarray(grid), out)
    np.testing.assert_allclose(got[0], _np_bilinear(grid[0], *out), rtol=1e-5, atol=1e-5)
  # Halving is exactly a 2x2 block average.
  np.testing.assert_allclose(interpolate_posemb(jnp.asarray(grid), (2, 3))[0],
                             grid[0].reshape(2, 2, 3, 2, 5).mean(axis=(1, 3)), rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def micro_vit():
  model = build_backbone(_cfg(name="vit_micro", patch_size=8))
  x32 = _normal(3, (2, 32, 32, 3))
  return model, _init(model, x32), x32


def test_vit_multi_resolution_and_tokens(micro_vit):
  model, variables, x32 = micro_vit
  tokens = jax.jit(lambda v, x: model.apply(v, x, train=False, return_tokens=True))
  assert variables["params"]["pos_embedding"].shape == (1, 4, 4, 64)
  out = tokens(variables, x32)
  assert out["cls"].shape == (2, 64) and out["patches"].shape == (2, 16, 64)
  assert out["cls"].dtype == jnp.float32 and out["patches"].dtype == jnp.float32
  # Final LayerNorm (identity affine at init): every token has zero mean over features.
  np.testing.assert_allclose(out["patches"].mean(-1), 0.0, atol=1e-5)
  x16 = x32[:, ::2, ::2]
  out16 = tokens(variables, x16)
  assert out16["cls"].shape == (2, 64) and out16["patches"].shape == (2, 4, 64)
  # The 16 px run equals a run whose position grid is the 2x2 block average of the 4x4 one.
  pos = np.asarray(variables["params"]["pos_embedding"])
  halved = {**variables["params"],
            "pos_embedding": pos.reshape(1, 2, 2, 2, 2, 64).mean(axis=(2, 4))}
  np.testing.assert_allclose(tokens({"params": halved}, x16)["cls"], out16["cls"],
                             rtol=1e-4, atol=1e-5)
  bf16 = build_backbone(_cfg(name="vit_micro", patch_size=8, dtype="bfloat16"))
  out_bf16 = jax.jit(lambda v, x: bf16.apply(v, x, train=False))(variables, x16)
  assert out_bf16.dtype == jnp.float32
  rel = float(jnp.linalg.norm(out_bf16 - out16["cls"]) / jnp.linalg.norm(out16["cls"]))
  assert rel < 5e-2, rel


def test_vit_frozen_patch_embed_gets_no_gradient(micro_vit):
  _, variables, x32 = micro_vit
  models = [build_backbone(_cfg(name="vit_micro", patch_size=8, frozen_patch_embed=f))
            for f in (True, False)]
  loss = lambda m, p: jnp.sum(m.apply({"params": p}, x32, train=True)**2)
  both = jax.jit(lambda p: [jax.grad(functools.partial(loss, m))(p) for m in models])(
      variables["params"])
  for frozen, grads in zip((True, False), both):
    pe = grads["patch_embed"]
    assert (float(jnp.abs(pe["kernel"]).max()) == 0.0) == frozen
    assert (float(jnp.abs(pe["bias"]).max()) == 0.0) == frozen
    assert float(jnp.abs(grads["block1"]["fc1"]["kernel"]).max()) > 0
    assert float(jnp.abs(grads["pos_embedding"]).max()) > 0


# ------------------------------------------------------------------------------- heads


def test_simclr_v1_head_matches_numpy():
  head = simclr_head(1, hidden=32, out=8)
  x = _normal(4, (6, 16))
  v = head.init(_key(0), x, train=False)
  p = jax.tree.map(np.asarray, v["params"])
  assert set(p) == {"dense1", "dense2"} and "batch_stats" not in v
  ref = np.maximum(np.asarray(x) @ p["dense1"]["kernel"] + p["dense1"]["bias"], 0)
  ref = ref @ p["dense2"]["kernel"] + p["dense2"]["bias"]
  np.testing.assert_allclose(head.apply(v, x, train=True), ref, rtol=1e-5, atol=1e-5)
  assert _n_params(p) == 16 * 32 + 32 + 32 * 8 + 8


def test_simclr_v2_head_bn_on_every_layer():
  head = simclr_head(2, hidden=32, out=8)
  x = _normal(5, (64, 16)) * 3 + 1
  v = head.init(_key(0), x, train=False)
  p = v["params"]
  assert set(p) == {"dense1", "bn1", "dense2", "bn2", "dense3", "bn3"}
  assert all("bias" not in p[f"dense{i}"] for i in (1, 2, 3))  # BN follows every Linear
  assert set(p["bn3"]) == {"scale"}  # output BN: scale, no centre (official SimCLR v2)
  z, _ = head.apply(v, x, train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-5)
  np.testing.assert_allclose(z.var(0), 1.0, rtol=1e-3)
  plain = MLP((32,), 8, use_bn=True, last_bn=True)
  pp = jax.eval_shape(lambda: plain.init(jax.random.key(0), x, train=False))["params"]
  assert "bn2" not in pp  # last BN without affine has no parameters
  with pytest.raises(ValueError, match="Unknown SimCLR head version 3; use 1 or 2"):
    simclr_head(3, 32, 8)


def test_head_sync_bn_under_shard_map():
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  x = _normal(6, (16, 12)) * 2 + 0.5
  local, sync = simclr_head(2, 16, 4), simclr_head(2, 16, 4, bn_axis_name="data")
  v = local.init(_key(0), x, train=False)
  ref, _ = local.apply(v, x, train=True, mutable=["batch_stats"])
  f = lambda v, x: sync.apply(v, x, train=True, mutable=["batch_stats"])[0]
  out = jax.jit(jax.shard_map(f, mesh=mesh, in_specs=(P(), P("data")), out_specs=P("data")))(
      v, jax.device_put(x, jax.NamedSharding(mesh, P("data"))))
  np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
