"""Caption-folder source (cl_jax/data/caption_folder.py): a.jpg + a.txt pairs, made in the tests."""
import os

import ml_collections
import numpy as np
from PIL import Image

from cl_jax.data import caption_folder, pipeline, sources
from tests.harness import one_line_error

S = 8


def cfg(path, **kw):
  base = dict(dataset=f"captions:{path}", image_size=S, seed=0, num_train=None, num_test=None,
              on_bad_image="skip", holdout_frac=0.25)
  base.update(kw)
  return ml_collections.ConfigDict(base)


def write_pair(directory, stem, value, caption, ext="png"):
  os.makedirs(directory, exist_ok=True)
  Image.fromarray(np.full((10, 14, 3), value, np.uint8)).save(os.path.join(directory, f"{stem}.{ext}"))
  if caption is not None:
    with open(os.path.join(directory, f"{stem}.txt"), "w") as f:
      f.write(caption)


def check_pairs(src):
  """Each example's image value matches the number in its caption ("picture 40" <-> value 40)."""
  for i in range(len(src)):
    ex, caps = src.get_with_captions(i)
    assert ex["image"].shape == (S, S, 3) and ex["image"].dtype == np.uint8 and ex["index"] == i
    assert set(ex) == {"image", "index"}
    value = int(caps[0].split()[1])
    np.testing.assert_array_equal(ex["image"], value)
    assert src.captions_of(i) == caps
  return sorted(int(src.captions_of(i)[0].split()[1]) for i in range(len(src)))


def test_split_folders(tmp_path):
  for k in range(5):
    write_pair(str(tmp_path / "train" / "sub"), f"a{k}", 10 * k, f"picture {10 * k}\nsecond line")
  for k in range(2):
    write_pair(str(tmp_path / "test"), f"b{k}", 200 + k, f"picture {200 + k}", ext="jpg")
  train = sources.get_source(cfg(tmp_path), "train")
  assert isinstance(train, caption_folder.CaptionFolderSource)
  assert not train.has_labels and train.num_classes is None and train.class_names is None
  assert check_pairs(train) == [0, 10, 20, 30, 40]
  assert train.captions_of(0) == ["picture 0", "second line"]  # one caption per non-empty line
  test = sources.get_source(cfg(tmp_path), "test")
  assert len(test) == 2
  for i in range(2):  # JPEG: a constant image stays (nearly) constant
    value = int(test.captions_of(i)[0].split()[1])
    np.testing.assert_allclose(test[i]["image"], value, atol=2)


def test_holdout_split_is_disjoint_covering_and_deterministic(tmp_path):
  for k in range(12):
    write_pair(str(tmp_path / ("x" if k % 2 else "y")), f"{k:02d}", k, f"picture {k}")
  train = sources.get_source(cfg(tmp_path), "train")
  test = sources.get_source(cfg(tmp_path), "test")
  assert (len(train), len(test)) == (9, 3)  # round(0.25 * 12) held out
  assert set(train.files).isdisjoint(test.files)
  assert sorted(check_pairs(train) + check_pairs(test)) == list(range(12))
  assert sources.get_source(cfg(tmp_path), "test").files == test.files
  capped = sources.get_source(cfg(tmp_path, num_train=4), "train")
  assert len(capped) == 4 and set(capped.files) <= set(train.files)


def test_missing_captions_skip_or_fail(tmp_path):
  for k in range(4):
    write_pair(str(tmp_path), f"{k}", k, f"picture {k}")
  write_pair(str(tmp_path), "nocap", 99, None)
  src = caption_folder.CaptionFolderSource(str(tmp_path), "train", image_size=S, holdout_frac=0.2)
  assert src.num_skipped == 1 and all("nocap" not in f for f in src.files)
  one_line_error(lambda: caption_folder.CaptionFolderSource(str(tmp_path), "train", image_size=S,
                                                            on_bad_image="fail"),
                 "1 of 5 images", "nocap.png", "nocap.txt", "on_bad_image")


def test_bad_image_and_empty_caption_are_skipped_and_counted(tmp_path):
  for k in range(4):
    write_pair(str(tmp_path / "train"), f"{k}", 10 * k, f"picture {10 * k}")
  write_pair(str(tmp_path / "test"), "t", 5, "picture 5")
  (tmp_path / "train" / "1.png").write_bytes(b"not a png")
  (tmp_path / "train" / "2.txt").write_text("  \n\n")
  src = caption_folder.CaptionFolderSource(str(tmp_path), "train", image_size=S)
  names = [os.path.basename(f) for f in src.files]
  ex, caps = src.get_with_captions(names.index("1.png"))
  assert caps == ["picture 30"] and src.num_skipped == 2  # 1.png (bad), 2.txt (empty) -> 3
  np.testing.assert_array_equal(ex["image"], 30)
  assert ex["index"] == names.index("1.png")
  strict = caption_folder.CaptionFolderSource(str(tmp_path), "train", image_size=S,
                                              on_bad_image="fail")
  one_line_error(lambda: strict[names.index("2.png")], "2.txt", "empty caption", "on_bad_image")
  one_line_error(lambda: strict[names.index("1.png")], "1.png", "on_bad_image")


def test_errors(tmp_path):
  missing = str(tmp_path / "nope")
  one_line_error(lambda: sources.get_source(cfg(missing), "train"), missing, "a.txt")
  (tmp_path / "empty").mkdir()
  one_line_error(lambda: sources.get_source(cfg(tmp_path / "empty"), "train"), "no image files")
  one_line_error(lambda: sources.get_source(cfg(""), "train"), "dataset='captions:' has no path")


def test_text_and_loader(tmp_path):
  words = ("red circle", "blue square", "green star", "large ring", "small heart", "white cross")
  for k, w in enumerate(words):
    write_pair(str(tmp_path / "train"), f"{k}", 40 * k, f"a {w}")
  write_pair(str(tmp_path / "test"), "t", 0, "a red circle")
  c = cfg(tmp_path, text=dict(tokenizer="shapes", context_length=16, source="caption"))
  src = sources.get_source(c, "train")
  batch = next(iter(pipeline.make_loader(src, global_batch=4, seed=0, shuffle=True,
                                         num_epochs=None, process_index=0, process_count=1)))
  assert batch["tokens"].shape == (4, 16) and batch["tokens"].dtype == np.int32
  for image, tokens, label in zip(batch["image"], batch["tokens"], batch["text_label"]):
    k = int(image[0, 0, 0]) // 40
    assert src.tokenizer.decode(tokens) == f"a {words[k]}" and label == -1
  one_line_error(lambda: sources.get_source(
      cfg(tmp_path, text=dict(tokenizer="shapes", source="label_prompt")), "train"),
      "needs class labels")


def test_class_folders_give_labels_for_mixed_text(tmp_path):
  names = ("circle", "star")  # words the "shapes" tokenizer knows
  for c, name in enumerate(names):
    for k in range(5):
      write_pair(str(tmp_path / name / "deeper"), f"{k}", 100 * c + k, f"picture {100 * c + k}")
  c = cfg(tmp_path, class_folders=True, holdout_frac=0.2)
  train, test = sources.get_source(c, "train"), sources.get_source(c, "test")
  assert train.has_labels and train.class_names == names and train.num_classes == 2
  assert (len(train), len(test)) == (8, 2) and sorted(test.labels.tolist()) == [0, 1]
  for src in (train, test):
    for i in range(len(src)):
      ex, caps = src.get_with_captions(i)
      assert int(ex["label"]) == int(caps[0].split()[1]) // 100  # the label of its class folder
  plain = sources.get_source(cfg(tmp_path), "train")
  assert not plain.has_labels and "label" not in plain[0]
  text = dict(tokenizer="shapes", context_length=8, source="mixed", templates=("a {}.",))
  mixed = sources.get_source(cfg(tmp_path, class_folders=True, holdout_frac=0.2, text=text), "train")
  labels = [int(mixed[i]["text_label"]) for i in range(len(mixed))]
  assert -1 in labels and max(labels) >= 0  # both captions and class prompts
  for i, tl in enumerate(labels):
    assert tl in (-1, int(mixed[i]["label"]))
    if tl >= 0:
      assert mixed.tokenizer.decode(mixed[i]["tokens"]) == f"a {names[tl]}."
  write_pair(str(tmp_path), "loose", 7, "picture 7")
  one_line_error(lambda: sources.get_source(c, "train"), "class_folders", "loose images")
