"""SimSiam on the embedded shapes (Chen & He 2021), scaled down for a tiny net and a few hundred steps.

NOT at the quick start's +10 kNN target: kNN top-1 falls while train/embedding_std stays near 1/sqrt(512) (no
collapse). Measured over 585 steps: AdamW 4e-3 16.65 -> 12.45; SGD lr 0.06 momentum 0.9 wd 5e-4 (the CIFAR
demo's optimizer) 16.65 -> 13.60; crop scale 0.2-1 (the paper's): 16.65 -> 12.50.
Why (`--protocol=attributes`, kNN top-1 per attribute, batch 64, 1,248 steps): shape 16.7 -> 14.4 while colour
53.0 -> 68.2 and position 32.4 -> 20.3: SimSiam keeps the easy invariant and drops what the crops move, but does
not build the shape feature (see byol.py).
"""
import ml_collections


def apply(c: ml_collections.ConfigDict) -> None:
  # The CIFAR variant's 2-layer projector (Appendix D) with a 4x predictor bottleneck as the paper's 2048 -> 512.
  c.method = dict(name="simsiam", proj_layers=2, proj_hidden=512, proj_dim=512, pred_hidden=128)
  c.optim.constant_lr = ("predictor",)   # the predictor's fixed lr (Sec. 4.2)
