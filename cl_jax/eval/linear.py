"""Linear evaluation: a softmax classifier on FROZEN backbone features (SimCLR App. B.6, MoCo Sec. 4.1).

Optimiser as SimCLR App. B.6: SGD, Nesterov momentum 0.9, cosine learning-rate decay, no weight decay by
default, cross-entropy on the labels. Features are standardised before the linear layer (per-dimension mean
and std of the training features, i.e. a BatchNorm without affine parameters in inference mode), as in the
MoCo v3 (Sec. 4) and MAE (App. A.2) linear probes: it makes one learning rate work for every backbone.

Two modes:
- fast: features of the centre-cropped train and test images are extracted once
  (`features.extract_features`) and the classifier is trained on them for many epochs in ONE jitted
  `lax.scan` (`train_linear_classifier`). Standard for kNN-style monitoring and on CPU; all train
  features must fit in device memory.
- full: the standard protocol with augmentation: every epoch each training image gets a fresh
  random-resized crop + flip (`augment.group(..., scale=(0.08, 1))`), the frozen encoder runs in inference
  mode under `stop_gradient`, and only the linear head is updated. One jitted step under `jax.shard_map`
  over the run's mesh (batch split over 'data', head replicated, the loss psum'd so its gradient is the
  global-batch gradient), as `train.make_train_step`. The standardisation statistics come from the
  centre-crop features of (up to `STATS_EXAMPLES`) training images; test images are centre-cropped.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

from cl_jax import parallel
from cl_jax.data import augment, label_regimes, pipeline
from cl_jax.eval import features
from cl_jax.run_state import Run, TrainState
from cl_jax.schema import Field

Head = dict[str, jax.Array]   # {"w": [D, C], "b": [C]}
STATS_EXAMPLES = 10_000       # full mode: training images whose centre-crop features give mean / std
_EPS = 1e-6                   # BatchNorm1d(affine=False, eps=1e-6) of the MAE linear probe
_CHUNK = 1024                 # test examples scored per jitted call
# config.eval fields of the linear protocol: linear_fast=None is fast on CPU, full (augmented) elsewhere;
# linear_epochs=None is 100 fast / 90 full.
SCHEMA = {"linear_fast": Field(None, choices=(True, False)), "linear_epochs": Field(None, low=1),
          "linear_lr": Field(0.1, low=0, open_low=True), "linear_batch_size": Field(256, low=1),
          "linear_weight_decay": Field(0.0, low=0), "linear_seed": Field(0)}


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per-dimension mean and std (sqrt(var + eps)) of training features: a BatchNorm without affine (MAE A.2)."""
  f = np.asarray(features, np.float64)
  return f.mean(0).astype(np.float32), np.sqrt(f.var(0) + _EPS).astype(np.float32)


def init_head(key: jax.Array, dim: int, num_classes: int) -> Head:
  """Weights ~ N(0, 0.01^2), zero bias (MoCo's main_lincls.py)."""
  return {"w": 0.01 * jax.random.normal(key, (dim, num_classes), jnp.float32),
          "b": jnp.zeros((num_classes,), jnp.float32)}


def make_optimizer(lr: float | jax.Array, total_steps: int, weight_decay: float | jax.Array = 0.0
                   ) -> optax.GradientTransformation:
  """SGD with Nesterov momentum 0.9 and a cosine decay over `total_steps`; weight decay on the weights only."""
  schedule = optax.cosine_decay_schedule(lr, max(total_steps, 1))
  return optax.chain(optax.add_decayed_weights(weight_decay, mask={"w": True, "b": False}),
                     optax.sgd(schedule, momentum=0.9, nesterov=True))


def _logits(head: Head, features: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
  return ((features - mean) / std) @ head["w"] + head["b"]


def _xent(head: Head, features: jax.Array, labels: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
  """Summed (not averaged) softmax cross-entropy."""
  return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(_logits(head, features, mean, std), labels))


@functools.partial(jax.jit, static_argnames=("num_classes", "epochs", "batch_size"))
def _fit(features: jax.Array, labels: jax.Array, mean: jax.Array, std: jax.Array, key: jax.Array,
         lr: jax.Array, weight_decay: jax.Array, *, num_classes: int, epochs: int, batch_size: int) -> Head:
  """All epochs of minibatch SGD in one compiled scan; a fresh permutation of the examples each epoch."""
  n = features.shape[0]
  steps = n // batch_size
  tx = make_optimizer(lr, epochs * steps, weight_decay)
  init_key, shuffle_key = jax.random.split(key)
  head = init_head(init_key, features.shape[1], num_classes)

  def step(carry, idx):
    head, opt_state = carry
    grads = jax.grad(lambda h: _xent(h, features[idx], labels[idx], mean, std) / batch_size)(head)
    updates, opt_state = tx.update(grads, opt_state, head)
    return (optax.apply_updates(head, updates), opt_state), None

  def epoch(carry, e):
    order = jax.random.permutation(jax.random.fold_in(shuffle_key, e), n)[:steps * batch_size]
    return jax.lax.scan(step, carry, order.reshape(steps, batch_size))[0], None

  (head, _), _ = jax.lax.scan(epoch, (head, tx.init(head)), jnp.arange(epochs))
  return head


@functools.partial(jax.jit, static_argnames=("k",))
def _hits(head: Head, features: jax.Array, labels: jax.Array, mean: jax.Array, std: jax.Array,
          k: int) -> tuple[jax.Array, jax.Array]:
  """Per example: is the label the top-1 class, and is it among the top-k classes."""
  logits = _logits(head, features, mean, std)
  _, top = jax.lax.top_k(logits, k)
  hit = top == labels[:, None]
  return hit[:, 0], jnp.any(hit, axis=1)


def classifier_accuracy(head: Head, features: np.ndarray, labels: np.ndarray, mean: np.ndarray,
                        std: np.ndarray) -> dict[str, float]:
  """Top-1 and top-5 accuracy (%) of the linear head, scored in fixed-size chunks (one compile)."""
  k = min(5, head["b"].shape[0])
  top1, topk = [], []
  for start in range(0, len(features), _CHUNK):
    f = np.asarray(features[start:start + _CHUNK], np.float32)
    y = np.asarray(labels[start:start + _CHUNK], np.int32)
    pad = _CHUNK - len(f) if len(features) > _CHUNK else 0
    h1, hk = _hits(head, np.pad(f, ((0, pad), (0, 0))), np.pad(y, (0, pad)), mean, std, k)
    top1.append(np.asarray(h1)[:len(f)])
    topk.append(np.asarray(hk)[:len(f)])
  return {"top1": 100.0 * float(np.mean(np.concatenate(top1))),
          "top5": 100.0 * float(np.mean(np.concatenate(topk)))}


def _check_inputs(train_feats: np.ndarray, train_labels: np.ndarray, test_feats: np.ndarray,
                  test_labels: np.ndarray, num_classes: int, epochs: int, batch_size: int) -> None:
  if train_feats.ndim != 2 or test_feats.ndim != 2 or train_feats.shape[1] != test_feats.shape[1]:
    raise ValueError(f"linear evaluation wants [n, d] train and test features of the same d, got "
                     f"{train_feats.shape} and {test_feats.shape}; flatten the features first.")
  if len(train_feats) != len(train_labels) or len(test_feats) != len(test_labels):
    raise ValueError(f"{len(train_feats)} train / {len(test_feats)} test features but {len(train_labels)} / "
                     f"{len(test_labels)} labels; pass one label per feature row.")
  if len(train_feats) == 0 or len(test_feats) == 0:
    raise ValueError("linear evaluation got an empty train or test set; check the dataset splits.")
  labels = np.concatenate([train_labels, test_labels])
  if labels.min() < 0 or labels.max() >= num_classes:
    raise ValueError(f"labels span [{labels.min()}, {labels.max()}] but num_classes={num_classes}; "
                     "pass the dataset's num_classes.")
  if epochs < 1 or batch_size < 1:
    raise ValueError(f"epochs={epochs} and batch_size={batch_size} must be >= 1; raise them.")


def train_linear_classifier(train_feats: np.ndarray, train_labels: np.ndarray, test_feats: np.ndarray,
                            test_labels: np.ndarray, num_classes: int, *, epochs: int, lr: float,
                            batch_size: int, weight_decay: float = 0.0, seed: int = 0) -> dict[str, float]:
  """Fits a linear softmax classifier on standardised precomputed features; test top-1/top-5 (%) (fast mode)."""
  train_feats, test_feats = np.asarray(train_feats, np.float32), np.asarray(test_feats, np.float32)
  train_labels, test_labels = np.asarray(train_labels, np.int32), np.asarray(test_labels, np.int32)
  _check_inputs(train_feats, train_labels, test_feats, test_labels, num_classes, epochs, batch_size)
  mean, std = feature_stats(train_feats)
  head = _fit(train_feats, train_labels, mean, std, jax.random.key(seed), jnp.float32(lr),
              jnp.float32(weight_decay), num_classes=int(num_classes), epochs=int(epochs),
              batch_size=int(min(batch_size, len(train_feats))))
  return classifier_accuracy(head, test_feats, test_labels, mean, std)


def _augment_recipe(size: int) -> ml_collections.ConfigDict:
  """Random-resized crop (scale 0.08-1) + flip only: the linear-evaluation augmentation (SimCLR App. B.6)."""
  return ml_collections.ConfigDict({"linear": augment.group(size=size, views=1, scale=(0.08, 1.0), jitter_p=0.0,
                                                            grayscale_p=0.0, blur_p=(0.0,))})


def make_linear_step(run: Run, specs: Any, tx: optax.GradientTransformation, seed: int):
  """jit(shard_map(step)): augment the local batch, frozen encoder (inference mode), SGD step of the head."""
  recipe = _augment_recipe(features.image_size(run.config))
  method = run.method

  def per_device(head, opt_state, params, method_state, mean, std, step, images, labels):
    key = jax.random.fold_in(jax.random.key(seed), step)
    keys = augment.example_keys(key, parallel.global_example_index(images.shape[0]))
    (views,) = augment.make_views(images, keys, recipe)
    features = jax.lax.stop_gradient(method.encode(params, method_state, views[0]))
    global_batch = images.shape[0] * jax.lax.axis_size(parallel.DATA)

    def loss_fn(h):   # the global-batch mean: its gradient is the exact global gradient
      return jax.lax.psum(_xent(h, features, labels, mean, std), parallel.DATA) / global_batch

    loss, grads = jax.value_and_grad(loss_fn)(head)
    updates, opt_state = tx.update(grads, opt_state, head)
    return optax.apply_updates(head, updates), opt_state, loss

  fn = jax.jit(jax.shard_map(
      per_device, mesh=run.mesh,
      in_specs=(P(), P(), P(), specs["method_state"], P(), P(), P(), P(parallel.DATA), P(parallel.DATA)),
      out_specs=(P(), P(), P())), donate_argnums=(0, 1))
  return fn


def train_head_augmented(run: Run, state: TrainState, specs: Any, encode: Any, *, epochs: int,
                         lr: float, batch_size: int, weight_decay: float = 0.0, seed: int = 0
                         ) -> tuple[Head, np.ndarray, np.ndarray, np.ndarray]:
  """Full mode's training: (head, feature mean, feature std, per-step losses) on random-resized crops + flips."""
  parallel.check_batch_size(batch_size, run.mesh)
  steps_per_epoch = len(run.train_source) // batch_size
  if steps_per_epoch == 0 or epochs < 1:
    raise ValueError(f"linear evaluation with batch_size {batch_size} and epochs {epochs} makes no step on "
                     f"{len(run.train_source)} training examples; lower eval.linear_batch_size or raise epochs.")
  stat_feats, _ = features.extract_features(run, encode, state, run.train_source, STATS_EXAMPLES)
  mean, std = feature_stats(stat_feats)
  tx = make_optimizer(lr, epochs * steps_per_epoch, weight_decay)
  replicated = parallel.replicated(run.mesh)
  head = jax.device_put(init_head(jax.random.key(seed), stat_feats.shape[1], features.num_classes(run)),
                        replicated)
  opt_state = jax.device_put(tx.init(head), replicated)
  step_fn = make_linear_step(run, specs, tx, seed)
  loader = pipeline.make_loader(run.train_source, global_batch=batch_size, seed=seed, shuffle=True,
                                num_epochs=epochs, drop_remainder=True,
                                worker_count=run.config.data.get("worker_count", 0))
  losses, field = [], label_regimes.truth(run.train_source)[0]   # the true labels under a label regime
  for step, batch in enumerate(loader):
    batch = parallel.host_to_global({"image": batch["image"], "label": batch[field].astype(np.int32)}, run.mesh)
    head, opt_state, loss = step_fn(head, opt_state, state["params"], state["method_state"], mean, std,
                                    jnp.int32(step), batch["image"], batch["label"])
    losses.append(loss)
  return parallel.to_host(head), mean, std, np.asarray(jax.device_get(losses), np.float32)


def linear_eval(run: Run, state: TrainState, specs: Any, *, fast: bool, epochs: int, lr: float,
                batch_size: int, seed: int = 0, weight_decay: float = 0.0) -> dict[str, float]:
  """Linear-evaluation top-1/top-5 (%) on the test split of a trained run (fast: precomputed features)."""
  if not run.train_source.has_labels or run.test_source is None:
    raise ValueError(f"linear evaluation needs labels; dataset '{run.config.dataset}' has none, use a labelled "
                     "dataset (class folders, shapes or a tfds name).")
  encode = features.make_encode(run, specs)
  if not fast:
    head, mean, std, _ = train_head_augmented(run, state, specs, encode, epochs=epochs, lr=lr,
                                              batch_size=batch_size, weight_decay=weight_decay, seed=seed)
    test_feats, test_labels = features.extract_features(run, encode, state, run.test_source)
    return classifier_accuracy(head, test_feats, test_labels, mean, std)
  train_feats, train_labels = features.extract_features(run, encode, state, run.train_source)
  test_feats, test_labels = features.extract_features(run, encode, state, run.test_source)
  return train_linear_classifier(train_feats, train_labels, test_feats, test_labels, features.num_classes(run),
                                 epochs=epochs, lr=lr, batch_size=batch_size, weight_decay=weight_decay, seed=seed)
