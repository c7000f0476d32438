"""Masks without a dense [T, S] array: positions, block-causal size, segment ids.

Key s is visible to query t iff every one of these holds:

  kv_pos[s] >= 0                                  (a negative key position is padding)
  causal_block = 0 (bidirectional), or
      q_pos[t] >= 0 and kv_pos[s] // n <= q_pos[t] // n  with n = causal_block
      (n = 1 is causal by positions; n > 1 is block-causal, as in block diffusion)
  kv_pos[s] > q_pos[t] - window                   (when window > 0: sliding window)
  q_seg[t] == kv_seg[s]                           (when segment ids are given)
  mask[t, s]                                      (when an explicit boolean mask is given)

This is `models.masks.build_mask` written per element, so the kernels build each tile's mask
from a few int32 vectors instead of reading a dense mask. Before the kernels run, `block_map`
summarises every (query block, key block) tile as SKIP / PARTIAL / FULL so that kernels skip
empty tiles and apply no mask on full ones; `ranges` gives per row of tiles the first and
last tile that is not skipped (the kernels loop only over that range).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

SKIP, PARTIAL, FULL = 0, 1, 2
# Position given to the padding rows added to reach a multiple of the query block: they see
# every valid key (their outputs are dropped), which keeps block skipping conservative.
PAD_Q_POS = 1 << 30


@dataclasses.dataclass(frozen=True)
class Static:
  """Everything a kernel specialises on (hashable: custom_vjp's non-differentiable args)."""
  causal_block: int
  window: int
  scale: float
  block_q: int
  block_k: int
  block_q_bwd: int
  block_k_bwd: int
  has_seg: bool
  has_dense: bool
  interpret: object = False
  num_warps: int | None = None  # GPU only
  num_stages: int = 2  # GPU only


class FlashMask(NamedTuple):
  """The mask of one call, padded to the kernels' block multiples.

  q_pos: [B, T] int32.
  kv_pos: [B, S] int32; negative = not a key (padding, unwritten slot).
  q_seg, kv_seg: [B, T] / [B, S] int32 or None.
  dense: [B, T, S] int8 (nonzero = visible) or None.
  """
  q_pos: jax.Array
  kv_pos: jax.Array
  q_seg: jax.Array | None = None
  kv_seg: jax.Array | None = None
  dense: jax.Array | None = None


def visible(q_pos, kv_pos, q_seg, kv_seg, dense, causal_block: int, window: int = 0):
  """Elementwise visibility (broadcasting), used by the reference and inside the kernels.

  `q_pos`/`q_seg` are column-shaped ([..., T, 1]) and `kv_pos`/`kv_seg` row-shaped
  ([..., 1, S]); `dense` is a bool array [..., T, S] or None.
  """
  vis = kv_pos >= 0
  if causal_block == 1:
    vis = vis & (kv_pos <= q_pos)
  elif causal_block > 1:
    # Both sides are >= 0 where it matters, so truncating division equals floor division.
    vis = vis & (q_pos >= 0) & (jax.lax.div(kv_pos, causal_block)
                                <= jax.lax.div(q_pos, causal_block))
  if window > 0:
    vis = vis & (kv_pos > q_pos - window)
  if q_seg is not None:
    vis = vis & (q_seg == kv_seg)
  if dense is not None:
    vis = vis & dense
  return vis


def dense_visible(fm: FlashMask, causal_block: int, window: int = 0) -> jax.Array:
  """The full [B, T, S] boolean mask (for the reference and tests)."""
  seg = (None, None) if fm.q_seg is None else (fm.q_seg[:, :, None], fm.kv_seg[:, None, :])
  dense = None if fm.dense is None else fm.dense.astype(jnp.bool_)
  return visible(fm.q_pos[:, :, None], fm.kv_pos[:, None, :], seg[0], seg[1], dense,
                 causal_block, window)


def pad(fm: FlashMask, T: int, S: int) -> FlashMask:
  """Pads queries to T (position PAD_Q_POS) and keys to S (position -1)."""
  def p(x, axis, size, value):
    if x is None or x.shape[axis] == size:
      return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, size - x.shape[axis])
    return jnp.pad(x, widths, constant_values=value)
  return FlashMask(q_pos=p(fm.q_pos, 1, T, PAD_Q_POS), kv_pos=p(fm.kv_pos, 1, S, -1),
                   q_seg=p(fm.q_seg, 1, T, 0), kv_seg=p(fm.kv_seg, 1, S, 0),
                   dense=p(p(fm.dense, 1, T, 1), 2, S, 0))


def block_map(fm: FlashMask, causal_block: int, window: int, block_q: int,
              block_k: int) -> jax.Array:
  """[B, T/block_q, S/block_k] int32: SKIP, PARTIAL or FULL for every tile.

  SKIP is conservative (no visible pair in the tile) and FULL exact (every pair visible).
  """
  B, T = fm.q_pos.shape
  S = fm.kv_pos.shape[1]
  nq, nk = T // block_q, S // block_k
  qp = fm.q_pos.reshape(B, nq, block_q)
  kp = fm.kv_pos.reshape(B, nk, block_k)
  kvalid = kp >= 0
  qmin, qmax = qp.min(-1)[:, :, None], qp.max(-1)[:, :, None]
  kmin = jnp.where(kvalid, kp, jnp.iinfo(jnp.int32).max).min(-1)[:, None, :]
  kmax = jnp.where(kvalid, kp, -1).max(-1)[:, None, :]
  some = jnp.broadcast_to(kvalid.any(-1)[:, None, :], (B, nq, nk))
  full = jnp.broadcast_to(kvalid.all(-1)[:, None, :], (B, nq, nk))
  if causal_block:
    n = causal_block
    some &= (kmin // n) <= (qmax // n)
    full &= ((kmax // n) <= (qmin // n)) & (qmin >= 0)
  if window > 0:
    some &= kmax > qmin - window
    full &= kmin > qmax - window
  if fm.q_seg is not None:
    qs = fm.q_seg.reshape(B, nq, block_q)
    ks = fm.kv_seg.reshape(B, nk, block_k)
    qsmin, qsmax = qs.min(-1)[:, :, None], qs.max(-1)[:, :, None]
    ksmin, ksmax = ks.min(-1)[:, None, :], ks.max(-1)[:, None, :]
    some &= (qsmin <= ksmax) & (ksmin <= qsmax)
    full &= (qsmin == qsmax) & (ksmin == ksmax) & (qsmin == ksmin)
  if fm.dense is not None:
    d = fm.dense.reshape(B, nq, block_q, nk, block_k) != 0
    some &= d.any((2, 4))
    full &= d.all((2, 4))
  return jnp.where(some, jnp.where(full, FULL, PARTIAL), SKIP).astype(jnp.int32)


def ranges(bmap: jax.Array) -> jax.Array:
  """[B, R, 4] int32 per row of tiles: [lo, hi) the tiles not skipped, [flo, fhi) a run of
  FULL tiles inside it (the first one; empty if none).

  The GPU kernels loop over [lo, hi) and read each tile's flag; the TPU kernels, which
  cannot hold a whole block map in SMEM, treat [flo, fhi) as FULL and the rest of [lo, hi)
  as PARTIAL. A row with no tile to visit gets [0, 0).
  """
  n = bmap.shape[-1]
  idx = jnp.arange(n, dtype=jnp.int32)
  live = bmap != SKIP
  lo = jnp.min(jnp.where(live, idx, n), axis=-1)
  hi = jnp.max(jnp.where(live, idx + 1, 0), axis=-1)
  lo = jnp.minimum(lo, hi)
  full = bmap == FULL
  flo = jnp.min(jnp.where(full, idx, n), axis=-1)
  fhi = jnp.min(jnp.where((idx >= flo[..., None]) & ~full, idx, n), axis=-1)
  flo = jnp.minimum(flo, fhi)
  return jnp.stack([lo, hi, flo, fhi], axis=-1).astype(jnp.int32)
