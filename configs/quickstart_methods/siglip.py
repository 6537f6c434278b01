"""SigLIP on the embedded shapes and their captions (Zhai et al. 2023): CLIP's towers, sigmoid loss."""
import ml_collections

from configs.quickstart_methods.clip import language_image


def apply(c: ml_collections.ConfigDict) -> None:
  language_image(c, "siglip", "caption")
