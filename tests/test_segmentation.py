"""Open-vocabulary segmentation evaluation: mIoU against an independent reference, the background rules, held-out
pairs, the dense CLIP readout, the monitor and protocol on a tiny shapes_scenes run, and one-line errors."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cl_jax import evaluate, train
from cl_jax.eval import segmentation
from tests.harness import one_line_error, tiny_method_config

IGNORE = segmentation.IGNORE


def reference_miou(pred, gt, k, first=0):
  """Per class (from label `first`), pixel sets compared directly (no confusion matrix): mean over classes present
  anywhere."""
  pred, gt = pred.ravel(), gt.ravel()
  keep = gt != IGNORE
  pred, gt = pred[keep], gt[keep]
  ious = []
  for c in range(first, k):
    inter = np.sum((pred == c) & (gt == c), dtype=np.float64)
    union = np.sum((pred == c) | (gt == c), dtype=np.float64)
    if union:
      ious.append(100.0 * inter / union)
  return np.mean(ious), 100.0 * np.mean(pred == gt)


def test_miou_and_pixel_accuracy_match_a_direct_reference():
  rng = np.random.default_rng(0)
  k = 6
  gt = rng.integers(0, k, (5, 16, 16))
  gt[0, :4] = IGNORE                                 # ignored pixels count nowhere
  pred = np.where(rng.random(gt.shape) < 0.6, gt, rng.integers(0, k - 1, gt.shape))   # class 5 never predicted
  pred[gt == IGNORE] = 3
  conf = segmentation.confusion_matrix(pred, gt, k)
  miou, acc = reference_miou(pred, gt, k)
  assert segmentation.mean_iou(conf) == pytest.approx(miou, rel=1e-12)
  assert segmentation.pixel_accuracy(conf) == pytest.approx(acc, rel=1e-12)
  assert conf.sum() == np.sum(gt != IGNORE)
  assert segmentation.mean_iou(conf, range(1, k)) == pytest.approx(reference_miou(pred, gt, k, first=1)[0])


def test_all_background_scores_its_share_in_miou_and_nothing_on_objects():
  gt = np.zeros((1, 10, 10), np.int64)
  gt[0, 0, :2], gt[0, 1, :2] = 1, 2                    # 96 background pixels, 2 of each class
  conf = segmentation.confusion_matrix(np.zeros_like(gt), gt, 3)
  assert segmentation.mean_iou(conf) == pytest.approx(96.0 / 3)
  assert segmentation.mean_iou(conf, range(1, 3)) == 0.0


def test_absent_classes_are_left_out_not_counted_as_zero():
  gt = np.array([[0, 0, 1, 1]])
  pred = np.array([[0, 0, 1, 1]])
  conf = segmentation.confusion_matrix(pred, gt, 4)        # classes 2 and 3 occur nowhere
  assert segmentation.mean_iou(conf) == 100.0
  assert np.isnan(segmentation.class_iou(conf)[2:]).all()
  assert segmentation.mean_iou(conf, [1]) == 100.0
  assert np.isnan(segmentation.mean_iou(conf, [2, 3]))


def test_label_map_background_rules():
  # 2 classes then 1 background prompt; a 1 x 2 grid of cosine scores.
  scores = jnp.array([[[[0.9, 0.1, 0.2], [0.3, 0.35, 0.8]]]])
  prompt = segmentation.label_map(scores, (1, 2), "prompt", 2, 0.5, 100.0)
  np.testing.assert_array_equal(prompt, [[[1, 0]]])       # pixel 2: the background prompt wins
  none = segmentation.label_map(scores, (1, 2), "none", 2, 0.5, 100.0)
  np.testing.assert_array_equal(none, [[[1, 2]]])
  # threshold: softmax(100 x [0.3, 0.35]) tops at 0.993 (kept), softmax(1 x ...) at 0.512 (< 0.6: background)
  np.testing.assert_array_equal(segmentation.label_map(scores, (1, 2), "threshold", 2, 0.6, 100.0), [[[1, 2]]])
  np.testing.assert_array_equal(segmentation.label_map(scores, (1, 2), "threshold", 2, 0.6, 1.0), [[[1, 0]]])


def test_label_map_upsamples_scores_bilinearly():
  # Two cells: class 0 scores (1, 0), class 1 scores (0, 0.5). Interpolated at half-pixel centres t = 0, 0, 1/8,
  # 3/8, 5/8, 7/8, 1, 1 of the way across, class 1 wins where 0.5 t > 1 - t (t > 2/3); nearest would split 4 / 4.
  scores = jnp.array([[[[1.0, 0.0], [0.0, 0.5]]]])
  labels = np.asarray(segmentation.label_map(scores, (1, 8), "none", 2, 0.5, 100.0))
  np.testing.assert_array_equal(labels, [[[1, 1, 1, 1, 1, 2, 2, 2]]])


def test_pair_pixels_follow_instances():
  data = {"instance": np.array([[[0, 1, 2, 2]]]), "classes": np.array([[3, 5, -1, -1]]),
          "colors": np.array([[1, 2, -1, -1]])}
  np.testing.assert_array_equal(segmentation.pair_pixels(data, [(5, 2)]), [[[False, False, True, True]]])
  np.testing.assert_array_equal(segmentation.pair_pixels(data, [(3, 1), (5, 2)]), [[[False, True, True, True]]])
  np.testing.assert_array_equal(segmentation.pair_pixels(data, [(3, 2)]), [[[False, False, False, False]]])


def test_gt_labels_map_the_evaluated_subset():
  masks = np.array([[0, 1, 4, 3]])                     # background, class 0, class 3, class 2
  np.testing.assert_array_equal(segmentation._gt_labels(masks, [3, 0], 10), [[0, 2, 1, IGNORE]])


# ----------------------------------------------------------------------------- a tiny CLIP run on the scenes


@pytest.fixture(scope="module")
def scenes_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("clip_scenes"))
  c = tiny_method_config("clip_scenes")
  c.total_steps, c.eval.every = 2, -1
  c.eval.seg_examples = 40
  train.train_and_evaluate(c, workdir)
  return workdir, train.load_run(workdir)


def test_dense_readout_is_the_image_projection_of_every_patch(scenes_run):
  _, (run, state, _, _) = scenes_run
  images = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  params, ms = state["params"], state["method_state"]
  dense = run.method.encode_dense(params, ms, images)
  assert dense.shape == (2, 8, 8, run.method.embed_dim)     # 4 px patches of 32 px images
  np.testing.assert_allclose(jnp.linalg.norm(dense, axis=-1), 1.0, rtol=1e-5)
  model = params["model"]
  tokens = run.method.model.backbone.apply({"params": model["backbone"]}, images, train=False, return_tokens=True)
  want = tokens["patches"] @ model["image_projection"]["kernel"]
  want = want / jnp.linalg.norm(want, axis=-1, keepdims=True)
  np.testing.assert_allclose(dense.reshape(2, 64, -1), want, rtol=1e-4, atol=1e-5)


def test_monitor_figures_are_consistent_with_the_label_maps(scenes_run):
  _, (run, state, specs, _) = scenes_run
  seg = {}
  m = segmentation.evaluate_segmentation(run, state, specs, out=seg)
  assert set(m) >= {"eval/miou", "eval/pixel_acc", "eval/pixel_acc_unseen_pairs", "eval/pixel_acc_seen_pairs"}
  assert seg["pred"].shape == seg["gt"].shape == (40, 32, 32) and seg["mode"] == "prompt"
  miou, acc = reference_miou(seg["pred"], seg["gt"], len(seg["names"]) + 1)
  assert m["eval/miou"] == pytest.approx(miou) and m["eval/pixel_acc"] == pytest.approx(acc)
  assert m["eval/miou_objects"] == pytest.approx(reference_miou(seg["pred"], seg["gt"], len(seg["names"]) + 1, 1)[0])
  for v in m.values():
    assert 0.0 <= v <= 100.0


def test_no_background_mode_never_predicts_background(scenes_run):
  _, (run, state, specs, _) = scenes_run
  with run.config.unlocked():
    run.config.eval.seg_background = "none"
  try:
    seg = {}
    segmentation.evaluate_segmentation(run, state, specs, out=seg)
  finally:
    with run.config.unlocked():
      run.config.eval.seg_background = "auto"
  assert seg["mode"] == "none" and seg["pred"].min() >= 1


def test_protocol_writes_metrics_and_a_png(scenes_run, capsys):
  workdir, (run, state, specs, step) = scenes_run
  metrics = evaluate.run_protocol("segmentation", run, state, specs, step, workdir)
  out = capsys.readouterr().out
  assert "mIoU" in out and "background by prompt" in out and "10 classes" in out
  png = os.path.join(workdir, "eval", f"segmentation_{step}.png")
  assert os.path.exists(png)
  from PIL import Image
  assert Image.open(png).size[1] > 3 * 128                  # three rows of 128 px tiles and a legend
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  assert rows[-1]["eval/miou"] == pytest.approx(metrics["eval/miou"])


def test_unknown_class_in_the_label_set_is_one_line(scenes_run):
  _, (run, state, specs, _) = scenes_run
  with run.config.unlocked():
    run.config.eval.seg_class_names = ("star", "hexagon")
  try:
    one_line_error(lambda: segmentation.evaluate_segmentation(run, state, specs), "'hexagon'", "seg_class_names",
                   "circle")
  finally:
    with run.config.unlocked():
      run.config.eval.seg_class_names = ()


def test_a_label_subset_ignores_the_other_classes(scenes_run):
  _, (run, state, specs, _) = scenes_run
  with run.config.unlocked():
    run.config.eval.seg_class_names = ("star", "circle")
  try:
    seg = {}
    segmentation.evaluate_segmentation(run, state, specs, out=seg)
  finally:
    with run.config.unlocked():
      run.config.eval.seg_class_names = ()
  assert seg["pred"].max() <= 2
  other = (seg["mask"] > 0) & ~np.isin(seg["mask"], [4, 1])   # source mask values of star (3) and circle (0)
  assert (seg["gt"][other] == IGNORE).all() and other.any()


def test_data_without_masks_is_one_line(tmp_path):
  c = tiny_method_config("clip")          # the single-object shapes: no masks
  c.total_steps, c.eval.every = 1, 0
  c.eval.monitors = ("segmentation",)
  one_line_error(lambda: train.train_and_evaluate(c, str(tmp_path)), "per-pixel masks", "shapes_scenes",
                 "data.mask_key")


def test_a_method_without_text_is_one_line(tmp_path):
  c = tiny_method_config("simclr")
  c.total_steps, c.eval.every = 1, 0
  c.eval.monitors = ("segmentation",)
  one_line_error(lambda: train.train_and_evaluate(c, str(tmp_path)), "segmentation", "language-image")
