"""CLIP on the embedded multi-object scenes (`shapes_scenes`) and their captions: the dense-CLIP baseline of
open-vocabulary segmentation (cl_jax/eval/segmentation.py reads the image projection of every patch token).

1 to 4 shapes per 32 px image, captions naming every object ("a red star and a small blue ring on a dotted
background"); the same held-out (shape, colour) pairs, text tower and optimizer as the CLIP quick start
(quickstart_methods/clip.py), a micro ViT with 4 px patches (an 8 x 8 grid of patch embeddings to segment with),
crops of 80-100% of the image (a smaller crop cuts out objects the caption names).
"""
import ml_collections

from cl_jax.config_args import load_sibling

language_image = load_sibling(__file__, "clip").language_image

SCENES_TOWER = dict(name="vit_micro", patch_size=4)   # 8 x 8 patches of 4 x 4 px at 32 px


def scenes(c: ml_collections.ConfigDict, name: str) -> None:
  """The CLIP-family settings on shapes_scenes (shared by the dense methods' quick starts)."""
  language_image(c, name, "caption")
  c.dataset = "shapes_scenes"
  c.model = dict(SCENES_TOWER)
  c.augment["global"].scale = (0.8, 1.0)
  c.eval.monitors = ("zeroshot", "retrieval", "segmentation")


def apply(c: ml_collections.ConfigDict) -> None:
  scenes(c, "clip")
