"""InstDisc on the embedded shapes (Wu et al. 2018): NCE with m = 4096 noise rows from a bank of the 10k images.

One view per image (the method's), the quick start's milder crop/jitter; bank_size is the quick start's num_train.
"""
import ml_collections


def apply(c: ml_collections.ConfigDict) -> None:
  c.method = dict(name="instdisc", loss="softmax", temperature=0.07, num_negatives=4096, bank_momentum=0.5,
                  proj_dim=128)   # bank_size: config.data.num_train
  c.augment["global"].views = 1
