"""Fused top-k / top-p / min-p sampling for GPUs: one Pallas (Triton lowering) program per row.

The row streams through the program in blocks of `block_v` a few times (it stays in L2):
  1. max and the key range;                        (1 pass)
  2. top-k threshold by the multi-pivot search;    (<= 10 passes, if top_k)
  3. top-p threshold on the top-k mass;            (1 + <= 10 passes, if top_p < 1)
  4. min-p: the kept mass, for the log-normaliser; (1 pass, if min_p > 0)
  5. the exponential race argmax(x + g) over the kept tokens. (1 pass)
No sort and no [B, V] intermediate in HBM. Outputs per row: the token, the threshold value
(kept: x >= tau) and the log of the kept mass (relative to the max).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels import common
from pallas_kernels.sampling import search


@dataclasses.dataclass(frozen=True)
class Static(search.Filters):
  block_v: int
  interpret: object = False
  num_warps: int = 8
  num_stages: int = 1


def _kernel(x_ref, g_ref, tok_ref, tau_ref, logs_ref, *, st: Static):
  bv = st.block_v
  nblk = x_ref.shape[0] // bv
  j_piv = lax.broadcasted_iota(jnp.int32, (1, search.NP), 1) + 1

  def block(j):
    x = x_ref[pl.ds(pl.multiple_of(j * bv, bv), bv)].astype(jnp.float32) / st.temperature
    return x, search.to_key(x)

  def stats(j, carry):
    m, kmin, kmax = carry
    x, key = block(j)
    return jnp.maximum(m, x.max()), jnp.minimum(kmin, key.min()), jnp.maximum(kmax, key.max())

  big = jnp.iinfo(jnp.int32).max
  m, kmin, kmax = lax.fori_loop(0, nblk, stats, (jnp.float32(-jnp.inf), jnp.int32(big),
                                                 jnp.int32(-big - 1)))

  def find(lo, hi, flips_at):
    """Multi-pivot search; flips_at(pivots [1, NP]) -> bool [NP] from one pass."""
    def body(carry):
      lo, hi, n = carry
      piv = search.pivots(lo, hi, j_piv)
      lo, hi = search.narrow(lo, hi, piv, flips_at(piv))
      return lo, hi, n + 1
    lo, hi, _ = lax.while_loop(lambda c: (c[0] + 1 < c[1]) & (c[2] < search.MAX_PASSES),
                               body, (lo, hi, jnp.int32(0)))
    return hi

  def mass_above(t):
    def body(j, acc):
      x, key = block(j)
      return acc + jnp.where(key >= t, jnp.exp(x - m), 0.0).sum()
    return lax.fori_loop(0, nblk, body, jnp.float32(0.0))

  t = kmin
  if st.top_k:
    def count_flips(piv):
      def body(j, acc):
        _, key = block(j)
        return acc + (key[:, None] > piv).astype(jnp.int32).sum(axis=0)[None, :]
      return lax.fori_loop(0, nblk, body, jnp.zeros((1, search.NP), jnp.int32)) < st.top_k
    t = find(kmin - 1, kmax, count_flips)
  if st.top_p < 1.0:
    t_k = t
    z = mass_above(t_k)

    def mass_flips(piv):
      def body(j, acc):
        x, key = block(j)
        e = jnp.where(key >= t_k, jnp.exp(x - m), 0.0)
        return acc + jnp.where(key[:, None] > piv, e[:, None], 0.0).sum(axis=0)[None, :]
      return lax.fori_loop(0, nblk, body, jnp.zeros((1, search.NP), jnp.float32)) < (
          st.top_p * z)
    t = find(t_k - 1, kmax, mass_flips)
  log_s = jnp.log(mass_above(t)) if st.min_p > 0.0 else jnp.float32(0.0)
  min_gap = math.log(st.min_p) if st.min_p > 0.0 else -jnp.inf

  def race(j, carry):
    best, arg = carry
    x, key = block(j)
    keep = key >= t
    if st.min_p > 0.0:  # the reference's rule on log-probabilities: logp >= max logp + log(min_p)
      keep &= (x - m) - log_s >= -log_s + min_gap
    r = jnp.where(keep, x + g_ref[pl.ds(pl.multiple_of(j * bv, bv), bv)], -jnp.inf)
    r_max = r.max()
    idx = jnp.min(jnp.where(r == r_max, j * bv + lax.broadcasted_iota(jnp.int32, (bv,), 0),
                            big))
    better = r_max > best
    return jnp.where(better, r_max, best), jnp.where(better, idx, arg)

  _, tok = lax.fori_loop(0, nblk, race, (jnp.float32(-jnp.inf), jnp.int32(0)))
  tok_ref[...] = tok
  tau_ref[...] = search.from_key(t)
  logs_ref[...] = log_s


def sample(logits_BxV: jax.Array, gumbel_BxV: jax.Array, st: Static):
  """(tokens [B] int32, tau [B] f32, log kept mass [B] f32); V a multiple of block_v."""
  B, V = logits_BxV.shape
  row = pl.BlockSpec((None, V), lambda b: (b, 0))
  one = pl.BlockSpec((None,), lambda b: (b,))
  return pl.pallas_call(
      functools.partial(_kernel, st=st),
      grid=(B,),
      in_specs=[row, row],
      out_specs=[one, one, one],
      out_shape=[jax.ShapeDtypeStruct((B,), jnp.int32), jax.ShapeDtypeStruct((B,), jnp.float32),
                 jax.ShapeDtypeStruct((B,), jnp.float32)],
      compiler_params=common.triton_params(st.num_warps, st.num_stages),
      interpret=st.interpret,
      name='fused_sampling',
  )(logits_BxV, gumbel_BxV)
