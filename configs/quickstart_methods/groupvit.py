"""GroupViT on the embedded multi-object scenes (Xu et al. 2022): a grouping ViT (patch 4, width 64, depths
(2, 1, 1), 16 then 4 groups) and CLIP's text tower, trained on captions only with CLIP's loss plus the
multi-label loss on "a photo of a {noun}." prompts of up to 3 nouns per scene (the scenes' `nouns`).

Data: `shapes_scenes` at 32 px (1-4 overlapping shapes, captions naming every object); the CLIP quick start's
held-out (colour, shape) pairs, text tower, optimizer and views (quickstart_methods/clip.py), milder crops so
the objects a caption names stay in view.

  python -m cl_jax.main --config=configs/quickstart.py:method=groupvit --workdir=/tmp/q_groupvit
  python -m cl_jax.evaluate --workdir=/tmp/q_groupvit --protocol=segmentation

6 epochs (234 steps at batch 256), gradient norm clipped at 5 (the official clip_grad). Measured on 2 CPU cores
shared with two other jobs, 273 s: loss 11.64 -> 7.05, zero-shot top-1 (the largest object) 8.40% -> 12.35%
(top-5 46.80% -> 61.75%), i->t R@1 0.10% -> 5.00%, t->i R@1 0.00% -> 5.30%; segmentation mIoU 0.52% with
background by prompt (no pixel is called background; by threshold 2.64%): far too short a run for groups to
segment. Without the clipping (347 s): loss 7.87, zero-shot 12.05%, i->t R@1 2.70%, mIoU 5.06% (by prompt;
nearly all pixels called background); lr 4e-3 stayed at the chance loss 11.64 for 120 steps.
"""
import ml_collections

from cl_jax.config_args import load_sibling
from cl_jax.data.augment import group

language_image = load_sibling(__file__, "clip").language_image

TOWER = dict(name="groupvit", width=64, depths=(2, 1, 1), num_heads=2, num_group_tokens=(16, 4, 0),
             num_output_groups=(16, 4), patch_size=4, gumbel_tau=1.0, hard_assignment=True)


def apply(c: ml_collections.ConfigDict) -> None:
  language_image(c, "groupvit", "caption")
  c.dataset = "shapes_scenes"
  c.data.image_size = 32
  c.data.text.context_length = 32   # the longest scene caption is 26 words
  c.model = dict(TOWER)
  c.text_model.width, c.text_model.heads = 64, 2   # half the CLIP quick start's width: the 5-minute budget
  # Every field spelled out so the command line can change it (--config.method.multi_label=0 ...).
  c.method.update(multi_label=3, multi_label_weight=1.0, prompt_template="a photo of a {}.",
                  dense_assignment="hard")
  c.augment = ml_collections.ConfigDict({"global": group(size=32, views=1, scale=(0.8, 1.0), ratio=(1.0, 1.0),
                                                         flip_p=0.0, jitter_p=0.0, grayscale_p=0.0,
                                                         blur_p=(0.0,))})
  c.optim.clip_norm = 5.0
  c.eval.monitors = ("zeroshot", "retrieval")
  c.num_epochs = 6
