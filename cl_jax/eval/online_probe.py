"""Online linear probe: a classifier trained alongside pretraining on stop-gradient backbone features
(as BYOL's and solo-learn's online evaluation); it never changes the encoder."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from cl_jax import parallel


def init(key: jax.Array, feature_dim: int, num_classes: int) -> dict[str, jax.Array]:
  """Zero-initialised linear layer (a fair start for a probe)."""
  del key
  return {"kernel": jnp.zeros((feature_dim, num_classes), jnp.float32), "bias": jnp.zeros((num_classes,))}


def optimizer(lr: float = 1e-3) -> optax.GradientTransformation:
  """Adam on the probe only; its gradient never reaches the encoder."""
  return optax.adam(lr)


def loss(params: dict[str, jax.Array], features: jax.Array, labels: jax.Array,
         axis_name: str | None = parallel.DATA) -> tuple[jax.Array, jax.Array]:
  """Global mean cross-entropy and top-1 accuracy (%) of the probe on this device's features."""
  logits = jax.lax.stop_gradient(features).astype(jnp.float32) @ params["kernel"] + params["bias"]
  ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
  acc = 100.0 * jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))
  return parallel.pmean(ce, axis_name), parallel.pmean(acc, axis_name)


def update(probe: dict[str, Any], tx: optax.GradientTransformation, features: jax.Array,
           labels: jax.Array, axis_name: str | None = parallel.DATA) -> tuple[dict[str, Any], dict[str, jax.Array]]:
  """One probe step: new {"params", "opt_state"} and its metrics."""
  (ce, acc), grads = jax.value_and_grad(loss, has_aux=True)(probe["params"], features, labels, axis_name)
  updates, opt_state = tx.update(grads, probe["opt_state"], probe["params"])
  return ({"params": optax.apply_updates(probe["params"], updates), "opt_state": opt_state},
          {"train/online_linear_loss": ce, "train/online_linear_top1": acc})
