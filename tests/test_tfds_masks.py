"""Segmentation masks from a tfds dataset (data.mask_key, data.mask_classes) on a tiny dataset made here: the mask
goes through the image's resize and centre crop (nearest-neighbour), the class names come from mask_classes, and
bad keys fail in one line."""
import io

import ml_collections
import numpy as np
import pytest
from PIL import Image

from cl_jax.data import sources
from cl_jax.data.folder import resize_center_crop_mask
from tests.harness import one_line_error

H, W, S = 12, 16, 8   # stored images are 12 x 16; read at 8 x 8 (shorter side to 8, centre crop)
NAMES = ("sky", "tree", "road")


def pattern(i):
  """Example i: a mask of vertical bands (value = column // 4 + i, mod 4), and an image whose red channel is 60 x
  the mask value, so after any geometry the image tells which mask value each pixel must have."""
  mask = ((np.arange(W)[None, :] // 4 + i) % 4 * np.ones((H, 1), int)).astype(np.uint8)
  image = np.stack([60 * mask, np.full_like(mask, 7), np.full_like(mask, 9)], axis=-1).astype(np.uint8)
  return image, mask


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  import tensorflow_datasets as tfds

  def png(array):
    f = io.BytesIO()
    Image.fromarray(array).save(f, format="PNG")
    f.seek(0)
    return f

  class ClJaxTinyScenes(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=(H, W, 3)),
          "annotation": tfds.features.Image(shape=(H, W, 1))}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(5), "test": self._generate_examples(3)}

    def _generate_examples(self, n):
      for i in range(n):
        image, mask = pattern(i)
        yield i, {"image": png(image), "annotation": png(mask)}

  data_dir = str(tmp_path_factory.mktemp("tfds_masks"))
  ClJaxTinyScenes(data_dir=data_dir, file_format="array_record").download_and_prepare()
  return data_dir


def cfg(data_dir, **kw):
  return ml_collections.ConfigDict({**dict(dataset="cl_jax_tiny_scenes", image_size=S, data_dir=data_dir, seed=0,
                                           num_train=None, num_test=None, mask_key="annotation",
                                           mask_classes=NAMES), **kw})


def test_masks_are_cropped_with_their_images(tfds_dir):
  train = sources.get_source(cfg(tfds_dir), "train")
  assert train.has_masks and train.class_names == NAMES and len(train) == 5
  for i in range(len(train)):
    ex = train[i]
    assert ex["mask"].shape == (S, S) and ex["mask"].dtype == np.int32
    # Nearest-neighbour labels: every value is one of the stored ones, and away from band edges (where the image
    # is bilinearly blended) the image's red channel names the same value.
    assert set(np.unique(ex["mask"])) <= {0, 1, 2, 3}
    red = ex["image"][..., 0].astype(int)
    clean = np.isin(red, (0, 60, 120, 180))
    assert clean.mean() > 0.3
    np.testing.assert_array_equal(ex["mask"][clean], red[clean] // 60)


def test_mask_resize_is_nearest_and_centred():
  mask = np.arange(4 * 6).reshape(4, 6) % 5
  out = resize_center_crop_mask(mask[..., None], 2)     # shorter side 4 -> 2 (x 0.5): 2 x 3, centre 2 x 2
  assert out.shape == (2, 2) and out.dtype == np.int32
  assert set(np.unique(out)) <= set(np.unique(mask))
  labels = np.random.default_rng(0).choice([0, 7], size=(6, 9))
  out = resize_center_crop_mask(labels, 4)               # x 2/3: a blending resize would make values in (0, 7)
  assert out.shape == (4, 4) and set(np.unique(out)) == {0, 7}
  np.testing.assert_array_equal(resize_center_crop_mask(mask[:, :4], 4), mask[:, :4])   # right size: unchanged


def test_unknown_mask_key_is_one_line(tfds_dir):
  one_line_error(lambda: sources.get_source(_with(cfg(tfds_dir), mask_key="segmentation"), "train"),
                 "no feature 'segmentation'", "data.mask_key", "annotation")


def test_masks_without_class_names_is_one_line(tfds_dir):
  one_line_error(lambda: sources.get_source(_with(cfg(tfds_dir), mask_classes=()), "train"),
                 "data.mask_classes", "0 is the background")


def test_class_names_from_a_file(tfds_dir, tmp_path):
  lines = tmp_path / "names.txt"
  lines.write_text("sky\ntree\n\nroad\n")
  assert sources.get_source(cfg(tfds_dir, mask_classes=str(lines)), "train").class_names == NAMES
  ade = tmp_path / "objectInfo150.csv"
  ade.write_text("Idx,Ratio,Train,Val,Name\n1,0.1,1,1,sky\n2,0.1,1,1,tree;trees\n3,0.1,1,1,road;route\n")
  assert sources.get_source(cfg(tfds_dir, mask_classes=str(ade)), "train").class_names == NAMES
  one_line_error(lambda: sources.get_source(cfg(tfds_dir, mask_classes=str(tmp_path / "nope.txt")), "train"),
                 "no such file", "data.mask_classes")


def test_a_bad_mask_shape_is_one_line():
  one_line_error(lambda: resize_center_crop_mask(np.zeros((4, 4, 3)), 2), "label mask", "data.mask_key")


def _with(c, **kw):
  c.update(kw)
  return c
