"""SupCon on the embedded shapes (Khosla et al. 2020): the shape labels decide the positives (supervised).

Two views with the quick start's crops and jitter, the official 'mlp' head at the backbone's width (128 for
resnet_tiny) to 128-d, temperature 0.1, base temperature 0.07. It sees the labels, so it is the supervised
reference the label-noise / coarse-label / discovery methods compare with, not a self-supervised result.
Measured: (pending).
"""
import ml_collections


def apply(c: ml_collections.ConfigDict) -> None:
  c.method = dict(name="supcon", temperature=0.1, base_temperature=0.07, proj_hidden=128, proj_dim=128,
                  use_labels=True)
