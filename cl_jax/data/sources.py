"""Config -> data source: `shapes` (embedded), `shapes_scenes` (embedded, 1-4 objects with masks),
`folder:/path` (image folder), `captions:/path`
(image + .txt caption pairs), `webdataset:/shards/{00000..00009}.tar` (img2dataset tar shards), or a
tfds name (`data.caption_key` for image-text datasets such as coco_captions; `data.mask_key` and
`data.mask_classes` for segmentation datasets such as scene_parse150).

Every source is grain-compatible random access: `len(source)`, `source[i]` -> dict of fixed-shape
numpy arrays ("image" uint8 [S, S, 3], "label" int32 when labelled, "index" int32), with attributes
`num_classes`, `class_names`, `has_labels`, `image_size`, `name`. Caption sources also have
`captions_of(i)`. With `data.text` set (cl_jax/data/captions.py) every example also carries
`tokens` int32 [context_length] and `text_label` int32. `data.label_noise` / `coarse_labels` / `discovery`
put the train split in a label regime (cl_jax/data/label_regimes.py). tfds is imported only when used.
"""
from __future__ import annotations

from typing import Any, Callable, Protocol

import numpy as np

from cl_jax.registry import Registry
from cl_jax.schema import Field, validate_variant

# tfds split names per dataset where they are not ("train", "test").
KNOWN_SPLITS: dict[str, tuple[str, str]] = {
    "imagenet2012": ("train", "validation"),
    "imagenet2012_subset": ("train", "validation"),
    "imagenet_resized": ("train", "validation"),
    "imagenette": ("train", "validation"),
    "imagewang": ("train", "validation"),
    "food101": ("train", "validation"),
    "places365_small": ("train", "validation"),
}
FOLDER_PREFIX = "folder:"
CAPTIONS_PREFIX = "captions:"
WEBDATASET_PREFIX = "webdataset:"


class Source(Protocol):
  """The random-access interface every data source implements."""

  num_classes: int | None
  class_names: tuple[str, ...] | None
  has_labels: bool
  image_size: int
  name: str

  def __len__(self) -> int: ...

  def __getitem__(self, i: int) -> dict[str, np.ndarray]: ...


# Named in-repo datasets: name -> (validated data section, split) -> Source. Other names go to folder or tfds.
SOURCES: Registry[Callable[[dict[str, Any], str], Source]] = Registry("dataset")


# The config.data fields every source reads (num_train / num_test: None = the whole split), then each kind's. The
# label regimes of the train split (cl_jax/data/label_regimes.py; None = off): label_noise "symmetric:0.4" /
# "asymmetric:0.4", coarse_labels "shapes" / "cifar100" / a mapping, discovery "old=0-4,labelled=0.5", label_seed
# (None: seed).
SHARED: dict[str, Field] = {"image_size": Field(32, low=1), "seed": Field(0), "num_train": Field(None),
                            "num_test": Field(None), "worker_count": Field(0, low=0), "text": Field(None),
                            "label_noise": Field(None), "coarse_labels": Field(None), "discovery": Field(None),
                            "label_seed": Field(None)}
_FILES = {"on_bad_image": Field("skip", choices=("skip", "fail")), "holdout_frac": Field(0.1, low=0, high=1)}
FIELDS: dict[str, dict[str, Field]] = {
    "shapes": {**SHARED, "held_out_pairs": Field(()), "render": Field("color", choices=("color", "mask"))},
    "shapes_scenes": {**SHARED, "held_out_pairs": Field(()), "held_out_classes": Field(())},
    "folder": {**SHARED, **_FILES},
    "captions": {**SHARED, **_FILES, "class_folders": Field(False, choices=(True, False))},
    "webdataset": {**SHARED, **_FILES, "test_shards": Field(None)},
    "tfds": {**SHARED, "data_dir": Field(None), "image_key": Field("image"), "label_key": Field("label"),
             "caption_key": Field(None), "train_split": Field(None), "test_split": Field(None),
             "mask_key": Field(""), "mask_classes": Field(())}}


def source_kind(dataset: str) -> str:
  """Which FIELDS apply: folder, captions, webdataset (by prefix), a SOURCES name, else tfds."""
  for prefix in (FOLDER_PREFIX, CAPTIONS_PREFIX, WEBDATASET_PREFIX):
    if dataset.startswith(prefix):
      return prefix[:-1]
  return dataset if dataset in SOURCES else "tfds"


def data_section(data_cfg: Any, dataset: str) -> dict[str, Any]:
  """config.data validated against the fields of `dataset`'s source kind, defaults filled in; a typo is one line."""
  kind = source_kind(dataset)
  return {**validate_variant("data", data_cfg, {kind: SHARED, **FIELDS}, kind, ignore=("dataset",)),
          "dataset": dataset}


@SOURCES.register("shapes")
def _shapes(hp: dict[str, Any], split: str) -> Source:
  from cl_jax.data.shapes import ShapesSource  # pylint: disable=g-import-not-at-top

  return ShapesSource(split, num_examples=hp[f"num_{split}"], image_size=int(hp["image_size"]),
                      seed=int(hp["seed"] or 0), held_out_pairs=tuple(hp["held_out_pairs"] or ()),
                      render=str(hp["render"]))


@SOURCES.register("shapes_scenes")
def _shapes_scenes(hp: dict[str, Any], split: str) -> Source:
  from cl_jax.data.scenes import ScenesSource  # pylint: disable=g-import-not-at-top

  return ScenesSource(split, num_examples=hp[f"num_{split}"], image_size=int(hp["image_size"]),
                      seed=int(hp["seed"] or 0), held_out_pairs=tuple(hp["held_out_pairs"] or ()),
                      held_out_classes=tuple(hp["held_out_classes"] or ()))


def tfds_split(dataset: str, split: str, data_cfg: Any = None) -> str:
  """The tfds split name for "train"/"test": config train_split/test_split, else KNOWN_SPLITS."""
  base = dataset.split("/")[0].split(":")[0]
  default = KNOWN_SPLITS.get(base, ("train", "test"))[split == "test"]
  chosen = None if data_cfg is None else data_section(data_cfg, dataset)[f"{split}_split"]
  return default if chosen is None else str(chosen)


def get_source(data_cfg: Any, split: str) -> Source:
  """Builds the data source of `split` ("train" or "test") named by `data_cfg.dataset` from the validated
  config.data (data_section), in the label regime of data.label_noise / coarse_labels / discovery (train split
  only), with text (tokens, text_label) when `data_cfg.text` is set."""
  from cl_jax.data import captions, label_regimes  # pylint: disable=g-import-not-at-top

  hp = data_section(data_cfg, str(data_cfg["dataset"]))
  return captions.wrap(label_regimes.wrap(_image_source(hp, split), split, hp), split, hp)


def _nonempty(dataset: str, prefix: str, example: str) -> str:
  path = dataset[len(prefix):]
  if not path:
    raise ValueError(f"dataset='{prefix}' has no path; pass dataset='{prefix}{example}'.")
  return path


def _image_source(hp: dict[str, Any], split: str) -> Source:
  if split not in ("train", "test"):
    raise ValueError(f"Unknown split '{split}'; pass split='train' or split='test'.")
  dataset, kind = str(hp["dataset"]), source_kind(str(hp["dataset"]))
  common = dict(image_size=int(hp["image_size"]), num_examples=hp[f"num_{split}"], seed=int(hp["seed"] or 0))
  if kind in ("folder", "captions", "webdataset"):
    common.update(on_bad_image=str(hp["on_bad_image"]), holdout_frac=float(hp["holdout_frac"]))
  if kind == "folder":
    from cl_jax.data.folder import FolderSource  # pylint: disable=g-import-not-at-top

    return FolderSource(_nonempty(dataset, FOLDER_PREFIX, "/path/to/images"), split, **common)
  if kind == "captions":
    from cl_jax.data.caption_folder import CaptionFolderSource  # pylint: disable=g-import-not-at-top

    path = _nonempty(dataset, CAPTIONS_PREFIX, "/path/to/images_and_txt")
    return CaptionFolderSource(path, split, class_folders=bool(hp["class_folders"]), **common)
  if kind == "webdataset":
    from cl_jax.data.webdataset import WebDatasetSource  # pylint: disable=g-import-not-at-top

    pattern = _nonempty(dataset, WEBDATASET_PREFIX, "/data/shards/{00000..00009}.tar")
    return WebDatasetSource(pattern, split, test_pattern=hp["test_shards"], **common)
  if kind != "tfds":
    return SOURCES.get(dataset)(hp, split)
  from cl_jax.data import tfds_source  # pylint: disable=g-import-not-at-top

  kwargs = dict(common, data_dir=hp["data_dir"], image_key=str(hp["image_key"] or "image"),
                label_key=str(hp["label_key"] or "label"), mask_key=str(hp["mask_key"] or "") or None,
                mask_classes=(hp["mask_classes"] if isinstance(hp["mask_classes"], str)
                              else tuple(hp["mask_classes"] or ())))
  if hp["caption_key"]:
    return tfds_source.TfdsCaptionSource(dataset, tfds_split(dataset, split, hp),
                                         caption_key=str(hp["caption_key"]), **kwargs)
  return tfds_source.TfdsSource(dataset, tfds_split(dataset, split, hp), **kwargs)
