"""CLIP: an image tower and a text tower trained with a symmetric contrastive loss over image-text pairs."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from cl_jax import parallel
from cl_jax.losses.clip import clip_loss
from cl_jax.losses.ring import contrastive_impl
from cl_jax.methods import METHODS
from cl_jax.methods.language_image import LanguageImageMethod


@METHODS.register("clip")
class CLIP(LanguageImageMethod):
  """CLIP (Radford et al. 2021, Sec. 2.3-2.5, Fig. 3): symmetric InfoNCE over the image-text cosine logits with a
  learned temperature (towers, views and encoders: LanguageImageMethod)."""

  def __init__(self, config, run_facts):
    super().__init__(config, run_facts)
    self.impl = contrastive_impl(config)   # config.parallel.contrastive_impl: gather | ring

  def loss_params(self) -> dict[str, jax.Array]:
    """The learnable scalars of the loss: CLIP's log logit scale, init log(1/0.07) (Sec. 2.5)."""
    return {"logit_scale": jnp.asarray(self.hp.logit_scale_init, jnp.float32)}

  def contrastive_loss(self, params, z_img, z_txt, views):
    del views
    return clip_loss(z_img, z_txt, params["logit_scale"], axis_name=parallel.DATA, impl=self.impl)
