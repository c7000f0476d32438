"""One registry idiom for the whole project: a name -> factory table.

  DECODERS = Registry('decoder')
  DECODERS.add('ar', ARDecoder)            # or @DECODERS.register('ar') on the factory
  DECODERS.get('ar'); DECODERS.names()

A name registered twice is an error; an unknown name is an error that lists the known ones.
Each package lists what it registers by importing its modules explicitly in its
`__init__.py`, so a room's contents are in one file.

This module imports nothing of the project (nor any third-party package), so every layer of
DESIGN.md (`data/`, `models/`, `decoding/`, `training/`) may use it.
"""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar('T')


class Registry(Generic[T]):
  """Names -> factories (classes or functions) of one kind ('decoder', 'objective', ...)."""

  def __init__(self, kind: str, hint: str = ''):
    self.kind = kind
    self.hint = hint  # appended to the unknown-name error, e.g. where to list them
    self._items: dict[str, T] = {}

  def add(self, name: str, factory: T) -> T:
    if not name:
      raise ValueError(f'A {self.kind} needs a non-empty name.')
    if name in self._items and self._items[name] is not factory:
      raise ValueError(f'{self.kind.capitalize()} {name!r} is registered twice.')
    self._items[name] = factory
    return factory

  def register(self, name: str) -> Callable[[T], T]:
    """Decorator: `@REG.register('name')` registers the decorated factory."""
    return lambda factory: self.add(name, factory)

  def remove(self, name: str) -> None:
    """Forgets `name` (tests that register a throwaway entry)."""
    self._items.pop(name, None)

  def get(self, name: str) -> T:
    if name not in self._items:
      raise ValueError(f'Unknown {self.kind} {name!r}; registered {self.kind}s: {self.names()}.'
                       + (f' {self.hint}' if self.hint else ''))
    return self._items[name]

  def names(self) -> list[str]:
    return sorted(self._items)

  def __contains__(self, name: str) -> bool:
    return name in self._items

  def __iter__(self) -> Iterator[str]:
    return iter(self.names())

  def __len__(self) -> int:
    return len(self._items)
