"""SigLIP: CLIP's two towers trained with the pairwise sigmoid loss, chunked across devices."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from cl_jax import parallel
from cl_jax.losses.siglip import BIAS_INIT, LOG_TEMPERATURE_INIT, siglip_loss
from cl_jax.methods import METHODS
from cl_jax.schema import Field
from cl_jax.methods.language_image import LanguageImageMethod


@METHODS.register("siglip")
class SigLIP(LanguageImageMethod):
  """SigLIP (Zhai et al. 2023, Eq. 1, Alg. 1, Sec. 3.2-3.3): sigmoid loss over all image-text pairs with a
  learnable temperature t' (init log 10) and bias b (init -10); across devices the texts rotate around the ring."""

  SCHEMA = {**LanguageImageMethod.SCHEMA, "log_temperature_init": Field(LOG_TEMPERATURE_INIT),
            "bias_init": Field(BIAS_INIT)}

  def loss_params(self) -> dict[str, jax.Array]:
    m = self.hp
    return {"log_temperature": jnp.asarray(m["log_temperature_init"], jnp.float32),
            "bias": jnp.asarray(m["bias_init"], jnp.float32)}

  def contrastive_loss(self, params, z_img, z_txt, views):
    del views
    return siglip_loss(z_img, z_txt, params["log_temperature"], params["bias"], axis_name=parallel.DATA)
