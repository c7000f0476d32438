"""Fused chain / tree verification kernels (interpret mode) against the reference, row by
row with the same uniforms: accepted counts, paths and residual distributions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.spec_verify import reference as ref
from pallas_kernels.spec_verify.fused import chain_verify_pallas, tree_verify_pallas

V = 300  # not a multiple of the vocabulary block


def _logp(key, shape, greedy_rows=()):
  lp = jax.nn.log_softmax(4.0 * jax.random.normal(key, shape), axis=-1)
  for b in greedy_rows:  # one-hot rows, as under greedy sampling
    lp = lp.at[b].set(jnp.where(jax.nn.one_hot(jnp.argmax(lp[b], -1), V, dtype=bool), 0.0,
                                -jnp.inf))
  return lp


def _check_residual(got, want):
  got, want = np.asarray(got), np.asarray(want)
  np.testing.assert_array_equal(np.isfinite(got), np.isfinite(want))
  fin = np.isfinite(want)
  np.testing.assert_allclose(got[fin], want[fin], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize('mode', ['deterministic', 'iid'])
def test_chain_matches_reference(mode):
  B, G = 24, 4
  ks = jax.random.split(jax.random.key(0), 5)
  logp = _logp(ks[0], (B, G + 1, V), greedy_rows=(0, 1))
  logq = _logp(ks[1], (B, G, V))
  # Drafts: often the target's argmax (so some chains get far), sometimes random.
  draft = jnp.where(jax.random.bernoulli(ks[2], 0.8, (B, G)), jnp.argmax(logp[:, :G], -1),
                    jax.random.randint(ks[3], (B, G), 0, V))
  valid = jnp.arange(G)[None, :] < jax.random.randint(ks[4], (B, 1), 0, G + 1)
  u = jax.random.uniform(jax.random.key(1), (B, G), minval=1e-6, maxval=1.0)
  q = None if mode == 'deterministic' else logq
  n, res = jax.jit(lambda: chain_verify_pallas(logp, q, draft, valid, u, mode=mode,
                                               block_v=128))()
  n_ref, res_ref = ref.chain_verify_reference(logp, q, draft, valid, u, mode=mode)
  np.testing.assert_array_equal(n, n_ref)
  assert len(set(np.asarray(n).tolist())) >= 3  # the cases vary
  _check_residual(res, res_ref)


def test_tree_deterministic_matches_reference():
  B, D, K = 16, 3, 3
  parents = [-1, 0, 0, 0, 1, 1, 2, 4, 4, 7]  # depth 3, fan-out up to 3
  T = len(parents)
  children = np.full((T, K), -1)
  for i, p in enumerate(parents[1:], 1):
    children[p, list(children[p]).index(-1)] = i
  ks = jax.random.split(jax.random.key(2), 3)
  logp = _logp(ks[0], (B, T, V), greedy_rows=(0,))
  top = jnp.argsort(-logp, axis=-1)[..., :3]  # children are the parent's top tokens
  tokens = jnp.zeros((B, T), jnp.int32)
  for i, p in enumerate(parents[1:], 1):
    rank = list(children[p]).index(i)
    tokens = tokens.at[:, i].set(top[:, p, rank])
  tokens = tokens.at[5, 2].set(tokens[5, 1])  # a duplicated child token
  u = jax.random.uniform(ks[2], (B, D, K), minval=1e-6, maxval=1.0)
  ch = jnp.broadcast_to(jnp.asarray(children), (B, T, K))
  path, n, res = jax.jit(lambda: tree_verify_pallas(logp, None, tokens, ch, u, block_v=128))()
  path_ref, n_ref, res_ref = ref.tree_verify_reference(logp, None, tokens, ch, u,
                                                       mode='deterministic')
  np.testing.assert_array_equal(n, n_ref)
  np.testing.assert_array_equal(path, path_ref)
  assert len(set(np.asarray(n).tolist())) >= 3
  _check_residual(res, res_ref)


def test_public_switch_routes_to_the_kernels(monkeypatch):
  """`impl='pallas'` on the public functions runs the fused kernels (interpreted here)."""
  import pallas_kernels.spec_verify as sv  # pylint: disable=g-import-not-at-top
  from pallas_kernels.spec_verify import gpu  # pylint: disable=g-import-not-at-top
  calls = []
  kernel = gpu.chain_verify
  monkeypatch.setattr(gpu, 'chain_verify', lambda *a: calls.append(1) or kernel(*a))
  B, G = 4, 3
  ks = jax.random.split(jax.random.key(3), 3)
  logp, logq = _logp(ks[0], (B, G + 1, V)), _logp(ks[1], (B, G, V))
  draft = jnp.argmax(logp[:, :G], -1).at[1, 1].set(0)
  valid = jnp.ones((B, G), bool)
  u = jax.random.uniform(ks[2], (B, G), minval=1e-6, maxval=1.0)
  n, res = sv.chain_verify(logp, logq, draft, valid, u, mode='iid', impl='pallas')
  assert calls, "impl='pallas' did not reach the kernel"
  n_ref, res_ref = ref.chain_verify_reference(logp, logq, draft, valid, u, mode='iid')
  np.testing.assert_array_equal(n, n_ref)
  _check_residual(res, res_ref)


def _sampled_case(key, B, T):
  """log p per node, log q near it (so drafts drawn from q are often accepted deep), with a
  greedy row (one-hot p) and a row where q == p (every test passes)."""
  k1, k2 = jax.random.split(key)
  logp = _logp(k1, (B, T, V), greedy_rows=(0,))
  logq = jax.nn.log_softmax(logp.at[0].set(0.0) + 0.7 * jax.random.normal(k2, (B, T, V)), -1)
  logq = logq.at[1].set(logp[1])
  return logp, logq


@pytest.mark.parametrize('G', [1, 3, 6])
def test_chain_traversal_matches_reference(G):
  """Block verification (mode 'traversal' on a chain): the kernel's accepted count and
  residual equal the reference's, for the same uniforms, over ragged chains."""
  B = 32
  ks = jax.random.split(jax.random.key(10 + G), 4)
  logp, logq = _sampled_case(ks[0], B, G + 1)
  logq = logq[:, :G]
  draft = jax.random.categorical(ks[1], logq, axis=-1)  # drafts drawn from q
  valid = jnp.arange(G)[None, :] < jax.random.randint(ks[2], (B, 1), 0, G + 1)
  u = jax.random.uniform(ks[3], (B, G), minval=1e-6, maxval=1.0)
  n, res = jax.jit(lambda: chain_verify_pallas(logp, logq, draft, valid, u, mode='traversal',
                                               block_v=128))()
  n_ref, res_ref = ref.chain_verify_reference(logp, logq, draft, valid, u, mode='traversal')
  np.testing.assert_array_equal(n, n_ref)
  assert len(set(np.asarray(n).tolist())) >= min(G + 1, 3)  # the cases vary
  _check_residual(res, res_ref)


TREES = {
    'fan 3-2-1, depth 4': [-1, 0, 0, 0, 1, 1, 2, 4, 4, 7, 3],
    'wide root (loses every child)': [-1, 0, 0, 0, 0],
    'eight nodes (no padding)': [-1, 0, 0, 1, 1, 2, 3, 6],
    'chain': [-1, 0, 1, 2],
}


def _depth(parents, i):
  return 0 if parents[i] < 0 else 1 + _depth(parents, parents[i])


@pytest.mark.parametrize('name', list(TREES))
def test_tree_traversal_matches_reference(name):
  """Traversal Verification of trees drafted from q: the kernel's path, accepted count and
  residual equal the reference's for the same uniforms (duplicate siblings included)."""
  parents = TREES[name]
  T, K = len(parents), max(max(parents.count(p) for p in range(len(parents))), 1)
  children = np.full((T, K), -1)
  for i, p in enumerate(parents[1:], 1):
    children[p, list(children[p]).index(-1)] = i
  D = max(_depth(parents, i) for i in range(T))
  B = 48
  ks = jax.random.split(jax.random.key(T), 3)
  logp, logq = _sampled_case(ks[0], B, T)
  own = jax.random.categorical(ks[1], logq, axis=-1)  # a token per node, drawn from its q
  tokens = own[:, np.maximum(parents, 0)]  # each child drawn from its parent's q
  if T > 3:
    tokens = tokens.at[2, 2].set(tokens[2, 1])  # a duplicated sibling
  u = jax.random.uniform(ks[2], (B, D, -(-(T - 1) // D)), minval=1e-6, maxval=1.0)
  ch = jnp.broadcast_to(jnp.asarray(children), (B, T, K))
  path, n, res = jax.jit(lambda: tree_verify_pallas(logp, logq, tokens, ch, u, mode='traversal',
                                                    block_v=128))()
  path_ref, n_ref, res_ref = ref.tree_verify_reference(logp, logq, tokens, ch, u,
                                                       mode='traversal')
  np.testing.assert_array_equal(n, n_ref)
  np.testing.assert_array_equal(path, path_ref)
  assert len(set(np.asarray(n).tolist())) >= min(D + 1, 3)
  _check_residual(res, res_ref)
