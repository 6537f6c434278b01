"""SigLIP on the embedded shapes and their captions (Zhai et al. 2023): CLIP's towers, sigmoid loss."""
import ml_collections

from cl_jax.config_args import load_sibling

language_image = load_sibling(__file__, "clip").language_image


def apply(c: ml_collections.ConfigDict) -> None:
  language_image(c, "siglip", "caption")
