"""Writes notebooks/open_vocab_segmentation.ipynb (without outputs): PACL on the embedded multi-object scenes, then
segmentation from class prompts and from any prompt you type.

  python notebooks/make_open_vocab_segmentation.py      # then commit the regenerated notebook

Edit the cells here, not in the .ipynb. tests/test_notebooks.py executes the notebook with CL_JAX_NOTEBOOK_SMALL=1
(512 training scenes, a few steps) so it never rots.
"""
from __future__ import annotations

import os

import nbformat
from nbformat import v4

CELLS = [
    ("markdown", """# Open-vocabulary segmentation on the embedded scenes

Train PACL (Mukhoti et al. 2023) on the embedded `shapes_scenes` data: 1 to 4 shapes per image and a caption naming
every object, generated on the fly (no download). PACL never sees a mask: its patch-aligned contrastive loss pulls
each image patch towards the words that describe it. Segmentation then labels every pixel with the class prompt
its patch is closest to, and any prompt you type ("a red star") becomes a mask. Runs on a CPU in minutes; set
`CL_JAX_NOTEBOOK_STEPS` to change the length."""),
    ("code", """# In Colab: install cl_jax (does nothing when it is already installed).
# Point CL_JAX_PIP_SPEC at your clone or fork, e.g. 'cl_jax[plots] @ git+https://github.com/<you>/cl_jax'.
import importlib.util, os, subprocess, sys
if importlib.util.find_spec('cl_jax') is None:
    subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', os.environ.get('CL_JAX_PIP_SPEC', 'cl_jax[plots]')], check=True)"""),
    ("code", """import os, tempfile, textwrap
import numpy as np
import jax, jax.numpy as jnp
import matplotlib.pyplot as plt
from absl import logging
logging.set_verbosity(logging.WARNING)
from cl_jax import train
from cl_jax.data import augment, scenes
from cl_jax.eval import segmentation, zeroshot
STEPS = int(os.environ.get('CL_JAX_NOTEBOOK_STEPS', 0))   # 0: the quick start's length (20 epochs)
SMALL = bool(os.environ.get('CL_JAX_NOTEBOOK_SMALL'))
WORKDIR = os.environ.get('CL_JAX_NOTEBOOK_WORKDIR') or tempfile.mkdtemp(prefix='cl_jax_open_vocab_')
print(jax.devices(), WORKDIR)"""),
    ("markdown", """## The config
The command line's PACL quick start, `configs/quickstart.py:method=pacl` (settings in
`configs/quickstart_methods/pacl.py` and `clip_scenes.py`): a micro ViT with 4 px patches (an 8 x 8 grid on 32 px
scenes), a 2-layer text Transformer, the captions as the text, a few held-out (shape, colour) pairs."""),
    ("code", """import importlib.util as iu, cl_jax
path = os.path.join(os.path.dirname(os.path.dirname(cl_jax.__file__)), 'configs', 'quickstart.py')
spec = iu.spec_from_file_location('quickstart', path); quickstart = iu.module_from_spec(spec); spec.loader.exec_module(quickstart)
config = quickstart.get_config('method=pacl' + (f',steps={STEPS}' if STEPS else ''))
config.eval.monitors = ('segmentation',)
if SMALL:   # a smoke test: tiny data, no evaluation during training (it is done below)
    config.data.num_train, config.data.num_test, config.batch_size, config.eval.batch_size = 512, 256, 64, 128
    config.optim.warmup_epochs, config.eval.every, config.eval.seg_examples = 0, -1, 64
print(config.method, config.model, config.data.text, sep='\\n')"""),
    ("markdown", """## The data: scenes, captions and (for evaluation only) masks"""),
    ("code", """src = scenes.ScenesSource('train', num_examples=6, image_size=32)
fig, axes = plt.subplots(2, 6, figsize=(15, 5.6))
for i in range(6):
    ex = src[i]
    axes[0, i].imshow(ex['image']); axes[0, i].set_title('\\n'.join(textwrap.wrap(src.captions_of(i)[0], 24)), fontsize=7)
    axes[1, i].imshow(scenes.overlay(ex['image'], ex['mask']))
for ax in axes.ravel(): ax.axis('off')
plt.tight_layout(); plt.show()"""),
    ("markdown", """## Train (captions only)"""),
    ("code", """import json
history = train.train_and_evaluate(config, WORKDIR)
with open(os.path.join(WORKDIR, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f]
steps, losses = zip(*[(r['step'], r['loss']) for r in rows if 'loss' in r])
plt.figure(figsize=(5, 3)); plt.plot(steps, losses); plt.xlabel('step'); plt.ylabel('PACL loss'); plt.show()
{k: round(v, 2) for k, v in history.items() if k.startswith('eval/')}"""),
    ("markdown", """## Segmentation from class prompts
Every patch embedding is scored against the ten class prompts and the background prompts ("a dotted background",
...), the scores upsampled bilinearly to the pixels (`cl_jax/eval/segmentation.py`, the same as `python -m
cl_jax.evaluate --protocol=segmentation`). Rows: image, ground truth, prediction."""),
    ("code", """run, state, specs, step = train.load_run(WORKDIR)
seg = {}
metrics = segmentation.evaluate_segmentation(run, state, specs, out=seg)
print(', '.join(f'{k[5:]} {v:.1f}%' for k, v in metrics.items()), f"({len(seg['pred'])} test scenes)")
png = segmentation.write_png(os.path.join(WORKDIR, 'segmentation_predictions.png'), run, seg, 8)
plt.figure(figsize=(14, 6)); plt.imshow(plt.imread(png)); plt.axis('off'); plt.show()"""),
    ("markdown", """## Type a prompt, see the mask
The prompt's text embedding against every patch: a similarity map (upsampled), and the mask of pixels where the
prompt beats the background prompts."""),
    ("code", """PROMPT = 'a red circle'   # try 'a blue star', 'a small green ring', 'a heart' ...
test = run.test_source
images = np.stack([test[i]['image'] for i in range(6)])
x = augment.eval_preprocess(jnp.asarray(images), images.shape[1])
dense = np.asarray(run.method.encode_dense(state['params'], state['method_state'], x))      # [6, 8, 8, D]
texts = [PROMPT] + segmentation.background_prompts(run)
emb = zeroshot.embed_texts(run, state, run.method.tokenizer.encode(texts))
scores = np.asarray(jax.image.resize(jnp.einsum('bhwd,kd->bhwk', dense, emb), (6, 32, 32, len(texts)), 'linear'))
mask = scores[..., 0] > scores[..., 1:].max(-1)
fig, axes = plt.subplots(3, 6, figsize=(15, 7.5))
for i in range(6):
    axes[0, i].imshow(images[i]); axes[0, i].set_title(textwrap.fill(test.captions_of(i)[0], 26), fontsize=7)
    axes[1, i].imshow(scores[i, ..., 0], cmap='magma')
    axes[2, i].imshow(np.where(mask[i][..., None], images[i], images[i] // 4))
for ax in axes.ravel(): ax.axis('off')
axes[1, 0].set_title(f'similarity to "{PROMPT}"', fontsize=8, loc='left')
plt.tight_layout(); fig.savefig(os.path.join(WORKDIR, 'prompt_masks.png')); plt.show()
print(f'prompt "{PROMPT}": {mask.mean() * 100:.1f}% of the pixels selected')"""),
]


def build() -> nbformat.NotebookNode:
  nb = v4.new_notebook()
  nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
  nb.cells = [v4.new_markdown_cell(src) if kind == "markdown" else v4.new_code_cell(src) for kind, src in CELLS]
  return nb


if __name__ == "__main__":
  out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "open_vocab_segmentation.ipynb")
  nb = build()
  for i, cell in enumerate(nb.cells):  # stable ids: regenerating gives the same file
    cell["id"] = f"cell-{i:02d}"
  nbformat.write(nb, out)
  print(f"wrote {out}")
