"""Flash attention backward for Hopper GPUs (sm90): two warp-specialised Mosaic GPU kernels.

With S = scale · Q·Kᵀ, P = softmax(S) (recomputed from the forward's base-2 `lse`),
dP = dO·Vᵀ, δ = rowsum(dO ∘ O) and dS = P ∘ (dP − δ):

  dq kernel    one program per (head, pair of query blocks, batch), like the forward: each
               consumer warpgroup owns `block_q` rows (Q, dO, lse, δ loaded once) and walks the
               K/V tiles its rows see, streamed by the producer warpgroup through a ring of
               `stages` slots: dQ += dS·K (then · scale).
  dkdv kernel  one program per (kv head, pair of key blocks, batch): each consumer owns
               `block_kv` keys (K, V loaded once) and walks, for each of the G query heads of
               its kv head, the query tiles that see its keys; the producer streams Q, dO, lse
               and δ tiles: with Sᵀ = K·Qᵀ (keys as rows, so that the accumulators stay in
               the keys' layout) dV += Pᵀ·dO, dPᵀ = V·dOᵀ, dK += dSᵀ·Q (then · scale).

No atomics: each output block is written by one program. Masks as the forward's (causal,
sliding window, or none; padded keys hidden); tiles no row of a block sees are not loaded,
tiles every row sees skip the elementwise mask. Operands that are values (P, dS) feed wgmma
from registers on the GPU, through shared memory when interpreting (`p_in_smem`).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels import common
from pallas_kernels import mosaic_interpret
from pallas_kernels.flash_attention import hopper

COMPUTE_WGS = hopper.COMPUTE_WGS
LOG2E = hopper.LOG2E
HEAD_DIMS = (64, 128)  # at 256 the owned K/V and the Q/dO ring exceed shared memory


@dataclasses.dataclass(frozen=True)
class HopperBwdConfig:
  """block_q: query rows per consumer (dq kernel) and query tile (dkdv kernel); block_kv: keys
  per consumer (dkdv kernel) and K/V tile (dq kernel); both multiples of 64. stages: ring
  depth (>= 2). p_in_smem: stage P and dS through shared memory (required when
  interpreting)."""
  block_q: int = 64
  block_kv: int = 64
  stages: int = 2
  p_in_smem: bool = False

  def __post_init__(self):
    for name in ('block_q', 'block_kv'):
      if getattr(self, name) % 64 or getattr(self, name) <= 0:
        raise ValueError(f'HopperBwdConfig.{name} must be a positive multiple of 64, got '
                         f'{getattr(self, name)}.')
    if self.stages < 2:
      raise ValueError(f'HopperBwdConfig.stages must be >= 2, got {self.stages}.')


def query_tiles(k0, n_keys: int, *, causal: bool, window: int, offset: int, s_real: int,
                n_q_tiles: int, block_q: int):
  """(first, full_first, full_end, end): the query tiles whose rows see some key of
  [k0, k0 + n_keys) are [first, end); every row of the tiles [full_first, full_end) sees
  every one of those keys (traced k0). Rules as `hopper.key_tiles`."""
  bq = jnp.int32(block_q)
  nq = jnp.int32(n_q_tiles)
  last_key = k0 + n_keys - 1
  all_real = last_key < s_real  # else no tile sees every key
  if not causal:
    full_end = jnp.where(all_real, nq, 0)
    return jnp.int32(0), jnp.int32(0), full_end, nq
  first = jnp.minimum(lax.div(jnp.maximum(k0 - offset, 0), bq), nq)
  full_first = lax.div(jnp.maximum(last_key - offset, 0) + bq - 1, bq)  # rows >= last - off
  if window:
    end = jnp.minimum(lax.div(jnp.maximum(last_key - offset + window, 0) + bq - 1, bq), nq)
    full_end = lax.div(jnp.maximum(k0 - offset + window, 0), bq)  # rows < k0 - off + w
  else:
    end, full_end = nq, nq
  end = jnp.maximum(end, first)
  full_first = jnp.clip(full_first, first, end)
  full_end = jnp.where(all_real, jnp.clip(full_end, full_first, end), full_first)
  return first, full_first, full_end, end


def _dq_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dq_ref, scratch, *,
               causal: bool, window: int, scale: float, offset: int, s_real: int, group: int,
               block_q: int, block_kv: int, stages: int, p_in_smem: bool, interpret: bool):
  import jax.experimental.pallas.mosaic_gpu as plgpu  # pylint: disable=g-import-not-at-top
  ((q_smem, do_smem, lse_smem, delta_smem, k_smem, v_smem, ds_smem),
   (q_bar, do_bar, lse_bar, delta_bar, k_full, v_full), (k_free, v_free)) = scratch
  dtype = q_smem.dtype
  head_dim = q_smem.shape[-1]
  b, h, wg = lax.axis_index('batch'), lax.axis_index('heads'), lax.axis_index('wg')
  pair0 = lax.axis_index('q_tiles') * (COMPUTE_WGS * block_q)
  tiles = functools.partial(hopper.key_tiles, causal=causal, window=window, offset=offset,
                            s_real=s_real, block_kv=block_kv)
  pair_first, pair_end, slot_of = hopper.pair_tiles(tiles, pair0, block_q, stages)
  layout = plgpu.Layout.WGMMA
  c = scale * LOG2E

  @pl.when(wg < COMPUTE_WGS)
  def _consumer():
    mosaic_interpret.registers(232, 'increase', interpret)
    q0 = pair0 + wg * block_q
    first, full_first, full_end, end = tiles(q0, block_q)
    rows_at = (b, pl.ds(q0, block_q), h)
    vec_at = (b, h, pl.ds(q0, block_q))
    qs, dos = q_smem.at[wg], do_smem.at[wg]
    staging = None if ds_smem is None else ds_smem.at[wg]
    for src, dst, bar in ((q_ref.at[rows_at], qs, q_bar), (do_ref.at[rows_at], dos, do_bar),
                          (lse_ref.at[vec_at], lse_smem.at[wg], lse_bar),
                          (delta_ref.at[vec_at], delta_smem.at[wg], delta_bar)):
      plgpu.copy_gmem_to_smem(src, dst, bar.at[wg])
    for bar in (q_bar, do_bar, lse_bar, delta_bar):
      plgpu.barrier_wait(bar.at[wg])
    row = layout.reduce(1)
    lse = mosaic_interpret.load(lse_smem.at[wg], row, interpret)
    delta = mosaic_interpret.load(delta_smem.at[wg], row, interpret)

    def tile(j, dq, masked: bool):
      slot = slot_of(j)
      shape = (block_q, block_kv)
      plgpu.barrier_wait(k_full.at[slot])
      s = mosaic_interpret.mma(None, qs, plgpu.transpose_ref(k_smem.at[slot], (1, 0)), shape,
                               interpret)
      p = jnp.exp2(s * c - lax.broadcast_in_dim(lse, shape, [0]))
      if masked:
        rows = offset + q0 + mosaic_interpret.iota(jnp.int32, shape, 0, layout, interpret)
        cols = j * block_kv + mosaic_interpret.iota(jnp.int32, shape, 1, layout, interpret)
        p = jnp.where(hopper.visible(rows, cols, causal=causal, window=window, s_real=s_real), p,
                      0.0)
      plgpu.barrier_wait(v_full.at[slot])
      dp = mosaic_interpret.mma(None, dos, plgpu.transpose_ref(v_smem.at[slot], (1, 0)),
                                shape, interpret)
      plgpu.barrier_arrive(v_free.at[slot])
      ds = p * (dp - lax.broadcast_in_dim(delta, shape, [0]))
      lhs = mosaic_interpret.operand(ds.astype(dtype), staging, p_in_smem)
      dq = mosaic_interpret.mma(dq, lhs, k_smem.at[slot], (block_q, head_dim), interpret)
      plgpu.barrier_arrive(k_free.at[slot])
      return dq

    def skip(j):
      slot = slot_of(j)
      for full, free in ((k_full, k_free), (v_full, v_free)):
        plgpu.barrier_wait(full.at[slot])
        plgpu.barrier_arrive(free.at[slot])

    dq = mosaic_interpret.layout(jnp.zeros((block_q, head_dim), jnp.float32), layout,
                                 interpret)
    pl.loop(pair_first, first)(skip)
    dq = lax.fori_loop(first, full_first, functools.partial(tile, masked=True), dq)
    dq = lax.fori_loop(full_first, full_end, functools.partial(tile, masked=False), dq)
    dq = lax.fori_loop(full_end, end, functools.partial(tile, masked=True), dq)
    pl.loop(end, pair_end)(skip)
    qs[...] = (dq * scale).astype(dtype)
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(qs, dq_ref.at[rows_at])
    plgpu.wait_smem_to_gmem(0)

  pl.when(wg == COMPUTE_WGS)(functools.partial(
      hopper.kv_producer, k_ref, v_ref, k_smem, v_smem, (k_full, v_full), (k_free, v_free), b,
      lax.div(h, jnp.int32(group)), block_kv, pair_first, pair_end, stages, interpret))


def _dkdv_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref, scratch, *,
                 causal: bool, window: int, scale: float, offset: int, s_real: int,
                 group: int, block_q: int, block_kv: int, n_q_tiles: int, stages: int,
                 p_in_smem: bool, interpret: bool):
  import jax.experimental.pallas.mosaic_gpu as plgpu  # pylint: disable=g-import-not-at-top
  ((k_own, v_own, q_smem, do_smem, lse_smem, delta_smem, p_smem),
   (k_bar, v_bar, q_full, do_full, lse_full, delta_full), free) = scratch
  dtype = k_own.dtype
  head_dim = k_own.shape[-1]
  b, kvh, wg = lax.axis_index('batch'), lax.axis_index('kv_heads'), lax.axis_index('wg')
  pair0 = lax.axis_index('kv_tiles') * (COMPUTE_WGS * block_kv)
  tiles = functools.partial(query_tiles, causal=causal, window=window, offset=offset,
                            s_real=s_real, n_q_tiles=n_q_tiles, block_q=block_q)
  # The pair's query tiles: the lower keys' first to the higher keys' last, once per head.
  pair_first, _, _, _ = tiles(pair0, block_kv)
  _, _, _, pair_end = tiles(pair0 + (COMPUTE_WGS - 1) * block_kv, block_kv)
  per_head = pair_end - pair_first
  slot_of = lambda g, i: lax.rem(g * per_head + i - pair_first, jnp.int32(stages))
  layout = plgpu.Layout.WGMMA
  c = scale * LOG2E
  fulls = (q_full, do_full, lse_full, delta_full)

  @pl.when(wg < COMPUTE_WGS)
  def _consumer():
    mosaic_interpret.registers(232, 'increase', interpret)
    k0 = pair0 + wg * block_kv
    first, full_first, full_end, end = tiles(k0, block_kv)
    keys_at = (b, pl.ds(k0, block_kv), kvh)
    ks, vs = k_own.at[wg], v_own.at[wg]
    plgpu.copy_gmem_to_smem(k_ref.at[keys_at], ks, k_bar.at[wg])
    plgpu.copy_gmem_to_smem(v_ref.at[keys_at], vs, v_bar.at[wg])
    plgpu.barrier_wait(k_bar.at[wg])
    plgpu.barrier_wait(v_bar.at[wg])
    staging = None if p_smem is None else p_smem.at[wg]
    col = layout.reduce(0)

    def tile(i, carry, g, masked: bool):
      dk, dv = carry
      slot = slot_of(g, i)
      shape = (block_kv, block_q)
      plgpu.barrier_wait(q_full.at[slot])
      plgpu.barrier_wait(lse_full.at[slot])
      s_t = mosaic_interpret.mma(None, ks, plgpu.transpose_ref(q_smem.at[slot], (1, 0)),
                                 shape, interpret)
      lse = mosaic_interpret.load(lse_smem.at[slot], col, interpret)
      p_t = jnp.exp2(s_t * c - lax.broadcast_in_dim(lse, shape, [1]))
      if masked:
        keys = k0 + mosaic_interpret.iota(jnp.int32, shape, 0, layout, interpret)
        rows = offset + i * block_q + mosaic_interpret.iota(jnp.int32, shape, 1, layout,
                                                            interpret)
        p_t = jnp.where(hopper.visible(rows, keys, causal=causal, window=window, s_real=s_real),
                        p_t, 0.0)
      plgpu.barrier_wait(do_full.at[slot])
      plgpu.barrier_wait(delta_full.at[slot])
      dv = mosaic_interpret.mma(dv, mosaic_interpret.operand(p_t.astype(dtype), staging,
                                                             p_in_smem),
                                do_smem.at[slot], (block_kv, head_dim), interpret)
      dp_t = mosaic_interpret.mma(None, vs, plgpu.transpose_ref(do_smem.at[slot], (1, 0)),
                                  shape, interpret)
      delta = mosaic_interpret.load(delta_smem.at[slot], col, interpret)
      ds_t = p_t * (dp_t - lax.broadcast_in_dim(delta, shape, [1]))
      dk = mosaic_interpret.mma(dk, mosaic_interpret.operand(ds_t.astype(dtype), staging,
                                                             p_in_smem),
                                q_smem.at[slot], (block_kv, head_dim), interpret)
      plgpu.barrier_arrive(free.at[slot])
      return dk, dv

    def head(g, carry):
      def skip(i):
        slot = slot_of(g, i)
        for bar in fulls:
          plgpu.barrier_wait(bar.at[slot])
        plgpu.barrier_arrive(free.at[slot])
      pl.loop(pair_first, first)(skip)
      carry = lax.fori_loop(first, full_first,
                            functools.partial(tile, g=g, masked=True), carry)
      carry = lax.fori_loop(full_first, full_end,
                            functools.partial(tile, g=g, masked=False), carry)
      carry = lax.fori_loop(full_end, end, functools.partial(tile, g=g, masked=True), carry)
      pl.loop(end, pair_end)(skip)
      return carry

    zeros = mosaic_interpret.layout(jnp.zeros((block_kv, head_dim), jnp.float32), layout,
                                    interpret)
    dk, dv = lax.fori_loop(0, group, head, (zeros, zeros))
    ks[...] = (dk * scale).astype(dtype)
    vs[...] = dv.astype(dtype)
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(ks, dk_ref.at[keys_at])
    plgpu.copy_smem_to_gmem(vs, dv_ref.at[keys_at])
    plgpu.wait_smem_to_gmem(0)

  @pl.when(wg == COMPUTE_WGS)
  def _producer():
    mosaic_interpret.registers(40, 'decrease', interpret)
    steps = group * per_head

    @pl.loop(0, steps)
    def _load(t):
      slot = lax.rem(t, jnp.int32(stages))
      g = lax.div(t, jnp.maximum(per_head, 1))
      i = pair_first + lax.rem(t, jnp.maximum(per_head, 1))
      h = kvh * group + g
      rows_at = (b, pl.ds(i * block_q, block_q), h)
      vec_at = (b, h, pl.ds(i * block_q, block_q))

      @pl.when(t >= stages)
      def _():
        plgpu.barrier_wait(free.at[slot])
      for src, dst, bar in ((q_ref.at[rows_at], q_smem, q_full),
                            (lse_ref.at[vec_at], lse_smem, lse_full),
                            (do_ref.at[rows_at], do_smem, do_full),
                            (delta_ref.at[vec_at], delta_smem, delta_full)):
        plgpu.copy_gmem_to_smem(src, dst.at[slot], bar.at[slot])

    @pl.loop(jnp.maximum(steps - stages, 0), steps)
    def _settle(t):
      plgpu.barrier_wait(free.at[lax.rem(t, jnp.int32(stages))])


def backward(q, k, v, o, lse, do, *, causal: bool, scale: float, t_real: int, s_real: int,
             window: int = 0, config: HopperBwdConfig = HopperBwdConfig(), interpret=False):
  """(dq, dk, dv) on padded inputs, from the forward's o and lse ([B, H, T] float32 base 2).

  q, o, do: [B, T, H, Dh], T a multiple of 2 * block_q; k, v: [B, S, K, Dh], S a multiple
  of 2 * block_kv. Other arguments as `hopper.forward`'s.
  """
  import jax.experimental.pallas.mosaic_gpu as plgpu  # pylint: disable=g-import-not-at-top
  B, T, H, Dh = q.shape
  S, K = k.shape[1], k.shape[2]
  bq, bkv, stages = config.block_q, config.block_kv, config.stages
  why = hopper.unsupported(q.dtype, Dh, 'causal') or (
      None if Dh in HEAD_DIMS else f'head dim {Dh} (the Hopper backward takes {HEAD_DIMS})')
  if why:
    raise ValueError(f'Hopper flash attention backward: unsupported {why}.')
  if T % (COMPUTE_WGS * bq) or S % (COMPUTE_WGS * bkv):
    raise ValueError(f'Hopper flash backward wants T a multiple of {COMPUTE_WGS * bq} and S of '
                     f'{COMPUTE_WGS * bkv}; got T={T}, S={S} (pad first).')
  if interpret and not config.p_in_smem:
    raise ValueError('Interpreting the Hopper backward needs HopperBwdConfig(p_in_smem=True).')
  interpreting = bool(interpret)
  delta = jnp.einsum('bthd,bthd->bht', o.astype(jnp.float32), do.astype(jnp.float32))
  lse = lse.astype(jnp.float32)
  tr = (plgpu.TilingTransform((8, 64)), plgpu.SwizzleTransform(128))
  f32 = jnp.float32
  kw = mosaic_interpret.kernel_kwargs(interpret)
  common_kw = dict(causal=causal, window=window, scale=scale, offset=s_real - t_real,
                   s_real=s_real, group=H // K, block_q=bq, block_kv=bkv, stages=stages,
                   p_in_smem=config.p_in_smem, interpret=interpreting)
  n = COMPUTE_WGS
  bars = lambda m: plgpu.Barrier(num_barriers=m)
  free = lambda: plgpu.Barrier(num_arrivals=n, num_barriers=stages)

  dq_smem = (plgpu.SMEM((n, bq, Dh), q.dtype, transforms=tr),
             plgpu.SMEM((n, bq, Dh), q.dtype, transforms=tr),
             plgpu.SMEM((n, bq), f32), plgpu.SMEM((n, bq), f32),
             plgpu.SMEM((stages, bkv, Dh), k.dtype, transforms=tr),
             plgpu.SMEM((stages, bkv, Dh), v.dtype, transforms=tr),
             plgpu.SMEM((n, bq, bkv), q.dtype, transforms=tr) if config.p_in_smem else None)
  dq_body = functools.partial(_dq_kernel, **common_kw)

  def dq_entry(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dq_ref):
    pl.run_scoped(lambda *s: dq_body(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dq_ref,
                                     s),
                  dq_smem, (bars(n), bars(n), bars(n), bars(n), bars(stages), bars(stages)),
                  (free(), free()), collective_axes='wg')

  dq = plgpu.kernel(dq_entry, out_type=jax.ShapeDtypeStruct(q.shape, q.dtype),
                    grid=(H, T // (n * bq), B), grid_names=('heads', 'q_tiles', 'batch'),
                    num_threads=n + 1, thread_name='wg', **kw)(q, k, v, do, lse, delta)

  dkdv_smem = (plgpu.SMEM((n, bkv, Dh), k.dtype, transforms=tr),
               plgpu.SMEM((n, bkv, Dh), v.dtype, transforms=tr),
               plgpu.SMEM((stages, bq, Dh), q.dtype, transforms=tr),
               plgpu.SMEM((stages, bq, Dh), do.dtype, transforms=tr),
               plgpu.SMEM((stages, bq), f32), plgpu.SMEM((stages, bq), f32),
               plgpu.SMEM((n, bkv, bq), q.dtype, transforms=tr) if config.p_in_smem else None)
  dkdv_body = functools.partial(_dkdv_kernel, n_q_tiles=T // bq, **common_kw)

  def dkdv_entry(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref):
    pl.run_scoped(lambda *s: dkdv_body(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dk_ref,
                                       dv_ref, s),
                  dkdv_smem, (bars(n), bars(n), bars(stages), bars(stages), bars(stages),
                              bars(stages)),
                  free(), collective_axes='wg')

  dk, dv = plgpu.kernel(dkdv_entry, out_type=(jax.ShapeDtypeStruct(k.shape, k.dtype),
                                              jax.ShapeDtypeStruct(v.shape, v.dtype)),
                        grid=(K, S // (n * bkv), B), grid_names=('kv_heads', 'kv_tiles', 'batch'),
                        num_threads=n + 1, thread_name='wg', **kw)(q, k, v, do, lse, delta)
  return dq, dk, dv
