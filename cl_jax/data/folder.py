"""Image-folder source: ImageNet-layout split folders, class folders, or a flat unlabelled folder.

Decoding is on the host with PIL: RGB, shorter side resized to `image_size`, centre crop to a
fixed `image_size` x `image_size` uint8 image (the device then does random-resized-crop on it).

Layouts (class index = position of the class folder in sorted order, the same for every split):
  root/train/<class>/*.jpg + root/test/<class>/*.jpg   (or val/, validation/): labelled splits
  root/<class>/*.jpg                                   a fixed held-out split per class
  root/*.jpg                                           unlabelled, train only
"""
from __future__ import annotations

import hashlib
import os

import numpy as np
from absl import logging
from PIL import Image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
TEST_DIRS = ("test", "val", "validation")
LAYOUT = ("root/train/<class>/*.jpg with root/test/<class>/*.jpg, or root/<class>/*.jpg, "
          "or a flat folder of images (unlabelled)")
_MAX_WARNINGS = 5
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def resize_center_crop(image: Image.Image | np.ndarray, size: int) -> np.ndarray:
  """Shorter side to `size` (bilinear, antialiased), then centre crop: [size, size, 3] uint8."""
  if isinstance(image, np.ndarray):
    image = Image.fromarray(to_rgb(image))
  image = image.convert("RGB")
  w, h = image.size
  if (w, h) != (size, size):
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
      image = image.resize((nw, nh), Image.Resampling.BILINEAR)
    left, top = (nw - size) // 2, (nh - size) // 2
    image = image.crop((left, top, left + size, top + size))
  return np.asarray(image, dtype=np.uint8)


def resize_center_crop_mask(mask: np.ndarray, size: int) -> np.ndarray:
  """A label mask [H, W] (or [H, W, 1]) through the same geometry as resize_center_crop, nearest-neighbour (labels
  are never blended): [size, size] int32."""
  mask = np.asarray(mask)
  if mask.ndim == 3 and mask.shape[-1] == 1:
    mask = mask[..., 0]
  if mask.ndim != 2:
    raise ValueError(f"expected a label mask [H, W] or [H, W, 1], got shape {mask.shape}; set config.data.mask_key "
                     "to the dataset's per-pixel class feature.")
  h, w = mask.shape
  if (w, h) == (size, size):
    return mask.astype(np.int32)
  image = Image.fromarray(mask.astype(np.int32))
  scale = size / min(w, h)
  nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
  if (nw, nh) != (w, h):
    image = image.resize((nw, nh), Image.Resampling.NEAREST)
  left, top = (nw - size) // 2, (nh - size) // 2
  return np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.int32)


def to_rgb(image: np.ndarray) -> np.ndarray:
  """[H, W], [H, W, 1], [H, W, 3] or [H, W, 4] numeric image -> [H, W, 3] uint8."""
  image = np.asarray(image)
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
    raise ValueError(f"expected an [H, W, C] image with C in 1, 3, 4, got shape {image.shape}; "
                     "point the source at an image feature.")
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  return np.ascontiguousarray(image[..., :3].astype(np.uint8, copy=False))


def subset_indices(num_records: int, num_examples: int | None, seed: int) -> np.ndarray:
  """Sorted indices of a seeded random subset of `num_examples` records (all if None/larger)."""
  if num_examples is None or num_examples >= num_records:
    return np.arange(num_records)
  if num_examples < 1:
    raise ValueError(f"num_examples must be >= 1 or None, got {num_examples}; "
                     "set config.data.num_train / num_test to a positive cap or None.")
  rng = np.random.default_rng(seed)
  return np.sort(rng.permutation(num_records)[:num_examples])


def decode_file(path: str, size: int) -> np.ndarray:
  """Decode an image file on the host: RGB, shorter side to `size`, centre crop, [size, size, 3] uint8."""
  with Image.open(path) as image:
    image.load()
    return resize_center_crop(image, size)


def decode_error_reason(e: BaseException) -> str:
  """First line of a decode error, for one-line messages."""
  return (str(e).splitlines() or [type(e).__name__])[0]


DECODE_ERRORS = _DECODE_ERRORS  # what decode_file raises on a corrupt or unreadable file


def _is_image(name: str) -> bool:
  return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def images_in(directory: str, recursive: bool) -> list[str]:
  """Image paths under `directory`, sorted; hidden files and folders are ignored."""
  if not recursive:
    return sorted(os.path.join(directory, f) for f in os.listdir(directory)
                  if _is_image(f) and os.path.isfile(os.path.join(directory, f)))
  found = []
  for parent, dirs, files in os.walk(directory, followlinks=True):
    dirs[:] = [d for d in dirs if not d.startswith(".")]
    found.extend(os.path.join(parent, f) for f in files if _is_image(f))
  return sorted(found)


def class_dirs(directory: str) -> list[str]:
  return sorted(d for d in os.listdir(directory)
                if not d.startswith(".") and os.path.isdir(os.path.join(directory, d)))


def _scan(directory: str) -> tuple[tuple[str, ...] | None, list[str], list[int]]:
  """(class names, files, labels) of a class-folder tree; names None for a flat folder."""
  files, labels, names = [], [], []
  for name in class_dirs(directory):
    found = images_in(os.path.join(directory, name), recursive=True)
    if found:
      labels.extend([len(names)] * len(found))
      names.append(name)
      files.extend(found)
  loose = images_in(directory, recursive=False)
  if names:
    if loose:
      logging.warning("Ignoring %d images directly in %s: class folders were found there.",
                      len(loose), directory)
    return tuple(names), files, labels
  return None, loose, []


def _holdout_mask(files: list[str], labels: list[int], root: str, frac: float) -> np.ndarray:
  """True for held-out (test) files: per class, the round(frac * n) files first in hash order."""
  keys = [hashlib.sha1(os.path.relpath(f, root).encode()).hexdigest() for f in files]
  labels_arr = np.asarray(labels)
  mask = np.zeros(len(files), bool)
  for c in np.unique(labels_arr):
    members = np.flatnonzero(labels_arr == c)
    n_test = min(len(members) - 1, max(1, round(frac * len(members)))) if len(members) > 1 else 0
    order = sorted(members, key=lambda i: keys[i])
    mask[order[:n_test]] = True
  return mask


class FolderSource:
  """Grain-compatible random-access source over the image files in a folder (module docstring)."""

  has_labels: bool
  num_classes: int | None
  class_names: tuple[str, ...] | None

  def __init__(self, root: str, split: str, *, image_size: int, num_examples: int | None = None,
               seed: int = 0, on_bad_image: str = "skip", holdout_frac: float = 0.1):
    if split not in ("train", "test"):
      raise ValueError(f"Unknown split '{split}'; pass split='train' or split='test'.")
    if on_bad_image not in ("skip", "fail"):
      raise ValueError(f"on_bad_image must be 'skip' or 'fail', got '{on_bad_image}'; "
                       "set config.data.on_bad_image accordingly.")
    if not 0.0 < holdout_frac < 1.0:
      raise ValueError(f"holdout_frac must be in (0, 1), got {holdout_frac}; "
                       "set config.data.holdout_frac to e.g. 0.1.")
    self.root = os.path.abspath(os.path.expanduser(root))
    self.split, self.image_size, self.on_bad_image = split, int(image_size), on_bad_image
    self.name = f"folder:{root}"
    self.num_skipped = 0
    self._warned: set[str] = set()
    names, files, labels = self._files_for_split(holdout_frac)
    keep = subset_indices(len(files), num_examples, seed)
    self.files = [files[i] for i in keep]
    self.has_labels = names is not None
    self.class_names = names
    self.num_classes = None if names is None else len(names)
    self.labels = np.asarray(labels, np.int32)[keep] if self.has_labels else None

  def _files_for_split(self, holdout_frac: float):
    """Finds the layout under root and returns (class names, files, labels) of this split."""
    root = self.root
    if not os.path.isdir(root):
      raise ValueError(f"image folder {root} does not exist; expected {LAYOUT}.")
    train_dir = os.path.join(root, "train")
    test_dir = next((os.path.join(root, d) for d in TEST_DIRS
                     if os.path.isdir(os.path.join(root, d))), None)
    tree = train_dir if os.path.isdir(train_dir) else root
    names, files, labels = _scan(tree)
    if not files:
      raise ValueError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) found in {tree}; "
                       f"expected {LAYOUT}.")
    if names is None:
      if self.split == "test":
        raise ValueError(f"{tree} is a flat folder of unlabelled images, but evaluation needs "
                         "labels; lay it out as root/<class>/*.jpg (or root/train/<class>/ and "
                         "root/test/<class>/).")
      return None, files, []
    if tree == train_dir and test_dir is not None:
      if self.split == "train":
        return names, files, labels
      return (names,) + self._scan_test(test_dir, names)
    test = _holdout_mask(files, labels, tree, holdout_frac)
    pick = test if self.split == "test" else ~test
    return (names, [f for f, p in zip(files, pick) if p],
            [l for l, p in zip(labels, pick) if p])

  @staticmethod
  def _scan_test(test_dir: str, names: tuple[str, ...]) -> tuple[list[str], list[int]]:
    test_names, files, labels = _scan(test_dir)
    if not files or test_names is None:
      raise ValueError(f"{test_dir} has no class folders with images; expected "
                       f"{test_dir}/<class>/*.jpg with the class folders of train/.")
    unknown = sorted(set(test_names) - set(names))
    if unknown:
      raise ValueError(f"{test_dir} has class folders not in train/: {', '.join(unknown[:5])}; "
                       "use the same class folder names in both splits.")
    index = {n: i for i, n in enumerate(names)}
    return files, [index[test_names[l]] for l in labels]

  def __len__(self) -> int:
    return len(self.files)

  def __repr__(self) -> str:
    return (f"FolderSource(root={self.root!r}, split={self.split!r}, num_records={len(self)}, "
            f"image_size={self.image_size})")

  def _decode(self, path: str) -> np.ndarray:
    return decode_file(path, self.image_size)

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    n = len(self)
    i = int(i)
    if not 0 <= i < n:
      raise IndexError(f"index {i} out of range for a FolderSource of {n} images.")
    for j in (k % n for k in range(i, i + n)):
      path = self.files[j]
      try:
        image = self._decode(path)
      except _DECODE_ERRORS as e:
        reason = decode_error_reason(e)
        if self.on_bad_image == "fail":
          raise ValueError(f"cannot decode image file {path} ({reason}); remove it or set "
                           "config.data.on_bad_image='skip' to skip unreadable files.") from None
        self.num_skipped += 1
        if len(self._warned) < _MAX_WARNINGS and path not in self._warned:
          self._warned.add(path)
          logging.warning("Skipping unreadable image %s (%s); %d skipped so far.", path, reason,
                          self.num_skipped)
        continue
      out = {"image": image, "index": np.asarray(i, np.int32)}
      if self.labels is not None:
        out["label"] = np.asarray(self.labels[j], np.int32)
      return out
    raise ValueError(f"no readable image in {self.root} ({self.num_skipped} files skipped); "
                     "check the files are valid images.")
