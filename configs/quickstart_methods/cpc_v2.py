"""CPC v2 on the embedded 32 px shapes (Henaff et al. 2020), scaled down for a tiny net and ~300 steps.

Each 32 px crop (one per image: scale 0.5-1, the quick start's mild jitter, no grayscale: v2 drops colour per
patch) is cut into a 5x5 grid of 16 px patches every 4 px, each through resnet_tiny with the 'small' stem and
LayerNorm (total stride 16: one vector per patch, D = 128); 2 masked residual blocks (hidden 64), K = 2 rows
ahead, top-to-bottom only, one random colour channel kept per patch, flips p 0.5; batch 64 (64 x 25 = 1600 patch
vectors as negatives), 2 epochs (312 steps). 32 px is kept (no data.image_size 64): the 5x5 grid holds K = 2
and the run stays small. 8 px patches every 4 px (a 7x7 grid, ImageNet's 64/32 of 256 px scaled by 1/8) need
the 'cifar' stem (stride 8) and cost 3.4x as much per step (2.4 s vs 0.7 s at batch 64 on the shared machine),
so 16 px patches here.

Measured on the shared 2-core machine (load average 6-10 from the other engineers' jobs; kNN top-1 step 0 -> end):
  * W_k at the default (LeCun normal) init: 15.60 -> 17.45; the raw dot products of unnormalised patch vectors
    start the loss at ~18 and it sat near log N = 7.38 (end: loss 6.67, contrast_acc 0.008).
  * W_k zero-initialised (these settings, every score starts at 0): 15.60 -> 38.20 (kNN top-5 65.5 -> 87.65; end
    loss 3.58, contrast_acc 0.26, embedding_std 0.051): the +10 target is met. Repeated bit for bit: wall 11m47s and
    6m40s on the loaded machine, CPU time 3m43s / 3m38s user + 0m34s / 0m31s sys (so about 2-3 minutes on 2 idle
    cores; not measured idle: the 5-minute budget is estimated from the CPU time, not seen).
"""
import ml_collections

from cl_jax.data.augment import group


def apply(c: ml_collections.ConfigDict) -> None:
  c.method = dict(name="cpc_v2", patch_size=16, patch_stride=4, pred_steps=2, context_blocks=2, context_hidden=64,
                  directions=("down",), color_drop_p=1.0, flip_p=0.5)
  c.model.stem = "small"
  c.augment = ml_collections.ConfigDict({"global": group(size=32, views=1, scale=(0.5, 1.0), jitter_strength=0.5,
                                                         grayscale_p=0.0, blur_p=(0.0,))})
  c.batch_size = 64
  c.num_epochs = 2
