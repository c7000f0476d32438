"""Traversal Verification: the rule derived exactly, the jnp reference against it, and its
output distribution sampled on a tiny vocabulary.

1. Exact enumeration (numpy, V = 3): every draft tree of a small shape, weighted by its
   drafting probability, and every accept/reject branch of the rule, weighted by its
   probability, give the committed tokens' distribution exactly. The rule as implemented
   (q kept for i.i.d. siblings, q minus the rejected token for siblings without replacement,
   a_v <- S / (S + 1 - a_v)) reproduces the target to round-off; the crossed q updates and the
   variant a_v <- min(1, S / (1 - q_v(x))) do not (errors 1e-2 and more).
2. The jnp reference follows that rule run by run: same end node and residual as the numpy
   walk for the same uniforms.
3. Sampled (V = 4, tree "2 children, then 1 each"): 2 * 10^5 vmapped trials draft the tree
   i.i.d. from q and verify it; the first token (4 cells) and the first two tokens (16 cells)
   must match p: TV < 0.006 and < 0.012 (3x the expected TV of an exact sampler,
   0.5 sqrt(2 m / (pi n)) = 0.0018 and 0.0036) and chi-square p-value > 0.01. The crossed q
   update fails the same check, and p == q accepts every path down to its leaf.
4. Acceptance: on the same drafted trees, traversal's mean accepted length >= the 'iid'
   (SpecInfer / RRS) rule's, to 3 standard errors.
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import pallas_kernels.spec_verify as sv
import testlib

# ------------------------------------------------------------------ the rule in numpy

SHAPES = {'2-then-1': (-1, 0, 0, 1, 2), 'chain3': (-1, 0, 1, 2), '1-then-2': (-1, 0, 1, 1),
          '2x2-uneven': (-1, 0, 0, 1, 1, 2),
          'delayed-1-then-2x2': (-1, 0, 1, 1, 2, 3)}  # trees.delayed(5, 3, 1) (DDTE)


def _kids(parents):
  return [[i for i in range(len(parents)) if parents[i] == j] for j in range(len(parents))]


def _walk(parents, tokens, p, q, test, wor=False, bad_a=False):
  """Traversal verification in plain Python. p, q: node -> distribution (numpy).

  `test(a)` lists the outcomes of testing a leaf with acceptance probability a as
  (weight, accepted) pairs: [(a, True), (1 - a, False)] enumerates, a one-element list runs.
  Returns [(weight, end node, residual distribution at the end node)].
  """
  kids = _kids(parents)
  a = {0: 1.0}
  for i in range(1, len(parents)):
    a[i] = min(1.0, a[parents[i]] * p[parents[i]][tokens[i]] / q[parents[i]][tokens[i]])
  out = []

  def rec(alive, p, q, a, w):
    v = 0
    while any(alive[c] for c in kids[v]):
      v = next(c for c in kids[v] if alive[c])
    if v == 0:
      out.append((w, 0, p[0]))
      return
    for wt, accepted in test(a[v]):
      if wt == 0:
        continue
      if accepted:
        out.append((w * wt, v, p[v]))
        continue
      par, x = parents[v], tokens[v]
      p2, q2, a2, alive2 = dict(p), dict(q), dict(a), list(alive)
      alive2[v] = False
      r = np.maximum(a[par] * p[par] - q[par], 0.0)
      s = r.sum()
      p2[par] = r / s if s > 1e-15 else p[par]
      if wor:
        qq = q[par].copy()
        qq[x] = 0.0
        q2[par] = qq / qq.sum() if qq.sum() > 0 else q[par]
      if bad_a:
        a2[par] = min(1.0, s / (1.0 - q[par][x]))
      else:
        a2[par] = s / (s + 1.0 - a[par]) if s + 1.0 - a[par] > 1e-15 else 1.0
      stack = [par]
      while stack:
        u = stack.pop()
        for c in kids[u]:
          if alive2[c]:
            qc = q2[u][tokens[c]]  # 0 only for a crossed variant (a duplicate removed)
            a2[c] = min(1.0, a2[u] * p2[u][tokens[c]] / qc) if qc > 0 else 0.0
            stack.append(c)
      rec(alive2, p2, q2, a2, w * wt)

  rec([True] * len(parents), dict(p), dict(q), a, 1.0)
  return out


def _tables(rng, V, depth):
  """Random p and q for every context up to `depth` tokens: tuples of arrays [V]*d + [V]."""
  def dist(shape):
    x = rng.gamma(0.7, size=shape + (V,))
    return x / x.sum(-1, keepdims=True)
  return ([dist((V,) * d) for d in range(depth + 1)], [dist((V,) * d) for d in range(depth + 1)])


def _paths(parents, tokens):
  paths = [()]
  for i in range(1, len(parents)):
    paths.append(paths[parents[i]] + (tokens[i],))
  return paths


def _exact_error(parents, V, seed, *, draw, wor, bad_a=False):
  """Max |P(first two committed) - p(a) p(b | a)| over all trees and branches."""
  rng = np.random.default_rng(seed)
  depth = max(len(pa) for pa in _paths(parents, [0] * len(parents)))
  P, Q = _tables(rng, V, depth + 1)
  kids = _kids(parents)
  total = np.zeros((V, V))
  for toks in itertools.product(range(V), repeat=len(parents) - 1):
    tokens = (0,) + toks
    paths = _paths(parents, tokens)
    w = 1.0  # drafting probability: i.i.d. or without replacement among siblings
    for j in range(len(parents)):
      qj, seen = Q[len(paths[j])][paths[j]], []
      for c in kids[j]:
        t = tokens[c]
        if draw == 'wor':
          w *= 0.0 if t in seen else qj[t] / (1.0 - sum(qj[s] for s in seen))
          seen.append(t)
        else:
          w *= qj[t]
    if w == 0:
      continue
    p = {i: P[len(pa)][pa] for i, pa in enumerate(paths)}
    q = {i: Q[len(pa)][pa] for i, pa in enumerate(paths)}
    for wt, end, res in _walk(parents, tokens, p, q, lambda a: [(a, True), (1 - a, False)],
                              wor=wor, bad_a=bad_a):
      path = paths[end]
      if len(path) >= 2:
        total[path[0], path[1]] += w * wt
      elif len(path) == 1:
        total[path[0]] += w * wt * res
      else:
        total += w * wt * res[:, None] * P[1]
  return np.abs(total - P[0][:, None] * P[1]).max()


@pytest.mark.parametrize('shape', list(SHAPES))
def test_rule_is_exact_by_enumeration(shape):
  for seed in range(2):
    assert _exact_error(SHAPES[shape], 3, seed, draw='iid', wor=False) < 1e-12
    assert _exact_error(SHAPES[shape], 3, seed, draw='wor', wor=True) < 1e-12


def test_wrong_variants_are_not_exact():
  """The q update must match how siblings were drawn; min(1, S / (1 - q(x))) is wrong."""
  parents = SHAPES['2-then-1']
  assert _exact_error(parents, 3, 0, draw='iid', wor=True) > 1e-3
  assert _exact_error(parents, 3, 0, draw='wor', wor=False) > 1e-3
  assert _exact_error(parents, 3, 0, draw='iid', wor=False, bad_a=True) > 1e-3
  assert _exact_error(parents, 3, 0, draw='wor', wor=True, bad_a=True) > 1e-3


# ------------------------------------------------------------------ jnp == the rule, run by run

def _children_table(parents, K):
  return np.array([k + [-1] * (K - len(k)) for k in _kids(parents)], np.int32)


@pytest.mark.parametrize('wor', [False, True])
def test_reference_follows_the_rule_run_by_run(wor):
  V, B = 5, 64
  parents = SHAPES['2x2-uneven']
  T = len(parents)
  kids = _children_table(parents, 2)
  rng = np.random.default_rng(3)
  logp = np.log(rng.dirichlet(np.full(V, 0.7), size=(B, T)))
  logq = np.log(rng.dirichlet(np.full(V, 0.7), size=(B, T)))
  tokens = np.concatenate([np.zeros((B, 1), np.int64), rng.integers(0, V, (B, T - 1))], 1)
  if wor:  # siblings distinct
    tokens[:, 2] = (tokens[:, 1] + 1 + rng.integers(0, V - 1, B)) % V
    tokens[:, 4] = (tokens[:, 3] + 1 + rng.integers(0, V - 1, B)) % V
  u = rng.uniform(1e-6, 1.0, (B, 2, 3)).astype(np.float32)
  path, n, res = sv.traversal_verify(jnp.asarray(logp), jnp.asarray(logq),
                                     jnp.asarray(tokens, jnp.int32),
                                     jnp.asarray(np.broadcast_to(kids, (B,) + kids.shape)),
                                     jnp.asarray(u), without_replacement=wor)
  depths = [len(pa) for pa in _paths(parents, [0] * T)]
  for b in range(B):
    stream = iter(u[b].ravel())
    p = {i: np.exp(logp[b, i]) for i in range(T)}
    q = {i: np.exp(logq[b, i]) for i in range(T)}
    [(_, end, res_py)] = _walk(parents, tokens[b], p, q,
                               lambda a: [(1.0, bool(next(stream) <= a))], wor=wor)
    assert int(n[b]) == depths[end], b
    chain = [end]
    while chain[-1] > 0:
      chain.append(parents[chain[-1]])
    np.testing.assert_array_equal(path[b, :n[b] + 1], chain[::-1])
    np.testing.assert_allclose(np.exp(res[b]), res_py, atol=1e-5)


# ------------------------------------------------------------------ sampled, V = 4

V4 = 4
TRIALS = 200_000
TV1, TV2 = 0.006, 0.012
TREE = SHAPES['2-then-1']  # root -> c1, c2 (i.i.d.); c1 -> g1, c2 -> g2


def _logit_tables(seed, same=False):
  k = jax.random.split(jax.random.key(seed), 2)
  lp = [jax.nn.log_softmax(1.5 * jax.random.normal(jax.random.fold_in(k[0], d),
                                                   (V4,) * d + (V4,))) for d in range(3)]
  if same:
    return lp, lp
  lq = [jax.nn.log_softmax(0.6 * lp[d] + 1.2 * jax.random.normal(jax.random.fold_in(k[1], d),
                                                                 (V4,) * d + (V4,)))
        for d in range(3)]
  return lp, lq


@functools.partial(jax.jit, static_argnames=('mode', 'wor'),
                   compiler_options=testlib.RUN_OPTIMISED)  # 2 * 10^5 trials
def _sampled(keys, lp, lq, mode='traversal', wor=False):
  kids = jnp.asarray(_children_table(TREE, 2))

  def trial(key):
    k = jax.random.split(key, 6)
    c = jax.random.categorical(k[0], lq[0], shape=(2,))  # i.i.d. siblings
    g1 = jax.random.categorical(k[1], lq[1][c[0]])
    g2 = jax.random.categorical(k[2], lq[1][c[1]])
    tokens = jnp.stack([0, c[0], c[1], g1, g2]).astype(jnp.int32)
    logp = jnp.stack([lp[0], lp[1][c[0]], lp[1][c[1]], lp[2][c[0], g1], lp[2][c[1], g2]])
    logq = jnp.stack([lq[0], lq[1][c[0]], lq[1][c[1]], lq[0], lq[0]])
    u = jax.random.uniform(k[3], (1, 2, 2), minval=1e-7)
    if mode == 'traversal':
      path, n, res = sv.traversal_verify(logp[None], logq[None], tokens[None], kids[None], u,
                                         without_replacement=wor)
    else:
      path, n, res = sv.tree_verify(logp[None], logq[None], tokens[None], kids[None], u,
                                    mode=mode)
    path, n, y = path[0], n[0], jax.random.categorical(k[4], res[0])
    t1 = jnp.where(n >= 1, tokens[jnp.maximum(path[1], 0)], y)
    t2 = jnp.where(n >= 2, tokens[jnp.maximum(path[2], 0)],
                   jnp.where(n == 1, y, jax.random.categorical(k[5], lp[1][y])))
    return t1, t2, n, path
  return jax.vmap(trial)(keys)


def _pvalue(counts, probs):
  n = counts.sum()
  big = probs * n >= 5
  obs = np.append(counts[big], counts[~big].sum())
  exp = np.append(probs[big] * n, probs[~big].sum() * n)
  return stats.chisquare(obs[exp > 0], exp[exp > 0]).pvalue


def _stats(t1, t2, lp):
  p1 = np.exp(np.asarray(lp[0], np.float64))
  p12 = (p1[:, None] * np.exp(np.asarray(lp[1], np.float64))).ravel()
  c1 = np.bincount(np.asarray(t1), minlength=V4).astype(np.float64)
  c12 = np.bincount(np.asarray(t1) * V4 + np.asarray(t2), minlength=V4 * V4).astype(np.float64)
  tv1 = 0.5 * np.abs(c1 / c1.sum() - p1 / p1.sum()).sum()
  tv2 = 0.5 * np.abs(c12 / c12.sum() - p12 / p12.sum()).sum()
  return tv1, tv2, _pvalue(c1, p1 / p1.sum()), _pvalue(c12, p12 / p12.sum())


@pytest.mark.parametrize('seed', [0, 1])
def test_sampled_distribution_matches_target(seed):
  lp, lq = _logit_tables(seed)
  t1, t2, _, _ = _sampled(jax.random.split(jax.random.key(100 + seed), TRIALS), lp, lq)
  tv1, tv2, pv1, pv2 = _stats(t1, t2, lp)
  assert tv1 < TV1 and tv2 < TV2, (tv1, tv2)
  assert pv1 > 0.01 and pv2 > 0.01, (pv1, pv2)


def test_sampled_wrong_q_update_is_detected():
  """Removing the rejected token from q although siblings were i.i.d. biases the output."""
  lp, lq = _logit_tables(0)
  t1, t2, _, _ = _sampled(jax.random.split(jax.random.key(7), TRIALS), lp, lq, wor=True)
  tv1, tv2, pv1, pv2 = _stats(t1, t2, lp)
  assert tv2 > TV2 or pv2 < 1e-3, (tv2, pv2)


def test_p_equal_q_accepts_every_path_to_its_leaf():
  lp, lq = _logit_tables(2, same=True)
  t1, t2, n, path = _sampled(jax.random.split(jax.random.key(8), 20_000), lp, lq)
  assert bool(jnp.all(n == 2))
  assert bool(jnp.all(path == jnp.asarray([0, 1, 3])))  # the first leaf in post-order
  tv1, tv2, pv1, pv2 = _stats(t1, t2, lp)
  assert pv1 > 0.01 and pv2 > 0.01, (pv1, pv2)


def test_accepts_at_least_as_many_tokens_as_iid():
  """Same drafted trees (same keys): E[n] traversal >= E[n] 'iid' (RRS) - 3 std errors."""
  lp, lq = _logit_tables(0)
  keys = jax.random.split(jax.random.key(9), TRIALS)
  n_tv = np.asarray(_sampled(keys, lp, lq)[2], np.float64)
  n_iid = np.asarray(_sampled(keys, lp, lq, mode='iid')[2], np.float64)
  diff = n_tv - n_iid
  se = diff.std() / np.sqrt(len(diff))
  assert diff.mean() > -3 * se, (n_tv.mean(), n_iid.mean(), se)
