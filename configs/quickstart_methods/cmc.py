"""CMC on the embedded shapes (Tian et al. 2020): L and ab of one crop, a resnet_tiny per view, memory banks.

One crop per image with the official augmentation (random resized crop and flip, no colour jitter: the views
are the colour channels themselves), temperature 0.07, bank momentum 0.5, 25 epochs (975 steps: one crop per
image, as InstDisc's quick start), and the exact softmax over the 10k-row banks (as InstDisc's quick start; the
official default is NCE). Measured on the shared 2-core machine (kNN top-1 of the concatenated L and ab features,
step 0 -> 975; wall time with two other jobs running, user CPU time in brackets):
  loss=full_softmax (these settings)                  18.90 -> 28.90 (+10.0; 770 s [272 s]); attributes at the end:
                                                      shape 28.90, colour 88.30, size 60.70, position 33.75
  loss=nce, 4096 noise rows (the official loss)       18.90 -> 26.65 (+7.75; 788 s [271 s])
  views=(L, ab, grad), graph=full, full_softmax       19.90 -> 28.35 (+8.45; 835 s [401 s]; Sec. 3.3's full graph)
"""
import ml_collections

from cl_jax.data.augment import group


def apply(c: ml_collections.ConfigDict) -> None:
  c.method = dict(name="cmc", views=("L", "ab"), graph="core", loss="full_softmax", temperature=0.07,
                  num_negatives=4096, bank_momentum=0.5, proj_dim=128)   # bank rows: the training split's size
  c.augment = ml_collections.ConfigDict({"global": group(size=32, views=1, scale=(0.5, 1.0), jitter_p=0.0,
                                                         grayscale_p=0.0, blur_p=(0.0,))})
  c.num_epochs = 25
