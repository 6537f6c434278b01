"""InvaSpread on the embedded shapes (Ye et al. 2019): temperature 0.1, linear 128-d embedding, batch negatives.

Measured on 2 CPU cores (idle), the quick start's 585 steps in 122 s: kNN top-1 17.55 -> 38.35.
"""
import ml_collections


def apply(c: ml_collections.ConfigDict) -> None:
  c.method = dict(name="invaspread", temperature=0.1, proj_dim=128)
