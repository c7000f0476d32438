"""Fused top-k / top-p / min-p sampling for TPUs: one Mosaic program per row.

The whole row sits in VMEM as [V/128, 128] (1 MiB at V = 256k in float32, plus the noise),
so every pass of the search (see `search`) is a VMEM sweep, not an HBM read. Thresholds
and the search interval are scalars; each pass evaluates the NP pivots one after another
(the predicate is monotone, so the interval narrows pivot by pivot). Same outputs as the GPU
kernel, written lane-replicated as [B, 1, 128].
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.sampling import search

LANES = 128


@dataclasses.dataclass(frozen=True)
class Static(search.Filters):
  interpret: object = False


def _kernel(x_ref, g_ref, tok_ref, tau_ref, logs_ref, *, st: Static):
  x = x_ref[...].astype(jnp.float32) / st.temperature  # [V/128, 128]
  key = search.to_key(x)
  m = jnp.max(x)
  kmin, kmax = jnp.min(key), jnp.max(key)

  def find(lo, hi, flip_at):
    """flip_at(pivot scalar) -> bool scalar, monotone in the pivot."""
    def one_pass(_, carry):
      lo, hi = carry
      new_lo, new_hi = lo, hi
      for j in range(1, search.NP + 1):
        p = search.pivots(lo, hi, jnp.int32(j))
        f = flip_at(p)
        new_lo = jnp.where(f, new_lo, jnp.maximum(new_lo, p))
        new_hi = jnp.where(f, jnp.minimum(new_hi, p), new_hi)
      return new_lo, new_hi
    return lax.fori_loop(0, search.MAX_PASSES, one_pass, (lo, hi))[1]

  def mass_above(t):
    return jnp.sum(jnp.where(key >= t, jnp.exp(x - m), 0.0))

  t = kmin
  if st.top_k:
    t = find(kmin - 1, kmax, lambda p: jnp.sum((key > p).astype(jnp.int32)) < st.top_k)
  if st.top_p < 1.0:
    t_k = t
    e = jnp.where(key >= t_k, jnp.exp(x - m), 0.0)
    bound = st.top_p * jnp.sum(e)
    t = find(t_k - 1, kmax, lambda p: jnp.sum(jnp.where(key > p, e, 0.0)) < bound)
  keep = key >= t
  log_s = jnp.float32(0.0)
  if st.min_p > 0.0:
    log_s = jnp.log(mass_above(t))
    keep &= (x - m) - log_s >= -log_s + math.log(st.min_p)
  r = jnp.where(keep, x + g_ref[...], -jnp.inf)
  flat = (lax.broadcasted_iota(jnp.int32, r.shape, 0) * LANES
          + lax.broadcasted_iota(jnp.int32, r.shape, 1))
  tok = jnp.min(jnp.where(r == jnp.max(r), flat, jnp.iinfo(jnp.int32).max))
  tok_ref[...] = jnp.full(tok_ref.shape, tok, jnp.int32)
  tau_ref[...] = jnp.full(tau_ref.shape, search.from_key(t), jnp.float32)
  logs_ref[...] = jnp.full(logs_ref.shape, log_s, jnp.float32)


def sample(logits_BxV: jax.Array, gumbel_BxV: jax.Array, st: Static):
  """(tokens [B] int32, tau [B] f32, log kept mass [B] f32); V a multiple of 128."""
  B, V = logits_BxV.shape
  R = V // LANES
  row = pl.BlockSpec((None, R, LANES), lambda b: (b, 0, 0))
  one = pl.BlockSpec((None, 1, LANES), lambda b: (b, 0, 0))
  tok, tau, log_s = pl.pallas_call(
      functools.partial(_kernel, st=st),
      grid=(B,),
      in_specs=[row, row],
      out_specs=[one, one, one],
      out_shape=[jax.ShapeDtypeStruct((B, 1, LANES), jnp.int32),
                 jax.ShapeDtypeStruct((B, 1, LANES), jnp.float32),
                 jax.ShapeDtypeStruct((B, 1, LANES), jnp.float32)],
      # Two double-buffered rows plus ~6 row-sized temporaries live in VMEM.
      compiler_params=pltpu.CompilerParams(dimension_semantics=('parallel',),
                                           vmem_limit_bytes=max(32 << 20, 12 * 4 * V)),
      interpret=st.interpret,
      name='fused_sampling_tpu',
  )(logits_BxV.reshape(B, R, LANES), gumbel_BxV.reshape(B, R, LANES))
  return tok[:, 0, 0], tau[:, 0, 0], log_s[:, 0, 0]
