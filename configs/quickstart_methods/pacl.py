"""PACL on the embedded multi-object scenes (Mukhoti et al. 2023): the patch-aligned contrastive loss on
captions only, no masks; segmentation reads each patch's embedding against the class prompts.

The data, views, towers, optimizer and 20 epochs of the dense-CLIP baseline (quickstart_methods/clip_scenes.py),
trained from scratch (method.freeze_towers=False). The paper's recipe, the embedder alone on frozen CLIP towers:

  python -m cl_jax.main --config=configs/quickstart.py:method=clip_scenes --workdir=/tmp/q_clip_scenes
  python -m cl_jax.main --config=configs/quickstart.py:method=pacl --workdir=/tmp/q_pacl_frozen \\
    --config.init_from=/tmp/q_clip_scenes --config.method.freeze_towers=True \\
    --config.optim.frozen="('backbone','text')"

Measured (780 steps, 2 shared cores): from scratch mIoU 2.27% (pixel acc. 16.57, object pixels of held-out / seen
pairs 15.90 / 14.06), zero-shot 16.45%; frozen on clip_scenes 2.86%; frozen on clip_vit 2.56%; the dense-CLIP
baseline (clip_scenes) 4.91%: no gain in mIoU (README, "Open-vocabulary segmentation", says why).
"""
import ml_collections

from cl_jax.config_args import load_sibling

scenes = load_sibling(__file__, "clip_scenes").scenes


def apply(c: ml_collections.ConfigDict) -> None:
  scenes(c, "pacl")
  c.method.freeze_towers = False
  c.optim.frozen = ()
