"""Writes notebooks/zero_shot.ipynb (without outputs): CLIP on the embedded shapes, zero-shot and retrieval pictures.

  python notebooks/make_zero_shot.py      # then commit the regenerated notebook

Edit the cells here, not in the .ipynb. tests/test_notebooks.py executes the notebook with CL_JAX_NOTEBOOK_SMALL=1
(512 training images, a few steps) so it never rots.
"""
from __future__ import annotations

import os

import nbformat
from nbformat import v4

CELLS = [
    ("markdown", """# Zero-shot classification and retrieval with CLIP on the embedded data

Train CLIP (Radford et al. 2021) on the embedded `shapes` dataset and its captions (generated on the fly, no
download), then classify test images zero-shot from prompts such as "a photo of a star." and retrieve images from
text and text from images. A few (shape, colour) pairs are held out of training, so zero-shot accuracy on those
unseen compositions is shown separately. Runs on a CPU in a few minutes; set `CL_JAX_NOTEBOOK_STEPS` to change the
length."""),
    ("code", """# In Colab: install cl_jax (does nothing when it is already installed).
# Point CL_JAX_PIP_SPEC at your clone or fork, e.g. 'cl_jax[plots] @ git+https://github.com/<you>/cl_jax'.
import importlib.util, os, subprocess, sys
if importlib.util.find_spec('cl_jax') is None:
    subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', os.environ.get('CL_JAX_PIP_SPEC', 'cl_jax[plots]')], check=True)"""),
    ("code", """import os, tempfile, textwrap
import numpy as np
import jax
import matplotlib.pyplot as plt
from absl import logging
logging.set_verbosity(logging.WARNING)
from cl_jax import train
from cl_jax.data import shapes
from cl_jax.eval import retrieval, zeroshot
STEPS = int(os.environ.get('CL_JAX_NOTEBOOK_STEPS', 0))   # 0: the quick start's length (9 epochs)
SMALL = bool(os.environ.get('CL_JAX_NOTEBOOK_SMALL'))
WORKDIR = os.environ.get('CL_JAX_NOTEBOOK_WORKDIR') or tempfile.mkdtemp(prefix='cl_jax_zero_shot_')
print(jax.devices(), WORKDIR)"""),
    ("markdown", """## The config
The command line's CLIP quick start, `configs/quickstart.py:method=clip` (settings in
`configs/quickstart_methods/clip.py`): a tiny ResNet image tower, a 2-layer text Transformer, the shapes word
vocabulary, captions as the text, and held-out (shape, colour) pairs."""),
    ("code", """import importlib.util as iu, cl_jax
path = os.path.join(os.path.dirname(os.path.dirname(cl_jax.__file__)), 'configs', 'quickstart.py')
spec = iu.spec_from_file_location('quickstart', path); quickstart = iu.module_from_spec(spec); spec.loader.exec_module(quickstart)
config = quickstart.get_config('method=clip' + (f',steps={STEPS}' if STEPS else ''))
config.eval.monitors = ('zeroshot', 'retrieval')
if SMALL:   # a smoke test: tiny data, no evaluation during training (it is done below)
    config.data.num_train, config.data.num_test, config.batch_size, config.eval.batch_size = 512, 256, 64, 128
    config.optim.warmup_epochs, config.eval.every = 0, -1
HELD_OUT = tuple(tuple(p) for p in config.data.held_out_pairs)
print(config.method, config.text_model, config.data.text, 'held out of training: ' + str(HELD_OUT), sep='\\n')"""),
    ("markdown", """## The data: images and their captions
Each training image gets one of several caption templates per epoch (chosen from the seed, the image index and the
epoch), so the text names the shape among its colour, size, position and background."""),
    ("code", """src = shapes.ShapesSource('train', num_examples=8, held_out_pairs=HELD_OUT)
fig, axes = plt.subplots(1, 8, figsize=(16, 3.2))
for i, ax in enumerate(axes):
    ax.imshow(src.arrays['image'][i]); ax.axis('off')
    ax.set_title('\\n'.join(textwrap.wrap(src.captions_of(i)[0], 20)), fontsize=7)
plt.show()
print('the captions of the first image:', *src.captions_of(0), sep='\\n  ')"""),
    ("markdown", """## Train
Zero-shot top-1 and retrieval recall on the test split are printed at step 0 (random init) and at the end;
`eval/zeroshot_top1_unseen` is the accuracy on test images whose (shape, colour) pair never occurs in training."""),
    ("code", """history = train.train_and_evaluate(config, WORKDIR)
{k: round(v, 2) for k, v in history.items() if k.startswith('eval/')}"""),
    ("markdown", """## Zero-shot predictions
The text tower embeds every class name in the prompt templates; an image is assigned the class whose averaged
prompt embedding is closest (CLIP Sec. 3.1.4). Top row: compositions seen in training; bottom row: held-out
ones. Green: correct."""),
    ("code", """run, state, specs, step = train.load_run(WORKDIR)
test = run.test_source
data = zeroshot.embed_split(run, state, specs, test, ('label', 'color'))
classes = zeroshot.class_embeddings(run, state, test.class_names, zeroshot.default_templates(run))
scale = float(np.exp(np.asarray(state['params']['logit_scale'])))
logits = scale * data['embedding'] @ classes.T
probs = np.exp(logits - logits.max(1, keepdims=True)); probs /= probs.sum(1, keepdims=True)
held_ids = set(test.held_out_pairs)
unseen = np.array([(int(l), int(c)) in held_ids for l, c in zip(data['label'], data['color'])])
for name, mask in (('seen', ~unseen), ('unseen', unseen)):
    acc = zeroshot.zeroshot_accuracy(data['embedding'][mask], data['label'][mask], classes, ks=(1,))[1]
    print(f'zero-shot top-1 on {name} compositions: {acc:.1f}% of {mask.sum()} test images (chance 10%)')
fig, axes = plt.subplots(2, 6, figsize=(15, 7.5))
for row, mask in enumerate((~unseen, unseen)):
    for ax, i in zip(axes[row], np.flatnonzero(mask)[:6]):
        top = np.argsort(-probs[i])[:3]
        ok = top[0] == data['label'][i]
        ax.imshow(test[int(i)]['image']); ax.set_xticks([]); ax.set_yticks([])
        truth = f"{shapes.COLOR_NAMES[data['color'][i]]} {shapes.CLASS_NAMES[data['label'][i]]}"
        ax.set_title(truth + '\\n' + '\\n'.join(f'{test.class_names[c]} {probs[i, c]:.2f}' for c in top),
                     fontsize=8, color='green' if ok else 'red')
    axes[row, 0].set_ylabel(('seen', 'held-out')[row] + ' pairs')
plt.tight_layout(); fig.savefig(os.path.join(WORKDIR, 'zero_shot_predictions.png')); plt.show()"""),
    ("markdown", """## Retrieval
Text to image: the five test images closest to a query (the first query is a held-out composition). Image to text:
the test captions closest to an image."""),
    ("code", """queries = [f'a {HELD_OUT[0][1]} {HELD_OUT[0][0]}', 'a large blue star', 'a yellow heart on a striped background',
           'a green triangle in the top left']
text_emb = zeroshot.embed_texts(run, state, run.method.tokenizer.encode(queries))
fig, axes = plt.subplots(len(queries), 5, figsize=(10, 2.3 * len(queries)))
for q, query in enumerate(queries):
    for ax, i in zip(axes[q], np.argsort(-(data['embedding'] @ text_emb[q]))[:5]):
        ax.imshow(test[int(i)]['image']); ax.set_xticks([]); ax.set_yticks([])
    axes[q, 0].set_ylabel(textwrap.fill(query, 18), fontsize=8)
plt.tight_layout(); fig.savefig(os.path.join(WORKDIR, 'retrievals.png')); plt.show()

pool = [test.captions_of(i)[0] for i in range(len(test))]
pool_emb = zeroshot.embed_texts(run, state, run.method.tokenizer.encode(pool))
fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
for ax, i in zip(axes, range(4)):
    best = np.argsort(-(pool_emb @ data['embedding'][i]))[:3]
    ax.imshow(test[i]['image']); ax.axis('off')
    ax.set_title('\\n'.join(textwrap.fill(pool[j], 34) for j in best), fontsize=7,
                 color='green' if pool[i] in [pool[j] for j in best] else 'black')
plt.tight_layout(); plt.show()
{k: round(v, 1) for k, v in retrieval.evaluate_retrieval(run, state, specs).items()}"""),
]


def build() -> nbformat.NotebookNode:
  nb = v4.new_notebook()
  nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
  nb.cells = [v4.new_markdown_cell(src) if kind == "markdown" else v4.new_code_cell(src) for kind, src in CELLS]
  return nb


if __name__ == "__main__":
  out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "zero_shot.ipynb")
  nb = build()
  for i, cell in enumerate(nb.cells):  # stable ids: regenerating gives the same file
    cell["id"] = f"cell-{i:02d}"
  nbformat.write(nb, out)
  print(f"wrote {out}")
