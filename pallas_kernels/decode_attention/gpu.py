"""Decode / tree attention for GPUs: a split-K Pallas kernel with the Triton lowering.

Each program owns one (row b, kv head, part). Parts 0..P-1 split the key blocks the row
reads, from the one holding its first visible slot to the one holding its last slot below
lengths[b], into P equal contiguous runs (split-K, so that batch x kv heads x parts fills
the GPU even at batch 1, and stays filled whatever the length: a row whose length is a
quarter of the cache still runs P busy parts; the run is sized in the kernel from the row's
bounds); the optional last part attends over the N new tokens
with their explicit [T, N] mask (tree verification, a diffusion canvas). The T x G queries
of a kv head are packed as rows r = t * G + g, so every key/value block is read from HBM
once per kv head, not once per query head. Parts return (o, m, l) in base 2; `combine`
merges them (log-sum-exp weights) outside the kernel.

Reads only the slots below each row's length and from the block of its first visible slot
(`reference.slot_bounds`; a sliding window's earlier blocks are never read): the cost is
bytes of K/V actually attended. With a mask, the key blocks wholly inside the row's run of
slots every query sees (`lo`, `hi`: the prefix under a tree, a decode step's cache or
window) are computed without it, and their mask blocks are never loaded.
The cache is never copied when S is a multiple of the key block and Dh a power of two >= 16.
K/V come as [B, S, K, Dh], or (`Static.cache_layout`) as the decoding cache stores them,
k [B, K, S, Dh] and v [B, K, Dh, S]: value tiles are then [Dh, bk] and p.v contracts their
minor dimension.
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

LOG2E = math.log2(math.e)
MASK_VALUE = common.MASK_VALUE


@dataclasses.dataclass(frozen=True)
class Static:
  scale: float
  block_k: int
  num_parts: int  # cache parts (the new-token part comes after them)
  has_mask: bool
  has_new: bool
  interpret: object = False
  num_warps: int = 4
  num_stages: int = 2
  cache_layout: bool = False  # k [B, K, S, Dh], v [B, K, Dh, S]


def _dot(a, b, contract=(1, 1)):
  return lax.dot_general(a, b, (((contract[0],), (contract[1],)), ((), ())),
                         preferred_element_type=jnp.float32,
                         precision=common.dot_precision(a.dtype))


def _online(carry, s, vis, v, v_t=False):
  """One flash step over a [R, bk] score tile (base 2) with visibility `vis` (None: every
  score visible); v is [bk, Dh], or [Dh, bk] when `v_t`."""
  o, m, l = carry
  if vis is not None:
    s = jnp.where(vis, s, MASK_VALUE)
  m_new = jnp.maximum(m, s.max(axis=1))
  alpha = jnp.exp2(m - m_new)
  p = jnp.exp2(s - m_new[:, None])
  if vis is not None:
    p = jnp.where(vis, p, 0.0)
  return (alpha[:, None] * o + _dot(p.astype(v.dtype), v, (1, 1) if v_t else (1, 0)), m_new,
          alpha * l + p.sum(axis=1))


def _kernel(len_ref, start_ref, lo_ref, hi_ref, q_ref, k_ref, v_ref, *refs, st: Static):
  refs = list(refs)
  mask_ref = refs.pop(0) if st.has_mask else None
  knew_ref, vnew_ref, nmask_ref = (refs.pop(0), refs.pop(0), refs.pop(0)) if st.has_new else (
      None, None, None)
  o_ref, m_ref, l_ref = refs
  b, part = pl.program_id(0), pl.program_id(2)
  q = q_ref[...]
  R = q.shape[0]
  qk_scale = st.scale * LOG2E
  bk = st.block_k
  length = len_ref[b]
  init = (jnp.zeros(o_ref.shape, jnp.float32), jnp.full((R,), MASK_VALUE, jnp.float32),
          jnp.zeros((R,), jnp.float32))

  def cache_part(carry):
    def body(j, c, masked: bool):
      ks = pl.ds(pl.multiple_of(j * bk, bk), bk)
      s = _dot(q, k_ref[ks, :]) * qk_scale
      vis = None
      if masked:
        vis = (j * bk + lax.broadcasted_iota(jnp.int32, (1, bk), 1)) < length
        if mask_ref is not None:
          vis = vis & (mask_ref[:, ks] != 0)
      if st.cache_layout:
        return _online(c, s, vis, v_ref[:, ks], v_t=True)
      return _online(c, s, vis, v_ref[ks, :])
    first, last, free_lo, free_hi = part_tiles(length, start_ref[b], lo_ref[b], hi_ref[b],
                                               part, st.num_parts, bk)
    # Blocks wholly inside the run every query sees, below the length: no mask, no mask
    # block loaded; the blocks before and after it are masked.
    carry = lax.fori_loop(first, free_lo, functools.partial(body, masked=True), carry)
    carry = lax.fori_loop(free_lo, free_hi, functools.partial(body, masked=False), carry)
    return lax.fori_loop(free_hi, last, functools.partial(body, masked=True), carry)

  def new_part(carry):
    s = _dot(q, knew_ref[...]) * qk_scale
    return _online(carry, s, nmask_ref[...] != 0, vnew_ref[...])

  if st.has_new:
    o, m, l = lax.cond(part == st.num_parts, new_part, cache_part, init)
  else:
    o, m, l = cache_part(init)
  o_ref[...] = o
  m_ref[...] = m
  l_ref[...] = l


def part_tiles(length, start, lo, hi, part, num_parts: int, block_k: int):
  """(first, last, free_lo, free_hi): part `part` of `num_parts` reads key tiles
  [first, last), an equal share of the tiles from the one holding slot `start` to the one
  holding slot length - 1; of them, [free_lo, free_hi) lie wholly inside the run [lo, hi)
  of slots every query sees and below the length (no mask needed), first <= free_lo <=
  free_hi <= last. Traced int32 scalars (the row's bounds: `reference.slot_bounds`)."""
  bk = jnp.int32(block_k)
  begin = lax.div(start, bk)
  end = lax.div(length + bk - 1, bk)
  per = lax.div(jnp.maximum(end - begin, 0) + num_parts - 1, jnp.int32(num_parts))
  first = begin + part * per
  last = jnp.maximum(first, jnp.minimum(first + per, end))
  free_lo = jnp.clip(lax.div(lo + bk - 1, bk), first, last)
  free_hi = jnp.clip(lax.div(jnp.minimum(length, hi), bk), free_lo, last)
  return first, last, free_lo, free_hi


def partials(q_BxKxRxDh, k_BxSxKxDh, v_BxSxKxDh, lengths_B, mask_BxRxS, knew_BxNxKxDh,
             vnew_BxNxKxDh, nmask_BxRxN, st: Static, bounds=None):
  """(o [B, K, P, R, Dh] f32, m [B, K, P, R] base 2, l [B, K, P, R]) for P parts.

  bounds: with a mask, (start_B, lo_B, hi_B) int (`reference.slot_bounds`): no query of
  row b sees a slot below start[b] (those key blocks are not read), every query sees the
  slots in [lo[b], hi[b]) (the mask is not read for the key blocks wholly inside it and
  below the length); None = (0, 0, 0) (every block read and masked). Without a mask, every
  block below the length is read unmasked."""
  B, K, R, Dh = q_BxKxRxDh.shape
  S = k_BxSxKxDh.shape[2] if st.cache_layout else k_BxSxKxDh.shape[1]
  P = st.num_parts + st.has_new
  if st.cache_layout:  # k [B, K, S, Dh], v [B, K, Dh, S]: one (row, kv head) slab each
    kv_specs = [pl.BlockSpec((None, None, S, Dh), lambda b, h, p: (b, h, 0, 0)),
                pl.BlockSpec((None, None, Dh, S), lambda b, h, p: (b, h, 0, 0))]
  else:
    kv_specs = [pl.BlockSpec((None, S, None, Dh), lambda b, h, p: (b, 0, h, 0))] * 2
  in_specs = [pl.BlockSpec((B,), lambda b, h, p: (0,))] * 4 + [
      pl.BlockSpec((None, None, R, Dh), lambda b, h, p: (b, h, 0, 0)),
      *kv_specs]
  lengths = lengths_B.astype(jnp.int32)
  zero = jnp.zeros((B,), jnp.int32)
  if not st.has_mask:
    bounds = (zero, zero, lengths)
  elif bounds is None:
    bounds = (zero, zero, zero)
  bounds = [jnp.broadcast_to(jnp.asarray(x, jnp.int32), (B,)) for x in bounds]
  args = [lengths, *bounds, q_BxKxRxDh, k_BxSxKxDh, v_BxSxKxDh]
  if st.has_mask:
    in_specs.append(pl.BlockSpec((None, R, S), lambda b, h, p: (b, 0, 0)))
    args.append(mask_BxRxS)
  if st.has_new:
    N = knew_BxNxKxDh.shape[1]
    in_specs += [pl.BlockSpec((None, N, None, Dh), lambda b, h, p: (b, 0, h, 0))] * 2
    in_specs.append(pl.BlockSpec((None, R, N), lambda b, h, p: (b, 0, 0)))
    args += [knew_BxNxKxDh, vnew_BxNxKxDh, nmask_BxRxN]
  return pl.pallas_call(
      functools.partial(_kernel, st=st),
      grid=(B, K, P),
      in_specs=in_specs,
      out_specs=[pl.BlockSpec((None, None, None, R, Dh), lambda b, h, p: (b, h, p, 0, 0)),
                 pl.BlockSpec((None, None, None, R), lambda b, h, p: (b, h, p, 0)),
                 pl.BlockSpec((None, None, None, R), lambda b, h, p: (b, h, p, 0))],
      out_shape=[jax.ShapeDtypeStruct((B, K, P, R, Dh), jnp.float32),
                 jax.ShapeDtypeStruct((B, K, P, R), jnp.float32),
                 jax.ShapeDtypeStruct((B, K, P, R), jnp.float32)],
      compiler_params=common.triton_params(st.num_warps, st.num_stages),
      interpret=st.interpret,
      name='decode_attention',
  )(*args)


def combine(o_BxKxPxRxDh, m_BxKxPxR, l_BxKxPxR, log_base: float = 2.0):
  """Merges the parts: sum_p w_p o_p / sum_p w_p l_p with w_p = base^(m_p - max m).

  Rows no part saw anything of get zeros. Returns [B, K, R, Dh] float32.
  """
  m_max = m_BxKxPxR.max(axis=2, keepdims=True)
  w = jnp.exp((m_BxKxPxR - m_max) * math.log(log_base))
  l = (w * l_BxKxPxR).sum(axis=2)
  o = (w[..., None] * o_BxKxPxRxDh).sum(axis=2)
  return jnp.where(l[..., None] > 0, o / jnp.where(l > 0, l, 1.0)[..., None], 0.0)
