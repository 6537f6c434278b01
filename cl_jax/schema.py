"""Declared config sections: each component lists the fields it reads, with defaults and allowed values.

`validate(section, values, schema)` returns the section with defaults filled in, and fails with one line that
names an unknown field and the nearest known one, or a value outside its range.
"""
from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Mapping


@dataclasses.dataclass(frozen=True)
class Field:
  """One config field: its default, and the values it may take (bounds inclusive unless `open_low`)."""
  default: Any
  low: float | None = None
  high: float | None = None
  open_low: bool = False
  choices: tuple[Any, ...] | None = None

  def check(self, name: str, value: Any) -> None:
    if self.choices is not None and value not in self.choices:
      raise ValueError(f"{name}={value!r}: must be one of {', '.join(map(repr, self.choices))}.")
    if self.low is None and self.high is None:
      return
    if not isinstance(value, (int, float)) or isinstance(value, bool):
      raise ValueError(f"{name}={value!r}: must be a number.")
    if self.low is not None and (value <= self.low if self.open_low else value < self.low):
      raise ValueError(f"{name}={value!r}: must be {'>' if self.open_low else '>='} {self.low}.")
    if self.high is not None and value > self.high:
      raise ValueError(f"{name}={value!r}: must be <= {self.high}.")


def unknown_key_message(section: str, key: str, known: list[str], near_in: list[str] | None = None) -> str:
  """`method.queue_sise: unknown; did you mean queue_size? known: ...` (the nearest among `near_in` if given)."""
  near = difflib.get_close_matches(key, known if near_in is None else near_in, n=1, cutoff=0.5)
  hint = f" did you mean {near[0]}?" if near else ""
  return f"{section}.{key}: unknown;{hint} known: {', '.join(sorted(known))}."


def validate(section: str, values: Mapping[str, Any], schema: Mapping[str, Field],
             ignore: tuple[str, ...] = ("name",)) -> dict[str, Any]:
  """The section's values over the schema's defaults; an unknown key or an out-of-range value is one line."""
  out = {k: f.default for k, f in schema.items()}
  for key, value in dict(values).items():
    if key in ignore:
      out[key] = value
      continue
    if key not in schema:
      raise ValueError(unknown_key_message(section, key, list(schema)))
    schema[key].check(f"{section}.{key}", value)
    out[key] = value
  return out


def _plain(value: Any) -> Any:
  """Tuples as lists (a config reloaded from config.json holds lists)."""
  return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def validate_variant(section: str, values: Mapping[str, Any], schemas: Mapping[str, Mapping[str, Field]],
                     variant: str, ignore: tuple[str, ...] = ("name",)) -> dict[str, Any]:
  """`validate` against schemas[variant]; a field only other variants read may stay at their default (a config can
  declare them all and switch variant) and is dropped, set to anything else it is one line."""
  schema, own = schemas[variant], {}
  for key, value in dict(values).items():
    others = [s[key].default for s in schemas.values() if key in s]
    if not others and key not in ignore:
      raise ValueError(unknown_key_message(section, key, list(schema), near_in=sorted(set().union(*schemas.values()))))
    if key in schema or key in ignore:
      own[key] = value
    elif not any(_plain(value) == _plain(d) for d in others):
      readers = ", ".join(sorted(n for n, s in schemas.items() if key in s))
      raise ValueError(f"{section}.{key}={value!r}: {variant} does not read it (only {readers} do); "
                       f"set it back to {others[0]!r} or switch to one of those.")
  return validate(section, own, schema, ignore)
