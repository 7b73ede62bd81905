"""Small helpers that several layers must share, so each thing is done one way.

The bottom layer of the package (docs/architecture.md): it imports no other
stalign module.
"""

from collections.abc import Callable
import importlib
from typing import Generic
from typing import TypeVar

import jax
import jax.numpy as jnp
import numpy as np

T = TypeVar("T")


def ceil_div(n, d):
  """ceil(n / d) for ints or integer arrays (numpy or jax)."""
  return -(-n // d)


def round_up(n, multiple):
  """The smallest multiple of `multiple` that is >= n (padding to whole seconds, frames, ...)."""
  return ceil_div(n, multiple) * multiple


def unit(x):
  """Rows scaled to unit length; numpy in, numpy out (evaluators), jax in, jax out (training)."""
  xp = jnp if isinstance(x, jax.Array) else np
  return x / xp.maximum(xp.linalg.norm(x, axis=-1, keepdims=True), 1e-6)


def flatten_dict(tree: dict, prefix: str = "", sep: str = ".") -> dict:
  """{"a": {"b": 1}} -> {"a.b": 1}: nested results and configs as flat scalars for TensorBoard."""
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(flatten_dict(v, f"{prefix}{k}{sep}", sep))
    else:
      out[f"{prefix}{k}"] = v
  return out


class Registry(Generic[T]):
  """Implementations looked up by the name a config gives (data sources, evaluators).

  `modules` are imported on the first lookup, so each implementation can
  register itself where it is defined without the registry importing it eagerly.
  """

  def __init__(self, kind: str, modules: tuple[str, ...] = ()):
    self.kind = kind
    self._modules = modules
    self._entries: dict[str, T] = {}

  def register(self, name: str) -> Callable[[T], T]:
    def wrap(fn: T) -> T:
      self._entries[name] = fn
      return fn

    return wrap

  def names(self) -> list[str]:
    self._import_modules()
    return sorted(self._entries)

  def get(self, name: str) -> T:
    self._import_modules()
    if name not in self._entries:
      raise KeyError(f"unknown {self.kind} {name!r}; known: {sorted(self._entries)}")
    return self._entries[name]

  def _import_modules(self) -> None:
    for module in self._modules:
      importlib.import_module(module)
