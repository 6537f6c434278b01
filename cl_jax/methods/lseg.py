"""LSeg (Li et al., ICLR 2022, "Language-driven Semantic Segmentation"): a dense image encoder whose per-pixel
embeddings are classified by a frozen text encoder's label embeddings, trained with per-pixel cross-entropy."""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from cl_jax import parallel
from cl_jax.data.masking import batch_keys
from cl_jax.data.tfds_source import class_names_file
from cl_jax.losses.contrastive import l2_normalize
from cl_jax.losses.lseg import IGNORE, pixel_cross_entropy
from cl_jax.methods import METHODS
from cl_jax.methods.base import RunFacts, Views
from cl_jax.methods.language_image import DualEncoder, LanguageImageMethod
from cl_jax.models import build_backbone
from cl_jax.models.dense_decoder import DenseDecoder
from cl_jax.schema import Field

LOGIT_SCALE = 1 / 0.07   # lang-seg lseg_net.py: exp(log(1 / 0.07)), not learned


class LSegNet(DualEncoder):
  """ViT backbone -> DenseDecoder -> per-location embeddings at 1/2 of the input resolution (LSeg Sec. 3.2: DPT,
  head1 to the text width); the text tower is CLIP's, always stop-gradient (frozen)."""
  features: int = 64

  def setup(self):
    super().setup()
    p = self.backbone.patch_size
    self.decoder = DenseDecoder(self.features, self.embed_dim, max(int(math.log2(p)) - 1, 0), name="decoder")

  def _dense(self, images: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
    p = self.backbone.patch_size
    tokens = self.backbone(images, train=train, return_tokens=True)
    return tokens["cls"], self.decoder(tokens["patches"], (images.shape[1] // p, images.shape[2] // p))

  def encode_dense(self, images: jax.Array) -> jax.Array:
    return self._dense(images, False)[1]

  def encode_text(self, tokens: jax.Array) -> jax.Array:
    return jax.lax.stop_gradient(self.text(tokens))

  def __call__(self, images: jax.Array, tokens: jax.Array, train: bool) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(CLS features, per-location embeddings, label embeddings)."""
    return (*self._dense(images, train), self.encode_text(tokens))


def flip_pairs(key: jax.Array, images: jax.Array, masks: jax.Array,
               axis_name: str | None = parallel.DATA) -> tuple[jax.Array, jax.Array]:
  """The same random horizontal flip (p = 0.5) of each image and its mask; keys per global example index."""
  keys = batch_keys(key, images.shape[0], axis_name)
  flip = jax.vmap(lambda k: jax.random.bernoulli(k, 0.5))(keys)
  images = jnp.where(flip[:, None, None, None], images[:, :, ::-1], images)
  return images, jnp.where(flip[:, None, None], masks[:, :, ::-1], masks)


@METHODS.register("lseg")
class LSeg(LanguageImageMethod):
  """LSeg (Li et al. 2022, Sec. 3.1-3.3, Fig. 2): per-pixel embeddings I [H/2, W/2, C] of a ViT + DPT decoder
  (models/dense_decoder.py, single-scale), label embeddings T [K, C] of the label set by the frozen text tower,
  logits 1/0.07 x cos(I, T) (fixed, as lang-seg's lseg_net.py), bilinearly upsampled to the mask, per-pixel
  cross-entropy (losses/lseg.py). Training labels: `labels` are the class names of the mask ids (mask value c + 1
  = labels[c]; a tuple, or a file as data.mask_classes); the label set is `background_label` (mask value 0; lang-seg's "other") and every label whose
  class is not in config.data.held_out_classes, each through `label_template`; held-out classes never reach the
  loss, so segmenting them is zero-shot. Views: the batch's images and masks with one shared random horizontal
  flip (lang-seg also scales and crops; here the 32 px scenes are used whole: the recipe's one crop group must be
  the whole image, scale (1, 1), ratio (1, 1), no flip, no colour change, at the mask size). The text tower and the image
  backbone start from a CLIP run (config.init_from copies both; lang-seg starts from CLIP ViT-B/32 or ViT-L/16);
  the text tower is frozen (list "text" in config.optim.frozen), the backbone fine-tuned. Zero-shot
  classification reads the renormalised mean of the pixel embeddings."""

  SCHEMA = {**LanguageImageMethod.SCHEMA, "labels": Field(()), "background_label": Field("other"),
            "label_template": Field("{}"), "decoder_features": Field(64, low=1), "text": Field(None)}
  init_from_parts = ("backbone", "text")

  def text_settings(self, config: ml_collections.ConfigDict) -> Any:
    """method.text (tokenizer, merges_path, context_length: the label prompts need no text in the batch), else
    config.data.text."""
    text = config.method.get("text", None)
    return text if text else super().text_settings(config)

  def __init__(self, config: ml_collections.ConfigDict, run_facts: RunFacts):
    super().__init__(config, run_facts)
    labels = self.hp["labels"]
    labels = class_names_file(labels) if isinstance(labels, str) else tuple(labels or ())
    if not labels:
      raise ValueError("lseg needs method.labels: the class names of the mask ids in order (shapes_scenes: "
                       "cl_jax.data.scenes.CLASS_NAMES).")
    template = str(self.hp["label_template"])
    if "{}" not in template:
      raise ValueError(f"method.label_template={template!r} has no '{{}}' for the label; e.g. '{{}}' or "
                       "'a photo of a {}.'.")
    held = config.data.get("held_out_classes", ()) or ()
    held = {held} if isinstance(held, str) else set(held)
    unknown = [h for h in held if h not in labels]
    if unknown:
      raise ValueError(f"config.data.held_out_classes has {unknown[0]!r}, not one of method.labels "
                       f"({', '.join(labels)}).")
    self.train_classes = [c for c, name in enumerate(labels) if name not in held]
    self.label_set = [str(self.hp["background_label"])] + [labels[c] for c in self.train_classes]
    self.label_tokens = jnp.asarray(self.tokenizer.encode([template.format(n) for n in self.label_set]))
    # mask value (0 background, c + 1 class c) -> index in the label set, IGNORE for held-out classes
    lookup = [0] + [IGNORE] * len(labels)
    for j, c in enumerate(self.train_classes):
      lookup[c + 1] = j + 1
    self.lookup = jnp.asarray(lookup, jnp.int32)
    frozen = tuple(config.get("optim", {}).get("frozen", None) or ())
    if not any("text" in f for f in frozen):
      raise ValueError("lseg's text tower is frozen: set config.optim.frozen=('text',) so weight decay leaves it "
                       "alone.")
    if not config.get("init_from", ""):
      logging.warning("lseg without config.init_from: the frozen text tower is random, so its label embeddings "
                      "are fixed random vectors and unseen labels mean nothing; start from a CLIP run.")
    for name, g in config.augment.items():
      whole = (tuple(g.scale) == (1.0, 1.0) and tuple(g.ratio) == (1.0, 1.0) and g.flip_p == 0
               and g.jitter_p == 0 and g.grayscale_p == 0 and not any(g.blur_p) and not any(g.solarize_p))
      if not whole:
        raise ValueError(f"lseg needs whole-image views (masks are not cropped): set augment.{name} to scale=(1, 1), "
                         "ratio=(1, 1), flip_p=0, jitter_p=0, grayscale_p=0, blur_p=(0,), solarize_p=(0,) "
                         "(lseg flips image and mask together itself).")
    backbone = build_backbone(config.model)
    if not hasattr(backbone, "patch_size"):
      raise ValueError(f"lseg needs a ViT image tower (patch tokens), not {config.model.name}; set "
                       "config.model.name to a vit_* model.")
    self.model = LSegNet(backbone, self.model.text, self.embed_dim, False, features=int(self.hp["decoder_features"]))

  def loss_params(self) -> dict[str, jax.Array]:
    return {}

  def contrastive_loss(self, params, z_img, z_txt, views):
    """LSeg's loss in the language-image slot: pixel embeddings z_img [b, h, w, C] against the label embeddings
    z_txt [K, C] at 1/0.07, upsampled to views["mask"], per-pixel cross-entropy over the label set."""
    del params
    logits = LOGIT_SCALE * jnp.einsum("bhwc,kc->bhwk", l2_normalize(z_img), l2_normalize(z_txt))
    masks = views["mask"]
    b, h, w = masks.shape
    logits = jax.image.resize(logits, (b, h, w, logits.shape[-1]), method="linear", antialias=False)
    return pixel_cross_entropy(logits, self.lookup[masks], axis_name=parallel.DATA)

  def _images(self, views: Views) -> jax.Array:
    """The whole preprocessed images [b, H, W, 3], checked against the masks."""
    if "mask" not in views:
      raise ValueError("lseg trains on per-pixel masks; the batch has none. Use dataset='shapes_scenes' or a tfds "
                       "segmentation dataset with data.mask_key.")
    images = views["crops"][0][0]
    if images.shape[1:3] != views["mask"].shape[1:3]:
      raise ValueError(f"lseg's views are {images.shape[1]}x{images.shape[2]} px but the masks "
                       f"{views['mask'].shape[1]}x{views['mask'].shape[2]}; set augment.*.size to the data's "
                       "image_size.")
    return images

  def init(self, key: jax.Array, views: Views):
    images = views["crops"][0][0]
    variables = self.model.init(key, images, self.label_tokens, train=False)
    return {"model": variables["params"]}, {"batch_stats": variables.get("batch_stats", {})}

  def loss(self, params, state, views, key, step):
    del step
    x, masks = flip_pairs(key, self._images(views), views["mask"])
    cls, pixels, text = self.model.apply({"params": params["model"]}, x, self.label_tokens, train=True)
    loss, metrics = self.contrastive_loss(params, pixels, text, {"mask": masks})
    metrics["features"] = cls
    return loss, (state, metrics)

  def encode_dense(self, params: Any, state: Any, images: jax.Array) -> jax.Array:
    """L2-normalised per-location embeddings [b, H/2, W/2, C] (LSeg Sec. 3.2)."""
    return l2_normalize(self.model.apply({"params": params["model"]}, images, method=LSegNet.encode_dense))

  def encode_image_embedding(self, params: Any, state: Any, images: jax.Array) -> jax.Array:
    dense = self.encode_dense(params, state, images)
    return l2_normalize(jnp.mean(dense.reshape(dense.shape[0], -1, dense.shape[-1]), axis=1))

  def encode_text(self, params: Any, state: Any, tokens: jax.Array) -> jax.Array:
    return l2_normalize(self.model.apply({"params": params["model"]}, tokens, method=LSegNet.encode_text))
