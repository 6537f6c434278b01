"""UniCL on the embedded shapes (Yang et al. 2022): half the images paired with a caption, half with a class
prompt ("mixed"), one image-text-label contrastive loss.

Measured on 2 CPU cores (idle), 780 steps in 246 s: zero-shot top-1 10.05% -> 60.60% (held-out colour-shape pairs
only 8.40%: the class-prompt half of the data ties each class to its training colours), i->t R@1 24.40%.
"""
import ml_collections

from cl_jax.config_args import load_sibling

language_image = load_sibling(__file__, "clip").language_image


def apply(c: ml_collections.ConfigDict) -> None:
  language_image(c, "unicl", "mixed")
