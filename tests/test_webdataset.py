"""Webdataset tar shards (cl_jax/data/webdataset.py), written in the tests in img2dataset's layout."""
import io
import json
import os
import pickle
import tarfile

import ml_collections
import numpy as np
import pytest
from PIL import Image

from cl_jax.data import pipeline, sources, webdataset
from tests.harness import one_line_error

S = 8
PER_SHARD = 6


def image_bytes(value, fmt):
  f = io.BytesIO()
  Image.fromarray(np.full((12, 9, 3), value, np.uint8)).save(f, format=fmt)
  return f.getvalue()


def add(tar, name, data):
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def write_shard(path, samples):
  """samples: [(key, {ext: bytes})] written in order, as img2dataset does (key.jpg, key.txt, key.json)."""
  with tarfile.open(path, "w") as tar:
    for key, parts in samples:
      for ext, data in parts.items():
        add(tar, f"{key}.{ext}", data)


def sample(n, fmt="PNG", ext="png"):
  """Sample n: a constant image of value 3n, caption "picture n", img2dataset-like metadata."""
  return (f"{n:09d}", {ext: image_bytes(3 * n, fmt), "txt": f"picture {n}".encode(),
                       "json": json.dumps({"key": f"{n:09d}", "url": f"http://x/{n}.jpg"}).encode()})


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
  """4 shards 00000..00003 of 6 samples (png, jpg and webp images); returns the directory."""
  root = tmp_path_factory.mktemp("wds")
  fmts = (("PNG", "png"), ("JPEG", "jpg"), ("WEBP", "webp"), ("PNG", "png"))
  for s in range(4):
    fmt, ext = fmts[s]
    write_shard(str(root / f"{s:05d}.tar"),
                [sample(s * PER_SHARD + k, fmt, ext) for k in range(PER_SHARD)])
  return str(root)


def cfg(pattern, **kw):
  base = dict(dataset=f"webdataset:{pattern}", image_size=S, seed=0, num_train=None,
              num_test=None, on_bad_image="skip", holdout_frac=0.25)
  base.update(kw)
  return ml_collections.ConfigDict(base)


def numbers(src):
  return [int(src.captions_of(i)[0].split()[1]) for i in range(len(src))]


def check(src, exact):
  for i in range(len(src)):
    ex, caps = src.get_with_captions(i)
    n = int(caps[0].split()[1])
    assert set(ex) == {"image", "index"} and ex["index"] == i
    assert ex["image"].shape == (S, S, 3) and ex["image"].dtype == np.uint8
    # PNG is lossless; JPEG/WEBP of a constant image stay close.
    np.testing.assert_allclose(ex["image"], 3 * n, atol=0 if exact(n) else 4)
    assert src.metadata_of(i)["key"] == src.keys[i] == f"{n:09d}"


def test_expand_braces_and_globs(shards):
  assert webdataset.expand_braces("a/{000..002}.tar") == ["a/000.tar", "a/001.tar", "a/002.tar"]
  assert webdataset.expand_braces("{a,b}-{1..2}") == ["a-1", "a-2", "b-1", "b-2"]
  assert webdataset.expand_braces("plain.tar") == ["plain.tar"]
  one_line_error(lambda: webdataset.expand_braces("{5..2}.tar"), "empty brace range")
  by_range = webdataset.shard_paths(os.path.join(shards, "{00001..00002}.tar"))
  assert [os.path.basename(p) for p in by_range] == ["00001.tar", "00002.tar"]
  by_glob = webdataset.shard_paths(os.path.join(shards, "*.tar"))
  assert [os.path.basename(p) for p in by_glob] == [f"{s:05d}.tar" for s in range(4)]


def test_random_access_matches_the_written_samples(shards):
  pattern = os.path.join(shards, "{00000..00003}.tar")
  train = sources.get_source(cfg(pattern), "train")
  test = sources.get_source(cfg(pattern), "test")
  assert isinstance(train, webdataset.WebDatasetSource) and not train.has_labels
  assert (len(train), len(test)) == (18, 6)  # round(0.25 * 24) held out by key hash
  assert sorted(numbers(train) + numbers(test)) == list(range(24))
  assert numbers(sources.get_source(cfg(pattern), "test")) == numbers(test)  # deterministic
  exact = lambda n: n // PER_SHARD in (0, 3)  # noqa: E731  (png shards)
  check(train, exact)
  check(test, exact)
  for i in (5, 0, 17, 5):  # any order
    assert train.captions_of(i) == [f"picture {numbers(train)[i]}"]
  capped = sources.get_source(cfg(pattern, num_train=5, seed=3), "train")
  assert len(capped) == 5 and set(capped.keys) <= set(train.keys)


def test_test_shards_and_pickle(shards):
  c = cfg(os.path.join(shards, "{00000..00002}.tar"),
          test_shards=os.path.join(shards, "00003.tar"))
  train, test = sources.get_source(c, "train"), sources.get_source(c, "test")
  assert sorted(numbers(train)) == list(range(18)) and sorted(numbers(test)) == list(range(18, 24))
  train[0]
  assert train._fds  # pylint: disable=protected-access
  clone = pickle.loads(pickle.dumps(train))  # a grain worker's copy opens its own files
  assert not clone._fds  # pylint: disable=protected-access
  np.testing.assert_array_equal(clone[7]["image"], train[7]["image"])


def test_hosts_read_disjoint_samples(shards):
  src = sources.get_source(cfg(os.path.join(shards, "*.tar")), "train")
  seen = []
  for host in range(2):
    loader = pipeline.make_loader(src, global_batch=6, seed=0, shuffle=True, num_epochs=1,
                                  process_index=host, process_count=2)
    for batch in loader:
      assert batch["image"].shape == (3, S, S, 3)
      seen.extend(batch["index"].tolist())
  assert sorted(seen) == list(range(18))


def test_incomplete_and_corrupt_samples(tmp_path):
  good = [sample(k) for k in range(4)]
  no_txt = ("000000100", {"png": image_bytes(1, "PNG")})
  no_img = ("000000101", {"txt": b"picture 101", "json": b"{}"})
  bad_img = ("000000102", {"jpg": b"not a jpeg", "txt": b"picture 102"})
  write_shard(str(tmp_path / "a.tar"), good[:2] + [no_txt, no_img, bad_img] + good[2:])
  write_shard(str(tmp_path / "t.tar"), good[:1])
  test_pattern = str(tmp_path / "t.tar")  # no held-out fraction: every sample of a.tar is train
  src = webdataset.WebDatasetSource(str(tmp_path / "a.tar"), "train", image_size=S,
                                    test_pattern=test_pattern)
  assert src.num_skipped == 2 and len(src) == 5  # no_txt, no_img dropped at indexing
  i = src.keys.index("000000102")
  ex, caps = src.get_with_captions(i)
  assert src.num_skipped == 3 and ex["index"] == i and caps != ["picture 102"]
  one_line_error(lambda: webdataset.WebDatasetSource(str(tmp_path / "a.tar"), "train",
                                                     image_size=S, on_bad_image="fail"),
                 "000000100", "a.tar", "no a caption (.txt)", "on_bad_image")
  write_shard(str(tmp_path / "b.tar"), good + [bad_img])
  strict = webdataset.WebDatasetSource(str(tmp_path / "b.tar"), "train", image_size=S,
                                       on_bad_image="fail", test_pattern=test_pattern)
  one_line_error(lambda: strict[strict.keys.index("000000102")], "b.tar:000000102",
                 "on_bad_image")


def test_shard_errors(tmp_path, shards):
  missing = os.path.join(shards, "{00000..00009}.tar")
  one_line_error(lambda: sources.get_source(cfg(missing), "train"),
                 os.path.join(shards, "00004.tar"), "does not exist", "brace range")
  one_line_error(lambda: sources.get_source(cfg(str(tmp_path / "*.tar")), "train"),
                 "no webdataset shard matches")
  one_line_error(lambda: sources.get_source(cfg(""), "train"), "has no path")
  write_shard(str(tmp_path / "empty.tar"), [])
  one_line_error(lambda: sources.get_source(cfg(str(tmp_path / "empty.tar")), "train"),
                 "empty.tar is empty")
  (tmp_path / "junk.tar").write_bytes(b"\x01" * 1000)
  one_line_error(lambda: sources.get_source(cfg(str(tmp_path / "junk.tar")), "train"),
                 "junk.tar is not a readable tar file")


def test_text_tokens(shards):
  c = cfg(os.path.join(shards, "*.tar"),
          text=dict(tokenizer="shapes", context_length=8, source="caption"))
  src = sources.get_source(c, "test")
  for i in range(len(src)):
    ex = src[i]
    assert ex["tokens"].shape == (8,) and int(ex["text_label"]) == -1
    np.testing.assert_array_equal(ex["tokens"], src.tokenizer.encode(src.captions_of(i))[0])


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_header_scan_agrees_with_tarfile(tmp_path, fmt):
  path = str(tmp_path / "t.tar")
  deep = "d" * 60 + "/" + "e" * 60  # > 100 characters: ustar prefix, GNU long name or pax path
  long = "f" * 120 if fmt != tarfile.USTAR_FORMAT else "f" * 90
  with tarfile.open(path, "w", format=fmt) as tar:
    info = tarfile.TarInfo("adir")
    info.type = tarfile.DIRTYPE
    tar.addfile(info)
    for name, data in ((f"{deep}/k1.jpg", b"x" * 700), (f"{deep}/k1.txt", b"hello"),
                       (f"{long}.txt", b""), ("k2.json", b"{}" * 300)):
      add(tar, name, data)
  with tarfile.open(path) as tar:
    expected = [(m.name, m.offset_data, m.size) for m in tar if m.isfile()]
  assert webdataset.tar_members(path) == expected and len(expected) == 4
  keys = [k for k, _ in webdataset.index_shard(path)]
  assert keys == [f"{deep}/k1", long, "k2"]
