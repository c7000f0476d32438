"""A checkpointable iterator over generated batches (synthetic tasks).

Global batch i is `make_batch(np.random.default_rng([seed, 0, i]), batch_size)`; process p of P
generates it and keeps its block of rows [p·B/P, (p+1)·B/P), so the batches do not depend on
the number of processes (generating is cheap next to a training step). Any batch can be
regenerated from (seed, index) alone: the state is just the index, the same on every process,
and resuming is exact on any process layout. Evaluation batches come from a disjoint stream.
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
    if not 0 <= process_index < process_count:
      raise ValueError(f'Need 0 <= process_index < process_count; got {process_index}, '
                       f'{process_count}.')
    self.make_batch, self.seed, self.name = make_batch, int(seed), name
    self.batch_size = batch_size
    self.local_batch = batch_size // process_count
    self.row_start = process_index * self.local_batch
    self.row_stop = self.row_start + self.local_batch
    self.index = 0

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([self.seed, 0, self.index])
    self.index += 1
    batch = self.make_batch(rng, self.batch_size)
    if self.local_batch == self.batch_size:
      return batch
    return {k: v[self.row_start:self.row_stop] for k, v in batch.items()}

  def get_state(self) -> dict[str, Any]:
    return {'index': self.index, 'seed': self.seed, 'name': self.name}

  @staticmethod
  def merge_states(states: list[dict[str, Any]]) -> dict[str, Any]:
    """The states of every process of a job (all equal) -> one state."""
    if any(s != states[0] for s in states):
      raise ValueError(f'Synthetic iterators of one job disagree: {states}.')
    return states[0]

  def set_state(self, state: dict[str, Any]) -> None:
    expected = {'seed': self.seed, 'name': self.name}
    got = {k: state.get(k) for k in expected}
    if got != expected:
      raise ValueError(f'Iterator state {got} does not match this iterator {expected}.')
    self.index = int(state['index'])


def eval_batches(make_batch: MakeBatch, *, seed: int, batch_size: int,
                 num_batches: int) -> list[dict[str, np.ndarray]]:
  """A fixed list of evaluation batches from a stream disjoint from training."""
  return [make_batch(np.random.default_rng([seed, EVAL_STREAM, i]), batch_size)
          for i in range(num_batches)]
