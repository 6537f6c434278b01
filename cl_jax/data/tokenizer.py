"""Text tokenizers for the language-image methods: CLIP's byte-level BPE and a word-level one for `shapes`.

`build_tokenizer(text_cfg)` reads `tokenizer` ("bpe" | "shapes"), `context_length`, `merges_path` (bpe) and
optional `max_merges` (bpe). Both tokenizers are pure Python/NumPy and picklable (they run in grain workers):
`encode(texts) -> int32 [N, context_length]` is <|startoftext|> + ids + <|endoftext|>, zero padded, and truncated
keeping <|endoftext|> last, as open_clip's `tokenize`. In both, <|endoftext|> has the largest id, so a text tower
may pool at `argmax(tokens)` as CLIP does.

"bpe" is CLIP's tokenizer (Radford et al. 2021, Sec. 2.4: lower-cased byte-level BPE, 49,152 merges, 49,408 ids):
html-unescape, whitespace collapse, lower-case, CLIP's pre-tokenisation (<|startoftext|>, <|endoftext|>, the
contractions 's 't 're 've 'm 'll 'd, runs of letters, single digits, runs of other non-space characters),
bytes -> printable unicode, then the merges in rank order. It loads the merges file CLIP releases, e.g.

  wget https://github.com/openai/CLIP/raw/main/clip/bpe_simple_vocab_16e6.txt.gz
  --config.data.text.tokenizer=bpe --config.data.text.merges_path=/path/to/bpe_simple_vocab_16e6.txt.gz

(open_clip ships the same file as open_clip/bpe_simple_vocab_16e6.txt.gz). The format is one version line, then
one "a b" merge per line; like CLIP we use the first `max_merges` = 49152 - 256 - 2 merges, so the vocabulary is
256 byte symbols, their 256 "</w>" forms, the merges, <|startoftext|>, <|endoftext|> (49,408 ids). CLIP also runs
ftfy.fix_text first; it is used when ftfy is installed (it only repairs mojibake).

"shapes" is a word-level vocabulary built deterministically from the embedded dataset's caption vocabulary
(cl_jax/data/shapes.py) plus the prompt templates below: ids 0 <pad>, 1 <unk>, the sorted words, then
<|startoftext|>, <|endoftext|>. Unknown words map to <unk>.
"""
from __future__ import annotations

import abc
import functools
import gzip
import html
import re
import unicodedata
from typing import Any, Sequence

import numpy as np

SOT, EOT = "<|startoftext|>", "<|endoftext|>"
CLIP_MAX_MERGES = 49152 - 256 - 2
TOKENIZERS = ("bpe", "shapes")

# Zero-shot prompts for the embedded shapes (class name -> "{}"), worded like its captions.
SHAPES_PROMPT_TEMPLATES: tuple[str, ...] = (
    "a {}.", "a photo of a {}.", "a {} on a background.", "there is a {} in the image.",
)
# CLIP's 7-template ensemble for ImageNet-style classification (Radford et al. 2021, Sec. 3.1.4; CLIP's
# "Prompt_Engineering_for_ImageNet" notebook).
CLIP_PROMPT_TEMPLATES: tuple[str, ...] = (
    "itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.",
    "a {} in a video game.", "art of the {}.", "a photo of the small {}.",
)
_CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")


@functools.lru_cache(maxsize=None)
def bytes_to_unicode() -> dict[int, str]:
  """CLIP/GPT-2's reversible map of the 256 byte values to printable unicode characters."""
  printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1))
               + list(range(ord("\xae"), ord("\xff") + 1)))
  chars, extra = list(printable), 0
  for b in range(256):
    if b not in printable:
      printable.append(b)
      chars.append(256 + extra)
      extra += 1
  return {b: chr(c) for b, c in zip(printable, chars)}


@functools.cache
def _fix_text() -> Callable[[str], str] | None:
  """ftfy.fix_text when ftfy is installed, else None (looked up once: a failed import per caption is slow)."""
  try:
    import ftfy  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  return ftfy.fix_text


def clean_text(text: str) -> str:
  """CLIP's basic_clean + whitespace_clean + lower(): ftfy (if installed), html-unescape twice, collapse spaces."""
  if (fix := _fix_text()) is not None:
    text = fix(text)
  text = html.unescape(html.unescape(text)).strip()
  return re.sub(r"\s+", " ", text).strip().lower()


def _kind(ch: str) -> str:
  if ch.isspace():
    return "space"
  cat = unicodedata.category(ch)
  return "letter" if cat[0] == "L" else "number" if cat[0] == "N" else "other"


def pre_tokenize(text: str) -> list[str]:
  """CLIP's regex <|startoftext|>|<|endoftext|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+,
  as a scanner over unicode categories (no third-party `regex` module needed)."""
  out, i, n = [], 0, len(text)
  while i < n:
    for special in (SOT, EOT) + _CONTRACTIONS:
      if text.startswith(special, i):
        out.append(special)
        i += len(special)
        break
    else:
      kind = _kind(text[i])
      if kind == "space":
        i += 1
        continue
      if kind == "number":
        out.append(text[i])
        i += 1
        continue
      j = i + 1
      while j < n and _kind(text[j]) == kind:
        j += 1
      out.append(text[i:j])
      i = j
  return out


def read_merges(path: str, max_merges: int | None = None) -> list[tuple[str, str]]:
  """Merges of a CLIP merges file (.txt or .txt.gz): skip the version line, keep the first `max_merges`."""
  opener = gzip.open if str(path).endswith(".gz") else open
  try:
    with opener(path, "rb") as f:
      lines = f.read().decode("utf-8").split("\n")
  except FileNotFoundError:
    raise ValueError(f"BPE merges file {path} does not exist; set data.text.merges_path to CLIP's "
                     "bpe_simple_vocab_16e6.txt.gz (see cl_jax/data/tokenizer.py).") from None
  limit = CLIP_MAX_MERGES if max_merges is None else int(max_merges)
  merges = [tuple(line.split()) for line in lines[1:] if line.strip()][:limit]
  bad = [m for m in merges if len(m) != 2]
  if bad:
    raise ValueError(f"{path} is not a CLIP merges file (line {' '.join(bad[0])!r} is not 'a b'); "
                     "pass bpe_simple_vocab_16e6.txt[.gz].")
  return merges  # type: ignore[return-value]


class Tokenizer(abc.ABC):
  """Shared encode/decode over a token -> id vocabulary; subclasses split a text into vocabulary tokens."""

  def __init__(self, vocab: Sequence[str], context_length: int):
    if int(context_length) < 2:
      raise ValueError(f"context_length {context_length} leaves no room for the start and end tokens; use >= 2 "
                       "(CLIP uses 77).")
    self.context_length = int(context_length)
    self.vocab = list(vocab)
    self.encoder = {t: i for i, t in enumerate(self.vocab)}
    self.vocab_size = len(self.vocab)
    self.sot_token, self.eot_token = self.encoder[SOT], self.encoder[EOT]

  @abc.abstractmethod
  def text_ids(self, text: str) -> list[int]:
    """Ids of one text, without start/end tokens."""

  def encode(self, texts: Sequence[str] | str) -> np.ndarray:
    """int32 [N, context_length]: sot + ids + eot, zero padded; too long -> truncated with eot kept last."""
    if isinstance(texts, str):
      texts = [texts]
    out = np.zeros((len(texts), self.context_length), np.int32)
    for row, text in enumerate(texts):
      ids = [self.sot_token] + self.text_ids(text) + [self.eot_token]
      if len(ids) > self.context_length:
        ids = ids[:self.context_length]
        ids[-1] = self.eot_token
      out[row, :len(ids)] = ids
    return out

  def _content(self, ids: Any) -> list[int]:
    ids = [int(i) for i in np.asarray(ids).reshape(-1)]
    if ids and ids[0] == self.sot_token:
      ids = ids[1:]
    if self.eot_token in ids:
      ids = ids[:ids.index(self.eot_token)]
    return ids

  @abc.abstractmethod
  def decode(self, ids: Any) -> str:
    """The text of one row of ids (start token dropped, cut at the end token)."""


class BPETokenizer(Tokenizer):
  """CLIP's byte-level BPE tokenizer (Radford et al. 2021, Sec. 2.4; Sennrich et al. 2016)."""

  def __init__(self, merges_path: str, context_length: int = 77, max_merges: int | None = None):
    merges = read_merges(merges_path, max_merges)
    self.merges_path = merges_path
    self.byte_encoder = bytes_to_unicode()
    self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
    symbols = list(self.byte_encoder.values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [SOT, EOT]
    super().__init__(vocab, context_length)
    self.bpe_ranks = {m: r for r, m in enumerate(merges)}
    self.cache: dict[str, list[str]] = {}

  def bpe(self, token: str) -> list[str]:
    """Merges one pre-token (as byte symbols, last one marked "</w>") by lowest merge rank first."""
    if token in self.cache:
      return self.cache[token]
    word = list(token[:-1]) + [token[-1] + "</w>"]
    while len(word) > 1:
      pairs = {(a, b) for a, b in zip(word[:-1], word[1:])}
      best = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
      if best not in self.bpe_ranks:
        break
      merged, i = [], 0
      while i < len(word):
        if i < len(word) - 1 and (word[i], word[i + 1]) == best:
          merged.append(word[i] + word[i + 1])
          i += 2
        else:
          merged.append(word[i])
          i += 1
      word = merged
    if len(self.cache) < 100_000:
      self.cache[token] = word
    return word

  def text_ids(self, text: str) -> list[int]:
    ids = []
    for token in pre_tokenize(clean_text(text)):
      if token in (SOT, EOT):
        ids.append(self.encoder[token])
        continue
      symbols = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
      ids.extend(self.encoder[s] for s in self.bpe(symbols))
    return ids

  def decode(self, ids: Any) -> str:
    text = "".join(self.vocab[i] for i in self._content(ids))
    data = bytearray(self.byte_decoder[c] for c in text)
    return data.decode("utf-8", errors="replace").replace("</w>", " ").strip()

  def __getstate__(self) -> dict[str, Any]:
    return {**self.__dict__, "cache": {}}


_WORD = re.compile(r"[\w'-]+|[^\w\s]")


def shapes_vocabulary() -> list[str]:
  """Sorted words of the shapes captions, attribute names and prompt templates (deterministic)."""
  from cl_jax.data import shapes  # pylint: disable=g-import-not-at-top

  texts = [*shapes.CLASS_NAMES, *shapes.COLOR_NAMES, *shapes.SIZE_NAMES, *shapes.POSITION_NAMES,
           *shapes.BACKGROUND_NAMES, *SHAPES_PROMPT_TEMPLATES, *CLIP_PROMPT_TEMPLATES]
  texts += [re.sub(r"\{\w*\}", " ", t) for t in shapes.CAPTION_TEMPLATES]
  return sorted({w for t in texts for w in _WORD.findall(clean_text(t))} - {"{", "}"})


class WordTokenizer(Tokenizer):
  """Word-level tokenizer over a fixed vocabulary: <pad>=0, <unk>=1, words, <|startoftext|>, <|endoftext|>."""

  def __init__(self, words: Sequence[str], context_length: int = 32):
    super().__init__(["<pad>", "<unk>", *words, SOT, EOT], context_length)
    self.unk_token = 1

  def text_ids(self, text: str) -> list[int]:
    return [self.encoder.get(w, self.unk_token) for w in _WORD.findall(clean_text(text))]

  def decode(self, ids: Any) -> str:
    text = " ".join(self.vocab[i] for i in self._content(ids))
    return re.sub(r" ([^\w\s'-])", r"\1", text)


def build_tokenizer(text_cfg: Any) -> Tokenizer:
  """The tokenizer named by text_cfg.tokenizer ("bpe": CLIP's BPE from merges_path; "shapes": word-level)."""
  get = text_cfg.get
  name = get("tokenizer", "shapes")
  context_length = int(get("context_length", 77 if name == "bpe" else 32))
  if name == "bpe":
    path = get("merges_path", None)
    if not path:
      raise ValueError("tokenizer 'bpe' needs data.text.merges_path; point it at CLIP's "
                       "bpe_simple_vocab_16e6.txt.gz (see cl_jax/data/tokenizer.py) or use tokenizer='shapes'.")
    return BPETokenizer(str(path), context_length, get("max_merges", None))
  if name == "shapes":
    return WordTokenizer(shapes_vocabulary(), context_length)
  raise ValueError(f"Unknown tokenizer '{name}'; use one of: {', '.join(TOKENIZERS)}.")
