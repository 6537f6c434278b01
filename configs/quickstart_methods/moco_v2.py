"""MoCo v2 on the embedded shapes (Chen et al. 2020, 'Improved Baselines'): a 4096-key queue for 10k images.

The quick start trains 351 steps, so the key encoder must follow faster than the paper's m = 0.999 (a 1000-step
time constant would leave it near its random init for the whole run): m = 0.99.
"""
import ml_collections


def apply(c: ml_collections.ConfigDict) -> None:
  c.method = dict(name="moco_v2", temperature=0.2, momentum=0.99, queue_size=4096, proj_hidden=512, proj_dim=128,
                  shuffle_bn=True)
