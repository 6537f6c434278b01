"""MoCo v3 on the embedded shapes (Chen, Xie, He 2021), scaled down for a tiny net and a few hundred steps."""
import ml_collections


def apply(c: ml_collections.ConfigDict) -> None:
  # The ResNet heads of the official code (2-layer projector, predictor without output BN), narrower; temperature
  # 0.2 (the ViT value) rather than the ResNet's 1.0, and momentum from 0.99 as the paper.
  c.method = dict(name="moco_v3", mlp_dim=512, dim=128, proj_layers=2, pred_last_bn=False, temperature=0.2,
                  base_momentum=0.99)
