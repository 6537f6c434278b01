"""LSeg on ADE20K (Li et al., ICLR 2022; isl-org/lang-seg train_lseg.py with --dataset ade20k --backbone
clip_vitl16_384 --widehead --base_lr 0.004 --weight_decay 1e-4 --max_epochs 240).

ViT-L/16 image tower at 480 px crops and the DPT-style decoder (256 features, LSeg's head1 to 512) into the text
space of CLIP's text Transformer (frozen), logits 1/0.07 x cosine, per-pixel cross-entropy over the 150 classes
and "other" (mask value 0). Both towers start from a CLIP checkpoint in cl_jax's layout (`init=`: a CLIP run, or a
published CLIP converted with `python -m cl_jax.convert`); lang-seg uses CLIP ViT-L/16's image weights and
ViT-B/32's text encoder. SGD momentum 0.9, lr 0.004 for the backbone and 10x for the decoder (lang-seg's
configure_optimizers: the "scratch" parameters at base_lr * 10; `optim.lr_multipliers`), poly decay (1 - t)^0.9,
weight decay 1e-4, batch 16 (lang-seg: 8 GPUs x 2 with accumulate_grad_batches 2 = 32 per step; ours is one step
per 16), 240 epochs. Differences, said here: the poly decay is per step (lang-seg's LambdaLR steps it per epoch),
and lang-seg's scale/crop augmentation is replaced by whole images resized and centre-cropped to 480 with a shared
flip (LSeg needs masks aligned with its views; cl_jax's crop augmentation does not move masks yet).

ADE20K from tfds (`scene_parse150`: image, annotation with 0 = other and 1..150 the classes) and the class names
from the dataset's objectInfo150.csv (github.com/CSAILVision/sceneparsing):

  tfds build scene_parse150 --file_format=array_record --data_dir=/data/tfds
  python -m cl_jax.main --config=configs/lseg_ade20k.py:classes=/data/ade20k/objectInfo150.csv,init=$HOME/runs/clip \\
      --workdir=$HOME/runs/lseg_ade20k
  python -m cl_jax.evaluate --workdir=$HOME/runs/lseg_ade20k --protocol=segmentation
  python -m cl_jax.main --config=configs/lseg_ade20k.py:runlocal --workdir=/tmp/lseg_ade20k_local
"""
from __future__ import annotations

import ml_collections

from cl_jax.config_args import parse_arg
from cl_jax.config_recipe import CLIP_TEXT, LOCAL_TEXT, run_fields
from cl_jax.data.augment import group
from cl_jax.data.scenes import CLASS_NAMES

WHOLE = dict(views=1, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, grayscale_p=0.0, blur_p=(0.0,))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = parse_arg(arg, runlocal=False, batch=16, epochs=240, classes="/data/ade20k/objectInfo150.csv", init="",
                data_dir="/data/tfds")
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.method = dict(name="lseg", embed_dim=512, labels=a.classes, background_label="other", label_template="{}",
                  decoder_features=256, text=dict(tokenizer="bpe", merges_path="/data/bpe_simple_vocab_16e6.txt.gz",
                                                  context_length=77))
  c.model = dict(name="vit_large", patch_size=16, dtype="bfloat16")
  c.text_model = dict(CLIP_TEXT)
  c.dataset = "scene_parse150"
  c.data = dict(image_size=480, seed=0, worker_count=16, data_dir=a.data_dir, image_key="image",
                mask_key="annotation", mask_classes=a.classes, train_split="train", test_split="test")
  c.augment = ml_collections.ConfigDict({"global": group(size=480, **WHOLE)})
  c.batch_size = a.batch
  c.num_epochs = a.epochs
  c.total_steps = 0
  c.optim = dict(name="sgd", lr=0.004, lr_scaling="none", momentum=0.9, nesterov=False, weight_decay=1e-4,
                 warmup_epochs=0, schedule="poly", poly_power=0.9, frozen=("text",),
                 lr_multipliers=(("decoder", 10.0),))
  c.eval = dict(every=5000, batch_size=64, monitors=("segmentation",), prompt_templates=("{}",),
                seg_background="prompt", seg_background_prompts=("other",), seg_examples=2000)
  run_fields(c)
  c.init_from = a.init
  if a.runlocal:   # the embedded scenes, the micro ViT, 3 steps
    c.method = dict(c.method.to_dict(), embed_dim=32, labels=CLASS_NAMES, decoder_features=16,
                    text=dict(tokenizer="shapes", context_length=24))
    c.model = dict(name="vit_micro", patch_size=4)
    c.text_model = dict(LOCAL_TEXT)
    c.dataset = "shapes_scenes"
    c.data = dict(image_size=32, num_train=256, num_test=128, seed=0, worker_count=0)
    c.augment = ml_collections.ConfigDict({"global": group(size=32, **WHOLE)})
    c.batch_size, c.total_steps, c.log_every, c.checkpoint_every = 64, 3, 1, 3
    c.optim.lr = 0.01
    c.eval = dict(every=0, batch_size=128, monitors=("segmentation",), prompt_templates=("{}",),
                  seg_background="prompt", seg_background_prompts=("other",))
  return c
