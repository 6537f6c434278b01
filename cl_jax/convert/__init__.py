"""Published PyTorch weights <-> cl_jax parameter trees: timm/DeiT/DINO/MoCo v3 ViTs (timm_vit), torchvision
ResNets and the SSL ResNet-50s in that layout (torchvision_resnet); `python -m cl_jax.convert` writes a workdir."""
from cl_jax.convert.keys import StateDictMismatch  # noqa: F401
