"""Caption-folder source: image files with a caption file of the same name (`a.jpg` + `a.txt`).

`dataset="captions:/path"`. Layouts (folders are searched recursively, hidden ones ignored):
  root/train/**/a.jpg + a.txt and root/test/**/b.jpg + b.txt (or val/, validation/)
  root/**/a.jpg + a.txt    a fixed held-out test split: the round(holdout_frac * n) pairs first in
                           the hash order of their paths (the same split on every machine)
  with class_folders=True (config data.class_folders): root[/train|/test]/<class>/**/a.jpg + a.txt,
                           labelled by class folder (sorted names, the same for every split): image,
                           caption and label for UniCL's "mixed" text
Each non-empty line of a caption file is one caption (several lines: several captions of the image).
Images are decoded on the host as in cl_jax/data/folder.py. An image without a caption file, an empty
caption file or an unreadable image is skipped and counted (data.on_bad_image="skip"), or a one-line
error names it (data.on_bad_image="fail").
"""
from __future__ import annotations

import hashlib
import os

import numpy as np
from absl import logging

from cl_jax.data import folder

LAYOUT = ("root/**/a.jpg with root/**/a.txt (one caption per line), optionally split as "
          "root/train/ and root/test/")
_MAX_WARNINGS = 5


def read_captions(path: str) -> list[str]:
  """The non-empty lines of a caption file (UTF-8; undecodable bytes replaced)."""
  with open(path, "rb") as f:
    text = f.read().decode("utf-8", errors="replace")
  return [line.strip() for line in text.splitlines() if line.strip()]


def holdout_mask(keys: list[str], frac: float) -> np.ndarray:
  """True for the held-out (test) items: the round(frac * n) keys first in sha1 order (>= 1, < n)."""
  n = len(keys)
  mask = np.zeros(n, bool)
  if n < 2:
    return mask
  n_test = min(n - 1, max(1, round(frac * n)))
  order = sorted(range(n), key=lambda i: hashlib.sha1(keys[i].encode()).hexdigest())
  mask[order[:n_test]] = True
  return mask


class CaptionFolderSource:
  """Grain-compatible random-access source of (image, captions) pairs in a folder (module doc)."""

  has_labels: bool
  num_classes: int | None
  class_names: tuple[str, ...] | None

  def __init__(self, root: str, split: str, *, image_size: int, num_examples: int | None = None,
               seed: int = 0, on_bad_image: str = "skip", holdout_frac: float = 0.1,
               class_folders: bool = False):
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
    self.name = f"captions:{root}"
    self.num_skipped = 0
    self._warned: set[str] = set()
    self._bad: set[int] = set()
    self.class_folders = bool(class_folders)
    self.class_names = None
    files = self._files_for_split(holdout_frac)
    keep = folder.subset_indices(len(files), num_examples, seed)
    self.files = [files[i] for i in keep]
    self.caption_files = [os.path.splitext(f)[0] + ".txt" for f in self.files]
    self.has_labels = self.class_folders
    self.num_classes = len(self.class_names) if self.class_names else None
    self.labels = None
    if self.class_folders:
      index = {name: k for k, name in enumerate(self.class_names)}
      self.labels = np.asarray([index[self._class_of(f)] for f in self.files], np.int32)

  def _class_of(self, path: str) -> str:
    return os.path.relpath(path, self._tree).split(os.sep)[0]

  def _classes(self, tree: str) -> tuple[str, ...]:
    """The class folder names of `tree` (class_folders=True); images directly in it are an error."""
    names = tuple(folder.class_dirs(tree))
    loose = folder.images_in(tree, recursive=False)
    if not names or loose:
      raise ValueError(f"data.class_folders=True needs {tree}/<class>/a.jpg + a.txt, but "
                       f"{tree} has {'loose images' if loose else 'no class folders'}; arrange the "
                       "pairs by class or set data.class_folders=False.")
    return names

  def _pairs(self, directory: str) -> list[str]:
    """Images under `directory` that have a caption file; the others skipped or an error."""
    images = folder.images_in(directory, recursive=True)
    if not images:
      raise ValueError(f"no image files ({', '.join(folder.IMAGE_EXTENSIONS)}) found in "
                       f"{directory}; expected {LAYOUT}.")
    paired = [f for f in images if os.path.isfile(os.path.splitext(f)[0] + ".txt")]
    missing = len(images) - len(paired)
    if missing:
      first = next(f for f in images if not os.path.isfile(os.path.splitext(f)[0] + ".txt"))
      if self.on_bad_image == "fail" or not paired:
        raise ValueError(f"{missing} of {len(images)} images in {directory} have no caption file, "
                         f"e.g. {first} has no {os.path.splitext(first)[0]}.txt; add them or set "
                         "config.data.on_bad_image='skip' to skip those images.")
      self.num_skipped += missing
      logging.warning("Skipping %d images without a caption file in %s (e.g. %s).", missing,
                      directory, first)
    return paired

  def _files_for_split(self, holdout_frac: float) -> list[str]:
    root = self.root
    if not os.path.isdir(root):
      raise ValueError(f"caption folder {root} does not exist; expected {LAYOUT}.")
    train_dir = os.path.join(root, "train")
    test_dir = next((os.path.join(root, d) for d in folder.TEST_DIRS
                     if os.path.isdir(os.path.join(root, d))), None)
    tree = train_dir if os.path.isdir(train_dir) else root
    if self.class_folders:
      self.class_names = self._classes(tree)
    if os.path.isdir(train_dir) and test_dir is not None:
      self._tree = train_dir if self.split == "train" else test_dir
      if self.class_folders and self.split == "test":
        unknown = sorted(set(self._classes(test_dir)) - set(self.class_names))
        if unknown:
          raise ValueError(f"{test_dir} has class folders not in train/: {', '.join(unknown[:5])}; "
                           "use the same class folder names in both splits.")
      return self._pairs(self._tree)
    self._tree = tree
    files = self._pairs(tree)
    keys = [os.path.relpath(f, tree) for f in files]
    if self.class_folders:  # hold out the same fraction of every class
      test = np.zeros(len(files), bool)
      by_class: dict[str, list[int]] = {}
      for k, f in enumerate(files):
        by_class.setdefault(self._class_of(f), []).append(k)
      for members in by_class.values():
        test[members] = holdout_mask([keys[k] for k in members], holdout_frac)
    else:
      test = holdout_mask(keys, holdout_frac)
    pick = test if self.split == "test" else ~test
    return [f for f, p in zip(files, pick) if p]

  def __len__(self) -> int:
    return len(self.files)

  def __repr__(self) -> str:
    return (f"CaptionFolderSource(root={self.root!r}, split={self.split!r}, "
            f"num_records={len(self)}, image_size={self.image_size})")

  def _skip(self, j: int, path: str, reason: str) -> None:
    if self.on_bad_image == "fail":
      raise ValueError(f"cannot read {path} ({reason}); fix or remove it, or set "
                       "config.data.on_bad_image='skip' to skip unreadable pairs.")
    self._bad.add(j)
    self.num_skipped += 1
    if len(self._warned) < _MAX_WARNINGS and path not in self._warned:
      self._warned.add(path)
      logging.warning("Skipping %s (%s); %d skipped so far.", path, reason, self.num_skipped)

  def _read(self, i: int, decode: bool) -> tuple[int, np.ndarray | None, list[str]]:
    """(j, image, captions) of the first readable pair at or after i (cyclically)."""
    n = len(self)
    i = int(i)
    if not 0 <= i < n:
      raise IndexError(f"index {i} out of range for a CaptionFolderSource of {n} pairs.")
    for j in (k % n for k in range(i, i + n)):
      if j in self._bad:
        continue
      try:
        captions = read_captions(self.caption_files[j])
      except OSError as e:
        self._skip(j, self.caption_files[j], folder.decode_error_reason(e))
        continue
      if not captions:
        self._skip(j, self.caption_files[j], "empty caption file")
        continue
      if not decode:
        return j, None, captions
      try:
        return j, folder.decode_file(self.files[j], self.image_size), captions
      except folder.DECODE_ERRORS as e:
        self._skip(j, self.files[j], folder.decode_error_reason(e))
    raise ValueError(f"no readable image-caption pair in {self.root} ({self.num_skipped} "
                     "skipped); check the files.")

  def get_with_captions(self, i: int) -> tuple[dict[str, np.ndarray], list[str]]:
    """(example, its captions): image uint8 [S, S, 3], index (and label with class folders); the
    captions are the .txt lines."""
    j, image, captions = self._read(i, decode=True)
    out = {"image": image, "index": np.asarray(int(i), np.int32)}
    if self.labels is not None:
      out["label"] = np.asarray(self.labels[j], np.int32)
    return out, captions

  def captions_of(self, i: int) -> list[str]:
    """The captions of pair i (without decoding its image)."""
    return self._read(i, decode=False)[2]

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    return self.get_with_captions(i)[0]
