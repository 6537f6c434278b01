"""FDT on the embedded shapes and their captions (Chen et al. 2023): CLIP's text tower, a micro ViT for patch
tokens, a shared dictionary of 512 tokens, sparsemax over max-pooled scores, CLIP's loss on the FDT embeddings.

The same data, views, text tower, optimizer and 20 epochs as the CLIP quick start (quickstart_methods/clip.py);
FDT needs patch tokens, so the image tower is TOWER. CLIP with the same tower, for comparison:

  python -c "from configs import quickstart; from configs.quickstart_methods import fdt; from cl_jax import train; \
c = quickstart.get_config('method=clip'); c.model = fdt.TOWER; train.train_and_evaluate(c, '/tmp/q_clip_vit')"
"""
import ml_collections

from cl_jax.config_args import load_sibling

language_image = load_sibling(__file__, "clip").language_image

TOWER = dict(name="vit_micro", patch_size=8)   # 16 patches of 8 x 8 px at 32 px


def apply(c: ml_collections.ConfigDict) -> None:
  language_image(c, "fdt", "caption")
  c.model = dict(TOWER)
  # Every field spelled out so the command line can change it (--config.method.sd_decay=0.7 ...).
  c.method.update(num_tokens=256, sd_temperature=1000.0, sd_decay=1.0, sd_decay_steps=0, sd_min=0.01,
                  attention="sparsemax", pad_fill="neg_inf")
