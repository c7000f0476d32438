"""Countdown: combine the given numbers with + - * / to reach the target.

Prompt: the numbers and the target, e.g. '3,7,25>46'. Answer: the steps, each 'a op b=c',
separated by commas, e.g. '7*3=21,21+25=46'. Solved = every step is arithmetically right
(division exact), uses numbers still available (each given number and each intermediate result
once), and the last result is the target. Any correct derivation counts, not only the
generator's.

The generator draws `count` numbers in [1, max_number], combines them in a random order with
random operators (keeping every intermediate a positive integer below 1000, division only
when exact) and states the result as the target.
"""

from __future__ import annotations

import re

import numpy as np

from data.tasks import exact_match

_STEP = re.compile(r'^(\d+)([-+*/])(\d+)=(\d+)$')
_OPS = '+-*/'


def _apply(a: int, op: str, b: int) -> int | None:
  if op == '+':
    return a + b
  if op == '-':
    return a - b if a > b else None
  if op == '*':
    return a * b if a * b < 1000 else None
  return a // b if b > 1 and a % b == 0 else None


def make_problem(rng: np.random.Generator, count: int, max_number: int) -> tuple[str, str]:
  """(prompt, answer) strings."""
  while True:
    numbers = [int(x) for x in rng.integers(1, max_number + 1, size=count)]
    pool = list(numbers)
    steps = []
    while len(pool) > 1:
      i, j = rng.choice(len(pool), size=2, replace=False)
      a, b = pool[i], pool[j]
      options = [(op, r) for op in _OPS if (r := _apply(a, op, b)) is not None]
      if not options:
        break
      op, r = options[int(rng.integers(len(options)))]
      steps.append(f'{a}{op}{b}={r}')
      pool = [x for k, x in enumerate(pool) if k not in (i, j)] + [r]
    if len(pool) == 1:
      return f'{",".join(map(str, numbers))}>{pool[0]}', ','.join(steps)


def is_valid_solution(prompt: str, answer: str) -> bool:
  """True iff `answer`'s steps are correct, use available numbers, and end at the target."""
  try:
    given, target = prompt.split('>')
    pool = [int(x) for x in given.split(',')]
    target_value = int(target)
  except ValueError:
    return False
  last = None
  for step in answer.split(','):
    m = _STEP.match(step)
    if not m:
      return False
    a, op, b, c = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
    if _apply(a, op, b) != c:
      return False
    for x in (a, b):
      if x not in pool:
        return False
      pool.remove(x)
    pool.append(c)
    last = c
  return last == target_value


def _task(name: str, count: int, max_number: int) -> exact_match.TextTask:
  prompt_chars = count * 3 + 4   # numbers up to two digits, commas, '>', target up to 3 digits
  answer_chars = (count - 1) * 12
  return exact_match.TextTask(
      name=name, generate=lambda rng: make_problem(rng, count, max_number),
      score=is_valid_solution, max_prompt_chars=prompt_chars, max_answer_chars=answer_chars,
      description=f'countdown with {count} numbers in [1, {max_number}]')


@exact_match.register('countdown3')
def countdown3() -> exact_match.TextTask:
  return _task('countdown3', 3, 20)


@exact_match.register('countdown4')
def countdown4() -> exact_match.TextTask:
  return _task('countdown4', 4, 20)
