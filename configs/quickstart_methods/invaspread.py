"""InvaSpread on the embedded shapes (Ye et al. 2019): temperature 0.1, linear 128-d embedding, batch negatives."""
import ml_collections


def apply(c: ml_collections.ConfigDict) -> None:
  c.method = dict(name="invaspread", temperature=0.1, proj_dim=128)
