"""Group word problems for state tracking, with a label at every position.

A sequence x_1 .. x_T of group elements (uniform at random) is labelled with its prefix
products p_t = x_1 x_2 ... x_t (Merrill et al. 2024, "The Illusion of State in State-Space
Models"; the protocol of the DeltaProduct paper, Siems et al. 2025, and Grazzi et al. 2025).

Tasks (`make_task(name)`):
  parity   bits, label = parity of the prefix (the group Z2).
  Z<m>     modular addition mod m (cyclic group), e.g. 'Z5', 'Z60'.
  S<n>     the symmetric group on n points (S3: 6 elements, S4: 24, S5: 120).
  A<n>     the alternating group (A4: 12, A5: 60).

Tokens and labels are element indices 0 .. |G| - 1 with 0 the identity. Permutations are
tuples p with p[i] the image of i, listed in lexicographic order; the product applies the
right factor first: (a b)(i) = a[b[i]].

Solving S3/S4/A5/S5 needs a model that tracks a non-abelian state (A5 and S5 are not
solvable: TC0-hard for constant-depth transformers and diagonal linear RNNs). Parity and Z<m>
are abelian; parity already needs negative eigenvalues in a linear RNN.
"""

from __future__ import annotations

import dataclasses
import itertools
import re

import numpy as np

from data.tasks import iterator as iterator_lib

TASKS = ('parity', 'Z<m>', 'S3', 'S4', 'S5', 'A4', 'A5')


@dataclasses.dataclass(frozen=True)
class Group:
  """A finite group by its multiplication table: table[a, b] = index of a b."""
  name: str
  table: np.ndarray  # [n, n] int32

  @property
  def order(self) -> int:
    return self.table.shape[0]

  def prefix_products(self, x_BxT: np.ndarray) -> np.ndarray:
    """p[:, t] = x[:, 0] x[:, 1] ... x[:, t] (left to right)."""
    p_B = np.zeros(x_BxT.shape[0], np.int32)  # the identity
    out = np.empty_like(x_BxT, dtype=np.int32)
    for t in range(x_BxT.shape[1]):
      p_B = self.table[p_B, x_BxT[:, t]]
      out[:, t] = p_B
    return out


def _permutation_group(name: str, n: int, even_only: bool) -> Group:
  perms = [p for p in itertools.permutations(range(n))
           if not even_only or _parity(p) == 0]
  index = {p: i for i, p in enumerate(perms)}
  table = np.array([[index[tuple(a[b[i]] for i in range(n))] for b in perms] for a in perms],
                   np.int32)
  return Group(name, table)


def _parity(p: tuple[int, ...]) -> int:
  inversions = sum(p[i] > p[j] for i in range(len(p)) for j in range(i + 1, len(p)))
  return inversions % 2


def _cyclic_group(name: str, m: int) -> Group:
  a = np.arange(m)
  return Group(name, ((a[:, None] + a[None, :]) % m).astype(np.int32))


def make_group(name: str) -> Group:
  """The group of task `name` (see module docstring); ValueError for an unknown name."""
  if name == 'parity':
    return _cyclic_group(name, 2)
  match = re.fullmatch(r'([ZSA])(\d+)', name)
  if match:
    kind, n = match.group(1), int(match.group(2))
    if kind == 'Z' and n >= 2:
      return _cyclic_group(name, n)
    if kind in 'SA' and 2 <= n <= 6:
      return _permutation_group(name, n, even_only=kind == 'A')
  raise ValueError(f'Unknown state-tracking task {name!r}; known: parity, Z<m> (m >= 2), '
                   'S<n> and A<n> (2 <= n <= 6).')


@dataclasses.dataclass(frozen=True)
class StateTrackingTask:
  """Batches {'inputs', 'targets'} [B, T] int32 of one group at one length."""
  group: Group
  seq_len: int

  @property
  def vocab_size(self) -> int:
    return self.group.order

  def make_batch(self, rng: np.random.Generator, batch_size: int) -> dict[str, np.ndarray]:
    x_BxT = rng.integers(0, self.group.order, (batch_size, self.seq_len), dtype=np.int32)
    return {'inputs': x_BxT, 'targets': self.group.prefix_products(x_BxT)}


def make_task(name: str, seq_len: int) -> StateTrackingTask:
  if seq_len <= 0:
    raise ValueError(f'seq_len must be positive, got {seq_len}.')
  return StateTrackingTask(make_group(name), seq_len)


def train_iterator(name: str, seq_len: int, *, seed: int, batch_size: int,
                   process_index: int = 0, process_count: int = 1
                   ) -> iterator_lib.SyntheticIterator:
  """Fresh samples every step (checkpointable: the state is the batch index)."""
  task = make_task(name, seq_len)
  return iterator_lib.SyntheticIterator(task.make_batch, seed=seed, batch_size=batch_size,
                                        process_index=process_index,
                                        process_count=process_count,
                                        name=f'state_tracking/{name}/{seq_len}')


def eval_batches(name: str, seq_len: int, *, seed: int, batch_size: int,
                 num_batches: int) -> list[dict[str, np.ndarray]]:
  """Held-out batches from a stream disjoint from training."""
  return iterator_lib.eval_batches(make_task(name, seq_len).make_batch, seed=seed,
                                   batch_size=batch_size, num_batches=num_batches)
