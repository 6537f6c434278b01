"""cl_jax.convert.open_clip against open_clip's CLIP built with random weights: the text tower's embeddings equal to
1e-5 relative, logit_scale carried over, text and image-tower key maps round-tripping bitwise."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")

from cl_jax.convert import StateDictMismatch, open_clip as oc  # noqa: E402
from cl_jax.models.text import TextTransformer  # noqa: E402

RTOL = 1e-5
SMALL_DATA = {"num_train": 512, "num_test": 256}   # the written workdirs' evaluation splits


def rel_err(a, b) -> float:
  return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())


def randomise(module, scale: float = 0.1, seed: int = 0):
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in module.parameters():
      p.copy_(torch.randn(p.shape, generator=g) * scale)
  return module.eval()


def tokens(n: int, context: int, vocab: int, seed: int = 0) -> np.ndarray:
  """Random ids below the end-of-text id (vocab - 1), which ends each row at a different length; 0-padded after."""
  rng = np.random.RandomState(seed)
  out = np.zeros((n, context), np.int64)
  for i in range(n):
    length = rng.randint(2, context)
    out[i, :length - 1] = rng.randint(1, vocab - 1, length - 1)
    out[i, length - 1] = vocab - 1
  return out


@pytest.fixture(scope="module")
def small_clip():
  from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
  return randomise(CLIP(embed_dim=32, vision_cfg=CLIPVisionCfg(layers=2, width=64, head_width=32, patch_size=8,
                                                               image_size=32),
                        text_cfg=CLIPTextCfg(context_length=16, vocab_size=100, width=64, heads=2, layers=2)))


def _text_parity(model, heads: int, width: int, depth: int, vocab: int, context: int, embed: int) -> float:
  t = tokens(3, context, vocab)
  with torch.no_grad():
    want = model.encode_text(torch.from_numpy(t)).numpy()
  text = TextTransformer(vocab_size=vocab, context_length=context, width=width, depth=depth, num_heads=heads,
                         embed_dim=embed, act="gelu")
  got = text.apply({"params": oc.text_to_flax(model.state_dict(), heads)}, jnp.asarray(t, jnp.int32))
  return rel_err(got, want)


def test_text_tower_parity_small(small_clip):
  assert _text_parity(small_clip, heads=2, width=64, depth=2, vocab=100, context=16, embed=32) < RTOL


def test_text_tower_parity_vit_b_32_full_size():
  model = randomise(open_clip.create_model("ViT-B-32", pretrained=None), scale=0.02)
  assert _text_parity(model, heads=8, width=512, depth=12, vocab=49408, context=77, embed=512) < RTOL
  assert float(oc.to_flax(model.state_dict(), 8)["logit_scale"]) == float(model.logit_scale.detach())


def test_text_and_image_key_maps_round_trip_bitwise(small_clip):
  sd = {k: v.numpy() for k, v in small_clip.state_dict().items()}
  back = oc.text_from_flax(oc.text_to_flax(sd, heads=2))
  text_keys = {k for k in sd if not k.startswith("visual.") and k != "logit_scale"}
  assert set(back) == text_keys and all(np.array_equal(back[k], sd[k]) for k in text_keys)
  visual = oc.visual_to_flax(sd, heads=2)
  vit = visual["backbone"]
  assert vit["pos_embedding"].shape == (1, 4, 4, 64) and not vit["patch_embed"]["bias"].any()
  np.testing.assert_array_equal(vit["block2"]["attn"]["qkv"]["kernel"], sd["visual.transformer.resblocks.1.attn.in_proj_weight"].T)
  np.testing.assert_array_equal(visual["image_projection"]["kernel"], sd["visual.proj"])


def test_a_vision_only_state_dict_names_what_it_looks_like(small_clip):
  sd = {k: v for k, v in small_clip.state_dict().items() if k.startswith("visual.") or k == "logit_scale"}
  with pytest.raises(StateDictMismatch, match="open_clip/OpenAI CLIP ViT \\(width 64\\)"):
    oc.to_flax(sd, 2)
  bad = {k: v for k, v in small_clip.state_dict().items() if k != "transformer.resblocks.1.mlp.c_fc.bias"}
  with pytest.raises(StateDictMismatch, match="missing key 'transformer.resblocks.1.mlp.c_fc.bias'") as e:
    oc.text_to_flax(bad, 2)
  assert "\n" not in str(e.value)


def test_image_tower_and_zero_shot_logits_parity(small_clip):
  """CLIP's ViT image tower through vit.ViT's pre_norm / norm_eps / act fields (docs/convert.md)."""
  tower = oc.vision_model(width=64, depth=2, heads=2, patch=8)
  from cl_jax.methods.language_image import DualEncoder
  text = TextTransformer(vocab_size=100, context_length=16, width=64, depth=2, num_heads=2, embed_dim=32, act="gelu")
  model = DualEncoder(tower, text, 32)
  sd = small_clip.state_dict()
  converted = {**oc.visual_to_flax(sd, heads=2), "text": oc.text_to_flax(sd, heads=2)}
  x = np.random.RandomState(0).randn(2, 3, 32, 32).astype(np.float32)
  t = tokens(3, 16, 100)
  with torch.no_grad():
    img, txt = small_clip.encode_image(torch.from_numpy(x)).numpy(), small_clip.encode_text(torch.from_numpy(t)).numpy()
    want = small_clip.logit_scale.exp().numpy() * (img / np.linalg.norm(img, axis=1, keepdims=True)) @ (
        txt / np.linalg.norm(txt, axis=1, keepdims=True)).T
  _, z_img = model.apply({"params": converted}, jnp.asarray(x.transpose(0, 2, 3, 1)), method=DualEncoder.encode_image)
  z_txt = model.apply({"params": converted}, jnp.asarray(t, jnp.int32), method=DualEncoder.encode_text)
  assert rel_err(z_img, img) < RTOL
  scale = np.exp(oc.to_flax(sd, 2)["logit_scale"])
  got = scale * (z_img / jnp.linalg.norm(z_img, axis=1, keepdims=True)) @ (z_txt / jnp.linalg.norm(z_txt, axis=1,
                                                                                                   keepdims=True)).T
  assert rel_err(got, want) < RTOL


def test_modified_resnet_attention_pool_parity():
  """open_clip's ModifiedResNet (CLIP RN50's layout; here layers (1, 1, 1, 1), width 16) -> clip_resnet, eval mode."""
  from open_clip.modified_resnet import ModifiedResNet as TorchModifiedResNet
  from cl_jax.models.clip_resnet import ModifiedResNet
  ref = randomise(TorchModifiedResNet(layers=(1, 1, 1, 1), output_dim=32, heads=8, image_size=64, width=16), 0.1)
  g = torch.Generator().manual_seed(1)
  with torch.no_grad():
    for m in ref.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.weight.copy_(1 + 0.2 * torch.rand(m.weight.shape, generator=g))
        m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
        m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
  x = np.random.RandomState(0).randn(2, 3, 64, 64).astype(np.float32)
  with torch.no_grad():
    want = ref(torch.from_numpy(x)).numpy()
  sd = {f"visual.{k}": v for k, v in ref.state_dict().items()}
  variables = oc.visual_resnet_to_flax(sd, (1, 1, 1, 1), heads=8)
  got = ModifiedResNet(layers=(1, 1, 1, 1), width=16, heads=8, output_dim=32).apply(
      variables, jnp.asarray(x.transpose(0, 2, 3, 1)), train=False)
  assert got.shape == (2, 32) and rel_err(got, want) < RTOL
  del sd["visual.layer2.0.downsample.1.running_var"]
  with pytest.raises(StateDictMismatch, match="missing key 'visual.layer2.0.downsample.1.running_var'"):
    oc.visual_resnet_to_flax(sd, (1, 1, 1, 1), heads=8)


def test_command_writes_a_resnet_clip_workdir_equal_to_open_clip_and_back_bitwise(tmp_path):
  """--from=open_clip:<ModifiedResNet CLIP> -> workdir with image tower (BatchNorm statistics randomised too), text
  tower, logit_scale and CLIP's BPE tokenizer: tokens, embeddings and zero-shot logits equal open_clip's, and
  --to=torch gives the state dict back bitwise (cl_jax.convert.parity.measure, the README's figures)."""
  from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
  from cl_jax.convert import parity
  ref = parity.randomise(CLIP(embed_dim=32, vision_cfg=CLIPVisionCfg(layers=(1, 1, 1, 1), width=16, image_size=64),
                              text_cfg=CLIPTextCfg(width=64, heads=1, layers=2)), std=0.05)
  with torch.no_grad():
    for m in ref.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.normal_()
        m.running_var.uniform_(0.5, 1.5)
  r = parity.measure(ref, "clip_resnet_tiny", False, 64, str(tmp_path))
  assert r["tokens_equal"] and r["round_trip_bitwise"]
  assert r["image"] < RTOL and r["text"] < RTOL and r["logits"] < RTOL


def test_command_writes_a_vit_clip_workdir_and_back_to_open_clip_bitwise(tmp_path):
  """--from=open_clip:<ViT CLIP> with OpenAI's QuickGELU -> workdir whose embeddings and zero-shot logits equal
  open_clip's; --to=torch gives back the very state dict, which open_clip's CLIP loads strictly; a name that does
  not fit the state dict names the size it holds."""
  import os
  from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
  from safetensors.numpy import load_file
  from cl_jax import workdir as workdir_lib
  from cl_jax.convert import __main__ as cli, parity
  cfg = dict(embed_dim=32, quick_gelu=True, text_cfg=CLIPTextCfg(width=64, heads=1, layers=2),
             vision_cfg=CLIPVisionCfg(layers=2, width=64, head_width=32, patch_size=8, image_size=32))
  ref = parity.randomise(CLIP(**cfg), std=0.05)
  r = parity.measure(ref, "vit_micro", True, 32, str(tmp_path))
  assert r["image"] < RTOL and r["text"] < RTOL and r["logits"] < RTOL and r["round_trip_bitwise"]
  model = workdir_lib.load_config(str(tmp_path / "wd")).model
  assert model.act == "quick_gelu" and model.pre_norm and model.norm_eps == 1e-5
  back = load_file(str(tmp_path / "back.safetensors"))
  CLIP(**cfg).load_state_dict({k: torch.from_numpy(v) for k, v in back.items()}, strict=True)
  merges = os.path.join(os.path.dirname(open_clip.__file__), "bpe_simple_vocab_16e6.txt.gz")
  with pytest.raises(ValueError, match="width 64 and depth 2 \\(cl_jax vit_micro\\); name it --from=open_clip:vit_micro"):
    cli.run("open_clip:ViT-B-32", str(tmp_path / "clip.pth"), str(tmp_path / "wrong"), merges=merges)


def test_openai_torchscript_archive_is_read(tmp_path):
  """OpenAI's .pt files are TorchScript archives: read through torch.jit.load, minus their three scalars."""
  from cl_jax.convert import keys

  class Tower(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.proj = torch.nn.Linear(3, 2)
      for name, value in (("input_resolution", 224), ("context_length", 77), ("vocab_size", 49408)):
        self.register_buffer(name, torch.tensor(value))

    def forward(self, x):
      return self.proj(x)

  module = Tower()
  path = str(tmp_path / "ViT-B-32.pt")
  torch.jit.save(torch.jit.script(module), path)
  sd = keys.read_checkpoint(path)
  assert set(sd) == {"proj.weight", "proj.bias"}
  np.testing.assert_array_equal(sd["proj.weight"], module.proj.weight.detach().numpy())
