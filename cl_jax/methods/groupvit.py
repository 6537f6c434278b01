"""GroupViT (Xu et al., CVPR 2022, "GroupViT: Semantic Segmentation Emerges from Text Supervision";
NVlabs/GroupViT models/group_vit.py, models/multi_label_contrastive.py).

The image tower is the grouping ViT of cl_jax/models/groupvit.py (backbone `groupvit`): segments are merged into
learnable groups stage by stage with a Gumbel-softmax hard assignment; the image embedding is the linear
projection of the average-pooled final group tokens. The text tower is CLIP's (cl_jax/models/text.py). The loss
(Sec. 3.2, Eq. 5-8) is CLIP's symmetric InfoNCE over the gathered global batch (losses/clip.py) plus the
multi-label loss (losses/groupvit.py) between each image and `multi_label` prompts "a photo of a {noun}." of nouns
from its caption, with its own learnable temperature (official share_temperature=False) and weight 1.

Nouns: the official code POS-tags each caption with NLTK and samples up to 3 nouns without replacement, filling
missing slots with the caption itself; here the batch's multi-hot `nouns` [b, num_classes] (shapes_scenes gives
them) play the tags: up to `multi_label` present classes per example are sampled without replacement from its
per-example key, missing slots take the caption. The class prompts are tokenised once (the method's tokenizer)
and encoded once per step. Gumbel noise and noun draws use fold_in(step key, global example index), so 1 and 8
devices give the same numbers. Our choices: linear projections (the official uses 2-layer MLP projectors with
SyncBN on both towers), no drop-path; see also models/groupvit.py.

Dense readout (`encode_dense`): the stage assignments composed into a patch -> final-group map, one-hot per patch
(`dense_assignment="hard"`: the product of the hard inference assignments; "soft": the official
get_attn_maps, product of the soft maps then argmax), and each patch gets the L2-normalised projected
embedding of its final group, on the patch grid [b, gh, gw, embed_dim].
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cl_jax import parallel
from cl_jax.data.masking import batch_keys
from cl_jax.data.tokenizer import Tokenizer, build_tokenizer
from cl_jax.losses.clip import LOGIT_SCALE_INIT, clip_loss
from cl_jax.losses.contrastive import l2_normalize
from cl_jax.losses.groupvit import multi_label_loss
from cl_jax.methods import METHODS
from cl_jax.methods.base import Method, RunFacts, Views
from cl_jax.methods.common import embedding_std
from cl_jax.methods.language_image import batch_tokens, init_tokens, text_config
from cl_jax.models import build_backbone
from cl_jax.models.groupvit import GroupViT, compose_assignments
from cl_jax.models.text import TextTransformer, build_text_model
from cl_jax.schema import Field

DENSE_ASSIGNMENTS = ("hard", "soft")
# Datasets whose batches carry multi-hot `nouns`, and the class names those columns stand for.
_NOUN_DATASETS = {"shapes_scenes": "cl_jax.data.scenes"}


class GroupViTCLIP(nn.Module):
  """The GroupViT image encoder + linear projection (no bias) and the text Transformer, into one joint space."""
  image: GroupViT
  text: TextTransformer
  embed_dim: int

  def setup(self):
    self.image_proj = nn.Dense(self.embed_dim, use_bias=False, name="image_projection")

  def encode_image(self, images: jax.Array, noise_keys: jax.Array | None = None) -> tuple[dict, jax.Array]:
    """(the image tower's outputs with groups and assignments, unnormalised image embedding [b, E])."""
    out = self.image(images, train=noise_keys is not None, noise_keys=noise_keys, return_groups=True)
    return out, self.image_proj(out["pooled"])

  def project(self, x: jax.Array) -> jax.Array:
    """The image projection of tokens [..., width] (the final groups for the dense readout)."""
    return self.image_proj(x)

  def encode_text(self, tokens: jax.Array) -> jax.Array:
    """Unnormalised joint-space text embeddings of token ids [b, L]."""
    return self.text(tokens)

  def __call__(self, images: jax.Array, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
    out, z = self.encode_image(images)
    self.project(out["groups"])
    return z, self.encode_text(tokens)


def select_nouns(keys: jax.Array, nouns: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
  """Up to k present classes per example, uniformly without replacement (official np.random.choice(nouns,
  min(3, len(nouns)), replace=False)): (class ids [b, k], valid [b, k]); keys [b], nouns multi-hot [b, C]."""
  scores = jax.vmap(lambda key: jax.random.uniform(key, (nouns.shape[1],)))(keys)
  scores = jnp.where(nouns > 0, scores, -1.0)
  top, idx = jax.lax.top_k(scores, k)
  return idx, top >= 0


def noun_names(config: ml_collections.ConfigDict, given: Any) -> tuple[str, ...]:
  """method.nouns, else the class names of a dataset whose batches carry `nouns` (one-line error otherwise)."""
  if given:
    return (given,) if isinstance(given, str) else tuple(str(n) for n in given)
  dataset = str(config.get("dataset", ""))
  if dataset not in _NOUN_DATASETS:
    raise ValueError(f"groupvit's multi-label loss needs per-example nouns; dataset={dataset!r} gives none. Use "
                     f"dataset='shapes_scenes', set method.nouns to the class names of the batch's `nouns` "
                     "columns, or method.multi_label=0 (CLIP loss only).")
  import importlib  # pylint: disable=g-import-not-at-top
  return tuple(importlib.import_module(_NOUN_DATASETS[dataset]).CLASS_NAMES)


@METHODS.register("groupvit")
class GroupViTMethod(Method):
  """GroupViT (Xu et al. 2022): L = L_CLIP + multi_label_weight * L_multi-label (see the module doc).

  Language-image interface: `encode_text`, `encode_image_embedding`, `tokenizer`, `embed_dim`; dense:
  `encode_dense(params, state, images) -> [b, gh, gw, embed_dim]` and `assignment_maps`."""

  SCHEMA = {
      "embed_dim": Field(256, low=1),                          # official output_dim 256
      "logit_scale_init": Field(LOGIT_SCALE_INIT, low=0, open_low=True),   # log(1 / 0.07), both losses
      "multi_label": Field(3, low=0),                          # prompts per image (official 3; 0 = CLIP only)
      "multi_label_weight": Field(1.0, low=0),
      "prompt_template": Field("a photo of a {}."),            # official 'simple' template
      "nouns": Field(None),                                    # class names of the batch's `nouns` columns
      "dense_assignment": Field("hard", choices=DENSE_ASSIGNMENTS),
  }

  def __init__(self, config: ml_collections.ConfigDict, run_facts: RunFacts):
    super().__init__(config, run_facts)
    m = self.hp
    image = build_backbone(config.model)
    if not isinstance(image, GroupViT):
      raise ValueError(f"groupvit needs the grouping image tower; model.name={config.model.name!r} is not it "
                       "(set model.name='groupvit').")
    self.tokenizer: Tokenizer = build_tokenizer(text_config(config))
    self.embed_dim = int(m.embed_dim)
    text = build_text_model(config.get("text_model", ml_collections.ConfigDict()), self.tokenizer.vocab_size,
                            self.tokenizer.context_length, self.embed_dim)
    self.model = GroupViTCLIP(image, text, self.embed_dim)
    self.multi_label = int(m.multi_label)
    self.prompt_tokens = None
    if self.multi_label:
      template = str(m.prompt_template)
      if template.count("{}") != 1:
        raise ValueError(f"method.prompt_template={template!r} needs exactly one '{{}}' for the noun, "
                         "e.g. 'a photo of a {}.'.")
      self.noun_names = noun_names(config, m.nouns)
      if self.multi_label > len(self.noun_names):
        raise ValueError(f"method.multi_label={self.multi_label} is more than the {len(self.noun_names)} nouns; "
                         f"use at most {len(self.noun_names)}.")
      self.prompt_tokens = np.asarray(self.tokenizer.encode([template.format(n) for n in self.noun_names]))

  # ---------------------------------------------------------------- the Method contract
  def init(self, key: jax.Array, views: Views):
    images = views["crops"][0][0]
    tokens = init_tokens(views, self.tokenizer, images.shape[0])
    variables = self.model.init(key, images, tokens)
    scale = jnp.asarray(self.hp.logit_scale_init, jnp.float32)
    params = {"model": variables["params"], "logit_scale": scale}
    if self.multi_label:
      params["multi_label_logit_scale"] = scale
    return params, {}

  def _nouns(self, views: Views, batch: int) -> jax.Array:
    nouns = views.get("nouns")
    if nouns is None or nouns.shape != (batch, len(self.noun_names)):
      got = None if nouns is None else tuple(nouns.shape)
      raise ValueError(f"groupvit's multi-label loss needs multi-hot 'nouns' [batch, {len(self.noun_names)}] in the "
                       f"batch, got {got}; use dataset='shapes_scenes' or method.multi_label=0.")
    return nouns

  def loss(self, params, state, views, key, step):
    del step
    m = self.hp
    images = views["crops"][0][0]
    b = images.shape[0]
    tokens = batch_tokens(views, b, "groupvit")
    nouns = self._nouns(views, b) if self.multi_label else None
    keys = batch_keys(key, b)                                 # fold_in(key, global example index)
    noise_keys = jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys)
    variables = {"params": params["model"]}
    out, z_img = self.model.apply(variables, images, noise_keys, method=GroupViTCLIP.encode_image)
    n_cls = 0 if self.prompt_tokens is None else len(self.prompt_tokens)
    all_tokens = tokens if not n_cls else jnp.concatenate([tokens, jnp.asarray(self.prompt_tokens)], axis=0)
    z_all = self.model.apply(variables, all_tokens, method=GroupViTCLIP.encode_text)
    z_txt = z_all[:b]
    loss, metrics = clip_loss(z_img, z_txt, params["logit_scale"], axis_name=parallel.DATA)
    metrics["clip_loss"] = loss
    if self.multi_label:
      noun_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
      idx, valid = select_nouns(noun_keys, nouns, self.multi_label)
      prompts = jnp.where(valid[..., None], z_all[b:][idx], z_txt[:, None])      # [b, K, E]
      ml, ml_metrics = multi_label_loss(z_img, prompts, params["multi_label_logit_scale"], parallel.DATA)
      loss = loss + m.multi_label_weight * ml
      metrics["multi_label_loss"] = ml
      metrics.update(ml_metrics)
      metrics["noun_prompts"] = parallel.pmean(jnp.mean(jnp.sum(valid, axis=1).astype(jnp.float32)),
                                               parallel.DATA)
    final = compose_assignments(out["assign"], hard=True)
    used = jnp.sum(jnp.any(final > 0.5, axis=1), axis=1).astype(jnp.float32)
    metrics["groups_used"] = parallel.pmean(jnp.mean(used), parallel.DATA)
    metrics["embedding_std"] = embedding_std(z_img, parallel.DATA)
    metrics["features"] = out["pooled"]
    return loss, (state, metrics)

  def encode(self, params, state, images):
    """Average-pooled final group tokens (before the projection), inference mode: kNN and linear probe."""
    del state
    return self.model.apply({"params": params["model"]}, images, method=GroupViTCLIP.encode_image)[0]["pooled"]

  def encode_image_embedding(self, params: Any, state: Any, images: jax.Array) -> jax.Array:
    """L2-normalised joint-space image embeddings (zero-shot, retrieval)."""
    del state
    return l2_normalize(self.model.apply({"params": params["model"]}, images, method=GroupViTCLIP.encode_image)[1])

  def encode_text(self, params: Any, state: Any, tokens: jax.Array) -> jax.Array:
    """L2-normalised joint-space text embeddings of token ids [b, L]."""
    del state
    return l2_normalize(self.model.apply({"params": params["model"]}, tokens, method=GroupViTCLIP.encode_text))

  # ---------------------------------------------------------------- dense readout
  def assignment_maps(self, params: Any, state: Any, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(patch -> final-group one-hot map [b, gh, gw, G], normalised final-group embeddings [b, G, E]) at
    inference (no noise); the map per `dense_assignment` (module doc)."""
    del state
    variables = {"params": params["model"]}
    out, _ = self.model.apply(variables, images, method=GroupViTCLIP.encode_image)
    hard = self.hp.dense_assignment == "hard"
    final = compose_assignments(out["assign"] if hard else out["soft"], hard=True)
    gh, gw = self.model.image.grid(images.shape[1:3])
    groups = l2_normalize(self.model.apply(variables, out["groups"], method=GroupViTCLIP.project))
    return final.reshape(images.shape[0], gh, gw, -1), groups

  def encode_dense(self, params: Any, state: Any, images: jax.Array) -> jax.Array:
    """Per patch the L2-normalised joint-space embedding of its final group, [b, gh, gw, embed_dim] (GroupViT
    Sec. 3.3 zero-shot transfer to segmentation: each output segment is classified as a whole)."""
    final, groups = self.assignment_maps(params, state, images)
    return jnp.einsum("bhwg,bge->bhwe", final, groups)
