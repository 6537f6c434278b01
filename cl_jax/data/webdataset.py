"""Webdataset tar shards (the layout img2dataset writes), read by random access for grain.

`dataset="webdataset:/data/cc3m/{00000..00331}.tar"`: brace ranges (zero padding kept) and lists
`{a,b}`, and globs (`*`, `?`, `[..]`). A sample is the run of tar members sharing a key (the path up
to the first "." of the file name): an image (.jpg/.jpeg/.png/.webp), a caption (.txt) and optional
metadata (.json). The tar headers are scanned once when the source is built (mmap, headers only; about
2 us a member) and the byte offsets kept, so `source[i]` is two small reads at known offsets; the open
file descriptors are per process (dropped when pickled into grain workers).

The test split: `data.test_shards` (a pattern) when set, else a fixed held-out fraction
(`data.holdout_frac`) of the samples in the hash order of their keys. Samples without an image or a
caption, and undecodable images, are skipped and counted (`data.on_bad_image="skip"`) or a one-line
error names them ("fail"). A missing shard, a pattern that matches nothing, or a shard that is empty
or not a tar file is a one-line error.
"""
from __future__ import annotations

import glob
import io
import json
import mmap
import os
import re

import numpy as np
from absl import logging
from PIL import Image

from cl_jax.data import caption_folder, folder

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
_BRACE = re.compile(r"\{([^{}]*)\}")
_MAX_OPEN = 64
_MAX_WARNINGS = 5


def expand_braces(pattern: str) -> list[str]:
  """Expands `{000..009}` ranges (zero-padded like the first bound) and `{a,b}` lists, in order."""
  m = _BRACE.search(pattern)
  if not m:
    return [pattern]
  body = m.group(1)
  rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
  if rng:
    lo, hi = int(rng.group(1)), int(rng.group(2))
    if hi < lo:
      raise ValueError(f"empty brace range {{{body}}} in '{pattern}'; write {{low..high}}, e.g. "
                       "{00000..00009}.")
    width = len(rng.group(1))
    items = [str(k).zfill(width) for k in range(lo, hi + 1)]
  else:
    items = body.split(",")
  head, tail = pattern[:m.start()], pattern[m.end():]
  return [out for item in items for out in expand_braces(head + item + tail)]


def shard_paths(pattern: str) -> list[str]:
  """The shard files of a pattern: brace expansion, then globs; a missing path is a one-line error."""
  if not pattern:
    raise ValueError("dataset='webdataset:' has no shard pattern; pass e.g. "
                     "dataset='webdataset:/data/shards/{00000..00009}.tar'.")
  paths: list[str] = []
  for p in expand_braces(os.path.expanduser(pattern)):
    if glob.has_magic(p):
      found = sorted(glob.glob(p))
      if not found:
        raise ValueError(f"no webdataset shard matches '{p}' (from '{pattern}'); check the path.")
      paths.extend(found)
    elif not os.path.isfile(p):
      raise ValueError(f"webdataset shard {p} does not exist (from '{pattern}'); check the path "
                       "and the brace range.")
    else:
      paths.append(p)
  return list(dict.fromkeys(paths))


def _split_name(name: str) -> tuple[str, str]:
  """(key, extension) of a member: webdataset's key is the path up to the first '.' of the file name."""
  directory, base = os.path.split(name)
  stem, dot, ext = base.partition(".")
  return (os.path.join(directory, stem) if directory else stem), (ext.lower() if dot else "")


def _octal(field: bytes) -> int:
  """A tar numeric field: octal text, or base-256 when the high bit of the first byte is set."""
  if field[:1] and field[0] & 0x80:
    return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
  field = field.split(b"\0", 1)[0].strip()
  return int(field, 8) if field else 0


def _pax_path(data: bytes) -> str | None:
  """The `path` record of a pax extended header ("<len> path=<name>\n" records), if any."""
  pos = 0
  while pos < len(data):
    space = data.find(b" ", pos)
    if space < 0:
      break
    length = int(data[pos:space])
    key, _, value = data[space + 1:pos + length - 1].partition(b"=")
    if key == b"path":
      return value.decode("utf-8", "surrogateescape")
    pos += length
  return None


def tar_members(path: str) -> list[tuple[str, int, int]]:
  """(name, data offset, size) of the regular files of a tar, from its 512-byte headers (ustar,
  GNU long names, pax paths), via mmap: no data is read. Not a tar: ValueError."""
  out: list[tuple[str, int, int]] = []
  with open(path, "rb") as f:
    total = os.fstat(f.fileno()).st_size
    if total == 0:
      return out
    with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
      off, long_name, magic = 0, None, None
      while off + 512 <= total:
        hdr = m[off:off + 512]
        if not hdr[0] and hdr.count(0) == 512:  # end-of-archive block
          break
        if hdr[257:265] != magic:  # the full checksum when the format magic changes (first header)
          if _octal(hdr[148:156]) != sum(hdr) - sum(hdr[148:156]) + 256:
            raise ValueError(f"bad tar header checksum at byte {off}")
          magic = hdr[257:265]
        size, kind, data = _octal(hdr[124:136]), hdr[156:157], off + 512
        if kind in (b"L", b"x"):
          payload = m[data:data + size]
          long_name = (payload.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                       if kind == b"L" else _pax_path(payload) or long_name)
        elif kind in (b"0", b"\0", b"7"):
          name = hdr[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
          if hdr[257:262] == b"ustar" and hdr[345]:
            prefix = hdr[345:500].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            name = f"{prefix}/{name}"
          out.append((long_name or name, data, size))
          long_name = None
        elif kind != b"g":
          long_name = None
        off = data + (size + 511) // 512 * 512
  return out


def index_shard(path: str) -> list[tuple[str, dict[str, tuple[int, int]]]]:
  """[(key, {ext: (data offset, size)})] of a tar shard, in order; empty or not a tar: ValueError."""
  try:
    members = tar_members(path)
  except (ValueError, OSError) as e:
    raise ValueError(f"webdataset shard {path} is not a readable tar file "
                     f"({folder.decode_error_reason(e)}); re-create or remove it.") from None
  samples: dict[str, dict[str, tuple[int, int]]] = {}
  for name, offset, size in members:
    key, ext = _split_name(name)
    if os.path.basename(key).startswith(".") or not key:
      continue
    samples.setdefault(key, {})[ext] = (offset, size)
  if not samples:
    raise ValueError(f"webdataset shard {path} is empty (no files); re-create or remove it.")
  return list(samples.items())


class WebDatasetSource:
  """Grain-compatible random-access source over webdataset tar shards (module docstring)."""

  has_labels = False
  num_classes = None
  class_names = None

  def __init__(self, pattern: str, split: str, *, image_size: int,
               num_examples: int | None = None, seed: int = 0, on_bad_image: str = "skip",
               holdout_frac: float = 0.1, test_pattern: str | None = None):
    if split not in ("train", "test"):
      raise ValueError(f"Unknown split '{split}'; pass split='train' or split='test'.")
    if on_bad_image not in ("skip", "fail"):
      raise ValueError(f"on_bad_image must be 'skip' or 'fail', got '{on_bad_image}'; "
                       "set config.data.on_bad_image accordingly.")
    if not test_pattern and not 0.0 < holdout_frac < 1.0:
      raise ValueError(f"holdout_frac must be in (0, 1), got {holdout_frac}; "
                       "set config.data.holdout_frac to e.g. 0.01, or data.test_shards.")
    self.pattern, self.split, self.image_size = pattern, split, int(image_size)
    self.on_bad_image = on_bad_image
    self.name = f"webdataset:{pattern}"
    self.num_skipped = 0
    self._warned: set[str] = set()
    self._bad: set[int] = set()
    self._fds: dict[int, int] = {}
    use_test_shards = split == "test" and bool(test_pattern)
    self.shards = shard_paths(test_pattern if use_test_shards else pattern)
    rows = self._index(self.shards)
    if not (use_test_shards or (split == "train" and test_pattern)):
      test = caption_folder.holdout_mask([r[1] for r in rows], holdout_frac)
      rows = [r for r, t in zip(rows, test) if t == (split == "test")]
    if not rows:
      raise ValueError(f"no samples with an image and a caption in the {split} split of "
                       f"'{pattern}'; check the shards hold .jpg/.png/.webp + .txt files.")
    keep = folder.subset_indices(len(rows), num_examples, seed)
    rows = [rows[i] for i in keep]
    self.keys = [r[1] for r in rows]
    cols = np.asarray([r[0:1] + r[2:] for r in rows], np.int64).reshape(-1, 7)
    (self._shard, self._img_off, self._img_size, self._txt_off, self._txt_size, self._json_off,
     self._json_size) = cols.T.copy()

  def _index(self, shards: list[str]) -> list[tuple]:
    """(shard id, key, image off, size, txt off, size, json off, size) per complete sample."""
    rows, incomplete = [], []
    for s, path in enumerate(shards):
      for key, parts in index_shard(path):
        image = next((parts[e] for e in IMAGE_EXTS if e in parts), None)
        txt = parts.get("txt")
        if image is None or txt is None:
          what = "an image (.jpg/.png/.webp)" if image is None else "a caption (.txt)"
          if self.on_bad_image == "fail":
            raise ValueError(f"sample '{key}' in webdataset shard {path} has no {what}; fix the "
                             "shard or set config.data.on_bad_image='skip' to skip such samples.")
          incomplete.append(f"{path}:{key}")
          continue
        rows.append((s, key) + image + txt + parts.get("json", (-1, -1)))
    if incomplete:
      self.num_skipped += len(incomplete)
      logging.warning("Skipping %d webdataset samples without an image or a caption (e.g. %s).",
                      len(incomplete), incomplete[0])
    return rows

  def __len__(self) -> int:
    return len(self.keys)

  def __repr__(self) -> str:
    return (f"WebDatasetSource(pattern={self.pattern!r}, split={self.split!r}, "
            f"num_records={len(self)}, shards={len(self.shards)}, image_size={self.image_size})")

  def __getstate__(self) -> dict:
    return {**self.__dict__, "_fds": {}}  # file descriptors are per process

  def __del__(self):
    for fd in getattr(self, "_fds", {}).values():
      try:
        os.close(fd)
      except OSError:
        pass

  def _pread(self, j: int, offset: np.int64, size: np.int64) -> bytes:
    s = int(self._shard[j])
    fd = self._fds.get(s)
    if fd is None:
      if len(self._fds) >= _MAX_OPEN:
        os.close(self._fds.pop(next(iter(self._fds))))
      fd = self._fds[s] = os.open(self.shards[s], os.O_RDONLY)
    data = os.pread(fd, int(size), int(offset))
    if len(data) != int(size):
      raise OSError(f"short read ({len(data)} of {int(size)} bytes): the shard changed on disk")
    return data

  def _skip(self, j: int, reason: str) -> None:
    where = f"{self.shards[int(self._shard[j])]}:{self.keys[j]}"
    if self.on_bad_image == "fail":
      raise ValueError(f"cannot read sample {where} ({reason}); fix the shard or set "
                       "config.data.on_bad_image='skip' to skip unreadable samples.")
    self._bad.add(j)
    self.num_skipped += 1
    if len(self._warned) < _MAX_WARNINGS and where not in self._warned:
      self._warned.add(where)
      logging.warning("Skipping webdataset sample %s (%s); %d skipped so far.", where, reason,
                      self.num_skipped)

  def _read(self, i: int, decode: bool) -> tuple[np.ndarray | None, list[str]]:
    """(image, captions) of the first readable sample at or after i (cyclically)."""
    n = len(self)
    i = int(i)
    if not 0 <= i < n:
      raise IndexError(f"index {i} out of range for a WebDatasetSource of {n} samples.")
    for j in (k % n for k in range(i, i + n)):
      if j in self._bad:
        continue
      try:
        text = self._pread(j, self._txt_off[j], self._txt_size[j]).decode("utf-8", "replace")
        captions = [line.strip() for line in text.splitlines() if line.strip()]
        if not captions:
          self._skip(j, "empty caption")
          continue
        if not decode:
          return None, captions
        raw = self._pread(j, self._img_off[j], self._img_size[j])
        with Image.open(io.BytesIO(raw)) as image:
          image.load()
          return folder.resize_center_crop(image, self.image_size), captions
      except folder.DECODE_ERRORS as e:
        self._skip(j, folder.decode_error_reason(e))
    raise ValueError(f"no readable sample in '{self.pattern}' ({self.num_skipped} skipped); "
                     "check the shards.")

  def get_with_captions(self, i: int) -> tuple[dict[str, np.ndarray], list[str]]:
    """(example, its captions): image uint8 [S, S, 3] and index; captions are the .txt lines."""
    image, captions = self._read(i, decode=True)
    return {"image": image, "index": np.asarray(int(i), np.int32)}, captions

  def captions_of(self, i: int) -> list[str]:
    """The captions of sample i (without decoding its image)."""
    return self._read(i, decode=False)[1]

  def metadata_of(self, i: int) -> dict:
    """The sample's .json metadata (img2dataset: url, width, height, ...), {} when it has none."""
    if int(self._json_off[i]) < 0:
      return {}
    return json.loads(self._pread(int(i), self._json_off[i], self._json_size[i]))

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    return self.get_with_captions(i)[0]
