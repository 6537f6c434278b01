"""Config -> data source: `shapes` (embedded), `folder:/path` (image folder), `captions:/path`
(image + .txt caption pairs), `webdataset:/shards/{00000..00009}.tar` (img2dataset tar shards), or a
tfds name (`data.caption_key` for image-text datasets such as coco_captions).

Every source is grain-compatible random access: `len(source)`, `source[i]` -> dict of fixed-shape
numpy arrays ("image" uint8 [S, S, 3], "label" int32 when labelled, "index" int32), with attributes
`num_classes`, `class_names`, `has_labels`, `image_size`, `name`. Caption sources also have
`captions_of(i)`. With `data.text` set (cl_jax/data/captions.py) every example also carries
`tokens` int32 [context_length] and `text_label` int32. tfds is imported only when used.
"""
from __future__ import annotations

from typing import Any, Callable, Protocol

import ml_collections
import numpy as np

from cl_jax.registry import Registry

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


# Named in-repo datasets: name -> (data_cfg, split) -> Source. Other names go to folder or tfds.
SOURCES: Registry[Callable[[ml_collections.ConfigDict, str], Source]] = Registry("dataset")


def _get(cfg: Any, key: str, default: Any = None) -> Any:
  value = cfg.get(key, default)
  return default if value is None else value


@SOURCES.register("shapes")
def _shapes(data_cfg: ml_collections.ConfigDict, split: str) -> Source:
  from cl_jax.data.shapes import ShapesSource  # pylint: disable=g-import-not-at-top

  return ShapesSource(split, num_examples=_get(data_cfg, f"num_{split}"),
                      image_size=int(data_cfg.image_size), seed=int(_get(data_cfg, "seed", 0)),
                      held_out_pairs=tuple(_get(data_cfg, "held_out_pairs", ())))


def tfds_split(dataset: str, split: str, data_cfg: Any = None) -> str:
  """The tfds split name for "train"/"test": config train_split/test_split, else KNOWN_SPLITS."""
  base = dataset.split("/")[0].split(":")[0]
  default = KNOWN_SPLITS.get(base, ("train", "test"))[split == "test"]
  return default if data_cfg is None else str(_get(data_cfg, f"{split}_split", default))


def get_source(data_cfg: ml_collections.ConfigDict, split: str) -> Source:
  """Builds the data source of `split` ("train" or "test") named by `data_cfg.dataset`, with text
  (tokens, text_label) when `data_cfg.text` is set."""
  from cl_jax.data import captions  # pylint: disable=g-import-not-at-top

  return captions.wrap(_image_source(data_cfg, split), split, data_cfg)


def _nonempty(dataset: str, prefix: str, example: str) -> str:
  path = dataset[len(prefix):]
  if not path:
    raise ValueError(f"dataset='{prefix}' has no path; pass dataset='{prefix}{example}'.")
  return path


def _image_source(data_cfg: ml_collections.ConfigDict, split: str) -> Source:
  if split not in ("train", "test"):
    raise ValueError(f"Unknown split '{split}'; pass split='train' or split='test'.")
  dataset = str(data_cfg.dataset)
  image_size = int(data_cfg.image_size)
  seed = int(_get(data_cfg, "seed", 0))
  cap = _get(data_cfg, f"num_{split}")
  on_bad_image = str(_get(data_cfg, "on_bad_image", "skip"))
  holdout_frac = float(_get(data_cfg, "holdout_frac", 0.1))
  if dataset.startswith(FOLDER_PREFIX):
    from cl_jax.data.folder import FolderSource  # pylint: disable=g-import-not-at-top

    path = _nonempty(dataset, FOLDER_PREFIX, "/path/to/images")
    return FolderSource(path, split, image_size=image_size, num_examples=cap, seed=seed,
                        on_bad_image=on_bad_image, holdout_frac=holdout_frac)
  if dataset.startswith(CAPTIONS_PREFIX):
    from cl_jax.data.caption_folder import CaptionFolderSource  # pylint: disable=g-import-not-at-top

    path = _nonempty(dataset, CAPTIONS_PREFIX, "/path/to/images_and_txt")
    return CaptionFolderSource(path, split, image_size=image_size, num_examples=cap, seed=seed,
                               on_bad_image=on_bad_image, holdout_frac=holdout_frac,
                               class_folders=bool(_get(data_cfg, "class_folders", False)))
  if dataset.startswith(WEBDATASET_PREFIX):
    from cl_jax.data.webdataset import WebDatasetSource  # pylint: disable=g-import-not-at-top

    pattern = _nonempty(dataset, WEBDATASET_PREFIX, "/data/shards/{00000..00009}.tar")
    return WebDatasetSource(pattern, split, image_size=image_size, num_examples=cap, seed=seed,
                            on_bad_image=on_bad_image, holdout_frac=holdout_frac,
                            test_pattern=_get(data_cfg, "test_shards"))
  if dataset in SOURCES:
    return SOURCES.get(dataset)(data_cfg, split)
  from cl_jax.data import tfds_source  # pylint: disable=g-import-not-at-top

  kwargs = dict(image_size=image_size, data_dir=_get(data_cfg, "data_dir"), num_examples=cap,
                seed=seed, image_key=str(_get(data_cfg, "image_key", "image")),
                label_key=str(_get(data_cfg, "label_key", "label")))
  caption_key = _get(data_cfg, "caption_key")
  if caption_key:
    return tfds_source.TfdsCaptionSource(dataset, tfds_split(dataset, split, data_cfg),
                                         caption_key=str(caption_key), **kwargs)
  return tfds_source.TfdsSource(dataset, tfds_split(dataset, split, data_cfg), **kwargs)
