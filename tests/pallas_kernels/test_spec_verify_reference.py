"""Speculative verification rules: exact target distributions (statistical), greedy = argmax.

A toy "language model" over V = 16 tokens: p(. | prefix) and q(. | prefix) are softmaxes of
random logit tables indexed by the last two tokens of the prefix. Each trial drafts a tree
(or chain) from q, verifies it against p with the rule under test, and keeps the committed
tokens; a second round runs when the first committed only one token. With 10^5 vmapped trials
(fixed seed) the first token and the two-token prefix must match p:

  * total variation <= 0.012 (first token, 16 cells) and <= 0.03 (two-token prefix, 256
    cells); with n = 10^5 the expected TV of an exact sampler is about 0.004 and 0.018;
  * chi-square goodness of fit p-value > 0.01 (cells with expected count < 5 pooled).

A deliberately wrong rule (the 'iid' residual used on children drawn without replacement)
fails the same bounds, so the tests can fail.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import pallas_kernels.spec_verify as sv
from pallas_kernels.spec_verify import reference as spec_verify_reference
import testlib
from decoding import sampling

V = 16
START = V  # context padding symbol (row index V of the tables)
TRIALS = 100_000
TV1, TV2 = 0.012, 0.03


def _tables(seed: int = 0, scale_p: float = 1.5, scale_q: float = 1.5):
  kp, kq = jax.random.split(jax.random.key(seed))
  lp = scale_p * jax.random.normal(kp, (V + 1, V + 1, V))
  # q correlates with p but differs: a realistic draft.
  lq = 0.6 * lp + scale_q * 0.8 * jax.random.normal(kq, (V + 1, V + 1, V))
  return lp, lq


def _processed(tables, cfg):
  """The sampling config applied once to every context: [V + 1, V + 1, V] log-probs."""
  return tuple(sampling.log_probs(t, cfg) for t in tables)


def _logp(table, cfg, a, b):
  del cfg  # tables are already processed
  return table[a, b]


# Static tree templates: parents of nodes 1.. (node 0 is the root).
CHAIN3 = (-1, 0, 1, 2)
TREE_3x2 = (-1, 0, 0, 0, 1, 1, 2, 2, 3, 3)


def _children_table(parents):
  T = len(parents)
  kids = [[i for i in range(T) if parents[i] == j] for j in range(T)]
  K = max(1, max(len(k) for k in kids))
  return np.array([k + [-1] * (K - len(k)) for k in kids], np.int32)


def _depths(parents):
  d = [0] * len(parents)
  for i in range(1, len(parents)):
    d[i] = d[parents[i]] + 1
  return d


def _draw_children(key, logq_V, k, how):
  """k children from q: i.i.d., without replacement (Gumbel-top-k) or top-k (deterministic)."""
  if how == 'iid':
    return jax.random.categorical(key, logq_V, shape=(k,))
  if how == 'wor':
    g = jax.random.gumbel(key, (V,))
    return jax.lax.top_k(jnp.where(jnp.isfinite(logq_V), logq_V + g, -jnp.inf), k)[1]
  return jax.lax.top_k(logq_V, k)[1]


def _one_round(key, ctx2, tables, cfg, parents, mode, draw):
  """Drafts a tree after context (a, b), verifies it; returns (tokens [D+1], count)."""
  lp, lq = tables
  T = len(parents)
  kids = _children_table(parents)
  depth = _depths(parents)
  D, K = max(depth), kids.shape[1]
  k_draft, k_u, k_res = jax.random.split(key, 3)
  tokens = [jnp.int32(-1)] * T
  ctx = [None] * T  # last two tokens after each node
  ctx[0] = ctx2
  logq_nodes, logp_nodes = [None] * T, [None] * T
  for j in range(T):  # parents precede children
    a, b = ctx[j]
    logq_nodes[j] = _logp(lq, cfg, a, b)
    logp_nodes[j] = _logp(lp, cfg, a, b)
    n_kids = int((kids[j] >= 0).sum())
    if n_kids:
      drawn = _draw_children(jax.random.fold_in(k_draft, j), logq_nodes[j], n_kids, draw)
      for r, c in enumerate(kids[j][:n_kids]):
        tokens[c] = drawn[r].astype(jnp.int32)
        ctx[c] = (b, tokens[c])
  tokens_T = jnp.stack(tokens).at[0].set(0)
  if mode == 'traversal':  # one stream of leaf tests: T - 1 at most
    K = max(K, -(-(T - 1) // D))
  u = jax.random.uniform(k_u, (D, K), minval=1e-7, maxval=1.0)
  path, n, res = sv.tree_verify(jnp.stack(logp_nodes)[None], jnp.stack(logq_nodes)[None],
                                tokens_T[None], jnp.asarray(kids)[None], u[None], mode=mode)
  path, n, res = path[0], n[0], res[0]
  y = jax.random.categorical(k_res, res)
  out = jnp.where(jnp.arange(D + 1) < n, tokens_T[jnp.maximum(jnp.roll(path, -1), 0)], 0)
  out = out.at[n].set(y)
  return out, n + 1


@functools.partial(jax.jit, static_argnames=('parents', 'mode', 'draw'),
                   compiler_options=testlib.RUN_OPTIMISED)  # 10^5 trials
def _first_two_jit(keys, tables, *, parents, mode, draw):
  def trial(key):
    def round_fn(carry, k):
      t1, got = carry  # tokens committed so far (at most the first one matters)
      ctx = jnp.where(got == 0, START, t1)
      out, n = _one_round(k, (jnp.int32(START), ctx), tables, None, parents, mode, draw)
      new_t1 = jnp.where(got == 0, out[0], t1)
      t2 = jnp.where(got == 0, out[1], out[0])
      return (new_t1, got + n), (t2, got + n)
    (t1, _), (t2s, gots) = jax.lax.scan(round_fn, (jnp.int32(0), jnp.int32(0)),
                                        jax.random.split(key, 2))
    return t1, jnp.where(gots[0] >= 2, t2s[0], t2s[1])
  return jax.vmap(trial)(keys)


def _first_two(keys, tables, *, cfg, parents, mode, draw):
  return _first_two_jit(keys, _processed(tables, cfg), parents=parents, mode=mode, draw=draw)


def _exact(tables, cfg):
  lp = np.exp(np.asarray(_processed(tables, cfg)[0]), dtype=np.float64)
  p1, p2 = lp[START, START], lp[START, :V]
  return p1 / p1.sum(), p1[:, None] * p2 / p2.sum(1, keepdims=True)


def _chi2_pvalue(counts, probs):
  counts, probs = counts.ravel(), probs.ravel() / probs.sum()
  n = counts.sum()
  big = probs * n >= 5
  obs = np.append(counts[big], counts[~big].sum())
  exp = np.append(probs[big] * n, probs[~big].sum() * n)
  keep = exp > 0
  return stats.chisquare(obs[keep], exp[keep]).pvalue


def _check(t1, t2, tables, cfg):
  t1, t2 = np.asarray(t1), np.asarray(t2)
  p1, p12 = _exact(tables, cfg)
  c1 = np.bincount(t1, minlength=V).astype(np.float64)
  c12 = np.bincount(t1 * V + t2, minlength=V * V).reshape(V, V).astype(np.float64)
  tv1 = 0.5 * np.abs(c1 / c1.sum() - p1).sum()
  tv2 = 0.5 * np.abs(c12 / c12.sum() - p12).sum()
  return tv1, tv2, _chi2_pvalue(c1, p1), _chi2_pvalue(c12, p12)


CFGS = {'t1': sampling.SamplingConfig(temperature=1.0),
        't0.7-k6-p0.9': sampling.SamplingConfig(temperature=0.7, top_k=6, top_p=0.9)}
CASES = [  # (mode, how children are drawn, tree)
    ('iid', 'iid', CHAIN3),          # Leviathan / Chen chain speculative sampling
    ('deterministic', 'topk', CHAIN3),
    ('deterministic', 'topk', TREE_3x2),  # EAGLE top-k children
    ('iid', 'iid', TREE_3x2),        # SpecInfer, with replacement
    ('wor', 'wor', TREE_3x2),        # Sequoia / RSD, without replacement
    ('kseq', 'iid', TREE_3x2),       # SpecTr K-SEQ
    ('traversal', 'iid', CHAIN3),    # block verification
    ('traversal', 'iid', TREE_3x2),  # Traversal Verification
]


@pytest.fixture(scope='module')
def tables():
  return _tables()


@pytest.mark.parametrize('cfg_name', list(CFGS))
@pytest.mark.parametrize('mode,draw,parents', CASES,
                         ids=[f'{m}-{d}-T{len(p)}' for m, d, p in CASES])
def test_verifier_gives_exact_target_distribution(tables, mode, draw, parents, cfg_name):
  cfg = CFGS[cfg_name]
  keys = jax.random.split(jax.random.key(1234), TRIALS)
  t1, t2 = _first_two(keys, tables, cfg=cfg, parents=parents, mode=mode, draw=draw)
  tv1, tv2, pv1, pv2 = _check(t1, t2, tables, cfg)
  assert tv1 < TV1 and tv2 < TV2, (tv1, tv2)
  assert pv1 > 0.01 and pv2 > 0.01, (pv1, pv2)


def test_wrong_rule_is_detected(tables):
  """Children drawn without replacement but verified with the with-replacement residual: the
  second child is tested against a q it was not drawn from, which biases the output."""
  cfg = CFGS['t1']
  keys = jax.random.split(jax.random.key(99), TRIALS)
  t1, t2 = _first_two(keys, tables, cfg=cfg, parents=TREE_3x2, mode='iid', draw='wor')
  tv1, tv2, pv1, pv2 = _check(t1, t2, tables, cfg)
  assert tv1 > TV1 or pv1 < 1e-3, (tv1, pv1)


@functools.partial(jax.jit, static_argnames=('mode',))
def _chain_vs_tree(tables, *, mode):
  lp, lq = _processed(tables, CFGS['t0.7-k6-p0.9'])
  B, G = 4096, 3
  k = jax.random.split(jax.random.key(5), 4)
  logp = lp[jax.random.randint(k[0], (B, G + 1), 0, V + 1),
            jax.random.randint(k[1], (B, G + 1), 0, V + 1)]
  logq = lq[jax.random.randint(k[0], (B, G), 0, V + 1),
            jax.random.randint(k[2], (B, G), 0, V + 1)]
  drafts = jax.random.categorical(k[3], logq).astype(jnp.int32)
  u = jax.random.uniform(k[2], (B, G), minval=1e-7)
  valid = jnp.arange(G)[None] < jax.random.randint(k[1], (B, 1), 0, G + 1)
  kids = jnp.asarray(_children_table(CHAIN3))
  kids_B = jnp.where(jnp.concatenate([valid, jnp.zeros((B, 1), bool)], 1)[..., None],
                     kids[None], -1)
  tokens = jnp.concatenate([jnp.zeros((B, 1), jnp.int32), drafts], 1)
  logq_T = jnp.concatenate([logq, logq[:, :1]], 1)
  chain = sv.chain_verify(logp, logq, drafts, valid, u, mode=mode)
  tree = sv.tree_verify(logp, logq_T, tokens, kids_B, u[..., None], mode=mode)
  return chain, tree


def test_chain_closed_form_equals_tree_walk(tables):
  """chain_verify (no loop) and tree_verify on a one-path tree agree on every row."""
  G = 3
  for mode in ('iid', 'deterministic', 'traversal'):
    (n_c, res_c), (path, n_t, res_t) = _chain_vs_tree(tables, mode=mode)
    np.testing.assert_array_equal(n_c, n_t)
    np.testing.assert_allclose(jnp.exp(res_c), jnp.exp(res_t), atol=1e-6)
    np.testing.assert_array_equal(jnp.where(jnp.arange(G + 1)[None] <= n_t[:, None],
                                            jnp.arange(G + 1)[None], -1), path)


@jax.jit
def _greedy_chain(tables):
  lp, _ = tables
  greedy = sampling.SamplingConfig()
  B, G = 512, 4
  k = jax.random.split(jax.random.key(8), 3)
  raw = lp[jax.random.randint(k[0], (B, G + 1), 0, V + 1), 3]
  logp = sampling.log_probs(raw, greedy)
  argmax = jnp.argmax(raw, -1)
  # Drafts equal the argmax with probability 0.7 each.
  drafts = jnp.where(jax.random.uniform(k[1], (B, G)) < 0.7, argmax[:, :G],
                     (argmax[:, :G] + 1) % V).astype(jnp.int32)
  u = jax.random.uniform(k[2], (B, G), minval=1e-7)
  valid = jnp.ones((B, G), bool)
  # A greedy draft model's q is one-hot on the draft itself.
  onehot_q = jnp.where(jax.nn.one_hot(drafts, V, dtype=bool), 0.0, -jnp.inf)
  out = [sv.chain_verify(logp, None, drafts, valid, u, mode='deterministic'),
         sv.chain_verify(logp, onehot_q, drafts, valid, u, mode='iid'),
         sv.chain_verify(logp, onehot_q, drafts, valid, u, mode='traversal')]
  expect = jnp.sum(jnp.cumprod(drafts == argmax[:, :G], axis=1), axis=1)
  return out, expect, argmax


def test_greedy_accepts_exactly_the_argmax_prefix(tables):
  out, expect, argmax = _greedy_chain(tables)
  for n, res in out:
    np.testing.assert_array_equal(n, expect)
    np.testing.assert_array_equal(jnp.argmax(res, -1), argmax[jnp.arange(len(n)), n])
    assert bool(jnp.all(jnp.isneginf(res).sum(-1) == V - 1))


@jax.jit
def _kseq_check():
  k = jax.random.split(jax.random.key(3), 2)
  p = jax.nn.softmax(2 * jax.random.normal(k[0], (64, V)))
  q = jax.nn.softmax(2 * jax.random.normal(k[1], (64, V)))
  out = []
  for n in (1, 2, 4):
    rho = sv.kseq_rho(p, q, n)
    beta = sv.kseq_beta(p, q, rho)
    out.append((rho, 1 - (1 - beta) ** n, rho * beta, sv.kseq_residual(p, q, n)))
  return out


def test_kseq_rho_solves_its_equation():
  for n, (rho, lhs, rhs, r) in zip((1, 2, 4), _kseq_check()):
    assert bool(jnp.all(lhs <= rhs + 1e-6)) and bool(jnp.all(rhs - lhs < 1e-4))
    assert bool(jnp.all((rho >= 1) & (rho <= n)))
    np.testing.assert_allclose(r.sum(-1), 1.0, atol=1e-5)
    assert bool(jnp.all(r >= 0))


def test_kseq_rho_equals_every_step_of_the_bisection():
  """Stopping once the brackets stop moving gives the rho of all KSEQ_ITERS halvings."""
  def full_bisection(p, q, n):
    k = jnp.float32(n)
    lo, hi = jnp.ones(p.shape[:-1], jnp.float32), jnp.full(p.shape[:-1], k, jnp.float32)
    for _ in range(spec_verify_reference.KSEQ_ITERS):
      mid = 0.5 * (lo + hi)
      beta = sv.kseq_beta(p, q, mid)
      neg = 1.0 - (1.0 - beta) ** k - mid * beta <= 0
      lo, hi = jnp.where(neg, lo, mid), jnp.where(neg, mid, hi)
    return hi

  keys = jax.random.split(jax.random.key(11), 2)
  p = jax.nn.softmax(3 * jax.random.normal(keys[0], (32, V)))
  q = jax.nn.softmax(3 * jax.random.normal(keys[1], (32, V)))
  for n in (1, 2, 3, 5, 8, 40):
    np.testing.assert_array_equal(jax.jit(sv.kseq_rho, static_argnums=2)(p, q, n),
                                  jax.jit(full_bisection, static_argnums=2)(p, q, n),
                                  err_msg=f'k={n}')


def test_bad_arguments():
  x = jnp.zeros((1, 2, V))
  with pytest.raises(ValueError, match='Unknown verification mode'):
    sv.tree_verify(x, x, jnp.zeros((1, 2), jnp.int32), -jnp.ones((1, 2, 1), jnp.int32),
                   jnp.ones((1, 1, 1)), mode='typical')
  with pytest.raises(ValueError, match="needs the draft's log q"):
    sv.tree_verify(x, None, jnp.zeros((1, 2), jnp.int32), -jnp.ones((1, 2, 1), jnp.int32),
                   jnp.ones((1, 1, 1)), mode='iid')
  with pytest.raises(ValueError, match='impl'):
    sv.chain_verify(x, None, jnp.zeros((1, 1), jnp.int32), jnp.ones((1, 1), bool),
                    jnp.ones((1, 1)), mode='deterministic', impl='cuda')
