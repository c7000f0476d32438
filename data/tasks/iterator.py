"""A checkpointable iterator over generated batches (synthetic tasks).

Batch i of process p is `make_batch(np.random.default_rng([seed, p, i]), batch_size)`, so any
batch can be regenerated from (seed, process, index) alone: the state is just the index, and
resuming is exact. Evaluation batches come from a disjoint stream (process id -1).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

MakeBatch = Callable[[np.random.Generator, int], dict[str, np.ndarray]]
EVAL_STREAM = 2**31 - 1


class SyntheticIterator:
  """Infinite iterator of generated batches with get_state()/set_state()."""

  def __init__(self, make_batch: MakeBatch, *, seed: int, batch_size: int,
               process_index: int = 0, process_count: int = 1, name: str = ''):
    if batch_size % process_count:
      raise ValueError(f'batch_size={batch_size} must be divisible by the number of processes '
                       f'({process_count}).')
    self.make_batch, self.seed, self.name = make_batch, int(seed), name
    self.local_batch = batch_size // process_count
    self.process_index, self.process_count = process_index, process_count
    self.index = 0

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([self.seed, self.process_index, self.index])
    self.index += 1
    return self.make_batch(rng, self.local_batch)

  def get_state(self) -> dict[str, Any]:
    return {'index': self.index, 'seed': self.seed, 'name': self.name,
            'process': [self.process_index, self.process_count]}

  def set_state(self, state: dict[str, Any]) -> None:
    expected = {'seed': self.seed, 'name': self.name,
                'process': [self.process_index, self.process_count]}
    got = {k: state.get(k) for k in expected}
    if got != expected:
      raise ValueError(f'Iterator state {got} does not match this iterator {expected}.')
    self.index = int(state['index'])


def eval_batches(make_batch: MakeBatch, *, seed: int, batch_size: int,
                 num_batches: int) -> list[dict[str, np.ndarray]]:
  """A fixed list of evaluation batches from a stream disjoint from training."""
  return [make_batch(np.random.default_rng([seed, EVAL_STREAM, i]), batch_size)
          for i in range(num_batches)]
