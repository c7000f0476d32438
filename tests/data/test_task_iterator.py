"""The synthetic-task iterator resumes exactly and keeps streams apart."""

import numpy as np
import pytest

from data.tasks import iterator


def _make(rng, n):
  return {'x': rng.integers(0, 1000, (n, 4))}


def test_resume_is_exact_and_eval_is_disjoint():
  it = iterator.SyntheticIterator(_make, seed=3, batch_size=4)
  [next(it) for _ in range(5)]
  state = it.get_state()
  after = [next(it)['x'] for _ in range(3)]
  fresh = iterator.SyntheticIterator(_make, seed=3, batch_size=4)
  fresh.set_state(state)
  for a in after:
    np.testing.assert_array_equal(next(fresh)['x'], a)
  ev = iterator.eval_batches(_make, seed=3, batch_size=4, num_batches=2)
  np.testing.assert_array_equal(ev[0]['x'],
                                iterator.eval_batches(_make, seed=3, batch_size=4,
                                                      num_batches=1)[0]['x'])
  assert not np.array_equal(ev[0]['x'], after[0])
  other = iterator.SyntheticIterator(_make, seed=3, batch_size=4, process_index=1,
                                     process_count=2)
  assert not np.array_equal(next(other)['x'], next(iterator.SyntheticIterator(
      _make, seed=3, batch_size=4, process_index=0, process_count=2))['x'])
  with pytest.raises(ValueError, match='does not match'):
    iterator.SyntheticIterator(_make, seed=4, batch_size=4).set_state(state)


def test_processes_get_blocks_of_the_single_process_batches_and_resume_on_any_layout():
  single = iterator.SyntheticIterator(_make, seed=3, batch_size=4)
  batches = [next(single)['x'] for _ in range(6)]
  its = [iterator.SyntheticIterator(_make, seed=3, batch_size=4, process_index=p,
                                    process_count=2) for p in range(2)]
  for i in range(3):
    for p, it in enumerate(its):
      np.testing.assert_array_equal(next(it)['x'], batches[i][2 * p:2 * p + 2])
  state = iterator.SyntheticIterator.merge_states([it.get_state() for it in its])
  for p in range(4):  # resumed on four processes
    it = iterator.SyntheticIterator(_make, seed=3, batch_size=4, process_index=p,
                                    process_count=4)
    it.set_state(state)
    np.testing.assert_array_equal(next(it)['x'], batches[3][p:p + 1])
