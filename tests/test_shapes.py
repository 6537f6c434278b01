"""Tests of the embedded procedural `shapes` dataset (cl_jax/data/shapes.py)."""
import numpy as np
import pytest

from cl_jax.data import shapes

NAMES = ("CLASS_NAMES", "COLOR_NAMES", "SIZE_NAMES", "POSITION_NAMES", "BACKGROUND_NAMES")


@pytest.fixture(scope="module")
def train():
  return shapes.generate(2000, split="train", seed=0)


@pytest.fixture(scope="module")
def test_split():
  return shapes.generate(500, split="test", seed=0)


def test_name_tuples():
  assert len(shapes.CLASS_NAMES) >= 10
  assert len(shapes.COLOR_NAMES) == 8 and len(shapes.POSITION_NAMES) == 9
  for name in NAMES:
    t = getattr(shapes, name)
    assert isinstance(t, tuple) and all(isinstance(s, str) for s in t) and len(set(t)) == len(t)


def test_shapes_and_dtypes(train):
  n, s = 2000, 32
  expected = {"image": ((n, s, s, 3), np.uint8), "label": ((n,), np.int32),
              "mask": ((n, s, s), np.uint8), "box": ((n, 4), np.float32),
              "color": ((n,), np.int32), "size": ((n,), np.int32), "position": ((n,), np.int32),
              "background": ((n,), np.int32), "index": ((n,), np.int32),
              "caption": ((n,), object)}
  for key, (shape, dtype) in expected.items():
    assert train[key].shape == shape and train[key].dtype == dtype, key
  np.testing.assert_array_equal(train["index"], np.arange(n))
  for key, names in (("label", "CLASS_NAMES"), ("color", "COLOR_NAMES"), ("size", "SIZE_NAMES"),
                     ("position", "POSITION_NAMES"), ("background", "BACKGROUND_NAMES")):
    assert train[key].min() >= 0 and train[key].max() < len(getattr(shapes, names))
    assert len(np.unique(train[key])) == len(getattr(shapes, names)), key  # all values occur


def test_determinism(train):
  again = shapes.generate(50, split="train", seed=0)
  other = shapes.generate(50, split="train", seed=1)
  for key in ("image", "label", "mask", "box", "color"):
    np.testing.assert_array_equal(again[key], train[key][:50])
  assert list(again["caption"]) == list(train["caption"][:50])
  assert not np.array_equal(other["image"], again["image"])
  assert (other["label"] != again["label"]).mean() > 0.5


@pytest.mark.parametrize("i", [0, 17, 1234, 1999])
def test_example_alone_equals_example_in_batch(train, i):
  alone = shapes.generate(1, split="train", seed=0, start=i)
  for key in train:
    np.testing.assert_array_equal(alone[key][0], train[key][i], err_msg=key)
  first = min(max(i - 1, 0), 1997)
  window = shapes.generate(3, split="train", seed=0, start=first)
  np.testing.assert_array_equal(window["image"], train["image"][first:first + 3])


def test_train_and_test_differ(train, test_split):
  assert not np.array_equal(train["image"][:500], test_split["image"])
  assert (train["label"][:500] != test_split["label"]).mean() > 0.5


def test_label_balance(train):
  counts = np.bincount(train["label"], minlength=len(shapes.CLASS_NAMES))
  assert counts.min() >= 140 and counts.max() <= 260, counts  # 200 +- ~4.5 sigma


def test_mask_agrees_with_label_and_box_is_tight(train):
  for i in range(300):
    m = train["mask"][i]
    values = set(np.unique(m).tolist())
    assert values == {0, int(train["label"][i]) + 1}, (i, values)
    ys, xs = np.nonzero(m)
    tight = np.array([ys.min(), xs.min(), ys.max() + 1, xs.max() + 1], np.float32) / 32
    np.testing.assert_allclose(train["box"][i], tight, atol=1e-6)


def _grow(m):
  """4-neighbour binary dilation."""
  out = m.copy()
  out[1:] |= m[:-1]
  out[:-1] |= m[1:]
  out[:, 1:] |= m[:, :-1]
  out[:, :-1] |= m[:, 1:]
  return out


def test_shape_pixels_carry_the_colour_and_stand_out(train):
  """Inner shape pixels are near the named palette colour and far from all background pixels."""
  palette = np.array(shapes._PALETTE, np.float32)
  for i in range(200):
    m = train["mask"][i] > 0
    inner = ~_grow(~m)
    near = _grow(_grow(m))  # thin tips (crescent horns) leave faint antialiased pixels nearby
    img = train["image"][i].astype(np.float32)
    if inner.any():
      shape_rgb = img[inner].mean(axis=0)
      assert np.abs(shape_rgb - palette[train["color"][i]]).max() <= 21, i
      dist = np.linalg.norm(img[~near] - shape_rgb, axis=-1)
      assert dist.min() >= 100, (i, dist.min())


def test_captions_mention_class_colour_size(train):
  for i in range(200):
    cap = train["caption"][i]
    for key, names in (("label", shapes.CLASS_NAMES), ("color", shapes.COLOR_NAMES),
                       ("size", shapes.SIZE_NAMES), ("position", shapes.POSITION_NAMES)):
      assert names[train[key][i]] in cap, (cap, key)
  assert len(set(train["template"].tolist())) == len(shapes.CAPTION_TEMPLATES) >= 4


def test_caption_function():
  attrs = {"label": 1, "color": 0, "size": 0, "position": 0, "background": 0}
  assert shapes.caption(attrs, 0) == "a small red triangle in the top left on a striped background"
  texts = {shapes.caption(attrs, k) for k in range(len(shapes.CAPTION_TEMPLATES))}
  assert len(texts) == len(shapes.CAPTION_TEMPLATES)
  with pytest.raises(ValueError, match="template_index"):
    shapes.caption(attrs, 99)


def test_every_shape_fits_its_unit_disc():
  g = np.linspace(-1.3, 1.3, 521, dtype=np.float32)
  u, v = np.meshgrid(g, g)
  for name, fn in zip(shapes.CLASS_NAMES, shapes._SHAPE_FNS):
    inside = fn(u, v)
    assert inside.mean() > 0.08, name  # not degenerate
    assert np.sqrt(u[inside] ** 2 + v[inside] ** 2).max() <= 1.0 + 1e-6, name


@pytest.mark.parametrize("size", [64, 96, 224])
def test_larger_sizes_scale_the_same_scene(train, size):
  big = shapes.generate(3, split="train", seed=0, image_size=size, start=5)
  assert big["image"].shape == (3, size, size, 3) and big["mask"].shape == (3, size, size)
  for key in ("label", "color", "size", "position", "background"):
    np.testing.assert_array_equal(big[key], train[key][5:8])
  np.testing.assert_allclose(big["box"], train["box"][5:8], atol=1.5 / 32)


def test_source(train):
  src = shapes.ShapesSource("train", num_examples=40)
  assert len(src) == 40 and src.num_classes == 10 and src.has_labels and src.image_size == 32
  assert src.name == "shapes" and src.split == "train"
  assert src.class_names == shapes.CLASS_NAMES and src.captions == list(train["caption"][:40])
  ex = src[7]
  assert set(ex) == {"image", "label", "index", "mask", "box", "color", "size", "position",
                     "background"}
  np.testing.assert_array_equal(ex["image"], train["image"][7])
  assert int(ex["label"]) == train["label"][7] and int(ex["index"]) == 7
  with pytest.raises(IndexError):
    src[40]
  import grain  # pylint: disable=g-import-not-at-top
  batch = grain.MapDataset.source(src).batch(8)[1]
  np.testing.assert_array_equal(batch["label"], train["label"][8:16])
  assert batch["image"].shape == (8, 32, 32, 3)


@pytest.mark.parametrize("kwargs, fix", [
    (dict(split="val"), "split='train'"),
    (dict(image_size=8), "image_size"),
    (dict(image_size=32.0), "image_size"),
    (dict(seed=-1), "seed="),
    (dict(start=-3), "start="),
])
def test_bad_arguments(kwargs, fix):
  with pytest.raises(ValueError, match=fix) as err:
    shapes.generate(2, **kwargs)
  assert "\n" not in str(err.value)


def test_bad_source_arguments():
  with pytest.raises(ValueError, match="num_examples="):
    shapes.ShapesSource("train", num_examples=0)
  with pytest.raises(ValueError, match="split='train'"):
    shapes.ShapesSource("validation")


def _one_nn_accuracy(train_x, train_y, test_x, test_y):
  a = train_x.reshape(len(train_x), -1).astype(np.float64)
  b = test_x.reshape(len(test_x), -1).astype(np.float64)
  d = (b ** 2).sum(1)[:, None] - 2 * b @ a.T + (a ** 2).sum(1)[None]
  return float((train_y[d.argmin(1)] == test_y).mean())


def test_learnable_but_not_trivial(train, test_split):
  """Raw pixels are dominated by nuisances; the silhouettes (masks) carry the class."""
  raw = _one_nn_accuracy(train["image"], train["label"], test_split["image"], test_split["label"])
  sil = _one_nn_accuracy(train["mask"] > 0, train["label"], test_split["mask"] > 0,
                         test_split["label"])
  # Measured at 2000 train / 500 test: raw 0.17, silhouettes 0.70 (chance 0.10).
  assert raw < 0.25, raw
  assert sil > 0.35 and sil > raw + 0.2, (sil, raw)


def test_captions_of_every_template_generated_first(train):
  src = shapes.ShapesSource("train", num_examples=30)
  assert len(shapes.CAPTION_TEMPLATES) >= 8
  for i in range(30):
    caps = src.captions_of(i)
    assert caps[0] == train["caption"][i] and len(set(caps)) == len(shapes.CAPTION_TEMPLATES)
    attrs = {k: train[k][i] for k in ("label", "color", "size", "position", "background")}
    assert sorted(caps) == sorted(shapes.caption(attrs, k)
                                  for k in range(len(shapes.CAPTION_TEMPLATES)))
    ex, caps2 = src.get_with_captions(i)
    assert caps2 == caps and int(ex["index"]) == i


def test_held_out_pairs_leave_train_and_stay_in_test(train, test_split):
  pairs = (("circle", "red"), ("star", 4), (9, "black"))
  ids = shapes.held_out_ids(pairs)
  assert ids == ((0, 0), (3, 4), (9, 7))
  held = shapes.generate(2000, split="train", seed=0, held_out_pairs=pairs)
  hit = np.zeros(2000, bool)
  for c, k in ids:
    assert not np.any((held["label"] == c) & (held["color"] == k))
    hit |= (train["label"] == c) & (train["color"] == k)
  assert 20 < hit.sum() < 150  # ~3/80 of the examples were redrawn
  for key in ("image", "label", "color", "caption"):  # the others are untouched
    np.testing.assert_array_equal(held[key][~hit], train[key][~hit])
  assert (held["label"][hit] != train["label"][hit]).mean() > 0.5
  j = int(np.flatnonzero(hit)[0])  # a redrawn example alone equals it in the batch
  alone = shapes.generate(1, split="train", seed=0, start=j, held_out_pairs=pairs)
  np.testing.assert_array_equal(alone["image"][0], held["image"][j])
  test_held = shapes.generate(500, split="test", seed=0, held_out_pairs=pairs)
  np.testing.assert_array_equal(test_held["image"], test_split["image"])  # test keeps them
  src = shapes.ShapesSource("test", num_examples=50, held_out_pairs=pairs)
  assert src.held_out_pairs == ids
  assert shapes.ShapesSource("test", num_examples=5).held_out_pairs == ()


@pytest.mark.parametrize("pairs, needle", [
    ((("circle", "pink"),), "unknown colour 'pink'"),
    ((("oval", "red"),), "unknown class 'oval'"),
    (((10, 0),), "unknown class 10"),
    (("circle",), "not a (class, colour) pair"),
    (tuple((c, k) for c in range(10) for k in range(8)), "every (class, colour) pair"),
])
def test_bad_held_out_pairs(pairs, needle):
  with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(")", r"\)")) as err:
    shapes.held_out_ids(pairs)
  assert "\n" not in str(err.value)


def test_mask_render_keeps_only_the_shape():
  """data.render="mask": the white shape on black (shape, size, position survive; colour, background do not)."""
  color = shapes.ShapesSource("train", num_examples=64, seed=3)
  mask = shapes.ShapesSource("train", num_examples=64, seed=3, render="mask")
  for i in (0, 17):
    a, b = color[i], mask[i]
    assert set(np.unique(b["image"])) <= {0, 255}
    np.testing.assert_array_equal(b["image"][..., 0] == 255, a["mask"] > 0)
    np.testing.assert_array_equal(b["label"], a["label"])
    assert not np.array_equal(a["image"], b["image"])
  with pytest.raises(ValueError, match="Unknown shapes render 'edges'; use one of: color, mask"):
    shapes.ShapesSource("train", num_examples=4, render="edges")
