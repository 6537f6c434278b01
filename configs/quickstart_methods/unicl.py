"""UniCL on the embedded shapes (Yang et al. 2022): half the images paired with a caption, half with a class
prompt ("mixed"), one image-text-label contrastive loss."""
import ml_collections

from cl_jax.config_args import load_sibling

language_image = load_sibling(__file__, "clip").language_image


def apply(c: ml_collections.ConfigDict) -> None:
  language_image(c, "unicl", "mixed")
