"""DINO on the embedded shapes (Caron et al. 2021), scaled down for a few CPU minutes.

2 global 32 px crops + 4 local 16 px crops (multi-crop, Sec. 3.1), a small head output (out_dim 2048 instead of
65,536), a faster EMA teacher (momentum 0.99 instead of 0.996 for a 351-step run) and a teacher temperature warmed
up 0.04 -> 0.06 over the first 3 epochs; AdamW with weight decay 0.04 -> 0.4 (cosine), clipping 3.0 and the last
layer frozen for the first epoch as the paper.
"""
import ml_collections

from cl_jax.data.augment import group


def apply(c: ml_collections.ConfigDict) -> None:
  c.method = dict(name="dino", out_dim=2048, hidden_dim=512, bottleneck_dim=128, norm_last_layer=True,
                  momentum=0.99, student_temp=0.1, warmup_teacher_temp=0.04, teacher_temp=0.06,
                  warmup_teacher_temp_epochs=3, center_momentum=0.9)
  # resnet_tiny's 'imagenet' stem needs >= 32 px; the 'small' stem (one 3x3/2 conv) takes the 16 px local crops.
  c.model.stem = "small"
  c.augment = ml_collections.ConfigDict({
      "global": group(size=32, views=2, scale=(0.4, 1.0), jitter_strength=0.5, grayscale_p=0.2,
                      blur_p=(1.0, 0.1), solarize_p=(0.0, 0.2)),
      "local": group(size=16, views=4, scale=(0.1, 0.4), jitter_strength=0.5, grayscale_p=0.2, blur_p=(0.5,)),
  })
  steps_per_epoch = c.data.num_train // c.batch_size
  c.optim = dict(name="adamw", lr=4e-3, lr_scaling="none", weight_decay_schedule=(0.04, 0.4), warmup_epochs=1,
                 schedule="cosine", clip_norm=3.0, frozen=("last_layer",), frozen_steps=steps_per_epoch)
