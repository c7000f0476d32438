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


def _residual(out_ref, row_ref, qrow_ref, removed, bv: int, nblk: int):
  """out = log(norm(r)) with r = max(0, p - q) (q given) or p without `removed` tokens;
  falls back to p where r has (numerically) no mass, like the reference."""
  def r_block(j):
    sl = pl.ds(pl.multiple_of(j * bv, bv), bv)
    p = jnp.exp(row_ref(sl))
    r = p
    if qrow_ref is not None:
      r = jnp.maximum(p - jnp.exp(qrow_ref(sl)), 0.0)
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
