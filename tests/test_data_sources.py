"""Data sources (folder, tfds, shapes dispatch) and the grain pipeline, on tiny data made here."""
import io
import json
import os
import shutil
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
from PIL import Image

from cl_jax.data import folder, pipeline, sources
from tests.harness import one_line_error

S = 8  # image_size used throughout
CLASSES = ("cat", "dog", "fox")


def cfg(**kw):
  base = dict(dataset="shapes", image_size=S, data_dir=None, seed=0, num_train=None, num_test=None,
              on_bad_image="skip", holdout_frac=0.1)
  base.update(kw)
  return ml_collections.ConfigDict(base)


def colour(label, k, split_id=0):
  """The constant colour of image k of a class: R encodes the class, G the file, B the split."""
  return (20 + 60 * label, 5 + 9 * k, 50 + 100 * split_id)


def write_png(path, rgb, size=(14, 10)):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.full((size[1], size[0], 3), rgb, np.uint8)).save(path)


# ------------------------------------------------------------------------------------- folder

@pytest.fixture(scope="module")
def split_tree(tmp_path_factory):
  """root/train/<3 classes>/4 files, root/val/ with only dog and fox (labels must stay 1 and 2)."""
  root = tmp_path_factory.mktemp("split_tree")
  for c, name in enumerate(CLASSES):
    for k in range(4):
      write_png(str(root / "train" / name / f"{k}.png"), colour(c, k))
    if name != "cat":
      for k in range(2):
        write_png(str(root / "val" / name / f"v{k}.jpg"), colour(c, k, 1))
  return str(root)


def test_resize_center_crop_against_reference():
  # 20 x 40 image, green in columns 8..32, red outside: resize to 8 x 16, centre crop keeps
  # columns 4..12 of 16, i.e. source columns 10..30 (antialias support 2.5 px stays in green).
  img = np.zeros((20, 40, 3), np.uint8)
  img[...] = (255, 0, 0)
  img[:, 8:32] = (0, 255, 0)
  out = folder.resize_center_crop(img, S)
  assert out.shape == (S, S, 3) and out.dtype == np.uint8
  np.testing.assert_array_equal(out, np.broadcast_to(np.array([0, 255, 0], np.uint8), out.shape))
  tall = folder.resize_center_crop(np.arange(30 * 12, dtype=np.uint8).reshape(30, 12), S)
  assert tall.shape == (S, S, 3)
  np.testing.assert_array_equal(tall[..., 0], tall[..., 2])  # grey -> equal channels


def test_folder_split_layout_labels_and_images(split_tree):
  train = sources.get_source(cfg(dataset=f"folder:{split_tree}"), "train")
  test = sources.get_source(cfg(dataset=f"folder:{split_tree}"), "test")
  assert train.has_labels and train.num_classes == 3 and train.class_names == CLASSES
  assert test.class_names == CLASSES and len(train) == 12 and len(test) == 4
  for src, split_id in ((train, 0), (test, 1)):
    for i in range(len(src)):
      ex = src[i]
      assert ex["image"].shape == (S, S, 3) and ex["image"].dtype == np.uint8
      assert ex["label"].dtype == np.int32 and ex["index"] == i
      path = src.files[i]
      c = CLASSES.index(os.path.basename(os.path.dirname(path)))
      k = int(os.path.basename(path).lstrip("v").split(".")[0])
      assert ex["label"] == c
      # PNG is lossless; the val files are JPEG (allow a little error).
      np.testing.assert_allclose(ex["image"][S // 2, S // 2], colour(c, k, split_id), atol=3)
  assert sorted(int(test[i]["label"]) for i in range(4)) == [1, 1, 2, 2]


def test_folder_holdout_split_is_disjoint_covering_and_deterministic(tmp_path):
  for c, name in enumerate(CLASSES):
    for k in range(10 + c):
      write_png(str(tmp_path / name / f"{k:02d}.png"), colour(c, k))
  c = cfg(dataset=f"folder:{tmp_path}", holdout_frac=0.2)
  train, test = sources.get_source(c, "train"), sources.get_source(c, "test")
  assert set(train.files).isdisjoint(test.files)
  assert sorted(train.files + test.files) == sorted(
      str(p) for p in tmp_path.rglob("*.png"))
  # round(0.2 * n) of each class held out.
  assert sorted(np.bincount(test.labels).tolist()) == [2, 2, 2]
  assert sources.get_source(c, "test").files == test.files  # same layout -> same split
  for src in (train, test):
    for i in range(len(src)):
      assert CLASSES[src[i]["label"]] == os.path.basename(os.path.dirname(src.files[i]))


def test_folder_flat_is_unlabelled_and_has_no_test(tmp_path):
  for k in range(3):
    write_png(str(tmp_path / f"img{k}.png"), colour(0, k))
  c = cfg(dataset=f"folder:{tmp_path}")
  src = sources.get_source(c, "train")
  assert not src.has_labels and src.num_classes is None and src.class_names is None
  ex = src[1]
  assert set(ex) == {"image", "index"} and ex["image"].shape == (S, S, 3)
  one_line_error(lambda: sources.get_source(c, "test"), "needs labels", str(tmp_path))


def test_folder_missing_and_empty(tmp_path):
  missing = str(tmp_path / "nope")
  one_line_error(lambda: sources.get_source(cfg(dataset=f"folder:{missing}"), "train"),
                 missing, "root/<class>")
  (tmp_path / "empty" / "cls").mkdir(parents=True)
  (tmp_path / "empty" / "notes.txt").write_text("no images here")
  empty = str(tmp_path / "empty")
  one_line_error(lambda: sources.get_source(cfg(dataset=f"folder:{empty}"), "train"),
                 empty, "no image files")


def test_folder_corrupt_file_skip_counts_and_fail_names_file(tmp_path):
  for k in range(3):
    write_png(str(tmp_path / "train" / "a" / f"{k}.png"), colour(0, k))
    write_png(str(tmp_path / "train" / "b" / f"{k}.png"), colour(1, k))
  write_png(str(tmp_path / "test" / "a" / "0.png"), colour(0, 0))
  bad = tmp_path / "train" / "a" / "1.png"
  bad.write_bytes(b"this is not a png")
  src = folder.FolderSource(str(tmp_path), "train", image_size=S)
  i = src.files.index(str(bad))
  ex = src[i]
  assert src.num_skipped == 1 and ex["index"] == i and ex["label"] == 0
  np.testing.assert_array_equal(ex["image"][0, 0], colour(0, 2))  # the next readable file
  src[i]
  assert src.num_skipped == 2  # counted each time it is met
  strict = folder.FolderSource(str(tmp_path), "train", image_size=S, on_bad_image="fail")
  one_line_error(lambda: strict[i], str(bad), "on_bad_image")
  assert strict[i - 1]["image"].shape == (S, S, 3)


def test_folder_cap_is_a_seeded_subset(split_tree):
  a = sources.get_source(cfg(dataset=f"folder:{split_tree}", num_train=5, seed=1), "train")
  b = sources.get_source(cfg(dataset=f"folder:{split_tree}", num_train=5, seed=1), "train")
  full = sources.get_source(cfg(dataset=f"folder:{split_tree}"), "train")
  assert len(a) == 5 and a.files == b.files and set(a.files) <= set(full.files)
  assert a.files == sorted(a.files)


# --------------------------------------------------------------------------------------- tfds

@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  """A tiny tfds dataset (12x10 PNG images, 3 classes) prepared as ArrayRecord; no TensorFlow."""
  import tensorflow_datasets as tfds

  def png(value):
    f = io.BytesIO()
    Image.fromarray(np.full((12, 10, 3), value, np.uint8)).save(f, format="PNG")
    f.seek(0)
    return f

  class ClJaxTinyImages(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=(12, 10, 3)),
          "label": tfds.features.ClassLabel(names=list(CLASSES))}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(7, 0), "test": self._generate_examples(3, 100)}

    def _generate_examples(self, n, offset):
      for i in range(n):
        yield i, {"image": png(offset + 10 * i), "label": i % 3}

  data_dir = str(tmp_path_factory.mktemp("tfds"))
  ClJaxTinyImages(data_dir=data_dir, file_format="array_record").download_and_prepare()
  return data_dir


def test_tfds_source_reads_images_and_labels(tfds_dir):
  c = cfg(dataset="cl_jax_tiny_images", data_dir=tfds_dir)
  train, test = sources.get_source(c, "train"), sources.get_source(c, "test")
  assert (len(train), len(test)) == (7, 3)
  assert train.num_classes == 3 and train.class_names == CLASSES and train.has_labels
  seen = []
  for i in range(len(train)):
    ex = train[i]
    assert ex["image"].shape == (S, S, 3) and ex["image"].dtype == np.uint8 and ex["index"] == i
    value = int(ex["image"][0, 0, 0])
    np.testing.assert_array_equal(ex["image"], value)  # constant image stays constant
    assert ex["label"].dtype == np.int32 and ex["label"] == (value // 10) % 3
    seen.append(value)
  assert sorted(seen) == [10 * i for i in range(7)]
  assert sorted(int(test[i]["image"][0, 0, 0]) for i in range(3)) == [100, 110, 120]
  capped = sources.get_source(cfg(dataset="cl_jax_tiny_images", data_dir=tfds_dir, num_train=4),
                              "train")
  assert len(capped) == 4


def test_tfds_split_defaults_and_override():
  assert sources.tfds_split("imagenet2012", "test") == "validation"
  assert sources.tfds_split("imagenet2012/subset:5.1.0", "train") == "train"
  assert sources.tfds_split("cifar10", "test") == "test"
  assert sources.tfds_split("imagenet2012", "test", cfg(test_split="validation[:10%]")) == \
      "validation[:10%]"


def test_tfds_errors(tfds_dir, tmp_path):
  empty = str(tmp_path / "empty")
  one_line_error(lambda: sources.get_source(cfg(dataset="cifar10", data_dir=empty), "train"),
                 f"tfds dataset 'cifar10' is not prepared in {empty}; prepare it with: tfds build "
                 f"cifar10 --file_format=array_record --data_dir={empty}")
  one_line_error(lambda: sources.get_source(cfg(dataset="no_such_dataset_xyz"), "train"),
                 "no_such_dataset_xyz", "cifar10", "folder:")
  # The same dataset recorded as TFRecord only (building real TFRecords would import TensorFlow).
  tfrecord_dir = str(tmp_path / "tfrecord")
  shutil.copytree(tfds_dir, tfrecord_dir)
  info_path = os.path.join(tfrecord_dir, "cl_jax_tiny_images", "1.0.0", "dataset_info.json")
  info = json.load(open(info_path))
  info["fileFormat"] = "tfrecord"
  json.dump(info, open(info_path, "w"))
  one_line_error(
      lambda: sources.get_source(cfg(dataset="cl_jax_tiny_images", data_dir=tfrecord_dir), "train"),
      "tfds convert_format --dataset_version_dir="
      f"{os.path.dirname(info_path)} --out_file_format=array_record")
  one_line_error(lambda: sources.get_source(
      cfg(dataset="cl_jax_tiny_images", data_dir=tfds_dir, train_split="training"), "train"),
      "no split 'training'", "train_split")


def test_importing_sources_does_not_import_tfds():
  code = ("import sys, cl_jax.data.sources, cl_jax.data.pipeline; "
          "print('tensorflow_datasets' in sys.modules, 'tensorflow' in sys.modules)")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                       check=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert out.stdout.split() == ["False", "False"]


def test_shapes_dispatch():
  pytest.importorskip("cl_jax.data.shapes")
  src = sources.get_source(cfg(dataset="shapes", image_size=16, num_test=6), "test")
  assert len(src) == 6 and src.has_labels
  ex = src[5]
  assert ex["image"].shape == (16, 16, 3) and ex["image"].dtype == np.uint8 and ex["index"] == 5


# ----------------------------------------------------------------------------------- pipeline

def test_loader_over_folder_source_batches(split_tree):
  src = sources.get_source(cfg(dataset=f"folder:{split_tree}"), "train")
  batch = next(iter(pipeline.make_loader(src, global_batch=4, seed=0, shuffle=True,
                                         num_epochs=None, process_index=0, process_count=1)))
  assert batch["image"].shape == (4, S, S, 3) and batch["image"].dtype == np.uint8
  assert batch["label"].dtype == np.int32 and batch["index"].dtype == np.int32
  for image, label, index in zip(batch["image"], batch["label"], batch["index"]):
    assert src[int(index)]["label"] == label
    np.testing.assert_array_equal(src[int(index)]["image"], image)


# ------------------------------------------------------------------------- tfds image-text

def tiny_captions(v):
  """1-3 captions of the image of value v, in words the "shapes" tokenizer knows."""
  from cl_jax.data.shapes import CLASS_NAMES, COLOR_NAMES
  return [f"a {COLOR_NAMES[k]} {CLASS_NAMES[(v // 10) % 10]}" for k in range(1 + (v // 10) % 3)]


@pytest.fixture(scope="module")
def tfds_caption_dir(tmp_path_factory):
  """A tiny coco_captions-like tfds dataset: image, label, captions: Sequence({id, text})."""
  import tensorflow_datasets as tfds

  def png(value):
    f = io.BytesIO()
    Image.fromarray(np.full((12, 10, 3), value, np.uint8)).save(f, format="PNG")
    f.seek(0)
    return f

  class ClJaxTinyCaptions(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=(12, 10, 3)),
          "label": tfds.features.ClassLabel(names=list(CLASSES)),
          "captions": tfds.features.Sequence({"id": np.int64, "text": tfds.features.Text()})}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(6, 0), "test": self._generate_examples(3, 100)}

    def _generate_examples(self, n, offset):
      for i in range(n):
        v = offset + 10 * i
        caps = tiny_captions(v)
        yield i, {"image": png(v), "label": i % 3,
                  "captions": {"id": list(range(len(caps))), "text": caps}}

  data_dir = str(tmp_path_factory.mktemp("tfds_captions"))
  ClJaxTinyCaptions(data_dir=data_dir, file_format="array_record").download_and_prepare()
  return data_dir


def test_tfds_caption_source(tfds_caption_dir):
  from cl_jax.data import tfds_source
  c = cfg(dataset="cl_jax_tiny_captions", data_dir=tfds_caption_dir, caption_key="captions/text")
  train = sources.get_source(c, "train")
  assert isinstance(train, tfds_source.TfdsCaptionSource) and train.has_labels
  for i in range(len(train)):
    ex, caps = train.get_with_captions(i)
    v = int(ex["image"][0, 0, 0])
    assert caps == tiny_captions(v)
    assert train.captions_of(i) == caps and int(ex["label"]) == (v // 10) % 3
  plain = sources.get_source(cfg(dataset="cl_jax_tiny_captions", data_dir=tfds_caption_dir), "train")
  assert not hasattr(plain, "captions_of")  # no caption_key: an image(-label) source
  for key, needle in (("nope", "no caption feature 'nope'"),
                      ("captions/nope", "'nope' is not in captions"),
                      ("label", "ClassLabel, not text")):
    one_line_error(lambda: sources.get_source(
        cfg(dataset="cl_jax_tiny_captions", data_dir=tfds_caption_dir, caption_key=key), "train"),
        needle, "caption_key")


def test_tfds_caption_text_one_caption_per_access(tfds_caption_dir):
  text = dict(tokenizer="shapes", context_length=12, source="caption")
  c = cfg(dataset="cl_jax_tiny_captions", data_dir=tfds_caption_dir, caption_key="captions/text",
          text=text)
  train, test = sources.get_source(c, "train"), sources.get_source(c, "test")
  tok = train.tokenizer
  picked = set()
  for i in range(len(train)):
    caps = train.captions_of(i)
    for epoch in range(4):
      row = train.get(i, epoch)["tokens"]
      k = [np.array_equal(row, tok.encode([t])[0]) for t in caps].index(True)
      picked.add((len(caps), k))
  assert {(3, 0), (3, 1), (3, 2)} & picked == {(3, 0), (3, 1), (3, 2)}  # all of a 3-caption image
  for i in range(len(test)):
    np.testing.assert_array_equal(test[i]["tokens"], tok.encode(test.captions_of(i)[:1])[0])
  c.text.source = "mixed"
  mixed = sources.get_source(c, "train")
  labels = {int(mixed[i]["text_label"]) for i in range(len(mixed))}
  assert -1 in labels and labels - {-1}


def test_caption_prefixes_route():
  from cl_jax.data import caption_folder, webdataset
  one_line_error(lambda: sources.get_source(cfg(dataset="captions:"), "train"), "captions:")
  one_line_error(lambda: sources.get_source(cfg(dataset="webdataset:"), "train"), "webdataset:")
  one_line_error(lambda: sources.get_source(cfg(dataset="captions:/no/such/dir"), "train"),
                 "caption folder /no/such/dir does not exist")
  one_line_error(lambda: sources.get_source(cfg(dataset="webdataset:/no/such/{0..1}.tar"),
                                            "train"), "webdataset shard /no/such/0.tar")
  assert caption_folder.CaptionFolderSource and webdataset.WebDatasetSource
