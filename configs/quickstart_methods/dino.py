"""DINO on the embedded shapes (Caron et al. 2021), scaled down for a few CPU minutes.

Multi-crop with 2 global crops (scale 0.5-1; blur p 1.0 / 0.1, solarize p 0 / 0.2, as the paper) and 2 local
crops (scale 0.25-0.6, blur p 0.5), all at 32 px: resnet_tiny's 'imagenet' stem needs >= 32 px inputs and the
'small' stem that takes 16 px crops costs ~2.5x more per image. A small head (256-256-64 -> 1024 outputs
instead of 2048-2048-256 -> 65,536: at that size the head costs more than this backbone), batch 128 for 351
steps, a faster EMA teacher (momentum 0.99 -> 1 instead of 0.996) and teacher temperature 0.04; AdamW lr 2e-3
with weight decay 0.04 -> 0.4 (cosine), clipping 3.0 and the last layer frozen for the first epoch.

Measured (loaded machine): teacher kNN top-1 17.55% -> 16.60% after 351 steps, no collapse (teacher entropy
~5 of log 1024 = 6.9, KL ~0.7). The quick-start target (+10 points) is NOT reached with these settings.
A faster teacher (momentum 0.9 -> 1) over 585 steps did worse: 17.55 -> 12.45, train/embedding_std 0.016
(near collapse; 1/sqrt(64) = 0.125 when healthy).
"""
import ml_collections

from cl_jax.data.augment import group


def apply(c: ml_collections.ConfigDict) -> None:
  c.method = dict(name="dino", out_dim=1024, hidden_dim=256, bottleneck_dim=64, norm_last_layer=True,
                  momentum=0.99, student_temp=0.1, warmup_teacher_temp=0.04, teacher_temp=0.04,
                  warmup_teacher_temp_epochs=0, center_momentum=0.9)
  common = dict(size=32, jitter_strength=0.5, grayscale_p=0.2)
  c.augment = ml_collections.ConfigDict({
      "global": group(views=2, scale=(0.5, 1.0), blur_p=(1.0, 0.1), solarize_p=(0.0, 0.2), **common),
      "local": group(views=2, scale=(0.25, 0.6), blur_p=(0.5,), **common),
  })
  c.batch_size = 128
  steps_per_epoch = c.data.num_train // c.batch_size
  if not c.total_steps:
    c.total_steps = 351   # as the other quick starts (4.5 epochs at batch 128)
  c.optim = dict(name="adamw", lr=2e-3, lr_scaling="none", weight_decay_schedule=(0.04, 0.4), warmup_epochs=1,
                 schedule="cosine", clip_norm=3.0, clip_mode="per_param", frozen=("last_layer",),
                 frozen_steps=steps_per_epoch)
