"""Tokenizers: CLIP's BPE against an independent reference of CLIP's published algorithm, round trips, padding."""
import collections
import gzip
import html
import pickle

import numpy as np
import pytest

from cl_jax.data import shapes, tokenizer

regex = pytest.importorskip("regex")

# CLIP's published pre-tokenisation pattern (Radford et al. 2021, clip/simple_tokenizer.py), used only by the reference.
CLIP_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE)

CORPUS = ("the quick brown fox jumps over the lazy dog. the dog's owner isn't there; they'll be back at 10:30! "
          "a red circle in the top left on a striped background, café naïve résumé 東京 🙂 "
          "there there the then them these those theory thesis") * 3

TEXTS = [
    "The quick brown fox!", "the dog's owner isn't there; they'll be back at 10:30",
    "  Café   NAÏVE\tRésumé  ", "東京 🙂 emoji", "&amp;lt;b&amp;gt; html &quot;entities&quot;",
    "numbers 2026 and 1/2", "<|startoftext|>special<|endoftext|>", "unseen words: zebra xylophone",
    "a red circle in the top left on a striped background", "",
]


def _byte_map():
  bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
  cs, n = bs[:], 0
  for b in range(256):
    if b not in bs:
      bs.append(b)
      cs.append(256 + n)
      n += 1
  return dict(zip(bs, map(chr, cs)))


def _clean(text):
  return regex.sub(r"\s+", " ", html.unescape(html.unescape(text)).strip()).strip().lower()


def _words(text):
  b = _byte_map()
  return ["".join(b[x] for x in t.encode("utf-8")) for t in CLIP_PATTERN.findall(_clean(text))]


class ReferenceCLIP:
  """CLIP's SimpleTokenizer as described: byte map, vocab = bytes + bytes</w> + merges + specials, greedy bpe()."""

  def __init__(self, merges):
    b = list(_byte_map().values())
    vocab = b + [v + "</w>" for v in b] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    self.encoder = {v: i for i, v in enumerate(vocab)}
    self.ranks = {m: i for i, m in enumerate(merges)}

  def bpe(self, token):
    if token in ("<|startoftext|>", "<|endoftext|>"):
      return [token]
    word = tuple(token[:-1]) + (token[-1] + "</w>",)
    while len(word) > 1:
      pairs = set(zip(word, word[1:]))
      bigram = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
      if bigram not in self.ranks:
        break
      first, second = bigram
      new, i = [], 0
      while i < len(word):
        try:
          j = word.index(first, i)
        except ValueError:
          new.extend(word[i:])
          break
        new.extend(word[i:j])
        i = j
        if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
          new.append(first + second)
          i += 2
        else:
          new.append(word[i])
          i += 1
      word = tuple(new)
    return list(word)

  def tokenize(self, text, context_length):
    ids = [self.encoder["<|startoftext|>"]]
    ids += [self.encoder[t] for w in _words(text) for t in self.bpe(w)]
    ids += [self.encoder["<|endoftext|>"]]
    if len(ids) > context_length:
      ids = ids[:context_length]
      ids[-1] = self.encoder["<|endoftext|>"]
    return ids + [0] * (context_length - len(ids))


def _learn_merges(text, num):
  """A tiny BPE learner (most frequent pair first) to make a merges file in CLIP's format."""
  words = collections.Counter(tuple(w[:-1]) + (w[-1] + "</w>",) for w in _words(text)
                              if w not in ("<|startoftext|>", "<|endoftext|>"))
  merges = []
  for _ in range(num):
    pairs = collections.Counter()
    for w, c in words.items():
      for p in zip(w, w[1:]):
        pairs[p] += c
    if not pairs:
      break
    best = max(sorted(pairs), key=lambda p: pairs[p])
    merges.append(best)
    new = collections.Counter()
    for w, c in words.items():
      out, i = [], 0
      while i < len(w):
        if i < len(w) - 1 and (w[i], w[i + 1]) == best:
          out.append(w[i] + w[i + 1])
          i += 2
        else:
          out.append(w[i])
          i += 1
      new[tuple(out)] += c
    words = new
  return merges


@pytest.fixture(scope="module")
def merges_file(tmp_path_factory):
  merges = _learn_merges(CORPUS, 80)
  assert len(merges) == 80
  path = tmp_path_factory.mktemp("bpe") / "bpe_tiny.txt.gz"
  with gzip.open(path, "wt", encoding="utf-8") as f:
    f.write("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
  return str(path), merges


def test_bpe_ids_equal_clip_reference(merges_file):
  path, merges = merges_file
  tok = tokenizer.build_tokenizer({"tokenizer": "bpe", "merges_path": path, "context_length": 24})
  ref = ReferenceCLIP(merges)
  assert tok.vocab_size == 512 + 80 + 2
  assert tok.eot_token == tok.vocab_size - 1 and tok.sot_token == tok.vocab_size - 2
  got = tok.encode(TEXTS)
  assert got.dtype == np.int32 and got.shape == (len(TEXTS), 24)
  np.testing.assert_array_equal(got, np.array([ref.tokenize(t, 24) for t in TEXTS]))
  # The merges are used: frequent words are single ids.
  assert tok.encode(["the"])[0, :3].tolist() == [tok.sot_token, tok.encoder["the</w>"], tok.eot_token]


def test_bpe_max_merges_and_plain_file(merges_file, tmp_path):
  path, merges = merges_file
  plain = tmp_path / "bpe.txt"
  plain.write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8")
  tok = tokenizer.build_tokenizer({"tokenizer": "bpe", "merges_path": str(plain), "context_length": 24,
                                   "max_merges": 50})
  assert tok.vocab_size == 512 + 50 + 2
  np.testing.assert_array_equal(tok.encode(TEXTS), np.array([ReferenceCLIP(merges[:50]).tokenize(t, 24)
                                                             for t in TEXTS]))


def test_bpe_round_trip_and_truncation(merges_file):
  tok = tokenizer.build_tokenizer({"tokenizer": "bpe", "merges_path": merges_file[0], "context_length": 64})
  for text in TEXTS[:6]:
    decoded = tok.decode(tok.encode([text])[0])
    # CLIP's decode puts a space at each word end, so punctuation comes back space-separated.
    assert decoded.replace(" ", "") == _clean(text).replace(" ", ""), text
  assert tok.decode(tok.encode(["the red circle"])[0]) == "the red circle"
  short = tokenizer.build_tokenizer({"tokenizer": "bpe", "merges_path": merges_file[0], "context_length": 5})
  row = short.encode(["the quick brown fox jumps over"])[0]
  assert row[0] == short.sot_token and row[-1] == short.eot_token and (row != 0).all()
  restored = pickle.loads(pickle.dumps(tok))
  np.testing.assert_array_equal(restored.encode(TEXTS), tok.encode(TEXTS))


def test_shapes_tokenizer_covers_captions_and_round_trips():
  tok = tokenizer.build_tokenizer({"tokenizer": "shapes", "context_length": 24})
  again = tokenizer.build_tokenizer({"tokenizer": "shapes", "context_length": 24})
  assert tok.vocab == again.vocab   # deterministic
  assert tok.eot_token == tok.vocab_size - 1
  captions = list(shapes.generate(60, split="train", seed=0, image_size=16)["caption"])
  ids = tok.encode(captions)
  assert (ids != tok.unk_token).all()
  assert ((ids == tok.eot_token).sum(1) == 1).all() and (ids[:, 0] == tok.sot_token).all()
  for caption, row in zip(captions, ids):
    assert tok.decode(row) == caption.lower()
  prompts = [t.format(name) for t in tokenizer.SHAPES_PROMPT_TEMPLATES for name in shapes.CLASS_NAMES]
  assert (tok.encode(prompts) != tok.unk_token).all()
  assert tok.encode(["a zebra"])[0, 2] == tok.unk_token
  np.testing.assert_array_equal(pickle.loads(pickle.dumps(tok)).encode(captions), ids)


def test_bad_configs_name_the_fix(tmp_path):
  with pytest.raises(ValueError, match="merges_path"):
    tokenizer.build_tokenizer({"tokenizer": "bpe"})
  with pytest.raises(ValueError, match="does not exist"):
    tokenizer.build_tokenizer({"tokenizer": "bpe", "merges_path": str(tmp_path / "missing.txt")})
  with pytest.raises(ValueError, match="Unknown tokenizer 'wordpiece'"):
    tokenizer.build_tokenizer({"tokenizer": "wordpiece"})
  with pytest.raises(ValueError, match="context_length"):
    tokenizer.build_tokenizer({"tokenizer": "shapes", "context_length": 1})
