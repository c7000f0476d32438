"""Flash attention for TPUs: Mosaic (`pltpu`) kernels for the forward, dq and dk/dv passes.

Heads-major layout inside (q/o [B, H, T, Dh], k/v [B, K, S, Dh]; the wrapper transposes).
The key axis is the last, sequential ("arbitrary") grid axis with VMEM accumulators, as in
jax's own TPU flash attention. Per row of tiles the scalar-prefetched `ranges` give the
tiles to visit [lo, hi) and a run of FULL tiles [flo, fhi); the key/value index maps clamp
into [lo, hi) so skipped tiles cost no DMA, and tiles outside the FULL run get the
elementwise mask. Row statistics (running max, sum, log-sum-exp, delta) live lane-
replicated as [rows, 128] like jax's kernels; q-side int vectors as [T, 128], kv-side
ones as [8, S]. On a real TPU block_k must be a multiple of 128 and block_q of 32.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels import common
from pallas_kernels.flash_attention import mask as mask_lib

LANES, SUBLANES = 128, 8
MASK_VALUE = common.MASK_VALUE
TRANS_B = (((1,), (1,)), ((), ()))


Static = mask_lib.Static


def _lanes(x, width: int):
  """A lane-replicated [rows, 128] array as [rows, width]."""
  if width % LANES == 0:
    return jnp.tile(x, (1, width // LANES))
  if width < LANES:
    return x[:, :width]
  return jnp.broadcast_to(x[:, :1], (x.shape[0], width))  # interpret mode only


def _split(refs, st: Static):
  seg = (None, None)
  if st.has_seg:
    seg, refs = refs[:2], refs[2:]
  dense = None
  if st.has_dense:
    dense, refs = refs[0], refs[1:]
  return seg, dense, refs


def _tile_visible(st: Static, qpos_ref, kpos_ref, qseg_ref, kseg_ref, dense_ref, bk: int):
  """[bq, bk] bool for the current tile (see `mask.visible`)."""
  q_pos = _lanes(qpos_ref[...], bk)
  kv_pos = kpos_ref[...][:1, :]
  q_seg = kv_seg = None
  if qseg_ref is not None:
    q_seg, kv_seg = _lanes(qseg_ref[...], bk), kseg_ref[...][:1, :]
  dense = None if dense_ref is None else dense_ref[...] != 0
  return mask_lib.visible(q_pos, kv_pos, q_seg, kv_seg, dense, st.causal_block, st.window)


def _row_ranges(rng_ref, b, i, n):
  base = (b * n + i) * 4
  return rng_ref[base], rng_ref[base + 1], rng_ref[base + 2], rng_ref[base + 3]


def _clamp(j, lo, hi):
  """Visited tile index for grid step j: stays inside [lo, hi) so skipped steps re-use the
  block already in VMEM (no DMA)."""
  return jnp.minimum(jnp.maximum(j, lo), jnp.maximum(hi - 1, lo))


def _dispatch(j, lo, hi, flo, fhi, step):
  run = (j >= lo) & (j < hi)
  full = (j >= flo) & (j < fhi)
  pl.when(run & full)(functools.partial(step, masked=False))
  pl.when(run & jnp.logical_not(full))(functools.partial(step, masked=True))


def _vec_specs(st: Static, bq: int, bk: int, q_idx, k_idx):
  """Specs of q-side [B, T, 128] and kv-side [B, 8, S] int vectors and the dense mask."""
  qspec = pl.BlockSpec((None, bq, LANES), lambda *g: (g[0], q_idx(*g), 0))
  kspec = pl.BlockSpec((None, SUBLANES, bk), lambda *g: (g[0], 0, k_idx(*g)))
  specs = [qspec, kspec] + ([qspec, kspec] if st.has_seg else [])
  if st.has_dense:
    specs.append(pl.BlockSpec((None, bq, bk), lambda *g: (g[0], q_idx(*g), k_idx(*g))))
  return specs


def _vec_args(fm: mask_lib.FlashMask, st: Static):
  B, T = fm.q_pos.shape
  S = fm.kv_pos.shape[1]
  qv = lambda x: jnp.broadcast_to(x[:, :, None], (B, T, LANES))
  kv = lambda x: jnp.broadcast_to(x[:, None, :], (B, SUBLANES, S))
  args = [qv(fm.q_pos), kv(fm.kv_pos)]
  args += [qv(fm.q_seg), kv(fm.kv_seg)] if st.has_seg else []
  args += [fm.dense] if st.has_dense else []
  return args


def _params(*semantics):
  return pltpu.CompilerParams(dimension_semantics=semantics)


# ----------------------------------------------------------------------------- forward


def _fwd_kernel(rng_ref, q_ref, k_ref, v_ref, qpos_ref, kpos_ref, *refs, st: Static,
                nq: int, nk: int):
  (qseg_ref, kseg_ref), dense_ref, (o_ref, lse_ref, m_scr, l_scr, acc_scr) = _split(refs, st)
  b, i, j = pl.program_id(0), pl.program_id(2), pl.program_id(3)
  lo, hi, flo, fhi = _row_ranges(rng_ref, b, i, nq)
  bk, Dh = k_ref.shape

  @pl.when(j == 0)
  def _init():
    m_scr[...] = jnp.full(m_scr.shape, MASK_VALUE, jnp.float32)
    l_scr[...] = jnp.zeros(l_scr.shape, jnp.float32)
    acc_scr[...] = jnp.zeros(acc_scr.shape, jnp.float32)

  def step(masked: bool):
    s = lax.dot_general(q_ref[...], k_ref[...], TRANS_B,
                        preferred_element_type=jnp.float32) * st.scale
    if masked:
      vis = _tile_visible(st, qpos_ref, kpos_ref, qseg_ref, kseg_ref, dense_ref, bk)
      s = jnp.where(vis, s, MASK_VALUE)
    m_prev, l_prev = m_scr[...], l_scr[...]
    m_next = jnp.maximum(m_prev, jnp.max(s, axis=1)[:, None])  # [bq, 128]
    p = jnp.exp(s - _lanes(m_next, bk))
    if masked:
      p = jnp.where(vis, p, 0.0)
    alpha = jnp.exp(m_prev - m_next)
    l_scr[...] = alpha * l_prev + jnp.sum(p, axis=1)[:, None]
    m_scr[...] = m_next
    v = v_ref[...]
    acc_scr[...] = acc_scr[...] * _lanes(alpha, Dh) + jnp.dot(
        p.astype(v.dtype), v, preferred_element_type=jnp.float32)

  _dispatch(j, lo, hi, flo, fhi, step)

  @pl.when(j == nk - 1)
  def _finish():
    l = l_scr[...]
    empty = l == 0.0
    l_safe = jnp.where(empty, 1.0, l)
    o_ref[...] = (acc_scr[...] / _lanes(l_safe, Dh)).astype(o_ref.dtype)
    lse_ref[...] = jnp.where(empty, jnp.inf, m_scr[...] + jnp.log(l_safe))


def forward(q, k, v, fm: mask_lib.FlashMask, st: Static):
  """(o [B, T, H, Dh], lse [B, H, T, 128] float32, natural log) on padded inputs."""
  B, T, H, Dh = q.shape
  S, K = k.shape[1], k.shape[2]
  G = H // K
  bq, bk = st.block_q, st.block_k
  nq, nk = T // bq, S // bk
  rng = mask_lib.ranges(mask_lib.block_map(fm, st.causal_block, st.window, bq, bk))

  def kv_idx(b, h, i, j, rng_ref):
    lo, hi, _, _ = _row_ranges(rng_ref, b, i, nq)
    return _clamp(j, lo, hi)

  q_idx = lambda b, h, i, j, rng_ref: i
  in_specs = [
      pl.BlockSpec((None, None, bq, Dh), lambda b, h, i, j, r: (b, h, i, 0)),
      pl.BlockSpec((None, None, bk, Dh), lambda b, h, i, j, r: (b, lax.div(h, G), kv_idx(b, h, i, j, r), 0)),
      pl.BlockSpec((None, None, bk, Dh), lambda b, h, i, j, r: (b, lax.div(h, G), kv_idx(b, h, i, j, r), 0)),
      *_vec_specs(st, bq, bk, q_idx, kv_idx)]
  o, lse = pl.pallas_call(
      functools.partial(_fwd_kernel, st=st, nq=nq, nk=nk),
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=1, grid=(B, H, nq, nk), in_specs=in_specs,
          out_specs=[pl.BlockSpec((None, None, bq, Dh), lambda b, h, i, j, r: (b, h, i, 0)),
                     pl.BlockSpec((None, None, bq, LANES), lambda b, h, i, j, r: (b, h, i, 0))],
          scratch_shapes=[pltpu.VMEM((bq, LANES), jnp.float32),
                          pltpu.VMEM((bq, LANES), jnp.float32),
                          pltpu.VMEM((bq, Dh), jnp.float32)]),
      out_shape=[jax.ShapeDtypeStruct((B, H, T, Dh), q.dtype),
                 jax.ShapeDtypeStruct((B, H, T, LANES), jnp.float32)],
      compiler_params=_params('parallel', 'parallel', 'parallel', 'arbitrary'),
      interpret=st.interpret, name='flash_attention_fwd_tpu',
  )(rng.reshape(-1), jnp.swapaxes(q, 1, 2), jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2),
    *_vec_args(fm, st))
  return jnp.swapaxes(o, 1, 2), lse


# ----------------------------------------------------------------------------- backward


def _dq_kernel(rng_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, qpos_ref, kpos_ref,
               *refs, st: Static, nq: int, nk: int):
  (qseg_ref, kseg_ref), dense_ref, (dq_ref, acc_scr) = _split(refs, st)
  b, i, j = pl.program_id(0), pl.program_id(2), pl.program_id(3)
  lo, hi, flo, fhi = _row_ranges(rng_ref, b, i, nq)
  bk = k_ref.shape[0]

  @pl.when(j == 0)
  def _init():
    acc_scr[...] = jnp.zeros(acc_scr.shape, jnp.float32)

  def step(masked: bool):
    k, v = k_ref[...], v_ref[...]
    s = lax.dot_general(q_ref[...], k, TRANS_B, preferred_element_type=jnp.float32) * st.scale
    p = jnp.exp(s - _lanes(lse_ref[...], bk))
    if masked:
      p = jnp.where(_tile_visible(st, qpos_ref, kpos_ref, qseg_ref, kseg_ref, dense_ref, bk),
                    p, 0.0)
    dp = lax.dot_general(do_ref[...], v, TRANS_B, preferred_element_type=jnp.float32)
    ds = p * (dp - _lanes(delta_ref[...], bk))
    acc_scr[...] += jnp.dot(ds.astype(k.dtype), k, preferred_element_type=jnp.float32)

  _dispatch(j, lo, hi, flo, fhi, step)

  @pl.when(j == nk - 1)
  def _finish():
    dq_ref[...] = (acc_scr[...] * st.scale).astype(dq_ref.dtype)


def _dkdv_kernel(rng_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, qpos_ref, kpos_ref,
                 *refs, st: Static, nq: int, nk: int, G: int):
  (qseg_ref, kseg_ref), dense_ref, (dk_ref, dv_ref, dk_scr, dv_scr) = _split(refs, st)
  b, j, g, i = pl.program_id(0), pl.program_id(2), pl.program_id(3), pl.program_id(4)
  lo, hi, flo, fhi = _row_ranges(rng_ref, b, j, nk)
  bk = k_ref.shape[0]

  @pl.when((g == 0) & (i == 0))
  def _init():
    dk_scr[...] = jnp.zeros(dk_scr.shape, jnp.float32)
    dv_scr[...] = jnp.zeros(dv_scr.shape, jnp.float32)

  def step(masked: bool):
    q, k, v, do = q_ref[...], k_ref[...], v_ref[...], do_ref[...]
    s = lax.dot_general(q, k, TRANS_B, preferred_element_type=jnp.float32) * st.scale
    p = jnp.exp(s - _lanes(lse_ref[...], bk))  # [bq, bk]
    if masked:
      p = jnp.where(_tile_visible(st, qpos_ref, kpos_ref, qseg_ref, kseg_ref, dense_ref, bk),
                    p, 0.0)
    dv_scr[...] += jnp.dot(p.T.astype(do.dtype), do, preferred_element_type=jnp.float32)
    dp = lax.dot_general(do, v, TRANS_B, preferred_element_type=jnp.float32)
    ds = p * (dp - _lanes(delta_ref[...], bk))
    dk_scr[...] += jnp.dot(ds.T.astype(q.dtype), q, preferred_element_type=jnp.float32)

  _dispatch(i, lo, hi, flo, fhi, step)

  @pl.when((g == G - 1) & (i == nq - 1))
  def _finish():
    dk_ref[...] = (dk_scr[...] * st.scale).astype(dk_ref.dtype)
    dv_ref[...] = dv_scr[...].astype(dv_ref.dtype)


def backward(q, k, v, o, lse, do, fm: mask_lib.FlashMask, st: Static):
  """(dq, dk, dv) on padded inputs; `lse` from `forward`."""
  B, T, H, Dh = q.shape
  S, K = k.shape[1], k.shape[2]
  G = H // K
  bq, bk = st.block_q_bwd, st.block_k_bwd
  nq, nk = T // bq, S // bk
  delta = jnp.einsum('BTHd,BTHd->BHT', o.astype(jnp.float32), do.astype(jnp.float32))
  delta = jnp.broadcast_to(delta[..., None], (B, H, T, LANES))
  bmap = mask_lib.block_map(fm, st.causal_block, st.window, bq, bk)
  qh, kh, vh, doh = (jnp.swapaxes(x, 1, 2) for x in (q, k, v, do))
  vec = _vec_args(fm, st)

  # dq: grid (B, H, query blocks, key blocks), keys sequential.
  rng = mask_lib.ranges(bmap)

  def kv_idx(b, h, i, j, rng_ref):
    lo, hi, _, _ = _row_ranges(rng_ref, b, i, nq)
    return _clamp(j, lo, hi)

  q_spec = pl.BlockSpec((None, None, bq, Dh), lambda b, h, i, j, r: (b, h, i, 0))
  kv_spec = pl.BlockSpec((None, None, bk, Dh),
                         lambda b, h, i, j, r: (b, lax.div(h, G), kv_idx(b, h, i, j, r), 0))
  row_spec = pl.BlockSpec((None, None, bq, LANES), lambda b, h, i, j, r: (b, h, i, 0))
  dq = pl.pallas_call(
      functools.partial(_dq_kernel, st=st, nq=nq, nk=nk),
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=1, grid=(B, H, nq, nk),
          in_specs=[q_spec, kv_spec, kv_spec, q_spec, row_spec, row_spec,
                    *_vec_specs(st, bq, bk, lambda b, h, i, j, r: i, kv_idx)],
          out_specs=q_spec, scratch_shapes=[pltpu.VMEM((bq, Dh), jnp.float32)]),
      out_shape=jax.ShapeDtypeStruct(qh.shape, q.dtype),
      compiler_params=_params('parallel', 'parallel', 'parallel', 'arbitrary'),
      interpret=st.interpret, name='flash_attention_dq_tpu',
  )(rng.reshape(-1), qh, kh, vh, doh, lse, delta, *vec)

  # dk, dv: grid (B, K, key blocks, G heads, query blocks), the last two sequential.
  rng_t = mask_lib.ranges(jnp.swapaxes(bmap, 1, 2))

  def q_idx(b, kv, j, g, i, rng_ref):
    lo, hi, _, _ = _row_ranges(rng_ref, b, j, nk)
    return _clamp(i, lo, hi)

  qg_spec = pl.BlockSpec((None, None, bq, Dh),
                         lambda b, kv, j, g, i, r: (b, kv * G + g, q_idx(b, kv, j, g, i, r), 0))
  rowg_spec = pl.BlockSpec((None, None, bq, LANES),
                           lambda b, kv, j, g, i, r: (b, kv * G + g, q_idx(b, kv, j, g, i, r), 0))
  kvb_spec = pl.BlockSpec((None, None, bk, Dh), lambda b, kv, j, g, i, r: (b, kv, j, 0))
  dk, dv = pl.pallas_call(
      functools.partial(_dkdv_kernel, st=st, nq=nq, nk=nk, G=G),
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=1, grid=(B, K, nk, G, nq),
          in_specs=[qg_spec, kvb_spec, kvb_spec, qg_spec, rowg_spec, rowg_spec,
                    *_vec_specs(st, bq, bk, q_idx, lambda b, kv, j, g, i, r: j)],
          out_specs=[kvb_spec, kvb_spec],
          scratch_shapes=[pltpu.VMEM((bk, Dh), jnp.float32), pltpu.VMEM((bk, Dh), jnp.float32)]),
      out_shape=[jax.ShapeDtypeStruct(kh.shape, k.dtype), jax.ShapeDtypeStruct(vh.shape, v.dtype)],
      compiler_params=_params('parallel', 'parallel', 'parallel', 'arbitrary', 'arbitrary'),
      interpret=st.interpret, name='flash_attention_dkdv_tpu',
  )(rng_t.reshape(-1), qh, kh, vh, doh, lse, delta, *vec)
  return jnp.swapaxes(dq, 1, 2), jnp.swapaxes(dk, 1, 2), jnp.swapaxes(dv, 1, 2)
