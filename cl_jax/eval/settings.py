"""config.eval: each evaluator declares the fields it reads (a `SCHEMA` of cl_jax.schema.Field in its module) and
reads them here with their declared defaults; cl_jax.eval.monitors.validate_eval checks the whole section once."""
from __future__ import annotations

from typing import Mapping

import ml_collections

from cl_jax.schema import Field


def read(config: ml_collections.ConfigDict, schema: Mapping[str, Field]) -> ml_collections.ConfigDict:
  """config.eval's value of each field of `schema`; the declared default where it is unset or None."""
  section = config.get("eval", None) or {}
  return ml_collections.ConfigDict({k: f.default if section.get(k, None) is None else section[k]
                                    for k, f in schema.items()})
