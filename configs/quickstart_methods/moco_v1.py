"""MoCo v1 on the embedded shapes (He et al. 2020): linear head, temperature 0.07, a 4096-key queue for 10k images.

The quick start trains 351 steps, so the key encoder follows faster than the paper's m = 0.999: m = 0.99.
"""
import ml_collections


def apply(c: ml_collections.ConfigDict) -> None:
  c.method = dict(name="moco_v1", temperature=0.07, momentum=0.99, queue_size=4096, proj_dim=128, shuffle_bn=True)
