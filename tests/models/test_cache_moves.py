"""Owed moves: `Cache.gather(defer=True)` moves positions and lengths at once and each
attention layer's keys/values when the next forward writes it.

The property: whatever happens between a deferred gather and the forward after it (a full
forward, a forward over a range of layers, a write that lands on a moved slot, a second
gather), the logits and the cache equal those of the eager gather, and the logits equal a
plain forward over the committed sequence.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from testlib import jit_apply, small_config, sub_jaxprs
from decoding import Models, registry
from models import Cache, Transformer, init_params, local_to_cache_mask, tree_mask
from models.cache import Moves

TOL = 2e-5
S = 32


class _Model:
  def __init__(self, cfg):
    self.module, self.cfg = Transformer(cfg), cfg
    self._apply = jit_apply(self.module)

  def apply(self, params, *args, **kwargs):
    return self._apply(params, *args, **kwargs)


@pytest.fixture(scope='module')
def model():
  m = _Model(small_config(num_layers=3))
  return m, init_params(m.module, jax.random.key(0))


def _random_tree(rng: np.random.Generator, n: int, moved: bool):
  """(parents [n], depth [n], an accepted path: node ids root .. a random node). `moved`:
  the path ends at the last node, a child of the root, so that it must move."""
  parents = np.array([-1] + [int(rng.integers(0, i)) for i in range(1, n)])
  if moved:
    parents[n - 1] = 0
  depth = np.zeros(n, int)
  for i in range(1, n):
    depth[i] = depth[parents[i]] + 1
  node, path = n - 1 if moved else int(rng.integers(0, n)), []
  while node >= 0:
    path.append(node)
    node = parents[node]
  return parents, depth, path[::-1]


def _tree_step(m, params, rng, prefix_lens, n_nodes):
  """A ragged batch: prefixes, then a token tree written after each row's prefix.

  Returns (cache after the tree forward, src [B, D1], dst [B, D1], lengths [B], the
  committed token sequence per row). Row 0 keeps a path that must move (node n - 1 to the
  slot after the root)."""
  cfg = m.cfg
  B, P = len(prefix_lens), max(prefix_lens)
  toks = rng.integers(0, cfg.vocab_size, (B, P))
  pos = np.where(np.arange(P)[None] < np.array(prefix_lens)[:, None], np.arange(P)[None], -1)
  cache = m.apply(params, jnp.asarray(toks), jnp.asarray(pos), cache=Cache.init(cfg, B, S)).cache
  nodes = rng.integers(0, cfg.vocab_size, (B, n_nodes))
  local, positions, src, dst, seqs = [], [], [], [], []
  D1 = n_nodes
  for b, plen in enumerate(prefix_lens):
    parents, depth, path = _random_tree(rng, n_nodes, moved=b == 0)
    local.append(np.asarray(tree_mask(jnp.asarray(parents))))
    positions.append(plen + depth)
    keep = len(path) if b == 0 else int(rng.integers(1, len(path) + 1))
    src.append([plen + p for p in path[:keep]] + [-1] * (D1 - keep))
    dst.append([plen + d for d in range(keep)] + [-1] * (D1 - keep))
    seqs.append(list(toks[b, :plen]) + [int(nodes[b, p]) for p in path[:keep]])
  slots = jnp.asarray(prefix_lens)[:, None] + jnp.arange(n_nodes)[None]
  mask = local_to_cache_mask(jnp.asarray(np.stack(local)), slots, cache.lengths, S)
  cache = m.apply(params, jnp.asarray(nodes), jnp.asarray(np.stack(positions)), cache=cache,
                  write_slots_BxT=slots, attn_mask=mask).cache
  lengths = jnp.asarray([len(s) for s in seqs], jnp.int32)
  return cache, jnp.asarray(src), jnp.asarray(dst), lengths, seqs


def _assert_same_cache(a: Cache, b: Cache, lengths):
  for la, lb in zip(a.layers, b.layers):
    for r, n in enumerate(np.asarray(lengths)):
      np.testing.assert_array_equal(la.k[r, :, :n], lb.k[r, :, :n])
      np.testing.assert_array_equal(la.v[r, ..., :n], lb.v[r, ..., :n])
  np.testing.assert_array_equal(a.positions, b.positions)
  np.testing.assert_array_equal(a.lengths, b.lengths)


@pytest.mark.parametrize('seed', range(4))
def test_deferred_gather_then_forward_equals_gather_and_full_forward(model, seed):
  m, params = model
  rng = np.random.default_rng(seed)
  cache, src, dst, lengths, seqs = _tree_step(m, params, rng, [3, 6, 4], 6)
  eager = cache.gather(src, dst, lengths)
  lazy = cache.gather(src, dst, lengths, defer=True)
  assert lazy.moves is not None and eager.moves is None
  np.testing.assert_array_equal(lazy.positions, eager.positions)
  np.testing.assert_array_equal(lazy.lengths, eager.lengths)
  nxt = rng.integers(0, m.cfg.vocab_size, (3, 2))
  pos = lengths[:, None] + jnp.arange(2)[None]
  out_e = m.apply(params, jnp.asarray(nxt), pos, cache=eager)
  out_l = m.apply(params, jnp.asarray(nxt), pos, cache=lazy)
  assert out_l.cache.moves is None
  np.testing.assert_allclose(out_l.logits_BxTxV, out_e.logits_BxTxV, atol=1e-6)
  _assert_same_cache(out_l.cache, out_e.cache, lengths + 2)
  for b, seq in enumerate(seqs):
    full = m.apply(params, jnp.asarray([seq + list(nxt[b])])).logits_BxTxV[0, -2:]
    np.testing.assert_allclose(out_l.logits_BxTxV[b], full, atol=TOL)
  _assert_same_cache(lazy.settle(), eager, lengths)


def test_forward_over_a_range_of_layers_pays_the_rest_in_end_write(model):
  m, params = model
  rng = np.random.default_rng(7)
  cache, src, dst, lengths, _ = _tree_step(m, params, rng, [4, 2], 5)
  eager = cache.gather(src, dst, lengths)
  lazy = cache.gather(src, dst, lengths, defer=True)
  nxt = jnp.asarray(rng.integers(0, m.cfg.vocab_size, (2, 1)))
  low_e = m.apply(params, nxt, lengths[:, None], cache=eager, layer_range=(0, 1))
  low_l = m.apply(params, nxt, lengths[:, None], cache=lazy, layer_range=(0, 1))
  assert low_l.cache.moves is None
  _assert_same_cache(low_l.cache, low_e.cache, lengths + 1)


def test_a_slot_the_call_writes_keeps_the_calls_entry(model):
  """Rolled back after the deferred gather, a row writes over a slot a move still owes."""
  m, params = model
  rng = np.random.default_rng(3)
  cache, src, dst, lengths, _ = _tree_step(m, params, rng, [3, 3], 5)
  short = jnp.maximum(lengths - 1, 3)
  eager = cache.gather(src, dst, lengths).truncate(short)
  lazy = cache.gather(src, dst, lengths, defer=True).truncate(short)
  nxt = jnp.asarray(rng.integers(0, m.cfg.vocab_size, (2, 2)))
  pos = short[:, None] + jnp.arange(2)[None]
  out_e = m.apply(params, nxt, pos, cache=eager)
  out_l = m.apply(params, nxt, pos, cache=lazy)
  np.testing.assert_allclose(out_l.logits_BxTxV, out_e.logits_BxTxV, atol=1e-6)
  _assert_same_cache(out_l.cache, out_e.cache, short + 2)


def test_a_move_onto_a_written_slot_is_dropped():
  """One scatter takes the moves and the call's entries; on a GPU the order of duplicate
  indices is unspecified, so a move onto a slot the call writes must not be in it."""
  moves = Moves(src_BxN=jnp.array([[9, 11, 12], [4, 5, 6]]),
                dst_BxN=jnp.array([[5, 6, 7], [4, 5, S]]))
  got = moves.dst_besides(jnp.array([[6, 9], [7, 8]]), S)
  np.testing.assert_array_equal(got, [[5, S, 7], [4, 5, S]])


def test_a_second_gather_makes_the_owed_moves_first(model):
  m, params = model
  rng = np.random.default_rng(5)
  cache, src, dst, lengths, _ = _tree_step(m, params, rng, [2, 5], 6)
  # A second move of the just-moved path one slot on, before any forward.
  src2, dst2 = jnp.where(dst >= 0, dst, -1), jnp.where(dst >= 0, dst + 1, -1)
  eager = cache.gather(src, dst, lengths).gather(src2, dst2, lengths + 1)
  lazy = cache.gather(src, dst, lengths, defer=True).gather(src2, dst2, lengths + 1, defer=True)
  _assert_same_cache(lazy.settle(), eager, lengths + 1)


def test_owed_moves_misuse_gives_clear_errors(model):
  m, _ = model
  cache = Cache.init(m.cfg, 2, S).owing(4)
  with pytest.raises(ValueError, match='already'):
    cache.owing(4)
  # A writer that hands back a layer without making the moves it was handed.
  owed = tuple(cache.layer(i) for i in range(len(cache.layers)))
  with pytest.raises(ValueError, match='owed moves unmade'):
    cache.end_write(owed, cache.positions, jnp.zeros((2, 1), jnp.int32))


def _scatters_into(jaxpr, shapes) -> list[int]:
  """For each while loop in `jaxpr` (nested ones included): scatters into arrays of `shapes`
  in its body, not counting nested loops."""
  counts = []

  def count(jx):
    n = 0
    for e in jx.eqns:
      if e.primitive.name == 'while':
        counts.append(count(e.params['body_jaxpr'].jaxpr))
        count(e.params['cond_jaxpr'].jaxpr)
        continue
      n += (e.primitive.name.startswith('scatter')
            and tuple(e.outvars[0].aval.shape) in shapes)
      n += sum(count(sub) for sub in sub_jaxprs(e))
    return n

  count(jaxpr)
  return counts


@pytest.mark.parametrize('spec', ['ar', 'token_recycling:tree_nodes=12',
                                  'lookahead:window=2:ngram=2'])
def test_a_tree_step_writes_each_layers_cache_once(spec):
  """The accepted path moves inside the next forward's write: per decode step each layer's
  keys and values take one scatter, as in AR (with the move made apart, two)."""
  cfg = small_config(num_layers=3)
  model = Transformer(cfg)
  params = {'target': init_params(model, jax.random.key(0))}
  B = 2
  name, settings = registry.parse_spec(spec)
  dec = registry.build(name, settings).prepare(Models(model), params, batch=B, cache_size=S)
  jaxpr = jax.make_jaxpr(lambda p, t, n, k: dec.generate(
      Models(model), p, t, n, k, max_new_tokens=8, cache_size=S, eos_id=-1, pad_id=0))(
          params, jnp.ones((B, 6), jnp.int32), jnp.full((B,), 4, jnp.int32),
          jax.random.split(jax.random.key(1), B))
  c = Cache.init(cfg, B, S)
  shapes = {tuple(x.shape) for layer in c.layers for x in (layer.k, layer.v)}
  per_loop = _scatters_into(jaxpr.jaxpr, shapes)
  assert max(per_loop) == 2 * cfg.num_layers, per_loop
