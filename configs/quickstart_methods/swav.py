"""SwAV on the embedded shapes (Caron et al. 2020), scaled down for a tiny net and a few hundred steps.

Two 32 px global crops (the quick start's milder crops and jitter; the imagenet stem needs >= 32 px, so no
smaller local crops), K = 100 prototypes, temperature 0.1, epsilon 0.05, 3 Sinkhorn iterations, no queue (the
batch of 256 is larger than K), prototypes frozen for the first epoch (the official freeze_prototypes_niters).
"""
import ml_collections

from cl_jax.data.augment import group


def apply(c: ml_collections.ConfigDict) -> None:
  c.method = dict(name="swav", proj_hidden=512, proj_dim=128, num_prototypes=100, temperature=0.1, epsilon=0.05,
                  sinkhorn_iters=3, queue_length=0, queue_start_epoch=15)
  c.augment = ml_collections.ConfigDict({"global": group(size=32, views=2, scale=(0.5, 1.0), jitter_strength=0.5,
                                                         grayscale_p=0.2, blur_p=(0.0,), role="global")})
  c.optim.frozen = ("prototypes",)
  c.optim.frozen_steps = c.data.num_train // c.batch_size
