"""TFDS source: random access over a dataset prepared as ArrayRecord (`tfds.data_source`).

tensorflow_datasets is imported inside the constructor so importing this module stays fast; reading
ArrayRecord records does not import TensorFlow.
"""
from __future__ import annotations

import importlib.util

import numpy as np

from cl_jax.data.folder import resize_center_crop, resize_center_crop_mask, subset_indices

EXAMPLE_DATASETS = ("cifar10", "cifar100", "stl10", "imagenet2012", "oxford_flowers102",
                    "food101", "caltech101")


def _cli_hint() -> str:
  # The tfds 4.9 command line imports apache_beam at start-up, even for `tfds build`.
  if importlib.util.find_spec("apache_beam"):
    return ""
  return " (the tfds CLI needs `pip install apache-beam`)"


def class_names_file(path: str) -> tuple[str, ...]:
  """Class names from a file: one per line, or a CSV with a 'Name' column (ADE20K's objectInfo150.csv, where the
  first of the ';'-separated synonyms is kept), in mask-value order 1, 2, ..."""
  import csv  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top

  if not os.path.exists(path):
    raise ValueError(f"data.mask_classes={path!r}: no such file; give the class names as a tuple or a file of one "
                     "name per line (or ADE20K's objectInfo150.csv).")
  with open(path, newline="") as f:
    text = f.read()
  rows = list(csv.DictReader(text.splitlines()))
  if rows and "Name" in rows[0]:
    return tuple(r["Name"].split(";")[0].strip() for r in rows)
  return tuple(line.strip() for line in text.splitlines() if line.strip())


class TfdsSource:
  """Grain-compatible random-access source over a prepared tfds image dataset."""

  has_labels: bool
  num_classes: int | None
  class_names: tuple[str, ...] | None

  def __init__(self, name: str, split: str, *, image_size: int, data_dir: str | None = None,
               num_examples: int | None = None, seed: int = 0, image_key: str = "image",
               label_key: str = "label", caption_key: str | None = None, mask_key: str | None = None,
               mask_classes: tuple[str, ...] | str = ()):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    try:
      builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
      raise ValueError(
          f"Unknown dataset '{name}': not a tfds dataset; use 'shapes', a tfds image dataset "
          f"({', '.join(EXAMPLE_DATASETS)}, ...), or an image folder as "
          "dataset='folder:/path/to/images'.") from None
    root = builder.data_dir_root
    if not builder.is_prepared():
      raise ValueError(f"tfds dataset '{name}' is not prepared in {root}; prepare it with: tfds "
                       f"build {name} --file_format=array_record --data_dir={root}{_cli_hint()}")
    info = builder.info
    if not info.available_file_formats() & tfds.core.file_adapters.FileFormat.with_random_access():
      formats = ", ".join(sorted(f.value for f in info.available_file_formats()))
      raise ValueError(
          f"tfds dataset '{name}' in {root} is prepared as {formats} only, which has no random "
          f"access; convert it with: tfds convert_format --dataset_version_dir={builder.data_dir} "
          f"--out_file_format=array_record{_cli_hint()}")
    plain = split.split("[")[0]
    if "+" not in split and plain not in info.splits:
      raise ValueError(f"tfds dataset '{name}' has no split '{plain}'; its splits are "
                       f"{', '.join(sorted(info.splits))}: set config.data.train_split / "
                       "test_split.")
    features = info.features
    if image_key not in features:
      raise ValueError(f"tfds dataset '{name}' has no feature '{image_key}'; its features are "
                       f"{', '.join(sorted(features))}: set config.data.image_key.")
    if caption_key:
      _check_caption_key(name, features, caption_key)
    if mask_key and mask_key not in features:
      raise ValueError(f"tfds dataset '{name}' has no feature '{mask_key}' for data.mask_key; its features are "
                       f"{', '.join(sorted(features))}.")
    self.mask_key = mask_key or None
    self.has_masks = bool(mask_key)
    self.name, self.split, self.image_size = name, split, int(image_size)
    self.caption_key = caption_key or None
    self.image_key, self.label_key = image_key, label_key
    self.has_labels = (label_key in features
                       and isinstance(features[label_key], tfds.features.ClassLabel))
    self.num_classes = features[label_key].num_classes if self.has_labels else None
    self.class_names = tuple(features[label_key].names) if self.has_labels else None
    if isinstance(mask_classes, str):
      mask_classes = class_names_file(mask_classes)
    if mask_classes:   # the names of mask values 1..K (0 = background): segmentation's label set
      self.class_names = tuple(str(c) for c in mask_classes)
    elif self.has_masks and not self.has_labels:
      raise ValueError(f"tfds dataset '{name}' has masks ('{mask_key}') but no class names; set "
                       "config.data.mask_classes to the names of mask values 1, 2, ... (0 is the background).")
    self._records = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    self._indices = subset_indices(len(self._records), num_examples, seed)
    self._text_records = None
    if self.caption_key:  # captions without decoding the image (EpochText, retrieval)
      self._text_records = tfds.data_source(
          name, split=split, data_dir=data_dir, download=False,
          decoders={image_key: tfds.decode.SkipDecoding()})

  def __len__(self) -> int:
    return len(self._indices)

  def __repr__(self) -> str:
    return (f"TfdsSource(name={self.name!r}, split={self.split!r}, num_records={len(self)}, "
            f"image_size={self.image_size})")

  def _record(self, i: int, records=None) -> dict:
    n = len(self)
    i = int(i)
    if not 0 <= i < n:
      raise IndexError(f"index {i} out of range for a TfdsSource of {n} records.")
    return (records or self._records)[int(self._indices[i])]

  def _example(self, i: int, record: dict) -> dict[str, np.ndarray]:
    image = np.asarray(record[self.image_key])
    s = self.image_size
    if image.shape != (s, s, 3) or image.dtype != np.uint8:
      image = resize_center_crop(image, s)
    out = {"image": image, "index": np.asarray(int(i), np.int32)}
    if self.has_labels:
      out["label"] = np.asarray(record[self.label_key], np.int32)
    if self.mask_key:   # 0 background, c + 1 = class c (as shapes_scenes); cropped with the image
      out["mask"] = resize_center_crop_mask(np.asarray(record[self.mask_key]), s)
    return out

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    return self._example(i, self._record(i))



class TfdsCaptionSource(TfdsSource):
  """A tfds image-text dataset (e.g. coco_captions): also the captions at `caption_key`, one list per image."""

  def __init__(self, *args, caption_key: str, **kwargs):
    if not caption_key:
      raise ValueError("TfdsCaptionSource needs a caption_key; set config.data.caption_key, e.g. "
                       "'captions/text' for coco_captions.")
    super().__init__(*args, caption_key=caption_key, **kwargs)

  def captions_of(self, i: int) -> list[str]:
    """The captions of record i (config data.caption_key), read without decoding the image."""
    return _captions(self._record(i, self._text_records), self.caption_key)

  def get_with_captions(self, i: int) -> tuple[dict[str, np.ndarray], list[str]]:
    """(source[i], captions_of(i)) from one read."""
    record = self._record(i)
    return self._example(i, record), _captions(record, self.caption_key)


def _lookup(record, key: str):
  for part in key.split("/"):
    record = record[part]
  return record


def _captions(record, key: str) -> list[str]:
  """The caption strings at `key` ("captions/text" = record["captions"]["text"]): str, bytes or a list."""
  value = _lookup(record, key)
  items = [value] if isinstance(value, (str, bytes)) else list(np.asarray(value).reshape(-1))
  return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in items]


def _check_caption_key(name: str, features, key: str) -> None:
  """One-line error when `key` ("a/b" for nested features) is not a text feature of the dataset."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  node, path = features, []
  for part in key.split("/"):
    if isinstance(node, tfds.features.Sequence):
      node = node.feature
    keys = list(node.keys()) if hasattr(node, "keys") else []
    if part not in keys:
      raise ValueError(f"tfds dataset '{name}' has no caption feature '{key}' ('{part}' is not in "
                       f"{'/'.join(path) or 'the features'}: {', '.join(sorted(keys))}); set "
                       "config.data.caption_key, e.g. 'captions/text' for coco_captions.")
    node, path = node[part], path + [part]
  if isinstance(node, tfds.features.Sequence):
    node = node.feature
  if not isinstance(node, tfds.features.Text):
    raise ValueError(f"tfds feature '{key}' of '{name}' is {type(node).__name__}, not text; set "
                     "config.data.caption_key to a Text feature, e.g. 'captions/text'.")
