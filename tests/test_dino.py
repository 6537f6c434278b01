"""DINO: loss, centring and temperatures against float64 NumPy; 8 devices vs 1 (value, gradient, center); the
head's weight norm; a tiny multi-crop run with the last layer frozen for its first steps."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from cl_jax import parallel, train
from cl_jax.data.augment import group
from cl_jax.losses import distill
from cl_jax.models.dino_head import DINOHead
from tests.harness import build_method, method_step, tiny_config


# ----------------------------------------------------------------------------- float64 references


def softmax64(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float64)
  e = np.exp(x - x.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def dino_loss_reference(student, teacher, center, tau_s, tau_t):
  """Written from the paper (Eq. 3, Alg. 1): one (teacher crop, student crop, example) at a time, float64."""
  total, terms = 0.0, 0
  for t in range(teacher.shape[0]):
    for s in range(student.shape[0]):
      if s == t:
        continue
      per_example = []
      for i in range(student.shape[1]):
        p_t = softmax64((teacher[t, i] - center) / tau_t)
        p_s = softmax64(student[s, i] / tau_s)
        per_example.append(-np.sum(p_t * np.log(p_s)))
      total += np.mean(per_example)
      terms += 1
  return total / terms


def teacher_entropy_reference(teacher, center, tau_t):
  p = softmax64((teacher - center) / tau_t)
  return float(np.mean(-np.sum(p * np.log(p), axis=-1)))


@pytest.fixture(scope="module")
def logits():
  rng = np.random.default_rng(0)
  student = rng.normal(size=(5, 16, 12)).astype(np.float32) * 2   # 2 global + 3 local crops, 16 rows, K=12
  teacher = rng.normal(size=(2, 16, 12)).astype(np.float32) * 2
  center = rng.normal(size=(12,)).astype(np.float32) * 0.3
  return student, teacher, center


@pytest.mark.parametrize("tau_t", [0.04, 0.07])
def test_loss_matches_float64_reference(logits, tau_t):
  student, teacher, center = logits
  loss, metrics = distill.dino_loss(jnp.asarray(student), jnp.asarray(teacher), jnp.asarray(center), 0.1, tau_t)
  np.testing.assert_allclose(float(loss), dino_loss_reference(student, teacher, center, 0.1, tau_t), rtol=1e-5)
  np.testing.assert_allclose(float(metrics["teacher_entropy"]), teacher_entropy_reference(teacher, center, tau_t),
                             rtol=1e-4, atol=1e-6)


def test_center_update_matches_reference(logits):
  _, teacher, center = logits
  new = distill.update_center(jnp.asarray(center), jnp.asarray(teacher), 0.9)
  expected = 0.9 * center.astype(np.float64) + 0.1 * teacher.astype(np.float64).reshape(-1, 12).mean(axis=0)
  np.testing.assert_allclose(np.asarray(new), expected, rtol=1e-5, atol=1e-7)


def test_teacher_temperature_is_the_official_per_epoch_linspace():
  steps_per_epoch, warmup, epochs = 7, 30, 40
  expected = np.concatenate([np.linspace(0.04, 0.07, warmup), np.full(epochs - warmup, 0.07)])
  steps = np.arange(epochs * steps_per_epoch)
  got = jax.vmap(lambda s: distill.teacher_temperature(s, steps_per_epoch, 0.04, 0.07, warmup))(steps)
  np.testing.assert_allclose(np.asarray(got), expected[steps // steps_per_epoch], rtol=1e-6)
  assert float(distill.teacher_temperature(5, 7, 0.04, 0.07, 0)) == pytest.approx(0.07)


def test_loss_has_no_gradient_into_the_teacher(logits):
  student, teacher, center = logits
  g = jax.grad(lambda t: distill.dino_loss(jnp.asarray(student), t, jnp.asarray(center), 0.1, 0.04)[0])(
      jnp.asarray(teacher))
  assert float(jnp.abs(g).max()) == 0.0


def test_eight_devices_equal_one_device_loss_gradient_and_center(logits):
  student, teacher, center = logits
  mesh = parallel.make_mesh()
  assert mesh.size == 8

  def one(s, t, c):
    loss, metrics = distill.dino_loss(s, t, c, 0.1, 0.05)
    return loss, (metrics["teacher_entropy"], distill.update_center(c, t, 0.9))

  (ref_loss, (ref_ent, ref_center)), ref_grad = jax.value_and_grad(one, has_aux=True)(student, teacher, center)

  def per_device(s, t, c):
    def f(s):
      loss, metrics = distill.dino_loss(s, t, c, 0.1, 0.05, axis_name=parallel.DATA)
      return loss, (metrics["teacher_entropy"], distill.update_center(c, t, 0.9, axis_name=parallel.DATA))
    return jax.value_and_grad(f, has_aux=True)(s)

  rows = P(None, parallel.DATA)
  sharded = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(rows, rows, P()),
                                  out_specs=((P(), (P(), P())), rows)))
  put = lambda x: jax.device_put(x, jax.sharding.NamedSharding(mesh, rows))
  (loss, (ent, new_center)), grad = sharded(put(student), put(teacher),
                                            jax.device_put(center, parallel.replicated(mesh)))
  np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-5)
  np.testing.assert_allclose(float(ent), float(ref_ent), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(new_center), np.asarray(ref_center), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(np.asarray(grad), np.asarray(ref_grad), rtol=1e-4, atol=1e-7)


def test_too_few_crops_is_one_line_error(logits):
  student, teacher, center = logits
  with pytest.raises(ValueError, match="at least 2 crops"):
    distill.dino_loss(jnp.asarray(student[:1]), jnp.asarray(teacher[:1]), jnp.asarray(center), 0.1, 0.04)


# ----------------------------------------------------------------------------- head


@pytest.mark.parametrize("norm_last_layer", [True, False])
def test_head_last_layer_is_weight_normalised(norm_last_layer):
  head = DINOHead(out_dim=10, hidden_dim=16, bottleneck_dim=6, norm_last_layer=norm_last_layer)
  x = jax.random.normal(jax.random.key(0), (4, 8))
  variables = head.init(jax.random.key(1), x, train=False)
  params = variables["params"]
  names = [jax.tree_util.keystr(p, simple=True, separator="/") for p, _ in jax.tree_util.tree_leaves_with_path(params)]
  last = [n for n in names if "last_layer" in n]
  assert len(last) == (1 if norm_last_layer else 2), names   # no gain g when it is fixed to 1
  kernel = params["last_layer"]["kernel"] * 5.0               # the scale of v must not matter
  params = {**params, "last_layer": {"kernel": kernel}}
  z, logits = head.apply({"params": params}, x, train=False)
  np.testing.assert_allclose(np.linalg.norm(np.asarray(z), axis=-1), 1.0, rtol=1e-5)
  w = np.asarray(kernel, np.float64)
  w = w / np.linalg.norm(w, axis=0, keepdims=True)
  np.testing.assert_allclose(np.asarray(logits), np.asarray(z, np.float64) @ w, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- the method


def dino_config(**overrides) -> ml_collections.ConfigDict:
  c = tiny_config(**{"model.stem": "cifar", "data.image_size": 16, **overrides})
  c.method = dict(name="dino", out_dim=64, hidden_dim=32, bottleneck_dim=16, momentum=0.9, teacher_temp=0.05,
                  warmup_teacher_temp_epochs=0)
  c.augment = ml_collections.ConfigDict({
      "global": group(size=16, views=2, scale=(0.4, 1.0), blur_p=(1.0, 0.1), solarize_p=(0.0, 0.2), role="global"),
      "local": group(size=8, views=3, scale=(0.05, 0.4), blur_p=(0.5,), role="local")})
  return c


@pytest.fixture(scope="module")
def method_and_inputs():
  config = dino_config()
  method = build_method(config, total_steps=10, steps_per_epoch=5)
  rng = np.random.default_rng(1)
  crops = (rng.normal(size=(2, 16, 16, 16, 3)).astype(np.float32),
           rng.normal(size=(3, 16, 8, 8, 3)).astype(np.float32))
  params, state = jax.jit(method.init)(jax.random.key(0), {"crops": tuple(c[:, :2] for c in crops)})
  # A non-trivial teacher and center, so the test covers their use.
  state["ema"]["params"] = jax.tree.map(lambda p: p * 0.9, state["ema"]["params"])
  state["center"] = jnp.asarray(rng.normal(size=(64,)).astype(np.float32)) * 0.1
  return method, params, state, crops


def dino_step(method, params, state, crops, num_devices):
  """(loss, grads, new center, embedding std) of one step of the method (step 3) on `num_devices`."""
  out = method_step(method, params, state, {"crops": crops}, num_devices, step=3)
  return out.loss, out.grads, out.state_after_loss["center"], out.metrics["embedding_std"]


def test_method_eight_devices_equal_one_device(method_and_inputs):
  method, params, state, crops = method_and_inputs
  loss1, grads1, center1, std1 = dino_step(method, params, state, crops, 1)
  loss8, grads8, center8, std8 = dino_step(method, params, state, crops, 8)
  assert np.isfinite(float(loss1)) and float(std1) > 0
  np.testing.assert_allclose(float(loss8), float(loss1), rtol=1e-5)
  np.testing.assert_allclose(float(std8), float(std1), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(center8), np.asarray(center1), rtol=1e-5, atol=1e-6)
  # The center moved towards the teacher's batch mean (it is not left unchanged).
  assert float(jnp.abs(center1 - state["center"]).max()) > 1e-4
  for g8, g1 in zip(jax.tree.leaves(grads8), jax.tree.leaves(grads1)):
    np.testing.assert_allclose(np.asarray(g8), np.asarray(g1), rtol=2e-4, atol=2e-6)
  assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads1["head"]))


def test_method_rejects_a_single_crop(method_and_inputs):
  method, params, state, crops = method_and_inputs
  with pytest.raises(ValueError, match="at least 2 crops"):
    method.loss(params, state, {"crops": (crops[0][:1],)}, jax.random.key(0), 0)


def test_tiny_multicrop_run_freezes_last_layer_then_trains_it():
  frozen_steps, steps = 2, 4
  config = dino_config(**{"total_steps": steps})
  config.optim = dict(name="adamw", lr=1e-3, lr_scaling="none", weight_decay_schedule=(0.04, 0.4),
                      warmup_epochs=0, schedule="cosine", clip_norm=3.0, frozen=("last_layer",),
                      frozen_steps=frozen_steps)
  run = train.build_run(config)
  state, specs = train.init_state(run)
  step_fn = train.make_train_step(run, specs)
  loader = iter(train.pipeline.make_loader(run.train_source, global_batch=config.batch_size, seed=0, shuffle=True,
                                           num_epochs=None))
  snapshot = lambda s: jax.tree.map(np.asarray, jax.device_get(
      {"last": s["params"]["head"]["last_layer"], "dense1": s["params"]["head"]["dense1"],
       "teacher": s["method_state"]["ema"]["params"]["head"]["dense1"], "center": s["method_state"]["center"]}))
  history = [snapshot(state)]
  losses = []
  for _ in range(steps):
    state, metrics = step_fn(state, parallel.host_to_global(next(loader), run.mesh))
    losses.append(float(metrics["loss"]))
    history.append(snapshot(state))
  assert np.all(np.isfinite(losses)), losses
  assert 0 < float(metrics["train/embedding_std"]) and np.isfinite(float(metrics["train/teacher_kl"]))
  changed = lambda a, b: any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  for i in range(frozen_steps):
    assert not changed(history[i + 1]["last"], history[0]["last"]), f"last layer moved at step {i + 1}"
  assert changed(history[-1]["last"], history[frozen_steps]["last"]), "last layer never trained"
  assert changed(history[1]["dense1"], history[0]["dense1"])
  assert changed(history[1]["teacher"], history[0]["teacher"])   # the EMA moved the teacher
  assert changed(history[1]["center"], history[0]["center"])


def test_knn_monitor_reports_the_students_figure_next_to_the_teachers():
  from cl_jax.eval import features, monitors   # pylint: disable=g-import-not-at-top
  run = train.build_run(dino_config(**{"total_steps": 2}))
  state, specs = train.init_state(run)
  # A teacher unlike the student: the student re-initialised from another key (the teacher keeps the first).
  other, _ = train.init_state(train.build_run(dino_config(**{"total_steps": 2, "seed": 1})))
  state = {**state, "params": other["params"],
           "method_state": {**state["method_state"], "batch_stats": other["method_state"]["batch_stats"]}}
  result = monitors.knn_monitor(run, state, specs)
  teacher = monitors.evaluate_knn(run, features.make_encode(run, specs), state)
  # The student's figure through the teacher's path: the same run with the student copied into the teacher.
  as_teacher = {**state, "method_state": {**state["method_state"], "ema": {
      "params": state["params"], "batch_stats": state["method_state"]["batch_stats"]}}}
  student = monitors.evaluate_knn(run, features.make_encode(run, specs), as_teacher)
  assert teacher["eval/knn_top1"] != student["eval/knn_top1"]   # else the test could not tell them apart
  assert result["eval/knn_top1"] == teacher["eval/knn_top1"]   # the main figure stays the teacher's
  assert result["eval/knn_top1_student"] == student["eval/knn_top1"]
  assert result["eval/knn_top5_student"] == student["eval/knn_top5"]
