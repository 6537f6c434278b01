"""Text for the language-image methods: a wrapper that adds `tokens` and `text_label` to any source.

CLIP (Radford et al. 2021, Sec. 2.3) pairs each image with one text; UniCL (Yang et al. 2022, Sec. 3)
also draws image-label data into the same space by turning the label into a prompt ("a photo of a
{class}.") whose `text_label` is the class id, while a free caption gets `text_label` -1 (its own class).
`config.data.text` chooses the text (`source`):

  "caption"       one of the example's captions (shapes: its caption under one of several templates;
                  caption folders, webdataset shards, tfds `data.caption_key`: the stored captions)
  "label_prompt"  a prompt template filled with the class name (needs labels)
  "mixed"         the UniCL image-text-label setting: half of the examples (a fixed hash bit of the
                  seed and index) use a label prompt, the others a caption (needs both)

Which caption or template: the test split always uses the first (the caption as generated; prompt
template 0), so evaluation is deterministic. The train split picks one per (seed, index, epoch) with a
hash, so it is a pure function of those: reproducible on any number of hosts and workers, and exact on
resume. `source[i]` is epoch 0 (what grain's random-access read gives: the loader's repeat/shuffle do
not pass the epoch down to the source); `EpochText` is a `map_with_index` transform that re-picks the
text for later epochs from the loader's global position, for a loader that applies it after `repeat`.

Tokenisation runs on the host, per example, wherever grain runs the source (main process or workers).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

TEXT_SOURCES = ("caption", "label_prompt", "mixed")
_MASK64 = (1 << 64) - 1
_CACHE_SIZE = 50_000  # memoised texts per source (and per grain worker)


def _mix(*values: int) -> int:
  """A 64-bit hash of non-negative ints (SplitMix64 finaliser chained over the values)."""
  h = 0x9E3779B97F4A7C15
  for v in values:
    h = (h ^ (int(v) & _MASK64)) * 0xBF58476D1CE4E5B9 & _MASK64
    h = (h ^ (h >> 31)) * 0x94D049BB133111EB & _MASK64
    h ^= h >> 29
  return h


def pick(seed: int, index: int, epoch: int, n: int) -> int:
  """Deterministic choice in [0, n) from (seed, index, epoch)."""
  return _mix(seed, index, epoch, 0x5EED) % n


def uses_prompt(seed: int, index: int) -> bool:
  """The "mixed" text source: whether example `index` gets a label prompt (half of the examples)."""
  return bool(_mix(seed, index, 0x1AB) >> 63)


def default_templates(source: Any) -> tuple[str, ...]:
  """Prompt templates for a source: the shapes-worded ones for `shapes`, CLIP's 7 otherwise."""
  from cl_jax.data import tokenizer  # pylint: disable=g-import-not-at-top

  if getattr(source, "name", "") == "shapes":
    return tokenizer.SHAPES_PROMPT_TEMPLATES
  return tokenizer.CLIP_PROMPT_TEMPLATES


class CaptionedSource:
  """Any source plus `tokens` int32 [context_length] and `text_label` int32 per example: the image-text
  pairs of CLIP (Radford et al. 2021, Sec. 2.3) and the image-text-label triplets of UniCL (Yang et al.
  2022, Sec. 3: text_label = the class id for a prompt, -1 = a class of its own for a caption).

  Captions come from the wrapped source's `get_with_captions(i) -> (example, captions)` (or
  `captions_of(i)`), labels from its examples' `label` and `class_names`. Other attributes (name,
  split, num_classes, class_names, held_out_pairs, ...) are the wrapped source's.
  """

  def __init__(self, source: Any, split: str, text_cfg: Any, *, tokenizer: Any = None,
               seed: int = 0):
    get = text_cfg.get
    kind = get("source", None) or "caption"
    if kind not in TEXT_SOURCES:
      raise ValueError(f"Unknown data.text.source {kind!r}; use one of {', '.join(TEXT_SOURCES)}.")
    name = getattr(source, "name", type(source).__name__)
    has_captions = hasattr(source, "captions_of")
    if kind in ("caption", "mixed") and not has_captions:
      raise ValueError(f"data.text.source={kind!r} needs captions but '{name}' has none; use "
                       "data.text.source='label_prompt', or a caption dataset (shapes, "
                       "captions:/dir, webdataset:/shards, a tfds dataset with data.caption_key).")
    if kind in ("label_prompt", "mixed") and not (source.has_labels and source.class_names):
      raise ValueError(f"data.text.source={kind!r} needs class labels but '{name}' has none; use "
                       "data.text.source='caption'.")
    templates = get("templates", None) or default_templates(source)
    if isinstance(templates, str):
      templates = (templates,)
    if not all(isinstance(t, str) and t.count("{}") == 1 for t in templates):
      raise ValueError(f"data.text.templates {tuple(templates)!r} must be strings with one '{{}}' "
                       "for the class name, e.g. ('a photo of a {}.',).")
    if tokenizer is None:
      from cl_jax.data.tokenizer import build_tokenizer  # pylint: disable=g-import-not-at-top

      tokenizer = build_tokenizer(text_cfg)
    self.source, self.split, self.text_source = source, split, kind
    self.templates: tuple[str, ...] = tuple(templates)
    self.tokenizer = tokenizer
    self.seed = int(get("seed", None) if get("seed", None) is not None else seed)
    self.vary = split == "train"
    self._cache: dict[str, np.ndarray] = {}

  # ---------------------------------------------------------------- delegation
  def __getattr__(self, key: str) -> Any:
    if key in ("source", "_cache"):  # not yet set (unpickling): no recursion
      raise AttributeError(key)
    return getattr(self.source, key)

  def __len__(self) -> int:
    return len(self.source)

  def __repr__(self) -> str:
    return f"CaptionedSource({self.source!r}, text={self.text_source!r})"

  @property
  def context_length(self) -> int:
    return self.tokenizer.context_length

  @property
  def vocab_size(self) -> int:
    return self.tokenizer.vocab_size

  # ---------------------------------------------------------------- text choice
  def _uses_prompt(self, i: int) -> bool:
    if self.text_source == "mixed":
      return uses_prompt(self.seed, i)
    return self.text_source == "label_prompt"

  def prompt(self, label: int, i: int, epoch: int = 0) -> str:
    """The label prompt of example i: template 0 on test, a (seed, i, epoch) choice on train."""
    k = pick(self.seed, i, epoch, len(self.templates)) if self.vary else 0
    return self.templates[k].format(self.class_names[int(label)])

  def choose_caption(self, captions: Sequence[str], i: int, epoch: int = 0) -> str:
    """One of example i's captions: the first on test, a (seed, i, epoch) choice on train."""
    if not captions:
      raise ValueError(f"example {i} of '{self.name}' has no caption; remove it or set "
                       "data.on_bad_image='skip'.")
    return captions[pick(self.seed, i, epoch, len(captions)) if self.vary else 0]

  def captions_of(self, i: int) -> list[str]:
    """Example i's captions (for retrieval); label-prompt sources: its template-0 prompt."""
    if hasattr(self.source, "captions_of"):
      return list(self.source.captions_of(i))
    return [self.templates[0].format(self.class_names[int(self.source[i]["label"])])]

  def text_of(self, i: int, epoch: int = 0, label: int | None = None) -> tuple[str, int]:
    """(text, text_label) of example i at `epoch`; reads the source only for what it needs."""
    i = int(i)
    if self._uses_prompt(i):
      if label is None:
        label = int(self.source[i]["label"])
      return self.prompt(label, i, epoch), int(label)
    return self.choose_caption(self.source.captions_of(i), i, epoch), -1

  def tokens(self, text: str) -> np.ndarray:
    """int32 [context_length] ids of `text` (read-only; memoised: prompts and templated captions repeat)."""
    row = self._cache.get(text)
    if row is None:
      row = self.tokenizer.encode([text])[0].astype(np.int32, copy=False)
      row.setflags(write=False)
      if len(self._cache) < _CACHE_SIZE:
        self._cache[text] = row
    return row

  def _add_text(self, ex: dict[str, np.ndarray], text: str, label: int) -> dict[str, np.ndarray]:
    ex["tokens"] = self.tokens(text)
    ex["text_label"] = np.asarray(label, np.int32)
    return ex

  def __getstate__(self) -> dict[str, Any]:
    return {**self.__dict__, "_cache": {}}

  def get(self, i: int, epoch: int = 0) -> dict[str, np.ndarray]:
    """Example i with the text of `epoch` (`source[i]` is epoch 0)."""
    i = int(i)
    if self._uses_prompt(i):
      ex = dict(self.source[i])
      return self._add_text(ex, self.prompt(int(ex["label"]), i, epoch), int(ex["label"]))
    if hasattr(self.source, "get_with_captions"):
      ex, captions = self.source.get_with_captions(i)
      ex = dict(ex)
    else:
      ex, captions = dict(self.source[i]), self.source.captions_of(i)
    return self._add_text(ex, self.choose_caption(captions, i, epoch), -1)

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    return self.get(i, 0)

  def epoch_text(self) -> "EpochText":
    """The `map_with_index` transform for a loader stream that repeats this whole source."""
    return EpochText(self, len(self))


class EpochText:
  """grain `map_with_index` transform: re-picks the text of epochs >= 1 from the loader position.

  Applied right after `repeat` (position k of the repeated stream is epoch k // records_per_epoch),
  it keeps the text a pure function of (seed, index, epoch), so a resumed iterator gives the same
  texts, on any number of hosts (before the loader picks a host's rows):

    ds = MapDataset.source(source).shuffle(seed).repeat(n)
    ds = ds.map_with_index(source.epoch_text())      # = EpochText(source, len(source))
  """

  def __init__(self, source: CaptionedSource, records_per_epoch: int):
    if records_per_epoch < 1:
      raise ValueError(f"records_per_epoch must be >= 1, got {records_per_epoch}.")
    self.source, self.records_per_epoch = source, int(records_per_epoch)

  def __call__(self, position: int, ex: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    epoch = int(position) // self.records_per_epoch
    if epoch == 0 or not self.source.vary:
      return ex
    label = int(ex["label"]) if "label" in ex else None
    text, text_label = self.source.text_of(int(ex["index"]), epoch, label)
    return self.source._add_text(dict(ex), text, text_label)  # pylint: disable=protected-access


def wrap(source: Any, split: str, data_cfg: Any, tokenizer: Any = None) -> Any:
  """`source` with text when `data_cfg.text` is set (a ConfigDict), else `source` unchanged."""
  text_cfg = data_cfg["text"] if "text" in data_cfg else None   # sources.data_section fills both in
  if text_cfg is None:
    return source
  return CaptionedSource(source, split, text_cfg, tokenizer=tokenizer,
                         seed=int(data_cfg["seed"] if "seed" in data_cfg else 0) or 0)
