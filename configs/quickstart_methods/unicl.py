"""UniCL on the embedded shapes (Yang et al. 2022): half the images paired with a caption, half with a class
prompt ("mixed"), one image-text-label contrastive loss."""
import ml_collections

from configs.quickstart_methods.clip import language_image


def apply(c: ml_collections.ConfigDict) -> None:
  language_image(c, "unicl", "mixed")
