"""UniCL: CLIP's two towers trained on image-text and image-label data with one image-text-label loss."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from cl_jax import parallel
from cl_jax.losses.ring import contrastive_impl
from cl_jax.losses.unicl import unicl_loss
from cl_jax.methods import METHODS
from cl_jax.methods.language_image import LanguageImageMethod


@METHODS.register("unicl")
class UniCL(LanguageImageMethod):
  """UniCL (Yang et al. 2022, Sec. 3, Eq. 3-5): every pair in the batch with the same label is a positive, in both
  directions. `views["text_label"]` is the class id of a label-prompt text and -1 for a free caption
  (config.data.text.source='mixed' gives both)."""

  def __init__(self, config, run_facts):
    super().__init__(config, run_facts)
    self.impl = contrastive_impl(config)   # config.parallel.contrastive_impl: gather | ring

  def loss_params(self) -> dict[str, jax.Array]:
    """The learnable log temperature of Eq. 3-4, initialised as CLIP's log(1/0.07)."""
    return {"logit_scale": jnp.asarray(self.hp.logit_scale_init, jnp.float32)}

  def contrastive_loss(self, params, z_img, z_txt, views):
    labels = views.get("text_label")
    if labels is None:
      raise ValueError("unicl found no 'text_label' in the batch; set config.data.text.source to 'mixed' or "
                       "'label_prompt' so the data source adds it.")
    return unicl_loss(z_img, z_txt, labels, params["logit_scale"], axis_name=parallel.DATA, impl=self.impl)
