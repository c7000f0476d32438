"""Flash attention for GPUs: Pallas kernels with the Triton lowering (forward, dq, dk/dv).

Layout as the model keeps it (no transposes): q/o [B, T, H, Dh], k/v [B, S, K, Dh]. The
wrapper in `__init__` pads T, S to block multiples and Dh to a power of two >= 16 (Triton
needs power-of-two tiles and dot dims >= 16), so the kernels see exact tiles only.

Grids: forward and dq run one program per (query block, batch, head) and loop over the key
blocks of `ranges` (the tiles not skipped); dk/dv run one program per (key block, batch,
kv head) and loop over the G query heads of the group and their query blocks. Tiles marked
FULL by `mask.block_map` skip the elementwise mask. Softmax in base 2 (exp2) with the
log2(e) factor folded into the scale; the log-sum-exp residual `lse` is in base 2 too.

Written for `compiler_params=pltriton.CompilerParams(...)`: the Triton path of
`pl.pallas_call`, which jax 0.11 deprecates (Mosaic GPU's `plgpu.kernel` is the successor);
see docs/kernels.md.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels import common
from pallas_kernels.flash_attention import mask as mask_lib

LOG2E = math.log2(math.e)
MASK_VALUE = common.MASK_VALUE


Static = mask_lib.Static


def _dot(a, b, contract=(1, 1)):
  """a @ b^T by default (contract dim 1 of both); float32 accumulation."""
  return lax.dot_general(a, b, (((contract[0],), (contract[1],)), ((), ())),
                         preferred_element_type=jnp.float32,
                         precision=common.dot_precision(a.dtype))


def _tile_visible(st: Static, q_pos, kv_pos, q_seg, kv_seg, dense):
  """[bq, bk] bool from the tile's column/row vectors (see `mask.visible`)."""
  seg = (None, None) if q_seg is None else (q_seg[:, None], kv_seg[None, :])
  return mask_lib.visible(q_pos[:, None], kv_pos[None, :], seg[0], seg[1],
                          None if dense is None else dense != 0, st.causal_block, st.window)


def _split_refs(refs, st: Static, n_head: int):
  """(head refs, seg refs or (None, None), dense ref or None, rest)."""
  head, rest = refs[:n_head], refs[n_head:]
  seg = (None, None)
  if st.has_seg:
    seg, rest = rest[:2], rest[2:]
  dense = None
  if st.has_dense:
    dense, rest = rest[0], rest[1:]
  return head, seg, dense, rest


# ----------------------------------------------------------------------------- forward


def _fwd_kernel(*refs, st: Static):
  (q_ref, k_ref, v_ref, qpos_ref, kpos_ref, map_ref, rng_ref), (qseg_ref, kseg_ref), \
      dense_ref, (o_ref, lse_ref) = _split_refs(refs, st, 7)
  bq, bk = st.block_q, st.block_k
  q = q_ref[...]
  q_pos = qpos_ref[...]
  q_seg = None if qseg_ref is None else qseg_ref[...]
  qk_scale = st.scale * LOG2E

  def tile(j, carry, masked: bool):
    o, m, l = carry
    ks = pl.ds(pl.multiple_of(j * bk, bk), bk)
    s = _dot(q, k_ref[ks, :]) * qk_scale  # [bq, bk]
    if masked:
      vis = _tile_visible(st, q_pos, kpos_ref[ks], q_seg,
                          None if kseg_ref is None else kseg_ref[ks],
                          None if dense_ref is None else dense_ref[:, ks])
      s = jnp.where(vis, s, MASK_VALUE)
    m_new = jnp.maximum(m, s.max(axis=1))
    alpha = jnp.exp2(m - m_new)
    p = jnp.exp2(s - m_new[:, None])
    if masked:
      p = jnp.where(vis, p, 0.0)
    l = alpha * l + p.sum(axis=1)
    v = v_ref[ks, :]
    o = alpha[:, None] * o + _dot(p.astype(v.dtype), v, (1, 0))
    return o, m_new, l

  def body(j, carry):
    flag = map_ref[j]
    return lax.switch(flag, [lambda c: c, functools.partial(tile, j, masked=True),
                             functools.partial(tile, j, masked=False)], carry)

  init = (jnp.zeros(o_ref.shape, jnp.float32), jnp.full((bq,), MASK_VALUE, jnp.float32),
          jnp.zeros((bq,), jnp.float32))
  o, m, l = lax.fori_loop(rng_ref[0], rng_ref[1], body, init)
  empty = l == 0.0  # no visible key: output 0 (and no gradient)
  o_ref[...] = (o / jnp.where(empty, 1.0, l)[:, None]).astype(o_ref.dtype)
  lse_ref[...] = jnp.where(empty, jnp.inf, m + jnp.log2(jnp.where(empty, 1.0, l)))


def _common_specs(st: Static, T: int, S: int, *, q_block: int | None, k_block: int | None,
                  qi, ki):
  """BlockSpecs for positions, segment ids and the dense mask.

  A None block means the whole axis; `qi`/`ki` map grid indices to (b, block index).
  """
  def vec(block, n, idx):
    return pl.BlockSpec((None, block or n), lambda *g: (idx(*g)[0], idx(*g)[1]))
  specs = [vec(q_block, T, qi), vec(k_block, S, ki)]
  seg = [vec(q_block, T, qi), vec(k_block, S, ki)] if st.has_seg else []
  dense = []
  if st.has_dense:
    dense = [pl.BlockSpec((None, q_block or T, k_block or S),
                          lambda *g: (qi(*g)[0], qi(*g)[1], ki(*g)[1]))]
  return specs, seg, dense


def forward(q, k, v, fm: mask_lib.FlashMask, st: Static):
  """(o [B, T, H, Dh], lse [B, H, T] float32 base 2) on padded inputs."""
  B, T, H, Dh = q.shape
  S, K = k.shape[1], k.shape[2]
  G = H // K
  bq, bk = st.block_q, st.block_k
  bmap = mask_lib.block_map(fm, st.causal_block, st.window, bq, bk)
  rng = mask_lib.ranges(bmap)
  nq, nk = T // bq, S // bk
  (qpos_spec, kpos_spec), seg_specs, dense_specs = _common_specs(
      st, T, S, q_block=bq, k_block=None, qi=lambda i, b, h: (b, i), ki=lambda i, b, h: (b, 0))
  in_specs = [
      pl.BlockSpec((None, bq, None, Dh), lambda i, b, h: (b, i, h, 0)),
      pl.BlockSpec((None, S, None, Dh), lambda i, b, h: (b, 0, lax.div(h, G), 0)),
      pl.BlockSpec((None, S, None, Dh), lambda i, b, h: (b, 0, lax.div(h, G), 0)),
      qpos_spec, kpos_spec,
      pl.BlockSpec((None, None, nk), lambda i, b, h: (b, i, 0)),
      pl.BlockSpec((None, None, 4), lambda i, b, h: (b, i, 0)),
      *seg_specs, *dense_specs]
  args = [q, k, v, fm.q_pos, fm.kv_pos, bmap, rng]
  args += [fm.q_seg, fm.kv_seg] if st.has_seg else []
  args += [fm.dense] if st.has_dense else []
  num_warps = st.num_warps or (4 if Dh <= 64 else 8)
  return pl.pallas_call(
      functools.partial(_fwd_kernel, st=st),
      grid=(nq, B, H),
      in_specs=in_specs,
      out_specs=[pl.BlockSpec((None, bq, None, Dh), lambda i, b, h: (b, i, h, 0)),
                 pl.BlockSpec((None, None, bq), lambda i, b, h: (b, h, i))],
      out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                 jax.ShapeDtypeStruct((B, H, T), jnp.float32)],
      compiler_params=common.triton_params(num_warps, st.num_stages),
      interpret=st.interpret,
      name='flash_attention_fwd',
  )(*args)


# ----------------------------------------------------------------------------- backward


def _dq_kernel(*refs, st: Static):
  (q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, qpos_ref, kpos_ref, map_ref, rng_ref), \
      (qseg_ref, kseg_ref), dense_ref, (dq_ref,) = _split_refs(refs, st, 10)
  bk = st.block_k_bwd
  q, do = q_ref[...], do_ref[...]
  lse, delta = lse_ref[...], delta_ref[...]
  q_pos = qpos_ref[...]
  q_seg = None if qseg_ref is None else qseg_ref[...]
  qk_scale = st.scale * LOG2E

  def tile(j, dq, masked: bool):
    ks = pl.ds(pl.multiple_of(j * bk, bk), bk)
    k, v = k_ref[ks, :], v_ref[ks, :]
    p = jnp.exp2(_dot(q, k) * qk_scale - lse[:, None])
    if masked:
      vis = _tile_visible(st, q_pos, kpos_ref[ks], q_seg,
                          None if kseg_ref is None else kseg_ref[ks],
                          None if dense_ref is None else dense_ref[:, ks])
      p = jnp.where(vis, p, 0.0)
    ds = p * (_dot(do, v) - delta[:, None])
    return dq + _dot(ds.astype(k.dtype), k, (1, 0))

  def body(j, dq):
    return lax.switch(map_ref[j], [lambda c: c, functools.partial(tile, j, masked=True),
                                   functools.partial(tile, j, masked=False)], dq)

  dq = lax.fori_loop(rng_ref[0], rng_ref[1], body, jnp.zeros(dq_ref.shape, jnp.float32))
  dq_ref[...] = (dq * st.scale).astype(dq_ref.dtype)


def _dkdv_kernel(*refs, st: Static, G: int):
  (q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, qpos_ref, kpos_ref, map_ref, rng_ref), \
      (qseg_ref, kseg_ref), dense_ref, (dk_ref, dv_ref) = _split_refs(refs, st, 10)
  bq = st.block_q_bwd
  k, v = k_ref[...], v_ref[...]
  kv_pos = kpos_ref[...]
  kv_seg = None if kseg_ref is None else kseg_ref[...]
  qk_scale = st.scale * LOG2E

  def tile(g, i, carry, masked: bool):
    dk, dv = carry
    qs = pl.ds(pl.multiple_of(i * bq, bq), bq)
    q, do = q_ref[qs, g, :], do_ref[qs, g, :]
    p = jnp.exp2(_dot(q, k) * qk_scale - lse_ref[g, qs][:, None])  # [bq, bk]
    if masked:
      vis = _tile_visible(st, qpos_ref[qs], kv_pos,
                          None if qseg_ref is None else qseg_ref[qs], kv_seg,
                          None if dense_ref is None else dense_ref[qs, :])
      p = jnp.where(vis, p, 0.0)
    dv = dv + _dot(p.astype(do.dtype), do, (0, 0))
    ds = p * (_dot(do, v) - delta_ref[g, qs][:, None])
    dk = dk + _dot(ds.astype(q.dtype), q, (0, 0))
    return dk, dv

  def head(g, carry):
    def body(i, c):
      return lax.switch(map_ref[i], [lambda c: c, functools.partial(tile, g, i, masked=True),
                                     functools.partial(tile, g, i, masked=False)], c)
    return lax.fori_loop(rng_ref[0], rng_ref[1], body, carry)

  zeros = jnp.zeros(dk_ref.shape, jnp.float32)
  dk, dv = lax.fori_loop(0, G, head, (zeros, zeros))
  dk_ref[...] = (dk * st.scale).astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


def backward(q, k, v, o, lse, do, fm: mask_lib.FlashMask, st: Static):
  """(dq, dk, dv) on padded inputs; `lse` from `forward`."""
  B, T, H, Dh = q.shape
  S, K = k.shape[1], k.shape[2]
  G = H // K
  bq, bk = st.block_q_bwd, st.block_k_bwd
  nq, nk = T // bq, S // bk
  delta = jnp.einsum('BTHd,BTHd->BHT', o.astype(jnp.float32), do.astype(jnp.float32))
  bmap = mask_lib.block_map(fm, st.causal_block, st.window, bq, bk)
  num_warps = st.num_warps or (4 if Dh <= 64 else 8)
  params = common.triton_params(num_warps, st.num_stages)
  extra = ([fm.q_seg, fm.kv_seg] if st.has_seg else []) + ([fm.dense] if st.has_dense else [])

  # dq: one program per (query block, batch, head), looping over key blocks.
  (qpos_spec, kpos_spec), seg_specs, dense_specs = _common_specs(
      st, T, S, q_block=bq, k_block=None, qi=lambda i, b, h: (b, i), ki=lambda i, b, h: (b, 0))
  q_spec = pl.BlockSpec((None, bq, None, Dh), lambda i, b, h: (b, i, h, 0))
  kv_spec = pl.BlockSpec((None, S, None, Dh), lambda i, b, h: (b, 0, lax.div(h, G), 0))
  row_spec = pl.BlockSpec((None, None, bq), lambda i, b, h: (b, h, i))
  dq = pl.pallas_call(
      functools.partial(_dq_kernel, st=st),
      grid=(nq, B, H),
      in_specs=[q_spec, kv_spec, kv_spec, q_spec, row_spec, row_spec, qpos_spec, kpos_spec,
                pl.BlockSpec((None, None, nk), lambda i, b, h: (b, i, 0)),
                pl.BlockSpec((None, None, 4), lambda i, b, h: (b, i, 0)),
                *seg_specs, *dense_specs],
      out_specs=q_spec,
      out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
      compiler_params=params, interpret=st.interpret, name='flash_attention_dq',
  )(q, k, v, do, lse, delta, fm.q_pos, fm.kv_pos, bmap, mask_lib.ranges(bmap), *extra)

  # dk, dv: one program per (key block, batch, kv head), looping over its G heads' queries.
  bmap_t = jnp.swapaxes(bmap, 1, 2)
  (qpos_spec, kpos_spec), seg_specs, dense_specs = _common_specs(
      st, T, S, q_block=None, k_block=bk, qi=lambda j, b, kh: (b, 0),
      ki=lambda j, b, kh: (b, j))
  qg_spec = pl.BlockSpec((None, T, G, Dh), lambda j, b, kh: (b, 0, kh, 0))
  kv_spec = pl.BlockSpec((None, bk, None, Dh), lambda j, b, kh: (b, j, kh, 0))
  rows_spec = pl.BlockSpec((None, G, T), lambda j, b, kh: (b, kh, 0))
  dk, dv = pl.pallas_call(
      functools.partial(_dkdv_kernel, st=st, G=G),
      grid=(nk, B, K),
      in_specs=[qg_spec, kv_spec, kv_spec, qg_spec, rows_spec, rows_spec, qpos_spec,
                kpos_spec,
                pl.BlockSpec((None, None, nq), lambda j, b, kh: (b, j, 0)),
                pl.BlockSpec((None, None, 4), lambda j, b, kh: (b, j, 0)),
                *seg_specs, *dense_specs],
      out_specs=[kv_spec, kv_spec],
      out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
      compiler_params=params, interpret=st.interpret, name='flash_attention_dkdv',
  )(q, k, v, do, lse, delta, fm.q_pos, fm.kv_pos, bmap_t, mask_lib.ranges(bmap_t), *extra)
  return dq, dk, dv
