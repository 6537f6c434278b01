"""PACL (Mukhoti et al., CVPR 2023): CLIP's towers with a patch-level vision embedder trained by the
patch-aligned contrastive loss, so every patch lands in the text space and segmentation needs no masks."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from cl_jax import parallel
from cl_jax.losses.contrastive import l2_normalize
from cl_jax.losses.pacl import pacl_loss
from cl_jax.methods import METHODS
from cl_jax.methods.base import RunFacts
from cl_jax.methods.language_image import DualEncoder, LanguageImageMethod
from cl_jax.models import build_backbone
from cl_jax.schema import Field

TOWERS = ("backbone", "text")   # what PACL takes from a CLIP run (config.init_from)


class PatchEmbedder(nn.Module):
  """PACL's vision embedder (Sec. 3.3): a linear map plus a two-layer GELU MLP of each patch token, summed."""
  dim: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    mlp = nn.Dense(self.dim, name="mlp_out")(nn.gelu(nn.Dense(self.dim, name="mlp_in")(x), approximate=False))
    return nn.Dense(self.dim, name="linear")(x) + mlp


class PACLEncoder(DualEncoder):
  """DualEncoder + the patch embedder; with `freeze_towers` the towers' outputs are stop-gradient (the paper
  trains the embedder on frozen CLIP encoders). `__call__` -> (CLS features, patch embeddings [b, N, D], text)."""
  freeze_towers: bool = True

  def setup(self):
    super().setup()
    self.patch_embedder = PatchEmbedder(self.embed_dim, name="patch_embedder")

  def patch_embeddings(self, images: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    tokens = self.backbone(images, train=train, return_tokens=True)
    cls, patches = tokens["cls"], tokens["patches"]
    if self.freeze_towers:
      cls, patches = jax.lax.stop_gradient(cls), jax.lax.stop_gradient(patches)
    return cls, self.patch_embedder(patches)

  def encode_dense(self, images: jax.Array) -> jax.Array:
    """Unnormalised patch embeddings on the patch grid [b, gh, gw, D]."""
    _, z = self.patch_embeddings(images)
    p = self.backbone.patch_size
    return z.reshape(images.shape[0], images.shape[1] // p, images.shape[2] // p, -1)

  def __call__(self, images: jax.Array, tokens: jax.Array, train: bool) -> tuple[jax.Array, jax.Array, jax.Array]:
    h, z = self.patch_embeddings(images, train)
    text = self.encode_text(tokens)
    return h, z, jax.lax.stop_gradient(text) if self.freeze_towers else text


@METHODS.register("pacl")
class PACL(LanguageImageMethod):
  """PACL (Mukhoti et al. 2023, Sec. 3.2-3.3, Eq. 2-4): the patch-aligned compatibility phi(x, y) = cos(sum_i
  softmax_i(cos(e_v(x_i), e_t(y))) e_v(x_i), e_t(y)) replaces CLIP's global cosine in the symmetric InfoNCE over
  the gathered global batch (losses/pacl.py); e_v is the patch embedder on the ViT's patch tokens, e_t CLIP's
  projected text embedding. Segmentation (Sec. 3.4) scores each patch's e_v against the class prompts
  (encode_dense). As the paper, the towers are CLIP's and frozen (`freeze_towers`; start from a CLIP run with
  config.init_from, which copies both towers, and list them in config.optim.frozen so weight decay leaves them
  alone); `freeze_towers=False` trains everything from scratch on the PACL loss alone (a choice of ours for the
  quick start). Choices of ours: e_t is the identity on CLIP's text embedding, the embedder's hidden width is the
  joint width, and zero-shot classification and retrieval read the renormalised mean of the normalised patch
  embeddings (encode_image_embedding; CLIP's CLS projection is not part of PACL, method.image_projection is
  ignored)."""

  SCHEMA = {**LanguageImageMethod.SCHEMA, "freeze_towers": Field(True, choices=(True, False))}
  init_from_parts = TOWERS

  def __init__(self, config: ml_collections.ConfigDict, run_facts: RunFacts):
    super().__init__(config, run_facts)
    self.freeze = bool(self.hp["freeze_towers"])
    if self.freeze:
      frozen = tuple(config.get("optim", {}).get("frozen", None) or ())
      missing = [t for t in TOWERS if not any(t in f for f in frozen)]
      if not config.get("init_from", ""):
        raise ValueError("pacl with method.freeze_towers=True trains only the patch embedder on frozen towers: set "
                         "config.init_from=<a cl_jax CLIP workdir>, or method.freeze_towers=False.")
      if missing:
        raise ValueError(f"pacl with method.freeze_towers=True needs config.optim.frozen to hold {missing[0]!r} "
                         f"(weight decay would move frozen towers); set config.optim.frozen={TOWERS}.")
    m = self.model
    self.model = PACLEncoder(build_backbone(config.model), m.text, m.embed_dim, False, freeze_towers=self.freeze)
    if not hasattr(self.model.backbone, "patch_size"):
      raise ValueError(f"pacl needs a ViT image tower (patch tokens), not {config.model.name}; set "
                       "config.model.name to a vit_* model.")

  def loss_params(self) -> dict[str, jax.Array]:
    """CLIP's learnable log logit scale, init log(1/0.07)."""
    return {"logit_scale": jnp.asarray(self.hp.logit_scale_init, jnp.float32)}

  def contrastive_loss(self, params: Any, z_img: jax.Array, z_txt: jax.Array, views):
    del views
    return pacl_loss(z_img, z_txt, params["logit_scale"], axis_name=parallel.DATA)

  def encode_dense(self, params: Any, state: Any, images: jax.Array) -> jax.Array:
    """L2-normalised patch embeddings e_v on the patch grid [b, gh, gw, D] (PACL Sec. 3.4)."""
    variables = {"params": params["model"], "batch_stats": state.get("batch_stats", {})}
    return l2_normalize(self.model.apply(variables, images, method=PACLEncoder.encode_dense))

  def encode_image_embedding(self, params: Any, state: Any, images: jax.Array) -> jax.Array:
    """The renormalised mean of the normalised patch embeddings [b, D] (zero-shot classification, retrieval)."""
    dense = self.encode_dense(params, state, images)
    return l2_normalize(jnp.mean(dense.reshape(dense.shape[0], -1, dense.shape[-1]), axis=1))
