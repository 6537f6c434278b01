"""CLIP on the embedded single-object shapes with the dense methods' image tower (a micro ViT with 4 px patches):
the CLIP run LSeg and PACL start from (config.init_from copies its image and text towers).

The CLIP quick start (quickstart_methods/clip.py: captions, held-out pairs, 20 epochs) with the tower of
quickstart_methods/clip_scenes.py. Its text tower keeps the ten shape names apart (mean cosine between their
prompt embeddings 0.05), while CLIP trained on the multi-object scene captions maps most single shape names
to nearly one direction (mean 0.81, up to 0.999: "ring", "crescent", "arrow", "L-shape" and "other" coincide),
which a frozen text tower cannot undo. Measured (idle-ish, 780 steps): zero-shot top-1 28.65% (held-out pairs
24.43%).
"""
import ml_collections

from cl_jax.config_args import load_sibling

language_image = load_sibling(__file__, "clip").language_image
SCENES_TOWER = load_sibling(__file__, "clip_scenes").SCENES_TOWER


def apply(c: ml_collections.ConfigDict) -> None:
  language_image(c, "clip", "caption")
  c.model = dict(SCENES_TOWER)
