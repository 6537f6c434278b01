"""SimSiam on the embedded shapes (Chen & He 2021), scaled down for a tiny net and a few hundred steps.

NOT at the quick start's +10 kNN target: kNN top-1 falls while train/embedding_std stays near 1/sqrt(512) (no
collapse). Measured over 585 steps: AdamW 4e-3 16.65 -> 12.45; SGD lr 0.06 momentum 0.9 wd 5e-4 (the CIFAR
demo's optimizer) 16.65 -> 13.60; crop scale 0.2-1 (the paper's): 16.65 -> 12.50.
Why (`--protocol=attributes`, kNN top-1 per attribute, batch 64, 1,248 steps): shape 16.7 -> 14.4 while colour
53.0 -> 68.2 and position 32.4 -> 20.3: SimSiam keeps the easy invariant and drops what the crops move, but does
not build the shape feature (see byol.py).
Issue 11 (wall times on a machine shared 3 ways, about 2x the time alone; no collapse: train/embedding_std
0.039-0.044 of 1/sqrt(512) = 0.044 unless said): SGD lr 0.1 momentum 0.9 with coupled weight decay 0.01 (so that
lr x wd x steps, the decay's reach, is ~0.3 in this short run instead of 5e-4's ~0.02): 300 steps 16.65 -> 15.75
(13.55 at step 100, 13.95 at 200), 5m51s; 585 steps (these settings) 16.65 -> 14.85 (14.15 at 195, 12.90 at 390),
11m16s; weight decay 0.05, 300 steps: 16.65 -> 12.50 (embedding_std down to 0.028).
Mask-only diagnostic (each image replaced by its shape mask, white on black, so shape, size and position are the
only signal; shapes.generate patched in a throwaway script), AdamW 4e-3, 300 steps: kNN 44.30 -> 72.25 (59.45 at
step 100, 70.95 at 200), 3m05s: SimSiam's mechanism builds the shape feature when nothing easier survives the
views; on the full images the colour / background invariants win.
"""
import ml_collections


def apply(c: ml_collections.ConfigDict) -> None:
  # The CIFAR variant's 2-layer projector (Appendix D) with a 4x predictor bottleneck as the paper's 2048 -> 512.
  c.method = dict(name="simsiam", proj_layers=2, proj_hidden=512, proj_dim=512, pred_hidden=128)
  # SGD with coupled weight decay as the paper (Sec. 4.1; its CIFAR demo: SGD 0.03 x B/256, wd 5e-4), the decay
  # raised for a run of 585 steps (measured above: 14.85 against AdamW's 12.45 and wd 5e-4's 13.60).
  c.optim = dict(name="sgd", lr=0.1, lr_scaling="none", weight_decay=0.01, momentum=0.9, nesterov=False,
                 warmup_epochs=1, schedule="cosine")
  c.optim.constant_lr = ("predictor",)   # the predictor's fixed lr (Sec. 4.2)
