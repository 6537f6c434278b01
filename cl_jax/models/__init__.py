"""Backbones (ResNet, ViT) and heads as Linen modules; `build_backbone(cfg)` picks one by name."""
from cl_jax.models import resnet, vit  # noqa: F401  (register the backbones)
from cl_jax.models import clip_resnet  # noqa: F401  (CLIP's attention-pooling ResNet)
from cl_jax.models import groupvit  # noqa: F401  (GroupViT's grouping image tower)
from cl_jax.models.heads import MLP, simclr_head
from cl_jax.models.registry import BACKBONES, build_backbone
from cl_jax.models.resnet import ResNet
from cl_jax.models.vit import ViT

__all__ = ["BACKBONES", "build_backbone", "ResNet", "ViT", "MLP", "simclr_head"]
