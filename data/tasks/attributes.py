"""Attributes of a generated task's answers, for classifier-guided decoding (CtrlDiff's
controllable generation: decoding/diffusion/guidance.py).

An `Attribute` labels a (prompt, answer) pair with one of its classes, or -1 when the answer
does not say (it does not parse). The label of a training row comes from the generator's
answer; the same function checks a decoded answer, so "attribute success" is measured on
the output text, not by the classifier that guided it.

  attr = attributes.get('step_parity')        # task 'progression'
  attr.label('', '12 15 18 21 24 27 30')      # 0: odd step ('odd', 'even')

'step_parity' (task 'progression', an unconditional arithmetic progression of 7 terms, step
1..9): whether the step (second term minus first) is even. Every answer of the task has one
parity or the other, so the attribute can always be met without giving up validity; the
generator makes even steps 4 times in 9. It is a property of the whole answer that no single
token shows: a classifier has to read at least two terms.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import registry as registry_lib


@dataclasses.dataclass(frozen=True)
class Attribute:
  """A labelling of a task's answers: `label(prompt, answer) -> class index or -1`."""
  name: str
  task: str
  classes: tuple[str, ...]
  label: Callable[[str, str], int]
  description: str = ''

  def class_index(self, cls: str | int) -> int:
    """The index of class `cls` (a name or an index); ValueError if it is not one."""
    if isinstance(cls, str) and not cls.lstrip('-').isdigit():
      if cls not in self.classes:
        raise ValueError(f'Attribute {self.name!r} has classes {self.classes}, not {cls!r}.')
      return self.classes.index(cls)
    i = int(cls)
    if not 0 <= i < len(self.classes):
      raise ValueError(f'Attribute {self.name!r} has {len(self.classes)} classes '
                       f'{self.classes}; class {i} is not one.')
    return i


ATTRIBUTES: registry_lib.Registry[Attribute] = registry_lib.Registry('attribute')


def get(name: str) -> Attribute:
  return ATTRIBUTES.get(name)


def names() -> list[str]:
  return ATTRIBUTES.names()


def _step_parity(prompt: str, answer: str) -> int:
  del prompt
  try:
    a, b = (int(x) for x in answer.split(' ')[:2])
  except ValueError:
    return -1
  return int((b - a) % 2 == 0)


ATTRIBUTES.add('step_parity', Attribute(
    name='step_parity', task='progression', classes=('odd', 'even'), label=_step_parity,
    description='the step of the progression (second term minus first) is odd / even'))
