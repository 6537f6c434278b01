"""TCL on the embedded shapes with noisy labels (Huang et al. 2023): data.label_noise='symmetric:0.4' (overridable,
e.g. --config.data.label_noise=symmetric:0.8; cl_jax's symmetric:r flips a fraction r to another class), scored on
the clean test labels.

A weak view (crop + flip, no colour: the official RandomCrop + flip) and two strong views (the quick start's crops
and jitter, solarize p 0.5 as the official strong view); the official heads (projector to 128-d here, classifier
with dropout 0.25), temperature 0.25, mixup alpha 1, every loss weight 1, the GMM noise detection before every
epoch; 12 epochs (468 steps), the first 8 the warm-up on the noisy labels (with 5 the detection after the warm-up
is too weak: 80% noise 19.95 head top-1 against 24.55 with 8). Monitors: kNN (clean labels) and noisy_labels
(eval/head_top1: the classifier on the clean test split, eval/noise_auc: P(clean) against the true flips).
Baseline with the same budget: --config.method.objective=ce (cross-entropy of the weak view on the noisy labels,
the same network and head, its own GMM still measured).

Measured on the shared 2-core machine (load 15-20 from other jobs: ~44 min wall, 340 s user CPU for TCL, 120 s for
CE), head top-1 on the clean test split / kNN top-1 / noise AUC:
  40%: TCL 41.85 / 45.75 / 85.45, CE 49.70 / 52.90 / 88.17: TCL 7.9 points behind.
  80%: TCL 24.55 / 32.60 / 66.77, CE 13.20 / 19.65 / 54.03: TCL 11.35 points ahead; the official warm-up objective
       alone for all 12 epochs (--config.method.warmup_epochs=12) gives 24.85 / 32.50 / 63.51, so at this budget the
       gain comes from the contrastive, mixup, regulariser and alignment terms, not from the noise correction.
"""
import ml_collections

from cl_jax.data.augment import group


def apply(c: ml_collections.ConfigDict) -> None:
  c.method = dict(name="tcl", temperature=0.25, feat_dim=128, num_classes=10, warmup_epochs=8, mixup_alpha=1.0,
                  objective="tcl")
  c.data.label_noise = "symmetric:0.4"
  c.augment = ml_collections.ConfigDict({
      "weak": group(size=32, views=1, scale=(0.7, 1.0), ratio=(1.0, 1.0), jitter_p=0.0, grayscale_p=0.0,
                    blur_p=(0.0,)),
      "strong": group(size=32, views=2, scale=(0.5, 1.0), jitter_strength=0.5, grayscale_p=0.2, blur_p=(0.0,),
                      solarize_p=(0.5,)),
  })
  c.eval.monitors = ("knn", "noisy_labels")
  c.eval.noisy_linear_epochs = 20   # eval/linear_noisy_top1: a linear probe fitted to the noisy labels
  c.num_epochs = 12
