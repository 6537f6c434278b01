"""Crop groups declare their role (issue 10): make_views keeps its order and view_groups names each array's role;
DINO's teacher takes the role='global' crops whatever the groups are called, and a config without roles fails."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from cl_jax.data import augment as A
from cl_jax.methods.common import crop_roles
from configs import dino_cifar10, dino_imagenet, quickstart
from tests.harness import build_method
from tests.test_dino import dino_config, dino_step


def test_role_defaults_to_unset_and_is_checked():
  assert A.group().role == ""
  assert A.group(role="local").role == "local"
  with pytest.raises(ValueError, match="role='teacher' must be one of") as err:
    A.group(role="teacher")
  assert "\n" not in str(err.value)


def test_view_groups_follow_make_views_order():
  recipe = ml_collections.ConfigDict({
      "a_small": A.group(size=8, views=3, role="local"),
      "b_big": A.group(size=16, views=2, role="global"),
      "c_off": A.group(size=4, views=0, role="local")})
  images = jnp.asarray(np.random.RandomState(0).randint(0, 256, (2, 16, 16, 3)), jnp.uint8)
  views = jax.eval_shape(lambda im, k: A.make_views(im, k, recipe), images,   # shapes only: no eager dispatch
                         A.example_keys(jax.random.key(0), jnp.arange(2)))
  groups = A.view_groups(recipe)
  assert [name for name, _ in groups] == ["a_small", "b_big"]           # sorted names; views=0 skipped
  assert [g.role for _, g in groups] == ["local", "global"]
  assert [v.shape[:1] + v.shape[2:3] for v in views] == [(g.views, g.size) for _, g in groups]


@pytest.mark.parametrize("config", [dino_imagenet.get_config(), dino_imagenet.get_config("arch=resnet50"),
                                    dino_cifar10.get_config("runlocal"), quickstart.get_config("method=dino")])
def test_dino_recipes_declare_their_global_crops(config):
  assert crop_roles(config.augment, "DINO") == ((0,), (1,))
  (_, global_group), (_, local_group) = A.view_groups(config.augment)
  assert global_group.scale[1] > local_group.scale[1]   # the large crops are the global ones


def renamed_config() -> ml_collections.ConfigDict:
  """dino_config with the local group sorting first: ml_collections orders a_small before b_big."""
  c = dino_config()
  c.augment = ml_collections.ConfigDict({"a_small": c.augment["local"], "b_big": c.augment["global"]})
  return c


def test_teacher_takes_the_global_role_not_the_first_group():
  rng = np.random.default_rng(1)
  big = rng.normal(size=(2, 16, 16, 16, 3)).astype(np.float32)
  small = rng.normal(size=(3, 16, 8, 8, 3)).astype(np.float32)
  results = []
  for config, crops in ((dino_config(), (big, small)), (renamed_config(), (small, big))):   # make_views' order
    method = build_method(config, total_steps=10, steps_per_epoch=5)
    params, state = jax.jit(method.init)(jax.random.key(0), {"crops": tuple(c[:, :2] for c in crops)})
    # A non-trivial teacher and center, the same for both configs.
    state["ema"]["params"] = jax.tree.map(lambda p: p * 0.9, state["ema"]["params"])
    state["center"] = jnp.asarray(np.random.default_rng(2).normal(size=(64,)).astype(np.float32)) * 0.1
    results.append(dino_step(method, params, state, crops, 1))
  (loss, grads, center, std), (loss_r, grads_r, center_r, std_r) = results
  assert np.isfinite(float(loss))
  np.testing.assert_array_equal(np.asarray(loss_r), np.asarray(loss))
  np.testing.assert_array_equal(np.asarray(center_r), np.asarray(center))
  np.testing.assert_array_equal(np.asarray(std_r), np.asarray(std))
  for g_r, g in zip(jax.tree.leaves(grads_r), jax.tree.leaves(grads)):
    np.testing.assert_array_equal(np.asarray(g_r), np.asarray(g))


def test_dino_without_roles_is_a_one_line_error():
  c = dino_config()
  c.augment["local"].role = ""
  with pytest.raises(ValueError, match=r"set config.augment\['local'\].role") as err:
    build_method(c)
  assert "\n" not in str(err.value)
  c.augment["global"].role = "local"
  c.augment["local"].role = "local"
  with pytest.raises(ValueError, match="no group of config.augment has role='global'") as err:
    build_method(c)
  assert "\n" not in str(err.value)


def test_other_methods_need_no_roles():
  c = quickstart.get_config("method=simclr,runlocal")
  assert all(not g.role for _, g in A.view_groups(c.augment))
  build_method(c)
