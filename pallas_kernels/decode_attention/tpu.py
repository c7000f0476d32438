"""Decode / tree attention for TPUs: a Mosaic kernel streaming the cache in key blocks.

One program per row b; the key-block axis is sequential ("arbitrary") with per-kv-head VMEM
accumulators. Each step DMAs one [block_k, K, Dh] slab of the cache as the model stores it
([B, S, K, Dh], no transpose) and runs every kv head on it with its packed T x G query
rows. The key index map clamps to the row's first and last needed blocks (scalar-prefetched
lengths and first visible slots, `reference.slot_bounds`), so blocks past the length or
before a sliding window cost neither DMA nor compute. The new tokens (tree nodes, a
canvas) with their [T, N] mask are folded in at the last step. A TPU has one or two
TensorCores, so there is no split-K: rows are the parallel axis. Returns un-normalised
(o, m, l) in natural log like one part of the GPU kernel.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels import common

LANES = 128
MASK_VALUE = common.MASK_VALUE
TRANS_B = (((1,), (1,)), ((), ()))


@dataclasses.dataclass(frozen=True)
class Static:
  scale: float
  block_k: int
  has_mask: bool
  has_new: bool
  interpret: object = False


def _lanes(x, width: int):
  if width % LANES == 0:
    return jnp.tile(x, (1, width // LANES))
  if width < LANES:
    return x[:, :width]
  return jnp.broadcast_to(x[:, :1], (x.shape[0], width))  # interpret mode only


def _kernel(len_ref, start_ref, q_ref, k_ref, v_ref, *refs, st: Static, nblk: int):
  refs = list(refs)
  mask_ref = refs.pop(0) if st.has_mask else None
  knew_ref, vnew_ref, nmask_ref = (refs.pop(0), refs.pop(0), refs.pop(0)) if st.has_new else (
      None, None, None)
  o_ref, m_ref, l_ref, m_scr, l_scr, acc_scr = refs
  K, R, Dh = q_ref.shape
  bk = st.block_k
  b, j = pl.program_id(0), pl.program_id(1)
  length = len_ref[b]

  @pl.when(j == 0)
  def _init():
    m_scr[...] = jnp.full(m_scr.shape, MASK_VALUE, jnp.float32)
    l_scr[...] = jnp.zeros(l_scr.shape, jnp.float32)
    acc_scr[...] = jnp.zeros(acc_scr.shape, jnp.float32)

  def update(kh, k, v, vis):
    s = lax.dot_general(q_ref[kh], k, TRANS_B, preferred_element_type=jnp.float32) * st.scale
    s = jnp.where(vis, s, MASK_VALUE)
    m_prev, l_prev = m_scr[kh], l_scr[kh]
    m_next = jnp.maximum(m_prev, jnp.max(s, axis=1)[:, None])
    p = jnp.where(vis, jnp.exp(s - _lanes(m_next, s.shape[1])), 0.0)
    alpha = jnp.exp(m_prev - m_next)
    m_scr[kh] = m_next
    l_scr[kh] = alpha * l_prev + jnp.sum(p, axis=1)[:, None]
    acc_scr[kh] = acc_scr[kh] * _lanes(alpha, Dh) + jnp.dot(
        p.astype(v.dtype), v, preferred_element_type=jnp.float32)

  @pl.when((j * bk < length) & ((j + 1) * bk > start_ref[b]))
  def _cache_block():
    vis = (j * bk + lax.broadcasted_iota(jnp.int32, (R, bk), 1)) < length
    if mask_ref is not None:
      vis = vis & (mask_ref[...] != 0)
    for kh in range(K):
      update(kh, k_ref[:, kh, :], v_ref[:, kh, :], vis)

  @pl.when(j == nblk - 1)
  def _finish():
    if st.has_new:
      vis = nmask_ref[...] != 0
      for kh in range(K):
        update(kh, knew_ref[:, kh, :], vnew_ref[:, kh, :], vis)
    o_ref[...] = acc_scr[...]
    m_ref[...] = m_scr[...]
    l_ref[...] = l_scr[...]


def partials(q_BxKxRxDh, k_BxSxKxDh, v_BxSxKxDh, lengths_B, mask_BxRxS, knew_BxNxKxDh,
             vnew_BxNxKxDh, nmask_BxRxN, st: Static, start_B=None):
  """(o [B, K, 1, R, Dh] f32 un-normalised, m [B, K, 1, R], l [B, K, 1, R]), natural log.

  start_B: no query of row b sees a slot below start_B[b] (None: 0); the blocks wholly
  below it are neither loaded nor computed."""
  B, K, R, Dh = q_BxKxRxDh.shape
  S = k_BxSxKxDh.shape[1]
  bk = st.block_k
  nblk = S // bk
  start = jnp.zeros((B,), jnp.int32) if start_B is None else jnp.broadcast_to(
      jnp.asarray(start_B, jnp.int32), (B,))

  def kv_idx(b, j, len_ref, start_ref):
    last = jnp.maximum(pl.cdiv(len_ref[b], bk) - 1, 0)
    first = lax.div(start_ref[b], jnp.int32(bk))  # (floor division lowers only on a TPU)
    return jnp.minimum(jnp.maximum(j, first), last)

  in_specs = [
      pl.BlockSpec((None, K, R, Dh), lambda b, j, r, s: (b, 0, 0, 0)),
      pl.BlockSpec((None, bk, K, Dh), lambda b, j, r, s: (b, kv_idx(b, j, r, s), 0, 0)),
      pl.BlockSpec((None, bk, K, Dh), lambda b, j, r, s: (b, kv_idx(b, j, r, s), 0, 0))]
  args = [q_BxKxRxDh, k_BxSxKxDh, v_BxSxKxDh]
  if st.has_mask:
    in_specs.append(pl.BlockSpec((None, R, bk),
                                 lambda b, j, r, s: (b, 0, kv_idx(b, j, r, s))))
    args.append(mask_BxRxS.astype(jnp.int32))
  if st.has_new:
    N = knew_BxNxKxDh.shape[1]
    in_specs += [pl.BlockSpec((None, N, K, Dh), lambda b, j, r, s: (b, 0, 0, 0))] * 2
    in_specs.append(pl.BlockSpec((None, R, N), lambda b, j, r, s: (b, 0, 0)))
    args += [knew_BxNxKxDh, vnew_BxNxKxDh, nmask_BxRxN.astype(jnp.int32)]
  stat = pl.BlockSpec((None, K, R, LANES), lambda b, j, r, s: (b, 0, 0, 0))
  o, m, l = pl.pallas_call(
      functools.partial(_kernel, st=st, nblk=nblk),
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=2, grid=(B, nblk), in_specs=in_specs,
          out_specs=[pl.BlockSpec((None, K, R, Dh), lambda b, j, r, s: (b, 0, 0, 0)), stat,
                     stat],
          scratch_shapes=[pltpu.VMEM((K, R, LANES), jnp.float32),
                          pltpu.VMEM((K, R, LANES), jnp.float32),
                          pltpu.VMEM((K, R, Dh), jnp.float32)]),
      out_shape=[jax.ShapeDtypeStruct((B, K, R, Dh), jnp.float32),
                 jax.ShapeDtypeStruct((B, K, R, LANES), jnp.float32),
                 jax.ShapeDtypeStruct((B, K, R, LANES), jnp.float32)],
      compiler_params=pltpu.CompilerParams(dimension_semantics=('parallel', 'arbitrary')),
      interpret=st.interpret,
      name='decode_attention_tpu',
  )(lengths_B.astype(jnp.int32), start, *args)
  return o[:, :, None], m[:, :, None, :, 0], l[:, :, None, :, 0]
