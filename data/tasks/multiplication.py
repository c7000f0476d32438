"""Multi-digit multiplication with stepwise traces (implicit-CoT / SIM-CoT style).

Numbers are written least-significant digit first (as in Deng et al.'s implicit-CoT data), so
every step can be produced left to right with carries. Step i is the running sum
a * (b mod 10^(i+1)), i.e. the previous sum plus a times the i-th digit of b, shifted; the
last step equals the product.

  question  '321*654'         123 * 456, digits reversed
  steps     '837.' '8373.' '88065.'   (738, 3738, 56088 reversed)
  answer    '88065'           56088 reversed

Train: 3 x 3 digits. OOD: 4 x 4 digits.
"""

from __future__ import annotations

import numpy as np

from data.tasks import reasoning

SPLIT_DIGITS = {'train': 3, 'ood': 4}


def _rev(n: int) -> str:
  return str(n)[::-1]


def make_example(rng: np.random.Generator, digits: int) -> reasoning.Example:
  a = int(rng.integers(10 ** (digits - 1), 10 ** digits))
  b = int(rng.integers(10 ** (digits - 1), 10 ** digits))
  steps = []
  for i in range(digits):
    steps.append(_rev(a * (b % 10 ** (i + 1))) + '.')
  return reasoning.Example(question=f'{_rev(a)}*{_rev(b)}', steps=tuple(steps),
                           answer=_rev(a * b))


def solve(question: str) -> str:
  a, b = question.split('*')
  return _rev(int(a[::-1]) * int(b[::-1]))


def _generate(rng: np.random.Generator, split: str) -> reasoning.Example:
  return make_example(rng, SPLIT_DIGITS[split])


@reasoning.register('multiplication')
def multiplication() -> reasoning.ReasoningTask:
  d = SPLIT_DIGITS['ood']
  return reasoning.ReasoningTask(
      name='multiplication', generate=_generate, max_question_chars=2 * d + 1, max_steps=d,
      max_step_chars=2 * d + 1, max_answer_chars=2 * d,
      description='3 x 3 digit multiplication, running-sum steps, reversed digits',
      ood_description='4 x 4 digits')
