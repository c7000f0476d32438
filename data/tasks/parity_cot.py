"""Parity of a bit string with running-parity steps.

  question  '1011001110110100'
  steps     '1.' '0.' '1.' '0.'    running parity after each chunk of 4 bits
  answer    '0'

Train: 8-16 bits. OOD: 20-24 bits (more steps than ever trained on).
"""

from __future__ import annotations

import numpy as np

from data.tasks import reasoning

CHUNK = 4
SPLIT_BITS = {'train': (8, 16), 'ood': (20, 24)}


def make_example(rng: np.random.Generator, n: int) -> reasoning.Example:
  bits = rng.integers(0, 2, size=n)
  running = np.cumsum(bits) % 2
  ends = list(range(CHUNK - 1, n, CHUNK))
  if ends[-1] != n - 1:
    ends.append(n - 1)
  steps = tuple(f'{running[e]}.' for e in ends)
  return reasoning.Example(question=''.join(map(str, bits)), steps=steps,
                           answer=str(running[-1]))


def _generate(rng: np.random.Generator, split: str) -> reasoning.Example:
  lo, hi = SPLIT_BITS[split]
  return make_example(rng, int(rng.integers(lo, hi + 1)))


@reasoning.register('parity')
def parity() -> reasoning.ReasoningTask:
  hi = SPLIT_BITS['ood'][1]
  return reasoning.ReasoningTask(
      name='parity', generate=_generate, max_question_chars=hi,
      max_steps=-(-hi // CHUNK), max_step_chars=2, max_answer_chars=1,
      description='parity of 8-16 bits, running parity every 4 bits',
      ood_description='20-24 bits')
