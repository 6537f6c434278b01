"""SimSiam on the embedded shapes (Chen & He 2021), scaled down for a tiny net and a few hundred steps."""
import ml_collections


def apply(c: ml_collections.ConfigDict) -> None:
  # The CIFAR variant's 2-layer projector (Appendix D) with a 4x predictor bottleneck as the paper's 2048 -> 512.
  c.method = dict(name="simsiam", proj_layers=2, proj_hidden=512, proj_dim=512, pred_hidden=128)
  c.optim.constant_lr = ("predictor",)   # the predictor's fixed lr (Sec. 4.2)
