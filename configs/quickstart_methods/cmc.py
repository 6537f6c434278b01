"""CMC on the embedded shapes (Tian et al. 2020): L and ab of one crop, a resnet_tiny per view, memory banks.

One crop per image with the official augmentation (random resized crop and flip, no colour jitter: the views
are the colour channels themselves), NCE with 4096 noise rows (of 10k images), temperature 0.07, bank momentum
0.5. Measured: (pending).
"""
import ml_collections

from cl_jax.data.augment import group


def apply(c: ml_collections.ConfigDict) -> None:
  c.method = dict(name="cmc", views=("L", "ab"), graph="core", loss="nce", temperature=0.07, num_negatives=4096,
                  bank_momentum=0.5, proj_dim=128)   # bank rows: the training split's size
  c.augment = ml_collections.ConfigDict({"global": group(size=32, views=1, scale=(0.5, 1.0), jitter_p=0.0,
                                                         grayscale_p=0.0, blur_p=(0.0,))})
  c.num_epochs = 25
