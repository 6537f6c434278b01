"""SimCLR on the embedded shapes (Chen et al. 2020): the quick start's default method."""
import ml_collections


def apply(c: ml_collections.ConfigDict) -> None:
  c.method = dict(name="simclr", version=1, temperature=0.2, proj_hidden=256, proj_dim=64)
