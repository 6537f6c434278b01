"""The text wrapper (cl_jax/data/captions.py): tokens and text_label on shapes, caption choice, EpochText."""
import collections
import pickle

import grain.python as grain
import ml_collections
import numpy as np
import pytest

from cl_jax.data import captions, pipeline, shapes, sources
from cl_jax.data.tokenizer import SHAPES_PROMPT_TEMPLATES, build_tokenizer
from tests.harness import one_line_error

N = 120
L = 32


def data_cfg(kind="caption", **kw):
  base = dict(dataset="shapes", image_size=16, num_train=N, num_test=N, seed=0,
              text=dict(tokenizer="shapes", context_length=L, source=kind))
  base.update(kw)
  return ml_collections.ConfigDict(base)


@pytest.fixture(scope="module")
def tok():
  return build_tokenizer(ml_collections.ConfigDict(dict(tokenizer="shapes", context_length=L)))


@pytest.fixture(scope="module")
def train_base():
  return shapes.ShapesSource("train", num_examples=N, image_size=16)


@pytest.fixture(scope="module")
def test_base():
  return shapes.ShapesSource("test", num_examples=N, image_size=16)


def wrap(base, split, kind, tok, **text):
  cfg = ml_collections.ConfigDict(dict(tokenizer="shapes", context_length=L, source=kind, **text))
  return captions.CaptionedSource(base, split, cfg, tokenizer=tok)


def enc(tok, text):
  return tok.encode([text])[0]


def test_get_source_adds_tokens_and_text_label():
  src = sources.get_source(data_cfg(), "train")
  assert isinstance(src, captions.CaptionedSource) and len(src) == N
  assert src.num_classes == 10 and src.class_names == shapes.CLASS_NAMES and src.name == "shapes"
  assert src.context_length == L and src.vocab_size == src.tokenizer.vocab_size
  ex = src[5]
  assert ex["tokens"].shape == (L,) and ex["tokens"].dtype == np.int32
  assert ex["text_label"].shape == () and ex["text_label"].dtype == np.int32
  assert int(ex["text_label"]) == -1
  np.testing.assert_array_equal(ex["image"], src.source[5]["image"])
  plain = sources.get_source(data_cfg(text=None), "train")
  assert isinstance(plain, shapes.ShapesSource) and "tokens" not in plain[0]


def test_captions_train_varies_with_index_and_epoch_test_is_fixed(train_base, test_base, tok):
  train, test = wrap(train_base, "train", "caption", tok), wrap(test_base, "test", "caption", tok)
  chosen = collections.Counter()
  varied = 0
  for i in range(N):
    options = train_base.captions_of(i)
    assert options[0] == train_base.captions[i] and len(set(options)) == len(options)
    rows = [train.get(i, epoch)["tokens"] for epoch in range(6)]
    picks = []
    for row in rows:
      k = [np.array_equal(row, enc(tok, o)) for o in options].index(True)  # one of its captions
      picks.append((k + int(train_base.arrays["template"][i])) % len(options))
    chosen.update(picks)
    varied += len(set(picks)) > 1
    np.testing.assert_array_equal(train[i]["tokens"], rows[0])  # source[i] is epoch 0
    np.testing.assert_array_equal(test[i]["tokens"], enc(tok, test_base.captions[i]))
    np.testing.assert_array_equal(test.get(i, 3)["tokens"], test[i]["tokens"])
  assert varied > 0.9 * N                                             # epochs change the text
  assert set(chosen) == set(range(len(shapes.CAPTION_TEMPLATES)))    # every template is used
  assert max(chosen.values()) < 2.5 * (6 * N / len(shapes.CAPTION_TEMPLATES))


def test_choice_is_deterministic_and_seeded(train_base, tok):
  a, b = wrap(train_base, "train", "caption", tok), wrap(train_base, "train", "caption", tok)
  other = wrap(train_base, "train", "caption", tok, seed=7)
  same = [np.array_equal(a.get(i, 2)["tokens"], b.get(i, 2)["tokens"]) for i in range(N)]
  diff = [not np.array_equal(a.get(i, 2)["tokens"], other.get(i, 2)["tokens"]) for i in range(N)]
  assert all(same) and np.mean(diff) > 0.6
  clone = pickle.loads(pickle.dumps(a))  # grain workers get a pickled copy
  for i in (0, 17, N - 1):
    for key, value in a.get(i, 1).items():
      np.testing.assert_array_equal(clone.get(i, 1)[key], value)


def test_label_prompts(train_base, test_base, tok):
  train = wrap(train_base, "train", "label_prompt", tok)
  test = wrap(test_base, "test", "label_prompt", tok)
  used = set()
  for i in range(N):
    ex, label = train.get(i, i % 3), int(train_base.arrays["label"][i])
    assert int(ex["text_label"]) == label
    k = [np.array_equal(ex["tokens"], enc(tok, t.format(shapes.CLASS_NAMES[label])))
         for t in SHAPES_PROMPT_TEMPLATES].index(True)
    used.add(k)
    t_label = int(test_base.arrays["label"][i])
    assert int(test[i]["text_label"]) == t_label
    np.testing.assert_array_equal(
        test[i]["tokens"], enc(tok, SHAPES_PROMPT_TEMPLATES[0].format(shapes.CLASS_NAMES[t_label])))
  assert used == set(range(len(SHAPES_PROMPT_TEMPLATES)))
  custom = wrap(train_base, "test", "label_prompt", tok, templates=("a {} image.",))
  assert tok.decode(custom[0]["tokens"]) == f"a {shapes.CLASS_NAMES[train_base.arrays['label'][0]]} image."


def test_mixed_is_half_prompts_by_index(train_base, test_base, tok):
  train, test = wrap(train_base, "train", "mixed", tok), wrap(test_base, "test", "mixed", tok)
  prompt = np.array([captions.uses_prompt(0, i) for i in range(N)])
  assert 0.3 < prompt.mean() < 0.7
  for src, base in ((train, train_base), (test, test_base)):
    for i in range(N):
      ex = src.get(i, 1)
      label = int(base.arrays["label"][i])
      assert int(ex["text_label"]) == (label if prompt[i] else -1)
      if not prompt[i]:
        assert any(np.array_equal(ex["tokens"], enc(tok, o)) for o in base.captions_of(i))
  assert captions.uses_prompt(0, 5) == captions.uses_prompt(0, 5)
  assert np.mean([captions.uses_prompt(1, i) != prompt[i] for i in range(N)]) > 0.3


def test_bad_text_configs(train_base, tok, tmp_path):
  one_line_error(lambda: wrap(train_base, "train", "words", tok), "'words'", "label_prompt")
  one_line_error(lambda: wrap(train_base, "train", "label_prompt", tok, templates=("no slot",)),
                 "templates", "{}")

  class Labelled:  # a classification source without captions (a tfds classifier, a class folder)
    name, has_labels, class_names, num_classes = "cls", True, ("a", "b"), 2

    def __len__(self):
      return 2

    def __getitem__(self, i):
      return {"image": np.zeros((2, 2, 3), np.uint8), "label": np.asarray(i, np.int32),
              "index": np.asarray(i, np.int32)}

  one_line_error(lambda: wrap(Labelled(), "train", "caption", tok), "'cls' has none",
                 "label_prompt")
  src = wrap(Labelled(), "test", "label_prompt", tok, templates=("a {}.",))
  assert src.captions_of(1) == ["a b."] and int(src[1]["text_label"]) == 1

  class Captioned(Labelled):
    has_labels, class_names, num_classes = False, None, None

    def captions_of(self, i):
      return ["a circle"]

  one_line_error(lambda: wrap(Captioned(), "train", "mixed", tok), "class labels", "caption")


def test_loader_batches_and_epoch_text_resumes(train_base, tok):
  src = wrap(train_base, "train", "caption", tok)
  batch = next(iter(pipeline.make_loader(src, global_batch=8, seed=0, shuffle=True,
                                         num_epochs=None, process_index=0, process_count=1)))
  assert batch["tokens"].shape == (8, L) and batch["tokens"].dtype == np.int32
  assert batch["text_label"].shape == (8,)

  n = 40
  shard = pipeline.HostShard(src, 0, n)

  def stream():
    ds = grain.MapDataset.source(shard).shuffle(seed=3).repeat(None)
    ds = ds.map_with_index(captions.EpochText(src, n)).batch(10)
    return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)))

  it = stream()
  batches = [next(it) for _ in range(8)]  # two epochs of 4 batches
  for epoch in (0, 1):
    for b in batches[4 * epoch:4 * epoch + 4]:
      for index, tokens in zip(b["index"], b["tokens"]):
        np.testing.assert_array_equal(tokens, src.get(int(index), epoch)["tokens"])
  e0 = {int(i): t for b in batches[:4] for i, t in zip(b["index"], b["tokens"])}
  e1 = {int(i): t for b in batches[4:] for i, t in zip(b["index"], b["tokens"])}
  assert sorted(e0) == sorted(e1) == list(range(n))
  assert sum(not np.array_equal(e0[i], e1[i]) for i in range(n)) > n // 2
  it = stream()
  for _ in range(3):
    next(it)
  state = it.get_state()
  expected = [next(it)["tokens"] for _ in range(3)]
  resumed = stream()
  resumed.set_state(state)
  for want in expected:
    np.testing.assert_array_equal(next(resumed)["tokens"], want)


def test_held_out_pairs_through_config():
  pairs = (("circle", "red"), ("star", "blue"))
  train = sources.get_source(data_cfg(held_out_pairs=pairs, num_train=400), "train")
  test = sources.get_source(data_cfg(held_out_pairs=pairs, num_test=400), "test")
  ids = ((0, 0), (3, 4))
  assert train.held_out_pairs == test.held_out_pairs == ids
  tr = train.source.arrays
  for c, k in ids:
    assert not np.any((tr["label"] == c) & (tr["color"] == k))
  te = test.source.arrays
  assert sum(np.sum((te["label"] == c) & (te["color"] == k)) for c, k in ids) > 0
  ex = test[0]
  assert {"label", "color", "tokens", "text_label"} <= set(ex)
