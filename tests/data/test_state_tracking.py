"""Group word problems: the groups are groups, labels are prefix products, streams are
deterministic and resumable."""

import itertools

import numpy as np
import pytest

from data.tasks import state_tracking as st


@pytest.mark.parametrize('name,order', [('parity', 2), ('Z5', 5), ('S3', 6), ('S4', 24),
                                        ('A4', 12), ('A5', 60), ('S5', 120)])
def test_groups_have_the_right_order_and_are_groups(name, order):
  g = st.make_group(name)
  t = g.table
  assert g.order == order and t.shape == (order, order)
  e = np.arange(order)
  np.testing.assert_array_equal(t[0], e)  # 0 is the identity
  np.testing.assert_array_equal(t[:, 0], e)
  for row in t:  # Latin square: every row and column is a permutation (inverses exist)
    assert sorted(row) == list(e)
  assert sorted(t[:, 3 % order]) == list(e)
  rng = np.random.default_rng(0)
  a, b, c = rng.integers(0, order, (3, 200))
  np.testing.assert_array_equal(t[t[a, b], c], t[a, t[b, c]])  # associativity


def test_s3_is_non_abelian_z5_abelian_and_the_composition_convention():
  t = st.make_group('S3').table
  assert (t != t.T).any()
  assert (st.make_group('Z5').table == st.make_group('Z5').table.T).all()
  # Composition convention: (a b)(i) = a[b[i]] on the lexicographically listed permutations.
  perms = list(itertools.permutations(range(3)))
  a, b = 1, 3
  ab = tuple(perms[a][perms[b][i]] for i in range(3))
  assert t[a, b] == perms.index(ab)


@pytest.mark.parametrize('name', ['parity', 'S3', 'A5'])
def test_labels_are_prefix_products(name):
  task = st.make_task(name, 17)
  batch = task.make_batch(np.random.default_rng(1), 4)
  x, y = batch['inputs'], batch['targets']
  assert x.shape == y.shape == (4, 17) and x.dtype == y.dtype == np.int32
  table = task.group.table
  for b in range(4):
    p = 0
    for t in range(17):
      p = table[p, x[b, t]]
      assert y[b, t] == p
  if name == 'parity':
    np.testing.assert_array_equal(y, np.cumsum(x, 1) % 2)


def test_streams_are_deterministic_resumable_and_disjoint():
  it = st.train_iterator('S3', 8, seed=3, batch_size=4)
  first = [next(it)['inputs'] for _ in range(3)]
  state = it.get_state()
  after = next(it)['inputs']
  again = st.train_iterator('S3', 8, seed=3, batch_size=4)
  again.set_state(state)
  np.testing.assert_array_equal(next(again)['inputs'], after)
  np.testing.assert_array_equal(next(st.train_iterator('S3', 8, seed=3, batch_size=4))['inputs'],
                                first[0])
  ev = st.eval_batches('S3', 8, seed=3, batch_size=4, num_batches=2)
  assert not any(np.array_equal(e['inputs'], f) for e in ev for f in first)
  with pytest.raises(ValueError, match='does not match'):
    st.train_iterator('S4', 8, seed=3, batch_size=4).set_state(state)


def test_unknown_tasks_are_refused():
  for bad in ('S9', 'Q8', 'Z1', 'parity2'):
    with pytest.raises(ValueError, match='Unknown state-tracking task'):
      st.make_group(bad)
  with pytest.raises(ValueError, match='seq_len'):
    st.make_task('S3', 0)
