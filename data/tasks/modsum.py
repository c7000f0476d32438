"""A chain of additions and subtractions mod 10, one running value per step.

  question  '3+5-9+2-7+4'       six digits, five operations, applied left to right
  steps     '8.' '9.' '1.' '4.' '8.'   the running value mod 10 after each operation
  answer    '8'

Each step is one table lookup (a digit, an operator, the previous value), so a CPU-sized
model can learn the chain; the answer needs every step right, and chance is 10%. The
question's digits are two characters apart and so are the steps: with a fixed number of
operands, operand i sits at the same distance before step i for every i.

Train: 6 digits (5 steps). OOD: 8 digits (7 steps, a longer chain than ever trained on).
"""

from __future__ import annotations

import numpy as np

from data.tasks import reasoning

SPLIT_DIGITS = {'train': 6, 'ood': 8}
OPS = '+-'


def make_example(rng: np.random.Generator, n: int) -> reasoning.Example:
  digits = [int(d) for d in rng.integers(0, 10, size=n)]
  ops = [OPS[int(i)] for i in rng.integers(0, len(OPS), size=n - 1)]
  value, steps = digits[0], []
  for op, d in zip(ops, digits[1:]):
    value = (value + d if op == '+' else value - d) % 10
    steps.append(f'{value}.')
  question = str(digits[0]) + ''.join(op + str(d) for op, d in zip(ops, digits[1:]))
  return reasoning.Example(question=question, steps=tuple(steps), answer=str(value))


def _generate(rng: np.random.Generator, split: str) -> reasoning.Example:
  return make_example(rng, SPLIT_DIGITS[split])


@reasoning.register('modsum')
def modsum() -> reasoning.ReasoningTask:
  n = SPLIT_DIGITS['ood']
  return reasoning.ReasoningTask(
      name='modsum', generate=_generate, max_question_chars=2 * n - 1, max_steps=n - 1,
      max_step_chars=2, max_answer_chars=1,
      description='6 digits, 5 additions / subtractions mod 10, running value per step',
      ood_description='8 digits (7 steps)')
