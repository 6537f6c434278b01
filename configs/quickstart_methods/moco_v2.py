"""MoCo v2 on the embedded shapes (Chen et al. 2020, 'Improved Baselines'): a 4096-key queue for 10k images.

The quick start trains 351 steps on one device, so as the official MoCo CIFAR demo: per-device BN emulated with
8 BN groups (bn_splits=8, the demo's SplitBatchNorm) and the key batch shuffled across them (Shuffle BN), and the key
encoder follows faster than the paper's m = 0.999 (a 1000-step time constant would leave it near its random init):
m = 0.99 (the demo's value).
"""
import ml_collections


def apply(c: ml_collections.ConfigDict) -> None:
  c.method = dict(name="moco_v2", temperature=0.2, momentum=0.99, queue_size=4096, proj_hidden=512, proj_dim=128,
                  shuffle_bn=True, bn_splits=8)
  c.model.bn = "local"
