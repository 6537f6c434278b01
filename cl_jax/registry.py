"""Name -> component registries; an unknown name fails with one line listing the known names."""
from __future__ import annotations

from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
  """A small mapping from names to components (methods, backbones, datasets, optimizers)."""

  def __init__(self, kind: str):
    self.kind = kind
    self._items: dict[str, T] = {}

  def register(self, name: str) -> Callable[[T], T]:
    def add(item: T) -> T:
      if name in self._items:
        raise ValueError(f"{self.kind} '{name}' is registered twice.")
      self._items[name] = item
      return item
    return add

  def get(self, name: str) -> T:
    if name not in self._items:
      raise ValueError(
          f"Unknown {self.kind} '{name}'; known {self.kind}s: {', '.join(sorted(self._items))}.")
    return self._items[name]

  def names(self) -> list[str]:
    return sorted(self._items)

  def __contains__(self, name: str) -> bool:
    return name in self._items
