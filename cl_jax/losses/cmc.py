"""CMC's objective over several views with one memory bank per view (Tian et al. 2020, Eq. 2-3 and Sec. 3.3)."""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from cl_jax.losses.nce import instdisc_nce, instdisc_softmax, sampled_softmax

LOSSES = ("nce", "softmax", "full_softmax")
GRAPHS = ("core", "full")


def view_pairs(num_views: int, graph: str) -> tuple[tuple[int, int], ...]:
  """The view pairs contrasted (Sec. 3.3): 'core' pairs the first view with each other one (L_C = sum_j L(V_1, V_j),
  Eq. 6), 'full' every pair (L_F = sum_{i<j} L(V_i, V_j), Eq. 7); with two views both are the one pair."""
  if graph not in GRAPHS:
    raise ValueError(f"Unknown CMC graph '{graph}'; set method.graph to one of: {', '.join(GRAPHS)}.")
  if num_views < 2:
    raise ValueError(f"CMC contrasts at least 2 views, got {num_views}; set method.views, e.g. ('L', 'ab').")
  if graph == "core":
    return tuple((0, j) for j in range(1, num_views))
  return tuple((i, j) for i in range(num_views) for j in range(i + 1, num_views))


def directed_pairs(pairs: Sequence[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
  """(anchor view, bank view) of every term: L(V_i, V_j) = L^{V_i V_j} + L^{V_j V_i} (Eq. 3)."""
  return tuple(d for i, j in pairs for d in ((i, j), (j, i)))


def cmc_loss(features: Sequence[jax.Array], index: jax.Array, neg_index: jax.Array, banks: Sequence[jax.Array],
             z: jax.Array, pairs: Sequence[tuple[int, int]], temperature: float, num_data: int, kind: str = "nce",
             axis_name: str | None = None, names: Sequence[str] | None = None
             ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
  """Sum over directed pairs (i, j) of the loss of view i's features against view j's memory bank (official
  NCEAverage: out_l scores L's features against the ab bank, out_ab ab's against the L bank; loss = l + ab).

  `kind`: 'nce' (NCE with m noise rows and a constant Z per term estimated on the first batch, official
  NCECriterion), 'softmax' (softmax over the positive and the m noise rows, official NCESoftmaxLoss) or
  'full_softmax' (exact softmax over every bank row). `features` [b, D] per view, `index` [b], `neg_index` [b, m]
  (shared by every term, as the official code draws one idx), `banks` [n, D] per view (or this device's rows),
  `z` [len(directed_pairs)] stored constants (<= 0: not yet set). Returns (loss, new z, metrics per term, named
  `<metric>_<anchor>_<bank>` by `names`, else by view index).
  """
  if kind not in LOSSES:
    raise ValueError(f"Unknown CMC loss '{kind}'; set method.loss to one of: {', '.join(LOSSES)}.")
  total, new_z, metrics = 0.0, [], {}
  for t, (a, b) in enumerate(directed_pairs(pairs)):
    if kind == "nce":
      term, z_t, m = instdisc_nce(features[a], index, neg_index, banks[b], z[t], temperature, num_data, axis_name)
      new_z.append(z_t)
    elif kind == "softmax":
      term, m = sampled_softmax(features[a], index, neg_index, banks[b], temperature, axis_name)
    else:
      term, m = instdisc_softmax(features[a], index, banks[b], temperature, axis_name, num_data)
    total = total + term
    tag = f"{names[a]}_{names[b]}" if names else f"{a}_{b}"
    metrics.update({f"{k}_{tag}": v for k, v in m.items()})
  return total, (jnp.stack(new_z) if new_z else z), metrics
