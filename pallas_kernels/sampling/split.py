"""Fused sampling for GPUs with each row split across many programs (Triton lowering).

`gpu.py` runs one program per row, which sweeps its row a dozen times: at batch 1 a single
program does all the work, and on the H100 it took 2509 us for V = 262144 against 243.4 us
for the sort (benchmarks/results/kernels.md). Here each pass over the logits is one
`pallas_call` over a (B, parts) grid: program (b, p) reads its chunk of V / parts entries
once and writes a partial result, and a few small XLA ops combine the parts:
  1. stats: max, least and greatest key;                                  1 pass
  2. top-k threshold: counts above `pivots` pivots per pass;              max_passes(pivots)
  3. top-p threshold: the top-k mass, then masses above the pivots;       1 + max_passes
  4. min-p: the kept mass (the log-normaliser);                           1 pass
  5. the exponential race argmax(x + g) over the kept tokens: each part's
     best entry and its index, the first best part wins.                  1 pass
The passes are unrolled (a fixed count, no loop whose predicate a GPU would read back on
the host each pass); a row whose search has converged repeats its interval. With 64 pivots
a pass a search takes at most 6 passes: top-p sampling 9 passes in all, top-k, top-p and
min-p together 16, each reading the logits once.

Same thresholds as `gpu.py` (the same search over the same keys): counts are exact; masses
are float32 sums in another order (per part, then across parts), so at a top-p cut-off the
kept set can differ where the sums round differently, as for `gpu.py` against the sort.
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
  block_v: int  # entries a program reads at a time (a power of two)
  parts: int  # programs per row; V / parts a multiple of block_v
  pivots: int = 64  # pivots per search pass (a power of two)
  interpret: object = False
  num_warps: int = 4
  num_stages: int = 2


def auto_parts(batch: int, vocab: int, block_v: int, programs: int = 512) -> int:
  """Programs per row: about `programs` in all (a few per streaming multiprocessor of a
  Hopper GPU), at most one per block of the row; a power of two."""
  most = max(1, vocab // block_v)
  want = max(1, programs // max(batch, 1))
  return max(1, min(common.next_pow2(want), 1 << (most.bit_length() - 1)))


def _blocks(x_ref, st: Static):
  """(number of blocks of the chunk, block j -> (x / temperature, keys))."""
  bv = st.block_v
  nblk = x_ref.shape[0] // bv

  def block(j):
    x = x_ref[pl.ds(pl.multiple_of(j * bv, bv), bv)].astype(jnp.float32) / st.temperature
    return x, search.to_key(x)
  return nblk, block


def _stats_kernel(x_ref, m_ref, kmin_ref, kmax_ref, *, st: Static):
  nblk, block = _blocks(x_ref, st)
  big = jnp.iinfo(jnp.int32).max

  def body(j, carry):
    m, kmin, kmax = carry
    x, key = block(j)
    return jnp.maximum(m, x.max()), jnp.minimum(kmin, key.min()), jnp.maximum(kmax, key.max())
  m, kmin, kmax = lax.fori_loop(0, nblk, body, (jnp.float32(-jnp.inf), jnp.int32(big),
                                                jnp.int32(-big - 1)))
  m_ref[...], kmin_ref[...], kmax_ref[...] = m, kmin, kmax


def _count_kernel(x_ref, piv_ref, out_ref, *, st: Static):
  """Entries of the chunk with key > each pivot."""
  nblk, block = _blocks(x_ref, st)
  piv = piv_ref[...][None, :]

  def body(j, acc):
    _, key = block(j)
    return acc + (key[:, None] > piv).astype(jnp.int32).sum(axis=0)[None, :]
  out_ref[...] = lax.fori_loop(0, nblk, body, jnp.zeros((1, st.pivots), jnp.int32))[0]


def _mass_kernel(x_ref, piv_ref, floor_ref, m_ref, out_ref, *, st: Static):
  """Mass exp(x - m) of the chunk's entries with key >= floor and key > each pivot."""
  nblk, block = _blocks(x_ref, st)
  piv = piv_ref[...][None, :]
  floor, m = floor_ref[...], m_ref[...]

  def body(j, acc):
    x, key = block(j)
    e = jnp.where(key >= floor, jnp.exp(x - m), 0.0)
    return acc + jnp.where(key[:, None] > piv, e[:, None], 0.0).sum(axis=0)[None, :]
  out_ref[...] = lax.fori_loop(0, nblk, body, jnp.zeros((1, st.pivots), jnp.float32))[0]


def _sum_kernel(x_ref, t_ref, m_ref, out_ref, *, st: Static):
  """Mass exp(x - m) of the chunk's entries with key >= t."""
  nblk, block = _blocks(x_ref, st)
  t, m = t_ref[...], m_ref[...]

  def body(j, acc):
    x, key = block(j)
    return acc + jnp.where(key >= t, jnp.exp(x - m), 0.0).sum()
  out_ref[...] = lax.fori_loop(0, nblk, body, jnp.float32(0.0))


def _race_kernel(x_ref, g_ref, t_ref, m_ref, logs_ref, best_ref, arg_ref, *, st: Static):
  """The chunk's largest x + g over the kept entries and its index in the row (lowest on
  ties)."""
  nblk, block = _blocks(x_ref, st)
  bv, big = st.block_v, jnp.iinfo(jnp.int32).max
  start = pl.program_id(1) * x_ref.shape[0]
  t, m, log_s = t_ref[...], m_ref[...], logs_ref[...]
  min_gap = math.log(st.min_p) if st.min_p > 0.0 else -jnp.inf

  def body(j, carry):
    best, arg = carry
    x, key = block(j)
    keep = key >= t
    if st.min_p > 0.0:  # the reference's rule on log-probabilities, as in gpu.py
      keep &= (x - m) - log_s >= -log_s + min_gap
    r = jnp.where(keep, x + g_ref[pl.ds(pl.multiple_of(j * bv, bv), bv)], -jnp.inf)
    r_max = r.max()
    idx = jnp.min(jnp.where(r == r_max, start + j * bv + lax.broadcasted_iota(
        jnp.int32, (bv,), 0), big))
    better = r_max > best
    return jnp.where(better, r_max, best), jnp.where(better, idx, arg)
  best, arg = lax.fori_loop(0, nblk, body, (jnp.float32(-jnp.inf), jnp.int32(big)))
  best_ref[...], arg_ref[...] = best, arg


def _call(kernel, st: Static, B: int, args, outs):
  """One pass: `args` are (array, kind) with kind 'chunk' ([B, V], split over the parts),
  'pivots' ([B, NP]) or 'row' ([B], one value per row); `outs` ('part' [B, P] or 'pivots'
  [B, P, NP], dtype)."""
  P, chunk = st.parts, args[0][0].shape[1] // st.parts
  specs = {'chunk': pl.BlockSpec((None, chunk), lambda b, p: (b, p)),
           'pivots': pl.BlockSpec((None, st.pivots), lambda b, p: (b, 0)),
           'row': pl.BlockSpec((None,), lambda b, p: (b,))}
  out_specs = {'part': pl.BlockSpec((None, None), lambda b, p: (b, p)),
               'pivots': pl.BlockSpec((None, None, st.pivots), lambda b, p: (b, p, 0))}
  shapes = {'part': (B, P), 'pivots': (B, P, st.pivots)}
  return pl.pallas_call(
      functools.partial(kernel, st=st),
      grid=(B, P),
      in_specs=[specs[kind] for _, kind in args],
      out_specs=[out_specs[kind] for kind, _ in outs],
      out_shape=[jax.ShapeDtypeStruct(shapes[kind], dtype) for kind, dtype in outs],
      compiler_params=common.triton_params(st.num_warps, st.num_stages),
      interpret=st.interpret,
      name='split_sampling',
  )(*[a for a, _ in args])


def sample(logits_BxV: jax.Array, gumbel_BxV: jax.Array, st: Static):
  """(tokens [B] int32, tau [B] f32, log kept mass [B] f32), as `gpu.sample`; V a multiple
  of parts x block_v."""
  B, V = logits_BxV.shape
  if V % (st.parts * st.block_v):
    raise ValueError(f'V = {V} is not a multiple of parts x block_v = '
                     f'{st.parts} x {st.block_v}.')
  x = (logits_BxV, 'chunk')
  m, kmin, kmax = _call(_stats_kernel, st, B, [x], [('part', jnp.float32),
                                                    ('part', jnp.int32), ('part', jnp.int32)])
  m, kmin, kmax = m.max(axis=1), kmin.min(axis=1), kmax.max(axis=1)
  j = jnp.arange(1, st.pivots + 1, dtype=jnp.int32)[None, :]

  def find(lo, hi, flips_at):
    for _ in range(search.max_passes(st.pivots)):  # unrolled: no loop predicate to read back
      piv = search.pivots(lo[:, None], hi[:, None], j, st.pivots)
      lo, hi = search.narrow_rows(lo, hi, piv, flips_at(piv))
    return hi

  def mass_above(t):
    return _call(_sum_kernel, st, B, [x, (t, 'row'), (m, 'row')],
                 [('part', jnp.float32)])[0].sum(axis=1)

  t = kmin
  if st.top_k:
    t = find(kmin - 1, kmax, lambda piv: _call(
        _count_kernel, st, B, [x, (piv, 'pivots')],
        [('pivots', jnp.int32)])[0].sum(axis=1) < st.top_k)
  if st.top_p < 1.0:
    t_k = t
    z = mass_above(t_k)
    t = find(t_k - 1, kmax, lambda piv: _call(
        _mass_kernel, st, B, [x, (piv, 'pivots'), (t_k, 'row'), (m, 'row')],
        [('pivots', jnp.float32)])[0].sum(axis=1) < st.top_p * z[:, None])
  log_s = jnp.log(mass_above(t)) if st.min_p > 0.0 else jnp.zeros((B,), jnp.float32)
  best, arg = _call(_race_kernel, st, B,
                    [x, (gumbel_BxV, 'chunk'), (t, 'row'), (m, 'row'), (log_s, 'row')],
                    [('part', jnp.float32), ('part', jnp.int32)])
  part = jnp.argmax(best, axis=1)  # the first best part: its entries have the lowest ids
  tok = jnp.take_along_axis(arg, part[:, None], axis=1)[:, 0]
  return tok, search.from_key(t), log_s
