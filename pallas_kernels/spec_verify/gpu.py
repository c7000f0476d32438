"""Fused speculative verification for GPUs (Pallas, Triton lowering): one program per row.

The reference exponentiates every [G + 1, V] (and [G, V]) row to read a handful of
probabilities. Here the accept/reject walk reads only the G (or D x K) probabilities it
tests — scalar loads at the drafted token ids — and the vocabulary is swept once more, for
the single distribution the next token is sampled from:

  chain ('deterministic', 'iid'; 'wor'/'kseq' are 'iid' for one child per node): accept
      draft g while u_g <= p_g(x_g) [/ q_g(x_g)]; the residual is norm(max(0, p_n - q_n)) (or
      p_n without x_n), p_n after a full accept (the bonus token).
  tree ('deterministic', EAGLE's rule): walk from the root; at each node test its children
      in order, accepting child x with probability p(x) renormalised over the tokens not yet
      rejected there (rejected tokens are zeroed); the residual is the stopping node's p with
      its rejected tokens zeroed, renormalised.
  chain 'traversal' (block verification): the sequence-level acceptances a_d on scalars, one
      sweep for every node's S_d = sum [a_d p_d - q_d]_+ at once (none if the leaf passes),
      the leaf-to-root walk on scalars, then the end node's residual
      (`reference._chain_traversal`).
  tree 'traversal': the walk of `reference._traversal_row` with the per-node vectors in
      registers and each updated p kept as the scalars of its updates (no [V] row stored);
      one vocabulary sweep per rejected leaf.
Rows of the vocabulary are float32 log-probabilities ([B, rows, V], -inf outside the
support); the residual comes back as log-probabilities like the reference's.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels import common

TINY = 1e-30


@dataclasses.dataclass(frozen=True)
class Static:
  deterministic: bool
  block_v: int
  interpret: object = False


def _residual(out_ref, row_ref, qrow_ref, removed, bv: int, nblk: int, scale=None):
  """out = log(norm(r)) with r = max(0, scale p - q) (q given; scale 1 unless given) or p
  without `removed` tokens; falls back to p where r has (numerically) no mass, like the
  reference."""
  def r_block(j):
    sl = pl.ds(pl.multiple_of(j * bv, bv), bv)
    p = jnp.exp(row_ref(sl))
    r = p
    if qrow_ref is not None:
      r = jnp.maximum((p if scale is None else scale * p) - jnp.exp(qrow_ref(sl)), 0.0)
    if removed:
      ids = j * bv + lax.broadcasted_iota(jnp.int32, (bv,), 0)
      for x in removed:
        r = jnp.where(ids == x, 0.0, r)
    return sl, p, r

  mass = lax.fori_loop(0, nblk, lambda j, acc: acc + r_block(j)[2].sum(), jnp.float32(0.0))
  ok = mass > 1e-12

  def write(j, _):
    sl, p, r = r_block(j)
    out = jnp.where(ok, r / jnp.maximum(mass, TINY), p)
    out_ref[sl] = jnp.where(out > 0, jnp.log(jnp.maximum(out, TINY)), -jnp.inf)
    return 0
  lax.fori_loop(0, nblk, write, 0)


def _chain_kernel(draft_ref, valid_ref, u_ref, logp_ref, *refs, st: Static, G: int):
  logq_ref = None if st.deterministic else refs[0]
  n_ref, res_ref = refs[-2:]
  n, alive = jnp.int32(0), jnp.bool_(True)
  for g in range(G):
    x = draft_ref[g]
    ratio = jnp.exp(logp_ref[g, x])
    if logq_ref is not None:
      ratio = ratio / jnp.maximum(jnp.exp(logq_ref[g, x]), TINY)
    alive = alive & (u_ref[g] <= ratio) & (valid_ref[g] != 0)
    n = n + alive.astype(jnp.int32)
  g_n = jnp.minimum(n, G - 1)
  rejected = (n < G) & (valid_ref[g_n] != 0)
  x_n = draft_ref[g_n]
  bv = st.block_v
  nblk = res_ref.shape[0] // bv
  row = lambda sl: logp_ref[n, sl]
  if logq_ref is None:
    removed = [jnp.where(rejected, x_n, -1)]
    _residual(res_ref, row, None, removed, bv, nblk)
  else:
    # Not rejected (a full accept, or the chain ended early): the residual is p_n itself.
    qrow = lambda sl: jnp.where(rejected, logq_ref[g_n, sl], -jnp.inf)
    _residual(res_ref, row, qrow, [], bv, nblk)
  n_ref[...] = n


def chain_verify(logp_BxG1xV, logq_BxGxV, draft_BxG, valid_BxG, u_BxG, st: Static):
  """(n [B] int32, residual log p [B, V] float32); V a multiple of block_v."""
  B, G1, V = logp_BxG1xV.shape
  G = G1 - 1
  small = pl.BlockSpec((None, G), lambda b: (b, 0))
  in_specs = [small, small, small, pl.BlockSpec((None, G1, V), lambda b: (b, 0, 0))]
  args = [draft_BxG.astype(jnp.int32), valid_BxG.astype(jnp.int32), u_BxG.astype(jnp.float32),
          logp_BxG1xV.astype(jnp.float32)]
  if not st.deterministic:
    in_specs.append(pl.BlockSpec((None, G, V), lambda b: (b, 0, 0)))
    args.append(logq_BxGxV.astype(jnp.float32))
  return pl.pallas_call(
      functools.partial(_chain_kernel, st=st, G=G),
      grid=(B,), in_specs=in_specs,
      out_specs=[pl.BlockSpec((None,), lambda b: (b,)), pl.BlockSpec((None, V), lambda b: (b, 0))],
      out_shape=[jax.ShapeDtypeStruct((B,), jnp.int32), jax.ShapeDtypeStruct((B, V), jnp.float32)],
      compiler_params=common.triton_params(4, 1), interpret=st.interpret,
      name='chain_verify',
  )(*args)


def _chain_traversal_kernel(draft_ref, valid_ref, u_ref, logp_ref, logq_ref, n_ref, res_ref, *,
                            st: Static, G: int):
  """Block verification (`reference._chain_traversal`): the scalars a_d from the drafted
  tokens' p and q, one vocabulary sweep for every S_d = sum [a_d p_d - q_d]_+ at once (none
  when the leaf passes its test), the leaf-to-root walk on scalars, then the end node's
  residual."""
  true = pl.program_id(0) >= 0
  a, m, alive = [jnp.float32(1.0)], jnp.int32(0), true
  for d in range(1, G + 1):
    x = draft_ref[d - 1]
    ratio = jnp.exp(logp_ref[d - 1, x]) / jnp.maximum(jnp.exp(logq_ref[d - 1, x]), TINY)
    a.append(jnp.minimum(1.0, a[-1] * ratio))
    alive = alive & (valid_ref[d - 1] != 0)
    m = m + alive.astype(jnp.int32)
  bv = st.block_v
  nblk = res_ref.shape[0] // bv
  # The leaf (node m) is tested with its original a: when it passes (or m = 0), no S is read
  # and the sweep is skipped.
  a_m = functools.reduce(lambda acc, d: jnp.where(m == d, a[d], acc), range(G + 1), a[0])
  leaf_passes = (m == 0) | (u_ref[0] <= a_m)

  def sweep(j, acc):
    sl = pl.ds(pl.multiple_of(j * bv, bv), bv)
    return tuple(s + jnp.maximum(a[d] * jnp.exp(logp_ref[d, sl]) - jnp.exp(logq_ref[d, sl]),
                                 0.0).sum() for d, s in enumerate(acc))
  S = lax.fori_loop(0, jnp.where(leaf_passes, 0, nblk), sweep,
                    tuple(jnp.float32(0.0) for _ in range(G)))
  a_new = []
  for d in range(G):
    den = S[d] + 1.0 - a[d]
    a_new.append(jnp.where(den > 1e-12, S[d] / jnp.maximum(den, TINY), 1.0))
  n, done = jnp.int32(0), ~true
  for d in range(G, 0, -1):  # node m first (its original a), then its ancestors (updated a)
    a_d = a[d] if d == G else jnp.where(m == d, a[d], a_new[d])
    passed = ~done & (d <= m) & (u_ref[jnp.clip(m - d, 0, G - 1)] <= a_d)
    n = jnp.where(passed, d, n)
    done = done | passed
  rejected = n < m
  a_n = functools.reduce(lambda acc, d: jnp.where(n == d, a[d], acc), range(G + 1),
                         jnp.float32(1.0))
  q_n = jnp.minimum(n, G - 1)
  _residual(res_ref, lambda sl: logp_ref[n, sl],
            lambda sl: jnp.where(rejected, logq_ref[q_n, sl], -jnp.inf), [], bv, nblk,
            scale=jnp.where(rejected, a_n, 1.0))
  n_ref[...] = n


def chain_traversal(logp_BxG1xV, logq_BxGxV, draft_BxG, valid_BxG, u_BxG, st: Static):
  """(n [B] int32, residual log p [B, V] float32) of block verification; V a multiple of
  block_v."""
  B, G1, V = logp_BxG1xV.shape
  G = G1 - 1
  small = pl.BlockSpec((None, G), lambda b: (b, 0))
  return pl.pallas_call(
      functools.partial(_chain_traversal_kernel, st=st, G=G),
      grid=(B,),
      in_specs=[small, small, small, pl.BlockSpec((None, G1, V), lambda b: (b, 0, 0)),
                pl.BlockSpec((None, G, V), lambda b: (b, 0, 0))],
      out_specs=[pl.BlockSpec((None,), lambda b: (b,)), pl.BlockSpec((None, V), lambda b: (b, 0))],
      out_shape=[jax.ShapeDtypeStruct((B,), jnp.int32), jax.ShapeDtypeStruct((B, V), jnp.float32)],
      compiler_params=common.triton_params(4, 1), interpret=st.interpret,
      name='chain_traversal',
  )(draft_BxG.astype(jnp.int32), valid_BxG.astype(jnp.int32), u_BxG.astype(jnp.float32),
    logp_BxG1xV.astype(jnp.float32), logq_BxGxV.astype(jnp.float32))


def _tree_kernel(tokens_ref, children_ref, u_ref, logp_ref, path_ref, n_ref, res_ref, *,
                 st: Static, D: int, K: int):
  # Traced initial values: Triton's lowering cannot take jnp literals as operands of ops
  # like `not` (a Python 0 index is fine).
  false = pl.program_id(0) < 0
  cur, done, n = 0, false, jnp.int32(0)
  res_node = 0
  res_removed = [jnp.int32(-1)] * K
  path_ref[0] = jnp.int32(0)
  for d in range(D):
    removed_mass, chosen = jnp.float32(0.0), jnp.int32(-1)
    removed = []
    for j in range(K):
      child = children_ref[cur, j]
      x = tokens_ref[jnp.maximum(child, 0)]
      live = (child >= 0) & (chosen < 0) & ~done
      seen = functools.reduce(jnp.logical_or, [x == r for r in removed], false)
      p_x = jnp.where(seen, 0.0, jnp.exp(logp_ref[cur, x]))
      left = 1.0 - removed_mass
      ratio = jnp.where(left > 1e-12, p_x / jnp.maximum(left, TINY), p_x)
      accept = live & (u_ref[d, j] <= ratio)
      reject = live & ~accept
      removed_mass = removed_mass + jnp.where(reject, p_x, 0.0)
      removed.append(jnp.where(reject, x, -1))
      chosen = jnp.where(accept, child, chosen)
    accepted = ~done & (chosen >= 0)
    stop = ~done & (chosen < 0)
    res_node = jnp.where(stop, cur, res_node)
    res_removed = [jnp.where(stop, r, old) for r, old in zip(removed, res_removed)]
    path_ref[d + 1] = jnp.where(accepted, chosen, -1)
    cur = jnp.where(accepted, chosen, cur)
    n = n + accepted.astype(jnp.int32)
    done = done | stop
  res_node = jnp.where(done, res_node, cur)  # a path reaching depth D: the bonus from p[cur]
  res_removed = [jnp.where(done, r, -1) for r in res_removed]
  bv = st.block_v
  _residual(res_ref, lambda sl: logp_ref[res_node, sl], None, res_removed, bv,
            res_ref.shape[0] // bv)
  n_ref[...] = n


def tree_verify(logp_BxTxV, tokens_BxT, children_BxTxK, u_BxDxK, st: Static):
  """(path [B, D + 1], n [B], residual log p [B, V]) for mode 'deterministic'."""
  B, T, V = logp_BxTxV.shape
  K = children_BxTxK.shape[2]
  D = u_BxDxK.shape[1]
  return pl.pallas_call(
      functools.partial(_tree_kernel, st=st, D=D, K=K),
      grid=(B,),
      in_specs=[pl.BlockSpec((None, T), lambda b: (b, 0)),
                pl.BlockSpec((None, T, K), lambda b: (b, 0, 0)),
                pl.BlockSpec((None, D, K), lambda b: (b, 0, 0)),
                pl.BlockSpec((None, T, V), lambda b: (b, 0, 0))],
      out_specs=[pl.BlockSpec((None, D + 1), lambda b: (b, 0)),
                 pl.BlockSpec((None,), lambda b: (b,)),
                 pl.BlockSpec((None, V), lambda b: (b, 0))],
      out_shape=[jax.ShapeDtypeStruct((B, D + 1), jnp.int32),
                 jax.ShapeDtypeStruct((B,), jnp.int32),
                 jax.ShapeDtypeStruct((B, V), jnp.float32)],
      compiler_params=common.triton_params(4, 1), interpret=st.interpret,
      name='tree_verify',
  )(tokens_BxT.astype(jnp.int32), children_BxTxK.astype(jnp.int32), u_BxDxK.astype(jnp.float32),
    logp_BxTxV.astype(jnp.float32))


def _tree_traversal_kernel(u_ref, parent_ref, depth_ref, rank_ref, pp_ref, qq_ref, logp_ref,
                           logq_ref, path_ref, n_ref, res_ref, hist_a_ref, hist_s_ref,
                           hist_n_ref, slot_ref, *, st: Static, D: int, K: int, N: int):
  """Traversal Verification of one row's tree (`reference._traversal_row`).

  The per-node vectors (Tp, a power of two: padded nodes have no parent and never live) stay
  in registers: a (sequence-level acceptance), ratio (p_parent(x) / q_parent(x) as updated),
  fixed (a is final: the root and nodes that lost a child), alive. A node's updated p is
  never stored: p_v after c rejections is p_v with c maps r -> norm([a_i r - q_v]_+) applied,
  whose scalars (a_i, S_i) sit in one slot per depth (at most one updated node per depth is
  alive; post-order), in the scratch outputs hist_a/hist_s/hist_n/slot (scalar reads and
  writes only). Each rejection sweeps the vocabulary once for S; the walk's other steps are
  vector ops over Tp nodes and a depth's worth of steps to find the next leaf.
  """
  Tp = parent_ref.shape[0]
  iota = lax.broadcasted_iota(jnp.int32, (Tp,), 0)
  at = lambda vec, i: jnp.sum(jnp.where(iota == i, vec, jnp.zeros_like(vec)))
  parent, depth, rank = parent_ref[...], depth_ref[...], rank_ref[...]
  pp, qq = pp_ref[...], qq_ref[...]
  is_child = parent >= 0
  par_is = parent[:, None] == lax.broadcasted_iota(jnp.int32, (Tp, Tp), 1)  # [x, v]: v = par x
  for d in range(D + 1):
    slot_ref[d] = jnp.int32(-1)
    hist_n_ref[d] = jnp.int32(0)

  def propagate(a, ratio, fixed):  # a_x = min(1, a_parent ratio_x), top down
    for _ in range(D):
      a_par = jnp.sum(jnp.where(par_is, a[None, :], 0.0), axis=1)
      a = jnp.where(fixed, a, jnp.minimum(1.0, a_par * ratio))
    return a

  def history(v):  # the (a_i, S_i) of node v's updates, and how many apply
    d = at(depth, v)
    count = jnp.where(slot_ref[d] == v, hist_n_ref[d], 0)
    return d, count, [(hist_a_ref[d, j], hist_s_ref[d, j]) for j in range(K)]

  def apply(p, q, count, hist):  # p after the recorded updates (p and q: same shapes)
    for j, (a_j, s_j) in enumerate(hist):
      p = jnp.where((j < count) & (s_j > 1e-12),
                    jnp.maximum(a_j * p - q, 0.0) / jnp.maximum(s_j, TINY), p)
    return p

  def first_leaf(alive):
    def down(_, cur):
      kids = alive & (parent == cur)
      best = jnp.min(jnp.where(kids, rank, K))
      kid = jnp.sum(jnp.where(kids & (rank == best), iota, 0))
      return jnp.where(best < K, kid, cur)
    return lax.fori_loop(0, D, down, jnp.int32(0))

  bv = st.block_v
  nblk = res_ref.shape[0] // bv

  def step(c):
    alive, a, fixed, ratio, i, _ = c
    leaf = first_leaf(alive)
    accept = (leaf == 0) | (u_ref[jnp.minimum(i, N - 1)] <= at(a, leaf))
    reject = ~accept
    v = jnp.maximum(at(parent, leaf), 0)
    a_v = at(a, v)
    d, count, hist = history(v)

    def sweep(j, s):
      sl = pl.ds(pl.multiple_of(j * bv, bv), bv)
      q = jnp.exp(logq_ref[v, sl])
      p = apply(jnp.exp(logp_ref[v, sl]), q, count, hist)
      return s + jnp.maximum(a_v * p - q, 0.0).sum()
    # Only a rejection reads S: the accepting (last) test sweeps nothing.
    s = lax.fori_loop(0, jnp.where(reject, nblk, 0), sweep, jnp.float32(0.0))
    den = s + 1.0 - a_v  # 0 only when a_v = 1 and p_v = q_v: the rejection had probability 0
    new_a = jnp.where(den > 1e-12, s / jnp.maximum(den, TINY), 1.0)
    # record the update in v's depth slot (a new node there starts a new history)
    # (a node rejects at most K children; the clamp only guards the root's accepting step)
    slot_ref[d] = jnp.where(reject, v, slot_ref[d])
    at_j = jnp.minimum(count, K - 1)
    hist_a_ref[d, at_j] = jnp.where(reject, a_v, hist_a_ref[d, at_j])
    hist_s_ref[d, at_j] = jnp.where(reject, s, hist_s_ref[d, at_j])
    hist_n_ref[d] = jnp.where(reject, count + 1, hist_n_ref[d])
    hist = [(jnp.where(j == count, a_v, a_j), jnp.where(j == count, s, s_j))
            for j, (a_j, s_j) in enumerate(hist)]
    new_ratio = apply(pp, qq, count + 1, hist) / jnp.maximum(qq, TINY)
    ratio = jnp.where(reject & (parent == v), new_ratio, ratio)
    a = jnp.where(reject & (iota == v), new_a, a)
    fixed = fixed | (reject & (iota == v))
    a = propagate(a, ratio, fixed)
    alive = jnp.where(iota == leaf, accept, alive)
    return alive, a, fixed, ratio, i + (leaf != 0).astype(jnp.int32), jnp.where(accept, leaf,
                                                                              -1)

  fixed = ~is_child
  ratio = pp / jnp.maximum(qq, TINY)
  a = propagate(jnp.ones((Tp,), jnp.float32), ratio, fixed)
  alive = (iota == 0) | is_child
  init = (alive, a, fixed, ratio, jnp.int32(0), jnp.int32(-1))
  end = lax.while_loop(lambda c: c[-1] < 0, step, init)[-1]  # <= T tests: each deletes one

  cur = end
  for d in range(D, -1, -1):  # the path, bottom up
    here = at(depth, cur) == d
    path_ref[d] = jnp.where(here, cur, -1)
    cur = jnp.where(here & (cur > 0), at(parent, cur), cur)
  n_ref[...] = at(depth, end)
  _, count, hist = history(end)

  def write(j, _):
    sl = pl.ds(pl.multiple_of(j * bv, bv), bv)
    p = apply(jnp.exp(logp_ref[end, sl]), jnp.exp(logq_ref[end, sl]), count, hist)
    res_ref[sl] = jnp.where(p > 0, jnp.log(jnp.maximum(p, TINY)), -jnp.inf)
    return 0
  lax.fori_loop(0, nblk, write, 0)


def tree_traversal(logp_BxTxV, logq_BxTxV, parent_BxTp, depth_BxTp, rank_BxTp, pp_BxTp,
                   qq_BxTp, u_BxN, D: int, K: int, st: Static):
  """(path [B, D + 1], n [B], residual log p [B, V]) of Traversal Verification. Per-node
  vectors padded to Tp (a power of two; padding nodes have parent -1): parent, depth, rank in
  the parent's children list, pp = p_parent(x)(token x), qq = q_parent(x)(token x)."""
  B, T, V = logp_BxTxV.shape
  Tp = parent_BxTp.shape[1]
  N = u_BxN.shape[1]
  vec = pl.BlockSpec((None, Tp), lambda b: (b, 0))
  rows = pl.BlockSpec((None, T, V), lambda b: (b, 0, 0))
  per_depth = pl.BlockSpec((None, D + 1), lambda b: (b, 0))
  hist = pl.BlockSpec((None, D + 1, K), lambda b: (b, 0, 0))
  outs = pl.pallas_call(
      functools.partial(_tree_traversal_kernel, st=st, D=D, K=K, N=N),
      grid=(B,),
      in_specs=[pl.BlockSpec((None, N), lambda b: (b, 0)), vec, vec, vec, vec, vec, rows, rows],
      out_specs=[per_depth, pl.BlockSpec((None,), lambda b: (b,)),
                 pl.BlockSpec((None, V), lambda b: (b, 0)), hist, hist, per_depth, per_depth],
      out_shape=[jax.ShapeDtypeStruct((B, D + 1), jnp.int32),
                 jax.ShapeDtypeStruct((B,), jnp.int32),
                 jax.ShapeDtypeStruct((B, V), jnp.float32),
                 jax.ShapeDtypeStruct((B, D + 1, K), jnp.float32),
                 jax.ShapeDtypeStruct((B, D + 1, K), jnp.float32),
                 jax.ShapeDtypeStruct((B, D + 1), jnp.int32),
                 jax.ShapeDtypeStruct((B, D + 1), jnp.int32)],
      compiler_params=common.triton_params(4, 1), interpret=st.interpret,
      name='tree_traversal',
  )(u_BxN.astype(jnp.float32), parent_BxTp.astype(jnp.int32), depth_BxTp.astype(jnp.int32),
    rank_BxTp.astype(jnp.int32), pp_BxTp.astype(jnp.float32), qq_BxTp.astype(jnp.float32),
    logp_BxTxV.astype(jnp.float32), logq_BxTxV.astype(jnp.float32))
  return outs[0], outs[1], outs[2]
