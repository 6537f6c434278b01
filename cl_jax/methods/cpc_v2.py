"""CPC v2: patches of each image predict the patches below them, contrasted against every patch vector of the global
batch (Henaff et al. 2020; CPC: van den Oord et al. 2018)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from cl_jax import parallel
from cl_jax.data.augment import view_groups
from cl_jax.losses.cpc import cpc_infonce
from cl_jax.methods import METHODS
from cl_jax.methods.base import Method, RunFacts, Views
from cl_jax.methods.common import embedding_std
from cl_jax.models import build_backbone
from cl_jax.models.cpc import DIRECTIONS, CPCModel, augment_patches, extract_patches, grid_size
from cl_jax.models.registry import model_section
from cl_jax.schema import Field


@METHODS.register("cpc_v2")
class CPCv2(Method):
  """CPC v2 (Henaff et al. 2020, Sec. 3.1 and 4.1): each crop is cut into a grid of overlapping patches, each
  patch encoded alone by the backbone with LayerNorm in place of BatchNorm (BN would let the patches of one image,
  and so the positive, see each other) and pooled to z_{i,j}; a masked-convolution context network gives c_{i,j}
  from the rows <= i, and W_k c_{i,j} predicts z_{i+k,j} for k = 1..K, scored by InfoNCE against all patch vectors
  of the global batch (Eq. 2). v2's patch augmentations: keep one random colour channel, flip; `directions`
  adds context networks predicting up, right or left (the grid turned). Crops of every view of every group are
  images of their own.

  config.method: patch_size (64), patch_stride (32), pred_steps (K, 5), context_blocks (5), context_hidden (512),
  directions (("down",); any of down, up, right, left), color_drop_p (1.0), flip_p (0.5). The backbone must be a
  ResNet; its norm is set to 'layer' here whatever config.model says of bn. state = {} (LayerNorm keeps none).
  Scores are raw dot products as the paper's f_k = exp(z^T W_k c); the W_k start at zero (models/cpc.py).
  """

  SCHEMA = {"patch_size": Field(64, low=1), "patch_stride": Field(32, low=1), "pred_steps": Field(5, low=1),
            "context_blocks": Field(5, low=0), "context_hidden": Field(512, low=1), "directions": Field(("down",)),
            "color_drop_p": Field(1.0, low=0, high=1), "flip_p": Field(0.5, low=0, high=1)}

  def __init__(self, config: ml_collections.ConfigDict, run_facts: RunFacts):
    super().__init__(config, run_facts)
    m = self.hp
    backbone = build_backbone(config.model)
    if not hasattr(backbone, "norm"):
      raise ValueError(f"cpc_v2 needs a ResNet backbone (it swaps BatchNorm for LayerNorm), got model.name="
                       f"'{model_section(config.model)['name']}'; set --config.model.name=resnet50 or resnet_tiny.")
    backbone = backbone.clone(norm="layer")
    self.patch, self.stride, self.steps = int(m.patch_size), int(m.patch_stride), int(m.pred_steps)
    self.directions = self._directions(m.directions)
    self._check_grid(backbone, config)
    self.model = CPCModel(backbone=backbone, directions=self.directions, steps=self.steps,
                          blocks=int(m.context_blocks), hidden=int(m.context_hidden), patch_size=self.patch,
                          patch_stride=self.stride)

  @staticmethod
  def _directions(value) -> tuple[str, ...]:
    names = (value,) if isinstance(value, str) else tuple(value)
    bad = [d for d in names if d not in DIRECTIONS]
    if not names or bad or len(set(names)) != len(names):
      raise ValueError(f"method.directions={value!r}: must be distinct names among {', '.join(DIRECTIONS)}, "
                       "e.g. ('down',) or ('down', 'up').")
    return names

  def _check_grid(self, backbone, config: ml_collections.ConfigDict) -> None:
    """The grid must hold more than K rows and each patch must survive the backbone's down-sampling: one line."""
    stride = getattr(backbone, "total_stride", 1)
    if self.patch < stride:
      raise ValueError(f"method.patch_size={self.patch} is smaller than the backbone's total stride {stride} "
                       f"({backbone.stem} stem); set --config.model.stem=cifar or a larger method.patch_size.")
    sizes = [("crop", g.size, f"config.augment['{name}'].size") for name, g in view_groups(config.augment)]
    eval_size = dict(config.get("eval", {})).get("image_size") or config.data.image_size
    sizes.append(("evaluation image", int(eval_size), "eval.image_size or data.image_size"))
    for what, size, where in sizes:
      g = grid_size(size, self.patch, self.stride)
      if g < 1:
        raise ValueError(f"method.patch_size={self.patch} is larger than the {size} px {what}s ({where}); set "
                         f"method.patch_size <= {size}.")
      if what == "crop" and g <= self.steps:
        raise ValueError(f"method.pred_steps={self.steps} needs more than {self.steps} patch rows, but {size} px "
                         f"{what}s ({where}) cut into {self.patch} px patches every {self.stride} px give {g}; "
                         f"lower method.pred_steps or method.patch_stride.")

  def init(self, key: jax.Array, views: Views):
    patches = extract_patches(views["crops"][0][0][:1], self.patch, self.stride)
    variables = self.model.init(key, patches, train=False)
    return variables["params"], {}

  def _patches(self, views: Views, key: jax.Array) -> tuple[jax.Array, int]:
    """Every view's crops as images [V * b, Gh, Gw, P, P, 3], augmented with keys of (global example, view)."""
    crops = [g[v] for g in views["crops"] for v in range(g.shape[0])]
    b = crops[0].shape[0]
    example_keys = jax.vmap(jax.random.fold_in, (None, 0))(key, parallel.global_example_index(b))
    out = []
    for v, x in enumerate(crops):
      keys = jax.vmap(jax.random.fold_in, (0, None))(example_keys, v)
      out.append(jax.vmap(augment_patches, (0, 0, None, None))(extract_patches(x, self.patch, self.stride), keys,
                                                               self.hp.color_drop_p, self.hp.flip_p))
    return jnp.concatenate(out), b

  def loss(self, params, state, views, key, step):
    del step
    patches, b = self._patches(views, key)
    z, per_direction = self.model.apply({"params": params}, patches, train=True)
    losses, accs = zip(*(cpc_infonce(preds, turned, parallel.DATA) for turned, preds in per_direction))
    loss = sum(losses) / len(losses)
    metrics = {"contrast_acc": sum(m["contrast_acc"] for m in accs) / len(accs),
               "embedding_std": embedding_std(z.reshape(-1, z.shape[-1]), parallel.DATA),
               "features": jnp.mean(z[:b], axis=(1, 2))}   # the first view's mean-pooled patch vectors
    return loss, (state, metrics)

  def encode(self, params, state, images):
    return self.model.apply({"params": params}, images, method=CPCModel.features)
