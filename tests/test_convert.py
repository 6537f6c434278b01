"""cl_jax.convert: PyTorch state dicts of the real reference packages (timm, torchvision), built with random weights,
converted into cl_jax trees give the same features (1e-5 relative, float32); the reverse round-trips bitwise; a
state dict of another architecture fails in one line naming the first differing key."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")

from cl_jax.convert import StateDictMismatch, timm_vit, torchvision_resnet  # noqa: E402
from cl_jax.convert import __main__ as cli  # noqa: E402

RTOL = 1e-5
SMALL_DATA = {"num_train": 512, "num_test": 256}   # the written workdirs' evaluation splits


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
  return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())


def images(n: int, size: int, seed: int = 0) -> np.ndarray:
  return np.random.RandomState(seed).randn(n, 3, size, size).astype(np.float32)


def nhwc(x: np.ndarray) -> jnp.ndarray:
  return jnp.asarray(x.transpose(0, 2, 3, 1))


def randomise(module, scale: float = 0.2, seed: int = 0):
  """Every parameter random (not timm's zero biases / unit norms, which would hide a swapped key); BN statistics
  random too, so eval-mode BatchNorm is exercised; the module in eval mode."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in module.parameters():
      p.copy_(torch.randn(p.shape, generator=g) * scale)
    for m in module.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.weight.copy_(1 + 0.2 * torch.rand(m.weight.shape, generator=g))
        m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
        m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
  return module.eval()


@pytest.fixture(scope="module")
def micro_vit():
  """timm VisionTransformer at cl_jax's vit_micro sizes (width 64, depth 2, 2 heads), patch 8, 32 px."""
  from timm.models.vision_transformer import VisionTransformer
  return randomise(VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, num_classes=0))


@pytest.fixture(scope="module")
def resnet18():
  m = randomise(torchvision.models.resnet18(weights=None), scale=0.05)
  m.fc = torch.nn.Identity()
  return m


def test_timm_vit_parity_cls_and_patch_tokens(micro_vit):
  x = images(2, 32)
  with torch.no_grad():
    ref_cls = micro_vit(torch.from_numpy(x)).numpy()
    ref_tokens = micro_vit.forward_features(torch.from_numpy(x)).numpy()
  m = timm_vit.model("vit_micro/8")
  out = m.apply(timm_vit.to_flax(micro_vit.state_dict(), m), nhwc(x), train=False, return_tokens=True)
  assert rel_err(out["cls"], ref_cls) < RTOL
  assert rel_err(out["patches"], ref_tokens[:, 1:]) < RTOL


def test_timm_vit_small_patch16_224_full_size_parity():
  ref = randomise(timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0), scale=0.05)
  x = images(1, 224)
  with torch.no_grad():
    want = ref(torch.from_numpy(x)).numpy()
  m = timm_vit.model("vit_small_patch16_224")
  got = m.apply(timm_vit.to_flax(ref.state_dict(), m), nhwc(x), train=False)
  assert got.shape == (1, 384) and rel_err(got, want) < RTOL


def test_timm_vit_round_trip_is_bitwise_and_loads_strictly(micro_vit):
  sd = micro_vit.state_dict()
  back = timm_vit.from_flax(timm_vit.to_flax(sd, timm_vit.model("vit_micro/8")), depth=2)
  assert set(back) == set(sd)
  for k, v in sd.items():
    assert back[k].dtype == v.numpy().dtype and np.array_equal(back[k], v.numpy()), k
  from timm.models.vision_transformer import VisionTransformer
  fresh = VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, num_classes=0)
  fresh.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()}, strict=True)


def test_timm_vit_position_grid_resized_at_conversion_equals_runtime_interpolation(micro_vit):
  """Converting to a 6x6 grid (48 px) gives the model that the 4x4-grid one becomes when it interpolates at 48 px."""
  m, x = timm_vit.model("vit_micro/8"), nhwc(images(2, 48))
  resized = timm_vit.to_flax(micro_vit.state_dict(), m, grid=(6, 6))
  assert resized["params"]["pos_embedding"].shape == (1, 6, 6, 64)
  np.testing.assert_allclose(m.apply(resized, x, train=False),
                             m.apply(timm_vit.to_flax(micro_vit.state_dict(), m), x, train=False), rtol=1e-6)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_torchvision_resnet_eval_parity_with_batchnorm_statistics(arch, resnet18):
  ref = resnet18 if arch == "resnet18" else randomise(torchvision.models.resnet50(weights=None), scale=0.05)
  ref.fc = torch.nn.Identity()
  x = images(2, 64)
  with torch.no_grad():
    want = ref(torch.from_numpy(x)).numpy()
  variables = torchvision_resnet.to_flax(ref.state_dict(), arch)
  np.testing.assert_array_equal(variables["batch_stats"]["stem_bn"]["var"], ref.bn1.running_var.numpy())
  got = torchvision_resnet.model(arch).apply(variables, nhwc(x), train=False)
  assert got.shape == want.shape and rel_err(got, want) < RTOL


def test_torchvision_resnet_round_trip_is_bitwise_and_loads_strictly(resnet18):
  sd = resnet18.state_dict()
  back = torchvision_resnet.from_flax(torchvision_resnet.to_flax(sd, "resnet18"), "resnet18")
  assert set(back) == set(sd)
  for k, v in sd.items():
    assert np.array_equal(back[k], v.numpy()), k
  fresh = torchvision.models.resnet18(weights=None)
  fresh.fc = torch.nn.Identity()
  fresh.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()}, strict=True)


def test_a_resnet18_given_as_resnet50_names_the_first_key_and_what_it_looks_like(resnet18):
  with pytest.raises(StateDictMismatch) as e:
    torchvision_resnet.to_flax(resnet18.state_dict(), "resnet50")
  msg = str(e.value)
  assert "\n" not in msg and "torchvision:resnet50" in msg
  assert "'layer1.0.bn3.bias'" in msg and "missing" in msg
  assert "torchvision-layout ResNet (basic blocks [2, 2, 2, 2]" in msg


def test_missing_unexpected_and_misshapen_keys_fail_in_one_line(micro_vit):
  sd = dict(micro_vit.state_dict())
  m = timm_vit.model("vit_micro/8")
  missing = {k: v for k, v in sd.items() if k != "blocks.1.attn.qkv.bias"}
  extra = {**sd, "blocks.0.ls1.gamma": torch.ones(64)}
  wrong = {**sd, "blocks.0.mlp.fc1.weight": torch.zeros(128, 64)}
  for bad, needle in ((missing, "missing key 'blocks.1.attn.qkv.bias'"),
                      (extra, "unexpected key 'blocks.0.ls1.gamma'"),
                      (wrong, "key 'blocks.0.mlp.fc1.weight' has shape (128, 64), timm ViT (width 64, depth 2, "
                              "patch 8) needs (256, 64)")):
    with pytest.raises(StateDictMismatch, match="looks like a timm-layout ViT") as e:
      timm_vit.to_flax(bad, m)
    assert needle in str(e.value) and "\n" not in str(e.value)
  with pytest.raises(StateDictMismatch, match="looks like a torchvision-layout ResNet"):
    timm_vit.to_flax(torchvision.models.resnet18(weights=None).state_dict(), m)


def test_classifier_heads_and_ddp_prefixes_are_dropped(micro_vit, resnet18):
  m = timm_vit.model("vit_micro/8")
  sd = {f"module.{k}": v for k, v in micro_vit.state_dict().items()}
  sd["module.head.weight"] = torch.zeros(10, 64)
  a, b = timm_vit.to_flax(sd, m), timm_vit.to_flax(micro_vit.state_dict(), m)
  np.testing.assert_array_equal(a["params"]["block2"]["fc2"]["kernel"], b["params"]["block2"]["fc2"]["kernel"])
  full = {**resnet18.state_dict(), "fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}
  torchvision_resnet.to_flax(full, "resnet18")


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_command_writes_a_workdir_that_evaluate_restores_and_writes_it_back(tmp_path, micro_vit, fmt):
  """--from=timm -> workdir (train.load_run restores it: same features); --to=torch -> the same state dict."""
  from cl_jax import train
  path = str(tmp_path / f"vit.{fmt}")
  cli.save_state_dict({k: v.numpy() for k, v in micro_vit.state_dict().items()}, path)
  out = str(tmp_path / "wd")
  line = cli.run("timm:vit_micro/8", path, out, image_size=32, data=SMALL_DATA)
  assert "cl_jax vit_micro at 32 px" in line
  run, state, _, step = train.load_run(out)
  assert step == 0 and run.config.model.patch_size == 8
  x = images(2, 32)
  with torch.no_grad():
    want = micro_vit(torch.from_numpy(x)).numpy()
  assert rel_err(run.method.encode(state["params"], state["method_state"], nhwc(x)), want) < RTOL
  back = str(tmp_path / f"back.{fmt}")
  assert "timm layout" in cli.run("", "", back, to="torch", workdir=out)
  from cl_jax.convert import keys
  got = keys.read_checkpoint(back)
  assert set(got) == set(micro_vit.state_dict())
  assert all(np.array_equal(got[k], v.numpy()) for k, v in micro_vit.state_dict().items())


def test_converted_resnet_workdir_starts_a_run_through_init_from(tmp_path, resnet18):
  """config.init_from=<converted workdir> puts the torchvision weights and BN statistics into every backbone copy."""
  from cl_jax import init_from, train
  from cl_jax.convert import workdir_io
  path = str(tmp_path / "rn18.pth")
  torch.save(resnet18.state_dict(), path)
  out = str(tmp_path / "wd")
  cli.run("torchvision:resnet18", path, out, image_size=32, method="byol", data=SMALL_DATA)
  config = workdir_io.image_config(cli.convert_state_dict("torchvision:resnet18",
                                                          {k: v.numpy() for k, v in resnet18.state_dict().items()})[0],
                                   32, "byol")
  config.data.update(SMALL_DATA)
  state, _ = train.init_state(train.build_run(config))
  state, line = init_from.initialise(state, out)
  assert "initialised 4 backbone copies" in line   # params and BN statistics of the online network and the EMA target
  stats = init_from.source_backbone(state)["batch_stats"]
  np.testing.assert_array_equal(np.asarray(stats["stage4_block2"]["BatchNorm_1"]["mean"]),
                                resnet18.layer4[1].bn2.running_mean.numpy())


def test_dino_and_moco_v3_checkpoint_wrappers_are_read_with_a_prefix(tmp_path, micro_vit):
  """DINO's full checkpoint ({'teacher': {'backbone.*', 'head.*'}}) and MoCo v3's ({'state_dict':
  {'module.base_encoder.*', 'module.momentum_encoder.*'}}) give the backbone under --prefix."""
  from cl_jax.convert import keys
  sd = micro_vit.state_dict()
  dino = {"teacher": {**{f"backbone.{k}": v for k, v in sd.items()}, "head.mlp.0.weight": torch.zeros(8, 64)},
          "epoch": 100}
  moco = {"state_dict": {**{f"module.base_encoder.{k}": v for k, v in sd.items()},
                         **{f"module.momentum_encoder.{k}": 2 * v for k, v in sd.items()}}, "arch": "vit_small"}
  m = timm_vit.model("vit_micro/8")
  for name, ckpt, prefix in (("dino", dino, "backbone."), ("moco", moco, "module.base_encoder.")):
    path = str(tmp_path / f"{name}.pth")
    torch.save(ckpt, path)
    got = keys.read_checkpoint(path, prefix)
    assert set(got) == set(sd) and np.array_equal(got["norm.weight"], sd["norm.weight"].numpy())
    timm_vit.to_flax(got, m)
  with pytest.raises(StateDictMismatch, match="no key under the prefix 'module.encoder_q.'"):
    keys.read_checkpoint(str(tmp_path / "moco.pth"), "module.encoder_q.")
