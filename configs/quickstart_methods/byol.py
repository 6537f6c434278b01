"""BYOL on the embedded shapes (Grill et al. 2020), scaled down for a tiny net and a few hundred steps.

NOT at the quick start's +10 kNN target: on this data and budget BYOL keeps what survives the views (colour)
and its kNN stays flat, while the contrastive methods gain 11-19 points. Measured (AdamW 4e-3, no
collapse by train/embedding_std in any run): 351 steps, base_momentum 0.99 with blur 1.0/0.1: kNN top-1
16.65 -> 16.35; base_momentum 0.95 without blur: 16.65 -> 14.60; 585 steps (these settings): 16.65 -> 16.40;
585 steps with strong colour views (jitter p 1.0, strength 1.0, hue 0.5, grayscale 0.5): 16.65 -> 16.35.
60 epochs (2,340 steps, 10 minutes, 4x the budget): 16.65 -> 16.65 (low 14.50 at step 780).
585 steps with base_momentum 0.9: 16.65 -> 15.75; with crop scale 0.2-1: 16.65 -> 15.35; with LARS (lr 1.0,
wd 1e-5, trust coefficient 0.02, solo-learn's CIFAR setting): 16.65 -> 13.80.
Why (`python -m cl_jax.evaluate --workdir=... --protocol=attributes`, kNN top-1 per attribute, 312 steps): shape
16.7 -> 15.2 while colour 53.0 -> 63.0 and position 32.4 -> 16.9; BYOL keeps the easy invariant (colour) and drops
what the crops move, but does not build the harder shape feature, which random features barely hold (a linear
probe on the initial features: 17.8%). SimCLR under the same budget: shape 17.5 -> 29.4, colour 55.1 -> 89.3.
Also tried over 8 epochs (shape kNN at the end): batch 64 15.4; SGD lr 0.1 15.8; predictor lr x10 16.8; hue 0.5
jitter at p 1.0 15.2 (+ grayscale 0.5, crop 0.2-1: 13.0); crop scale 0.08-1 12.1; 4096-256-4096 heads (the
paper's) 13.9; batch 16 with lr 1e-3 over 4 epochs (2,500 steps) 13.2.
Issue 11 (heads now as the official code: no bias on the output Linear, deepmind/byol networks.py; no collapse,
train/embedding_std 0.076-0.077 of 1/sqrt(128) = 0.088 in every run; wall times on a machine shared 3 ways, about
2x the time alone): 300 steps, these settings: 16.65 -> 17.35 (14.10 at step 100, 16.30 at 200), 6m27s; the same
at 585 steps: 16.65 -> 14.90 (15.20 at 195, 16.10 at 390), so the 300-step gain is noise; 300 steps with SGD lr 0.1
momentum 0.9 and coupled weight decay 5e-4: 16.65 -> 15.90, 6m12s. The EMA time constant (0.9 / 0.95 / 0.99),
LARS and the predictor's lr were measured before (above): none moves shape kNN.
"""
import ml_collections

from cl_jax.data.augment import group


def apply(c: ml_collections.ConfigDict) -> None:
  # base_momentum 0.99 instead of 0.996: over ~350 steps a 0.996 target barely leaves its random init.
  c.method = dict(name="byol", proj_hidden=512, proj_dim=128, pred_hidden=512, base_momentum=0.99)
  # BYOL's asymmetric views (Table 6: blur 1.0 / 0.1, solarize 0 / 0.2) on the quick start's milder crops/jitter.
  c.augment = ml_collections.ConfigDict({"global": group(size=32, views=2, scale=(0.5, 1.0), jitter_strength=0.5,
                                                         grayscale_p=0.2, blur_p=(1.0, 0.1),
                                                         solarize_p=(0.0, 0.2))})
