"""CLIP / SigLIP / UniCL methods: a few steps on a fixed batch (loss finite and decreasing), the tiny quick-start
run with its zero-shot and retrieval monitors, and the two metrics against NumPy computations."""
import ast
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cl_jax import train
from cl_jax.data import augment, shapes
from cl_jax.eval import retrieval, zeroshot
from tests.harness import build_method, make_method_step, tiny_method_config


def tiny_config(method: str):
  """The method's quick-start settings, a micro ViT (compiles faster than a ResNet on CPU), a 1-layer text model."""
  return tiny_method_config(method, **{
      "data.num_train": 64, "data.num_test": 64, "batch_size": 32, "eval.batch_size": 32,
      "model": dict(name="vit_micro", patch_size=8), "text_model.width": 32, "text_model.depth": 1,
      "text_model.heads": 2, "method.embed_dim": 32, "data.text.context_length": 20})


@pytest.fixture(scope="module")
def batch():
  data = shapes.generate(32, split="train", seed=0, image_size=32)
  return data


@pytest.mark.parametrize("name", ["clip", "siglip", "unicl"])
def test_loss_decreases_on_a_fixed_batch(batch, name):
  config = tiny_config(name)
  method = build_method(config)
  tokens = method.tokenizer.encode(list(batch["caption"]))
  # UniCL: half the texts are class prompts (label = class id), half captions (-1), as data.text.source='mixed'.
  prompts = method.tokenizer.encode([f"a photo of a {shapes.CLASS_NAMES[y]}." for y in batch["label"]])
  is_prompt = np.arange(32) % 2 == 0
  if name == "unicl":
    tokens = np.where(is_prompt[:, None], prompts, tokens)
  text_label = np.where(is_prompt, batch["label"], -1).astype(np.int32)
  images = jax.jit(augment.eval_preprocess, static_argnums=1)(batch["image"], 32)[None]   # [1, b, H, W, 3]
  views = {"crops": (images,), "tokens": tokens, "text_label": text_label}
  params, state = jax.jit(method.init)(jax.random.key(0, impl="rbg"), views)
  assert set(params) >= ({"model", "log_temperature", "bias"} if name == "siglip" else {"model", "logit_scale"})
  tx = optax.adam(2e-3)
  opt_state = tx.init(params)
  step = make_method_step(method, state, views, seed=1, tx=tx)
  losses = []
  for _ in range(6):
    out = step(params, state, views, 0, opt_state)
    params, opt_state, state = out.params, out.opt_state, out.state_after_update
    losses.append(float(out.loss))
  assert np.isfinite(losses).all()
  assert losses[-1] < losses[0] - 0.05, losses
  emb = jax.jit(method.encode_text)(params, state, tokens[:4])
  np.testing.assert_allclose(np.linalg.norm(np.asarray(emb), axis=1), 1.0, rtol=1e-5)
  img = jax.jit(method.encode_image_embedding)(params, state, images[0, :4])
  assert img.shape == (4, 32)


def test_no_method_file_imports_another():
  """Issue 10: a method file imports only helpers (base, common, language_image ...), never a registered method."""
  import cl_jax.methods as methods_pkg
  folder = os.path.dirname(methods_pkg.__file__)
  sources = {f[:-3]: open(os.path.join(folder, f)).read() for f in os.listdir(folder) if f.endswith(".py")}
  registered = {name for name, src in sources.items() if "@METHODS.register(" in src}
  assert {"clip", "siglip", "unicl"} <= registered
  for name in sorted(registered):
    imported = set()
    for node in ast.walk(ast.parse(sources[name])):
      if isinstance(node, ast.ImportFrom) and node.module == "cl_jax.methods":
        imported |= {a.name for a in node.names}
      elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cl_jax.methods."):
        imported.add(node.module.split(".")[2])
    assert not imported & registered, f"cl_jax/methods/{name}.py imports method(s) {sorted(imported & registered)}"


def test_missing_text_is_a_one_line_error():
  config = tiny_config("clip")
  del config.data["text"]
  with pytest.raises(ValueError, match="config.data.text"):
    build_method(config)


def test_tiny_clip_run_reports_zeroshot_and_retrieval(tmp_path):
  config = tiny_config("clip")
  config.eval.monitors = ("zeroshot", "retrieval")
  history = train.train_and_evaluate(config, str(tmp_path))
  assert np.isfinite(history["loss"])
  for key in ("eval/zeroshot_top1", "eval/zeroshot_top5", "eval/i2t_r1", "eval/i2t_r10", "eval/t2i_r5",
              "eval/zeroshot_top1_unseen", "eval/zeroshot_top1_seen", "eval/zeroshot_top1_seen_colours"):
    assert 0.0 <= history[key] <= 100.0, key
  assert history["eval/i2t_r1"] <= history["eval/i2t_r5"] <= history["eval/i2t_r10"]
  rows = [json.loads(line) for line in open(os.path.join(tmp_path, "metrics.jsonl"))]
  assert sum("eval/zeroshot_top1" in r for r in rows) == 2   # step 0 and the end


def test_zeroshot_accuracy_against_numpy():
  rng = np.random.default_rng(0)
  img = rng.normal(size=(40, 6))
  classes = rng.normal(size=(7, 6))
  labels = rng.integers(0, 7, size=40)
  acc = zeroshot.zeroshot_accuracy(img, labels, classes, ks=(1, 3))
  top1 = np.mean([np.argmax([img[i] @ c for c in classes]) == labels[i] for i in range(40)])
  top3 = np.mean([labels[i] in sorted(range(7), key=lambda c: -(img[i] @ classes[c]))[:3] for i in range(40)])
  np.testing.assert_allclose(acc[1], 100 * top1)
  np.testing.assert_allclose(acc[3], 100 * top3)


def test_composition_masks_against_a_loop():
  rng = np.random.default_rng(2)
  labels, colors = rng.integers(0, 5, 200), rng.integers(0, 4, 200)
  held = ((1, 2), (3, 0))
  masks = zeroshot.composition_masks(labels, colors, held)
  for i in range(200):
    unseen = (labels[i], colors[i]) in held
    assert masks["unseen"][i] == unseen and masks["seen"][i] == (not unseen)
    assert masks["seen_colours"][i] == (labels[i] in (1, 3) and not unseen)   # class 1 in colours 0, 1, 3 ...
  assert masks["seen_colours"].any() and masks["unseen"].any()


def test_retrieval_recall_against_numpy():
  rng = np.random.default_rng(1)
  n = 30
  img = rng.normal(size=(n, 5))
  txt = img + 1.5 * rng.normal(size=(n, 5))
  caption_id = np.arange(n)
  caption_id[5] = caption_id[9]          # two images share one caption text
  match = caption_id[:, None] == caption_id[None, :]
  got = retrieval.retrieval_recall(img, txt, match)
  sims = img @ txt.T
  for k in (1, 5, 10):
    i2t = np.mean([any(match[i, j] for j in np.argsort(-sims[i])[:k]) for i in range(n)])
    t2i = np.mean([any(match[i, j] for i in np.argsort(-sims[:, j])[:k]) for j in range(n)])
    np.testing.assert_allclose(got[f"i2t_r{k}"], 100 * i2t)
    np.testing.assert_allclose(got[f"t2i_r{k}"], 100 * t2i)
  unit = img / np.linalg.norm(img, axis=1, keepdims=True)
  perfect = retrieval.retrieval_recall(unit, unit, np.eye(n, dtype=bool))
  assert perfect["i2t_r1"] == 100.0 and perfect["t2i_r1"] == 100.0
