"""Tests of the embedded multi-object `shapes_scenes` dataset (cl_jax/data/scenes.py)."""
import os
import subprocess
import sys

import numpy as np
import pytest

from cl_jax.data import scenes, shapes

N, S = 240, 48
PALETTE = np.array(shapes._PALETTE, np.float32)  # pylint: disable=protected-access


@pytest.fixture(scope="module")
def train():
  return scenes.generate(N, split="train", seed=0, image_size=S)


@pytest.fixture(scope="module")
def source():
  return scenes.ScenesSource("train", num_examples=60, image_size=S, seed=0)


def _objects(d, i):
  return range(int(d["num_objects"][i]))


def test_shapes_dtypes_and_padding(train, source):
  ex = source[3]
  expected = {"image": ((S, S, 3), np.uint8), "mask": ((S, S), np.int32),
              "instance": ((S, S), np.int32), "boxes": ((4, 4), np.float32),
              "classes": ((4,), np.int32), "colors": ((4,), np.int32), "sizes": ((4,), np.int32),
              "num_objects": ((), np.int32), "label": ((), np.int32), "index": ((), np.int32),
              "nouns": ((len(shapes.CLASS_NAMES),), np.int32)}
  for key, (shape, dtype) in expected.items():
    assert ex[key].shape == shape and ex[key].dtype == dtype, key
  assert int(ex["index"]) == 3 and source.name == "shapes_scenes" and source.image_size == S
  assert source.num_classes == len(source.class_names) == 10 and source.has_labels
  with pytest.raises(IndexError):
    source[60]
  np.testing.assert_array_equal(source.attribute_values("count"), source.arrays["num_objects"])
  np.testing.assert_array_equal(source[-1]["instance"], source.arrays["instance"][59])
  np.testing.assert_array_equal(train["index"], np.arange(N))
  counts = np.bincount(train["num_objects"], minlength=5)
  assert counts[0] == 0 and counts[1:].min() >= 35, counts  # uniform on 1..4: 60 each
  for i in range(N):
    k = int(train["num_objects"][i])
    for key, hi in (("classes", 10), ("colors", 8), ("sizes", 3)):
      row = train[key][i]
      assert (row[k:] == -1).all() and (row[:k] >= 0).all() and (row[:k] < hi).all(), (key, i)
    assert (train["boxes"][i, k:] == -1).all()


def test_determinism_alone_window_and_out_of_order(train):
  for i in (200, 0, 117, 5):  # out of order, each alone
    alone = scenes.generate(1, split="train", seed=0, image_size=S, start=i)
    for key in train:
      np.testing.assert_array_equal(alone[key][0], train[key][i], err_msg=f"{key} {i}")
  window = scenes.generate(7, split="train", seed=0, image_size=S, start=90)
  for key in ("image", "mask", "instance", "boxes", "caption"):
    np.testing.assert_array_equal(window[key], train[key][90:97])
  other = scenes.generate(20, split="train", seed=1, image_size=S)
  assert not np.array_equal(other["image"], train["image"][:20])
  test = scenes.generate(20, split="test", seed=0, image_size=S)
  assert not np.array_equal(test["image"], train["image"][:20])


def test_mask_agrees_with_objects_and_image(train):
  close = []
  for i in range(N):
    mask, inst, classes = train["mask"][i], train["instance"][i], train["classes"][i]
    k = int(train["num_objects"][i])
    assert set(np.unique(mask).tolist()) - {0} <= {int(c) + 1 for c in classes[:k]}, i
    assert set(np.unique(inst).tolist()) == set(range(k + 1)), i  # every object visible
    np.testing.assert_array_equal(mask == 0, inst == 0)
    np.testing.assert_array_equal(mask[inst > 0], classes[inst[inst > 0] - 1] + 1)
    img = train["image"][i].astype(np.float32)
    for j in _objects(train, i):  # an object's pixels carry its palette colour (+- jitter, edges)
      d = np.linalg.norm(img[inst == j + 1] - PALETTE[train["colors"][i, j]], axis=-1)
      assert (d < 60).mean() > 0.5, (i, j)
      close.append(d < 60)
    own = PALETTE[train["colors"][i, :k]]  # background pixels do not look like any object
    d = np.linalg.norm(img[inst == 0][:, None] - own[None], axis=-1).min(axis=1)
    assert (d < 40).mean() < 0.05, i
  assert np.concatenate(close).mean() > 0.9  # antialiased edges are the rest


def test_boxes_enclose_exactly_the_instance_pixels(train):
  for i in range(N):
    for j in _objects(train, i):
      ys, xs = np.nonzero(train["instance"][i] == j + 1)
      want = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
      np.testing.assert_array_equal(train["boxes"][i, j], np.array(want, np.float32), err_msg=i)


def test_label_is_largest_visible_object_and_nouns_are_mask_classes(train):
  for i in range(N):
    k = int(train["num_objects"][i])
    area = [(train["instance"][i] == j + 1).sum() for j in range(k)]
    assert train["label"][i] == train["classes"][i, int(np.argmax(area))], i
    present = sorted(set(np.unique(train["mask"][i]).tolist()) - {0})
    np.testing.assert_array_equal(np.flatnonzero(train["nouns"][i]) + 1, present, err_msg=i)
  assert len(np.unique(train["label"])) == 10


def test_objects_overlap_and_later_ones_win(train):
  overlaps = 0
  for i in range(N):
    for j in _objects(train, i):
      b = train["boxes"][i, j].astype(int)
      inside = train["instance"][i][b[1]:b[3], b[0]:b[2]]
      overlaps += int(((inside > j + 1)).any())
  assert overlaps > 20  # a later object covers part of an earlier one's box


def test_captions_name_every_object(train, source):
  for i in range(N):
    cap = train["caption"][i]
    named = sum(cap.count(f"{c} {s}") for c in shapes.COLOR_NAMES for s in shapes.CLASS_NAMES)
    assert named == int(train["num_objects"][i]), cap
    for j in _objects(train, i):
      color, shape = (shapes.COLOR_NAMES[train["colors"][i, j]],
                      shapes.CLASS_NAMES[train["classes"][i, j]])
      assert f"{color} {shape}" in cap, (cap, color, shape)
  assert len(set(train["template"].tolist())) == len(scenes.CAPTION_TEMPLATES)
  caps = source.captions_of(7)
  assert caps[0] == source.captions[7] and len(set(caps)) == len(scenes.CAPTION_TEMPLATES)
  ex, caps2 = source.get_with_captions(7)
  assert caps2 == caps and int(ex["index"]) == 7
  assert scenes.caption([(3, 0, 0), (5, 4, 0)], 2, 1) == (
      "a photo of a small red star and a small blue ring on a dotted background")
  assert scenes.caption([(3, 0, 0), (5, 4, 1), (1, 6, 2)], 2, 0) == (
      "a red star, a blue ring and a white triangle on a dotted background")
  assert scenes.caption([(8, 1, 2)], 0, 3) == "an image showing a large orange arrow"
  assert scenes.caption([(8, 1, 2)], 0, 4) == "an orange arrow, striped background"


def test_captioned_source_tokens_without_unknown_words(source):
  from cl_jax.data import captions, tokenizer
  words = tokenizer.shapes_vocabulary()  # the default "shapes" word tokenizer knows every word
  assert set(scenes.vocabulary_words()) <= set(words)
  tok = tokenizer.WordTokenizer(words, 32)
  wrapped = captions.CaptionedSource(source, "test", {"source": "caption"}, tokenizer=tok)
  for i in range(len(source)):
    ids = tok.text_ids(source.captions[i])
    assert tok.unk_token not in ids and len(ids) + 2 <= 32, source.captions[i]
  ex = wrapped[4]
  assert ex["tokens"].shape == (32,) and int(ex["text_label"]) == -1


def test_held_out_pairs_and_classes_leave_train_stay_in_test():
  pairs, held = (("circle", "red"), ("star", "blue")), ("ring", "heart")
  kw = dict(num=300, seed=0, image_size=32, held_out_pairs=pairs, held_out_classes=held)
  tr, te = scenes.generate(split="train", **kw), scenes.generate(split="test", **kw)
  ids = {(0, 0), (3, 4)}
  held_ids = {5, 6}

  def seen(d):
    got = {(int(c), int(k)) for c, k in zip(d["classes"].ravel(), d["colors"].ravel()) if c >= 0}
    return got, {c for c, _ in got}, set((np.unique(d["mask"]) - 1).tolist()) - {-1}

  pairs_tr, classes_tr, mask_tr = seen(tr)
  pairs_te, classes_te, mask_te = seen(te)
  assert not pairs_tr & ids and not classes_tr & held_ids and not mask_tr & held_ids
  assert not tr["nouns"][:, sorted(held_ids)].any()
  assert ids <= pairs_te and held_ids <= classes_te and held_ids <= mask_te
  assert len(classes_tr) == 8  # every other class still occurs
  src = scenes.ScenesSource("train", num_examples=5, image_size=32, held_out_classes=(5, "heart"),
                            held_out_pairs=pairs)
  assert src.held_out_classes == (5, 6) and src.held_out_pairs == ((0, 0), (3, 4))
  assert "held_out_classes=('ring', 'heart')" in repr(src)


@pytest.mark.parametrize("kwargs, fix", [
    (dict(image_size=8), "image_size=64"),
    (dict(image_size=300), "image_size=64"),
    (dict(image_size=True), "image_size=64"),
    (dict(held_out_classes=("hexagon",)), "held_out_classes=("),
    (dict(held_out_classes=tuple(range(10))), "keep at least one"),
    (dict(held_out_pairs=(("circle", "pink"),)), "use one of"),
    (dict(split="val"), "split='train'"),
    (dict(num_examples=0), "num_examples=1000"),
])
def test_bad_arguments(kwargs, fix):
  with pytest.raises(ValueError, match=fix.replace("(", r"\(")) as err:
    scenes.ScenesSource(**{"num_examples": 2, **kwargs})
  assert "\n" not in str(err.value)


def test_png_command_writes_grid(tmp_path):
  from PIL import Image
  out = tmp_path / "scenes.png"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  res = subprocess.run([sys.executable, "-m", "cl_jax.data.scenes", "--out", str(out), "--num", "3",
                        "--image_size", "32"], capture_output=True, text=True, timeout=120, env=env,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert res.returncode == 0, res.stderr
  im = np.asarray(Image.open(out).convert("RGB"))
  tile = 32 * 4
  assert im.shape[0] > 2 * tile and im.shape[1] >= 3 * tile
  data = scenes.generate(3, image_size=32)
  top, bottom = im[:tile, :tile], im[tile + 2:2 * tile + 2, :tile]
  np.testing.assert_array_equal(top[::4, ::4], data["image"][0])  # row 1: the images
  changed = (bottom[::4, ::4] != top[::4, ::4]).any(axis=-1)
  np.testing.assert_array_equal(changed, data["mask"][0] > 0)  # row 2: overlay exactly on the mask


def test_edges_antialiased_interior_flat(train):
  lone = np.flatnonzero(train["num_objects"] == 1)[:20]
  assert len(lone) >= 10
  for i in lone:
    inst = train["instance"][i] == 1
    px = train["image"][i][inst]
    interior = inst.copy()
    for dy in (-1, 0, 1):
      for dx in (-1, 0, 1):
        interior &= np.roll(np.roll(inst, dy, 0), dx, 1)
    assert len(np.unique(train["image"][i][interior], axis=0)) == 1, i  # full coverage: its colour
    assert len(np.unique(px, axis=0)) > 1, i  # edge pixels blend with the background


def test_a_config_selects_the_scenes_by_name():
  """dataset="shapes_scenes" through the source layer; held_out_classes is a scenes field, not a shapes one."""
  import ml_collections
  from cl_jax.data import sources
  data = ml_collections.ConfigDict(dict(image_size=64, num_train=40, num_test=20, held_out_classes=("star",)))
  train = sources.get_source(sources.data_section(data, "shapes_scenes"), "train")
  assert train.name == "shapes_scenes" and train[0]["mask"].shape == (64, 64)
  star = list(train.class_names).index("star")
  assert all(star not in train[i]["classes"] for i in range(len(train)))
  with pytest.raises(ValueError, match="held_out_classes"):
    sources.data_section(data, "shapes")
