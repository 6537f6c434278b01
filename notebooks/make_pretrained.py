"""Writes notebooks/pretrained.ipynb (without outputs)."""
import nbformat
from nbformat import v4

CELLS = [
    ("markdown", """# Pretrained models in cl_jax: convert, evaluate, look at patch features

Load published PyTorch weights into cl_jax with `cl_jax.convert` (docs/convert.md), evaluate them with the
library's kNN protocol on the embedded `shapes` data, and look at patch-level similarity maps; then convert CLIP's
text tower from open_clip and compare prompts.

**Nothing is downloaded.** Give your own files through environment variables (or edit the paths below):
`CL_JAX_VIT_CHECKPOINT` (a timm-layout ViT-S/16: DINO `dino_deitsmall16_pretrain.pth`, DeiT, MoCo v3 with
`CL_JAX_VIT_PREFIX=module.base_encoder.`), `CL_JAX_CLIP_CHECKPOINT` (open_clip ViT-B-32
`open_clip_pytorch_model.bin`) and `CL_JAX_IMAGES` (a folder of your own images). Without a checkpoint (CI,
offline) every model here has **random weights of the same architecture**, and the notebook says so: the
numbers and pictures then show that the pipeline runs, not what the published model learnt."""),
    ("code", """# In Colab: install cl_jax (does nothing when it is already installed); torch is needed only for .pth files.
import importlib.util, os, subprocess, sys
if importlib.util.find_spec('cl_jax') is None:
    subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', os.environ.get('CL_JAX_PIP_SPEC', 'cl_jax[plots,convert]')], check=True)"""),
    ("code", """import glob, os, tempfile
import numpy as np
import jax, jax.numpy as jnp
import matplotlib.pyplot as plt
from absl import logging
logging.set_verbosity(logging.WARNING)
from cl_jax import evaluate, train, workdir as workdir_lib
from cl_jax.convert import timm_vit, workdir_io
from cl_jax.convert import __main__ as convert
from cl_jax.data import augment, shapes
SMALL = bool(os.environ.get('CL_JAX_NOTEBOOK_SMALL'))
WORKDIR = os.environ.get('CL_JAX_NOTEBOOK_WORKDIR') or tempfile.mkdtemp(prefix='cl_jax_pretrained_')
os.makedirs(WORKDIR, exist_ok=True)
VIT_CHECKPOINT = os.environ.get('CL_JAX_VIT_CHECKPOINT', '')
CLIP_CHECKPOINT = os.environ.get('CL_JAX_CLIP_CHECKPOINT', '')
print(jax.devices(), WORKDIR)"""),
    ("markdown", """## A ViT from a PyTorch file into a cl_jax workdir
`convert.run` is what `python -m cl_jax.convert --from=timm:vit_small_patch16_224 --checkpoint=... --out=...`
does: read the state dict, check it key by key against the architecture, convert, and write a workdir
(`config.json`, `converted.json`, a step-0 checkpoint) that `cl_jax.evaluate` and `config.init_from` accept.
Without a checkpoint we write random weights of the same architecture in the timm layout to a `.safetensors` file
first, so the same path runs (in the small CI setting: the 2-block `vit_micro` with 8 px patches)."""),
    ("code", """ARCH = 'vit_small_patch16_224' if (VIT_CHECKPOINT or not SMALL) else 'vit_micro/8'
IMAGE = 32 if SMALL else 64          # the shapes are 32 px; positions are resized to this grid
if VIT_CHECKPOINT:
    path = VIT_CHECKPOINT
    print(f'converting {path}')
else:
    model = timm_vit.model(ARCH)
    random = model.init(jax.random.key(0), jnp.zeros((1, 224 if not SMALL else 32, 224 if not SMALL else 32, 3)), train=False)
    path = os.path.join(WORKDIR, 'random_vit.safetensors')
    convert.save_state_dict(timm_vit.from_flax(random, model.depth), path)
    print(f'no checkpoint given: RANDOM weights of the {ARCH} architecture, written in the timm layout to {path}')
vit_workdir = os.path.join(WORKDIR, 'vit_workdir')
print(convert.run(f'timm:{ARCH}', path, vit_workdir, prefix=os.environ.get('CL_JAX_VIT_PREFIX', ''), image_size=IMAGE))"""),
    ("markdown", """## kNN on the embedded data
The library's weighted kNN (k=200, T=0.07) on frozen features, on a small training split here."""),
    ("code", """config = workdir_io.image_config(workdir_lib.load_config(vit_workdir).model.to_dict(), IMAGE)
config.data.num_train, config.data.num_test = (512, 256) if SMALL else (2000, 500)
run, state, specs, step = train.load_run(vit_workdir, config)
metrics = evaluate.run_protocol('knn', run, state, specs, step, vit_workdir)
print('kNN top-1 of the converted ViT: %.2f%%' % metrics['eval/knn_top1'], '(random weights)' if not VIT_CHECKPOINT else '')"""),
    ("markdown", """## Patch-level similarity maps
Each patch token's cosine similarity to the CLS token, and the first three principal components of the patch tokens
as RGB (the DINO pictures). Images: a few embedded shapes, and yours from `CL_JAX_IMAGES`."""),
    ("code", """from PIL import Image
src = shapes.ShapesSource('test', num_examples=6, image_size=IMAGE)
imgs = [src[i]['image'] for i in range(6)]
for f in sorted(glob.glob(os.path.join(os.environ.get('CL_JAX_IMAGES', '/nonexistent'), '*')))[:4]:
    imgs.append(np.asarray(Image.open(f).convert('RGB').resize((IMAGE, IMAGE))))
size = IMAGE
batch = np.stack([np.asarray(Image.fromarray(np.asarray(im)).resize((size, size))) for im in imgs])
x = augment.eval_preprocess(jnp.asarray(batch), size)       # ImageNet mean/std, as timm/DINO/torchvision
backbone = timm_vit.model(ARCH)
_, variables = workdir_io.read(vit_workdir)
out = backbone.apply({'params': variables['params']}, x, train=False, return_tokens=True)
cls, patches = np.asarray(out['cls']), np.asarray(out['patches'])
g = size // backbone.patch_size
unit = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)
sim = np.einsum('bnd,bd->bn', unit(patches), unit(cls)).reshape(-1, g, g)
fig, axes = plt.subplots(2, len(imgs), figsize=(2.2 * len(imgs), 4.6))
for i in range(len(imgs)):
    axes[0, i].imshow(batch[i]); axes[0, i].axis('off')
    axes[1, i].imshow(sim[i], cmap='viridis'); axes[1, i].axis('off')
fig.suptitle('patch similarity to the CLS token' + ('' if VIT_CHECKPOINT else ' (random weights)'))
fig.savefig(os.path.join(WORKDIR, 'vit_patch_similarity.png'), dpi=80); plt.show()
print('patch similarity maps:', sim.shape)"""),
    ("code", """flat = patches.reshape(-1, patches.shape[-1])
flat = flat - flat.mean(0)
_, _, vt = np.linalg.svd(flat, full_matrices=False)
pcs = (flat @ vt[:3].T).reshape(len(imgs), g, g, 3)
pcs = (pcs - pcs.min((0, 1, 2))) / (np.ptp(pcs, (0, 1, 2)) + 1e-8)
fig, axes = plt.subplots(1, len(imgs), figsize=(2.2 * len(imgs), 2.4))
for i, ax in enumerate(axes):
    ax.imshow(pcs[i]); ax.axis('off')
fig.suptitle('first 3 principal components of the patch tokens')
fig.savefig(os.path.join(WORKDIR, 'vit_patch_pca.png'), dpi=80); plt.show()"""),
    ("markdown", """## CLIP from open_clip: zero-shot on the embedded images
`python -m cl_jax.convert --from=open_clip:ViT-B-32 --checkpoint=... --merges=... --out=...` converts open_clip's
CLIP (the ViT image tower with `ln_pre` and its projection, the text Transformer, `logit_scale`, CLIP's BPE
tokenizer) into a cl_jax CLIP workdir; `--quick_gelu` for OpenAI's weights (their TorchScript `ViT-B-32.pt` is
read as is), `--from=open_clip:RN50` for the attention-pool ResNet. Give `CL_JAX_CLIP_CHECKPOINT` (and
`CL_JAX_CLIP_ARCH`, default `ViT-B-32`; `ViT-B-32-quickgelu` for OpenAI's); without it the open_clip model has
random weights (in the small CI setting a 2-block, 64-wide ViT with 8 px patches). Note: CLIP was trained with
its own mean/std, while `eval_preprocess` uses ImageNet's; for a real checkpoint expect a small accuracy
difference from that."""),
    ("code", """try:
    import torch, open_clip
except ImportError as e:
    torch = open_clip = None
    print(f'open_clip is not installed ({e}); pip install open_clip_torch to run this part.')
if open_clip is not None:
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
    CLIP_ARCH = os.environ.get('CL_JAX_CLIP_ARCH', 'ViT-B-32')
    if CLIP_CHECKPOINT:
        clip, clip_path, arch = open_clip.create_model(CLIP_ARCH, pretrained=CLIP_CHECKPOINT), CLIP_CHECKPOINT, CLIP_ARCH
        print(f'open_clip {CLIP_ARCH} from {CLIP_CHECKPOINT}')
    else:
        if SMALL:
            clip = CLIP(embed_dim=64, vision_cfg=CLIPVisionCfg(layers=2, width=64, head_width=32, patch_size=8,
                                                              image_size=32),
                        text_cfg=CLIPTextCfg(width=64, heads=1, layers=2))
            arch = 'vit_micro'
        else:
            clip, arch = open_clip.create_model(CLIP_ARCH, pretrained=None), CLIP_ARCH
        clip_path = os.path.join(WORKDIR, 'random_clip.pth')
        torch.save(clip.state_dict(), clip_path)
        print(f'no CLIP checkpoint: RANDOM weights of the {arch} architecture')
    clip.eval()
    merges = os.path.join(os.path.dirname(open_clip.__file__), 'bpe_simple_vocab_16e6.txt.gz')
    clip_workdir = os.path.join(WORKDIR, 'clip_workdir')
    small = {'num_train': 512, 'num_test': 256} if SMALL else None
    print(convert.run(f'open_clip:{arch}', clip_path, clip_workdir, merges=merges, quick_gelu='quickgelu' in arch, data=small))
    crun, cstate, _, _ = train.load_run(clip_workdir)
    names = list(shapes.CLASS_NAMES)
    prompts = [f'a photo of a {n}.' for n in names]
    tokens = np.asarray(crun.method.tokenizer.encode(prompts))
    z = np.asarray(crun.method.encode_text(cstate['params'], cstate['method_state'], jnp.asarray(tokens, jnp.int32)))
    with torch.no_grad():
        ref = torch.nn.functional.normalize(clip.encode_text(torch.from_numpy(tokens)), dim=-1).numpy()
    print('text tower: max relative difference to open_clip %.2e; logit_scale %.4f' % (
        np.abs(z - ref).max() / np.abs(ref).max(), float(np.exp(cstate['params']['logit_scale']))))"""),
    ("code", """if open_clip is not None:
    csize = crun.config.data.image_size
    test = shapes.ShapesSource('test', num_examples=64 if SMALL else 500, image_size=csize)
    ims = np.stack([test[i]['image'] for i in range(len(test))])
    labels = np.array([test[i]['label'] for i in range(len(test))])
    zi = np.asarray(crun.method.encode_image_embedding(cstate['params'], cstate['method_state'], augment.eval_preprocess(jnp.asarray(ims), csize)))
    pred = (zi @ z.T).argmax(1)
    print('zero-shot top-1 on %d embedded test images: %.2f%%%s' % (len(ims), 100 * (pred == labels).mean(),
          '' if CLIP_CHECKPOINT else ' (random weights: chance is %.0f%%)' % (100 / len(names))))
    own = [np.asarray(Image.fromarray(np.asarray(im)).resize((csize, csize))) for im in imgs[6:]]   # CL_JAX_IMAGES
    show = np.concatenate([ims[:8], np.stack(own)]) if own else ims[:8]
    zs = np.asarray(crun.method.encode_image_embedding(cstate['params'], cstate['method_state'], augment.eval_preprocess(jnp.asarray(show), csize)))
    fig, axes = plt.subplots(1, len(show), figsize=(2 * len(show), 2.4))
    for i, ax in enumerate(axes):
        ax.imshow(show[i]); ax.axis('off'); ax.set_title(names[int((zs[i] @ z.T).argmax())], fontsize=9)
    fig.suptitle('zero-shot predictions' + ('' if CLIP_CHECKPOINT else ' (random weights)'))
    fig.savefig(os.path.join(WORKDIR, 'clip_zero_shot.png'), dpi=80); plt.show()
    fig, ax = plt.subplots(figsize=(5, 4.2))
    im = ax.imshow(z @ z.T, cmap='magma'); fig.colorbar(im)
    ax.set_xticks(range(len(names)), names, rotation=45); ax.set_yticks(range(len(names)), names)
    ax.set_title('cosine similarity of the prompt embeddings')
    fig.tight_layout(); fig.savefig(os.path.join(WORKDIR, 'clip_prompt_similarity.png'), dpi=80); plt.show()"""),
    ("markdown", """## Where in the image is each word? The dense CLIP readout
`method.encode_dense` applies CLIP's image projection to every patch token (the baseline of the open-vocabulary
segmentation evaluation, `python -m cl_jax.evaluate --protocol=segmentation`): each patch's cosine similarity to
a prompt is a coarse map of where the prompt is. Below: the prompt of each image's predicted class."""),
    ("code", """if open_clip is not None and crun.config.model.name.startswith('vit'):
    dense = np.asarray(crun.method.encode_dense(cstate['params'], cstate['method_state'], augment.eval_preprocess(jnp.asarray(show), csize)))
    fig, axes = plt.subplots(2, len(show), figsize=(2 * len(show), 4.4))
    for i in range(len(show)):
        k = int((zs[i] @ z.T).argmax())
        axes[0, i].imshow(show[i]); axes[0, i].axis('off')
        axes[1, i].imshow(dense[i] @ z[k], cmap='viridis'); axes[1, i].axis('off'); axes[1, i].set_title(names[k], fontsize=9)
    fig.suptitle('patch similarity to the predicted prompt' + ('' if CLIP_CHECKPOINT else ' (random weights)'))
    fig.savefig(os.path.join(WORKDIR, 'clip_dense_prompt.png'), dpi=80); plt.show()
    print('dense readout:', dense.shape)"""),
]


def main():
  nb = v4.new_notebook()
  nb.cells = [v4.new_markdown_cell(s) if k == "markdown" else v4.new_code_cell(s) for k, s in CELLS]
  nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
  nbformat.write(nb, "/work/main/notebooks/pretrained.ipynb")


main()
