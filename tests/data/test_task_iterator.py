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
