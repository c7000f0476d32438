"""Decode attention for Hopper GPUs (sm90): split-K partials from a TMA-fed Mosaic GPU kernel.

Decoding is bound by reading the cache, so the kernel's job is to keep loads in flight:
one program per (kv head and block of query rows, part of the cache, batch row), two
warpgroups:

  wg 0   consumer: R query rows of this kv head (of its T new tokens x G query heads,
         zero-padded to a multiple of R = 64 or 128, wgmma's M) against each K/V tile:
         S = Q·Kᵀ (wgmma), online softmax in base 2 over the slots below the row's length
         (and, with a mask, the slots its mask tile shows), O += P·V (wgmma).
  wg 1   producer: TMA-loads the part's K and V tiles (`block_k` slots), and the mask's
         [R, block_k] int8 tiles where one is needed, into a ring of `stages` shared-memory
         slots, reloading a slot once the consumer frees it.

The row's length and its bounds (`reference.slot_bounds`: the first slot any query sees,
and the run of slots every query sees, e.g. the committed prefix under a verification
tree, or all of a decode step's cache or window) are read from shared memory (TMA-loaded
first). The parts split the tiles from the first visible slot's to the length's evenly
(`gpu.part_tiles`), so every part stays busy at any length and a sliding window's earlier
tiles are never loaded; the tiles inside the run are computed without a mask: their mask
tiles are never loaded and no score is masked. More than 128 rows (a wide verification tree: N nodes x G heads)
run as several row blocks, one program each, reading the same K/V tiles (from L2 when
they run together, which the grid order favours).

Both layouts are read in place: [B, S, K, Dh], and the decoding cache's (models.cache:
k [B, K, S, Dh], v [B, K, Dh, S]; V tiles are [Dh, block_k], read by P·V through a
transposed view). Outputs are `gpu.partials`' (o unnormalised float32, m base 2, l),
merged by `gpu.combine`.

On a CPU the kernel runs in jax's GPU interpret mode (`pallas_kernels.mosaic_interpret`),
with P staged through shared memory (`p_in_smem`).
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
from pallas_kernels import dispatch
from pallas_kernels import mosaic_interpret
from pallas_kernels.decode_attention import gpu
from pallas_kernels.flash_attention import hopper as flash_hopper

LOG2E = math.log2(math.e)
MASK_VALUE = common.MASK_VALUE
ROWS = (64, 128)  # query rows per program (T x G zero-padded to one of these): wgmma's M
MAX_ROWS = 512  # T x G per kv head at most (row blocks of 128): verification-sized calls
LENGTHS_PAD = 32  # lengths are TMA-loaded: a multiple of 128 bytes of int32
SMEM_BYTES = 227 * 1024
# (64, 128): at 256 the float32 partials and two K/V stages do not fit in shared memory.
HEAD_DIMS = dispatch.HOPPER_DECODE_HEAD_DIMS
ALIGN_SLACK = 4096  # what Mosaic adds for alignment and barriers (measured by lowering)


@dataclasses.dataclass(frozen=True)
class HopperDecodeConfig:
  """block_k: cache slots per tile (a multiple of 64; None = 128 for 64 rows at Dh <= 128,
  else 64). stages: K/V ring depth (>= 2).
  num_parts: split-K parts (0 = enough programs to fill 132 SMs twice). p_in_smem: stage P
  through shared memory (required when interpreting)."""
  block_k: int | None = None
  stages: int = 2
  num_parts: int = 0
  p_in_smem: bool = False

  def __post_init__(self):
    if self.block_k is not None and (self.block_k % 64 or self.block_k <= 0):
      raise ValueError(f'HopperDecodeConfig.block_k must be a positive multiple of 64, got '
                       f'{self.block_k}.')
    if self.stages < 2:
      raise ValueError(f'HopperDecodeConfig.stages must be >= 2, got {self.stages}.')

  def kv_block(self, head_dim: int, rows: int = 64) -> int:
    return self.block_k or (128 if head_dim <= 128 and rows <= 64 else 64)


def rows_for(n_rows: int) -> int:
  """The R (rows per program: 64 or 128) a call with n_rows = T x G query rows per kv head
  runs with; it runs common.cdiv(n_rows, R) row blocks."""
  return ROWS[0] if n_rows <= ROWS[0] else ROWS[-1]




def smem_bytes(config: HopperDecodeConfig, head_dim: int, itemsize: int = 2, rows: int = 64,
               has_mask: bool = False) -> int:
  """Shared memory asked for: Q, the K/V (and mask) ring, P (if staged), the float32
  partial output."""
  bk = config.kv_block(head_dim, rows)
  n = rows * head_dim + 2 * config.stages * bk * head_dim
  n += rows * bk if config.p_in_smem else 0
  mask = config.stages * rows * bk if has_mask else 0
  return (n * itemsize + mask + rows * head_dim * 4 + 2 * rows * 4 + 4 * LENGTHS_PAD * 4
          + ALIGN_SLACK)


def unsupported(dtype, head_dim: int, rows: int, *, has_new: bool) -> str | None:
  """Why the Hopper decode kernel cannot run a call (None = it can)."""
  if jnp.dtype(dtype).name not in dispatch.HOPPER_DTYPES:
    return (f'dtype {jnp.dtype(dtype).name} (the Hopper decode kernel takes '
            f'{"/".join(dispatch.HOPPER_DTYPES)})')
  if head_dim not in HEAD_DIMS:
    return f'head dim {head_dim} (the Hopper decode kernel takes {HEAD_DIMS})'
  if rows > MAX_ROWS:
    return (f'{rows} query rows per kv head (T x G; the Hopper decode kernel takes '
            f'<= {MAX_ROWS})')
  if has_new:
    return 'new tokens apart from the cache (the Hopper decode kernel reads the cache only)'
  return None


def _kernel(bounds_ref, q_ref, k_ref, v_ref, mask_ref, o_ref, m_ref, l_ref, scratch, *,
            scale: float, block_k: int, num_parts: int, stages: int, cache_layout: bool,
            row_blocks: int, out_rows: int, p_in_smem: bool, interpret: bool):
  import jax.experimental.pallas.mosaic_gpu as plgpu  # pylint: disable=g-import-not-at-top
  ((bounds_smem, q_smem, k_smem, v_smem, mask_smem, p_smem, o_smem, m_smem, l_smem),
   (bounds_bar, q_bar, k_full, v_full, mask_full, k_free, v_free)) = scratch
  rows = q_smem.shape[0]
  hr = lax.axis_index('heads')  # kv head h, row block rb: neighbours share K/V tiles
  h, rb = lax.div(hr, jnp.int32(row_blocks)), lax.rem(hr, jnp.int32(row_blocks))
  row_slice = pl.ds(rb * rows, rows)
  part = lax.axis_index('parts')
  b = lax.axis_index('batch')
  wg = lax.axis_index('wg')
  head_dim = q_smem.shape[-1]
  dtype = q_smem.dtype

  @pl.when(wg == 0)
  def _():
    plgpu.copy_gmem_to_smem(bounds_ref, bounds_smem, bounds_bar.at[0])
  plgpu.barrier_wait(bounds_bar.at[0])
  bp = bounds_smem.shape[0] // 4  # lengths, starts, run starts, run ends
  length = bounds_smem[b]
  start, lo, hi = (bounds_smem[i * bp + b] for i in (1, 2, 3))
  first, last, free_lo, free_hi = gpu.part_tiles(length, start, lo, hi, part, num_parts,
                                                 block_k)
  # The part's tiles [0, n); [a, z) of them need no mask: every query sees all their slots.
  n, a, z = last - first, free_lo - first, free_hi - first
  wgmma_layout = plgpu.Layout.WGMMA
  c = scale * LOG2E

  @pl.when(wg == 0)
  def _consumer():
    plgpu.copy_gmem_to_smem(q_ref.at[b, h, row_slice], q_smem, q_bar.at[0])
    plgpu.barrier_wait(q_bar.at[0])

    def tile(i, carry, masked: bool):
      acc, m, l = carry
      slot = lax.rem(i, jnp.int32(stages))
      plgpu.barrier_wait(k_full.at[slot])

      s = mosaic_interpret.mma(None, q_smem, plgpu.transpose_ref(k_smem.at[slot], (1, 0)),
                               (rows, block_k), interpret)
      if masked:
        cols = (first + i) * block_k + mosaic_interpret.iota(jnp.int32, s.shape, 1,
                                                             wgmma_layout, interpret)
        visible = cols < length
        if mask_ref is not None:  # the mask tile travels with the K tile, freed with it
          plgpu.barrier_wait(mask_full.at[slot])
          visible = visible & (mosaic_interpret.load(mask_smem.at[slot], wgmma_layout,
                                                      interpret) != 0)
        plgpu.barrier_arrive(k_free.at[slot])
        s = jnp.where(visible, s * c, MASK_VALUE)
      else:
        plgpu.barrier_arrive(k_free.at[slot])
        s = s * c
      p, acc, m_new, l = flash_hopper.online_softmax(s, acc, m, l, dtype)
      plgpu.barrier_wait(v_full.at[slot])
      lhs = mosaic_interpret.operand(p, p_smem, p_in_smem)
      v_tile = v_smem.at[slot]
      rhs = plgpu.transpose_ref(v_tile, (1, 0)) if cache_layout else v_tile
      acc = mosaic_interpret.mma(acc, lhs, rhs, (rows, head_dim), interpret)
      plgpu.barrier_arrive(v_free.at[slot])
      return acc, m_new, l

    row = wgmma_layout.reduce(1)
    init = (mosaic_interpret.layout(jnp.zeros((rows, head_dim), jnp.float32), wgmma_layout,
                                    interpret),
            mosaic_interpret.layout(jnp.full((rows,), MASK_VALUE, jnp.float32), row, interpret),
            mosaic_interpret.layout(jnp.zeros((rows,), jnp.float32), row, interpret))
    carry = lax.fori_loop(0, a, functools.partial(tile, masked=True), init)
    carry = lax.fori_loop(a, z, functools.partial(tile, masked=False), carry)
    acc, m, l = lax.fori_loop(z, n, functools.partial(tile, masked=True), carry)
    o_smem[...] = acc
    m_smem[...] = m
    l_smem[...] = l
    plgpu.commit_smem()
    if out_rows < rows:  # one block: only its first out_rows rows are queries
      kept = pl.ds(0, out_rows)
      o_src, m_src, l_src = o_smem.at[kept], m_smem.at[kept], l_smem.at[kept]
      out_slice = kept
    else:
      o_src, m_src, l_src, out_slice = o_smem, m_smem, l_smem, row_slice
    plgpu.copy_smem_to_gmem(o_src, o_ref.at[b, h, part, out_slice])
    plgpu.copy_smem_to_gmem(m_src, m_ref.at[b, h, part, out_slice])
    plgpu.copy_smem_to_gmem(l_src, l_ref.at[b, h, part, out_slice])
    plgpu.wait_smem_to_gmem(0)

  @pl.when(wg == 1)
  def _producer():
    mosaic_interpret.registers(40, 'decrease', interpret)
    slots = lambda j: pl.ds(j * block_k, block_k)
    if cache_layout:
      k_at, v_at = (lambda j: k_ref.at[b, h, slots(j)]), (lambda j: v_ref.at[b, h, :, slots(j)])
    else:
      k_at, v_at = (lambda j: k_ref.at[b, slots(j), h]), (lambda j: v_ref.at[b, slots(j), h])
    def with_k(j, slot):  # a mask tile only where the consumer masks (outside [a, z))
      @pl.when((j < free_lo) | (j >= free_hi))
      def _():
        plgpu.copy_gmem_to_smem(mask_ref.at[b, row_slice, slots(j)], mask_smem.at[slot],
                                mask_full.at[slot])
    flash_hopper.stream_kv(k_at, v_at, k_smem, v_smem, (k_full, v_full), (k_free, v_free),
                           first, last, stages, None if mask_ref is None else with_k)


def partials(q_BxKxRxDh, k, v, lengths_B, mask_BxRxS=None, bounds=None, *, scale: float,
             cache_layout: bool, config: HopperDecodeConfig = HopperDecodeConfig(),
             out_rows: int | None = None, interpret=False):
  """(o [B, K, P, R', Dh] float32 unnormalised, m [B, K, P, R'] base 2, l [B, K, P, R']),
  R' = out_rows (default R).

  q_BxKxRxDh: the query rows of each kv head, R = 64, or a multiple of 128 up to MAX_ROWS
  (pad first: `rows_for` gives the block; each block of rows is one program). k, v:
  [B, S, K, Dh], or with `cache_layout` k [B, K, S, Dh] and v [B, K, Dh, S]; S a multiple of
  the K/V tile (`config.kv_block(Dh, R)`). lengths_B: int, slots >= lengths[b] are never
  read. mask_BxRxS: optional int8, nonzero = visible (ANDed with the lengths), one row per
  query row. bounds: with a mask, (start_B, lo_B, hi_B) int (`reference.slot_bounds`): no
  query of row b sees a slot below start[b] (tiles wholly below it are not loaded), every
  query sees the slots in [lo[b], hi[b]) (tiles wholly inside it and below the length are
  computed without their mask tiles). None = (0, 0, 0): every tile loaded and masked.
  Without a mask every tile below the length is computed unmasked. out_rows: with one block of
  rows, write only its first out_rows (a multiple of 8: the rows that are queries, T x G
  rounded up; a decode step's 4 query heads are 8 rows of the 64 computed), so the partials
  written and merged are not mostly padding. interpret: False on the GPU, else truthy
  (jax's GPU interpret mode; needs p_in_smem).
  """
  import jax.experimental.pallas.mosaic_gpu as plgpu  # pylint: disable=g-import-not-at-top
  B, K, Rt, Dh = q_BxKxRxDh.shape
  S = k.shape[2] if cache_layout else k.shape[1]
  why = unsupported(q_BxKxRxDh.dtype, Dh, Rt, has_new=False)
  if why:
    raise ValueError(f'Hopper decode attention: unsupported {why}.')
  R = rows_for(Rt)
  if Rt % R or (Rt > ROWS[-1] and R != ROWS[-1]):
    raise ValueError(f'Hopper decode attention wants {ROWS[0]} query rows or a multiple of '
                     f'{ROWS[-1]} (pad first: rows_for); got {Rt}.')
  row_blocks = Rt // R
  out_rows = Rt if out_rows is None else out_rows
  if out_rows != Rt and (row_blocks > 1 or out_rows % 8 or not 0 < out_rows < R):
    raise ValueError(f'out_rows {out_rows} must be a multiple of 8 below the {R} rows of a '
                     f'single block (got {row_blocks} blocks).')
  bk, stages = config.kv_block(Dh, R), config.stages
  has_mask = mask_BxRxS is not None
  need = smem_bytes(config, Dh, q_BxKxRxDh.dtype.itemsize, R, has_mask)
  if need > SMEM_BYTES:
    raise ValueError(f'{config} needs {need} bytes of shared memory at Dh {Dh} and {R} rows; '
                     f'sm90 has {SMEM_BYTES}. Use fewer stages or a smaller block_k.')
  if S % bk:
    raise ValueError(f'S = {S} must be a multiple of block_k = {bk} (pad first).')
  if has_mask and mask_BxRxS.shape != (B, Rt, S):
    raise ValueError(f'mask_BxRxS is {mask_BxRxS.shape}, wants {(B, Rt, S)} int8.')
  if interpret and not config.p_in_smem:
    raise ValueError('Interpreting the Hopper decode kernel needs p_in_smem=True.')
  nblk = S // bk
  parts = config.num_parts or common.cdiv(264, B * K * row_blocks)
  parts = max(1, min(parts, nblk))
  Bp = common.round_up(B, LENGTHS_PAD)
  lengths = jnp.broadcast_to(jnp.asarray(lengths_B, jnp.int32), (B,))
  zero = jnp.zeros((B,), jnp.int32)
  if not has_mask:
    bounds = (zero, zero, lengths)
  elif bounds is None:
    bounds = (zero, zero, zero)
  bounds = jnp.concatenate([  # lengths, starts, run starts, run ends: read from shared memory
      common.pad_axis(jnp.broadcast_to(jnp.asarray(x, jnp.int32), (B,)), 0, Bp)
      for x in (lengths, *bounds)])
  tr = (plgpu.TilingTransform((8, 64)), plgpu.SwizzleTransform(128))
  mask_swizzle = min(128, bk)  # int8: one byte a slot
  mask_tr = (plgpu.TilingTransform((8, mask_swizzle)), plgpu.SwizzleTransform(mask_swizzle))
  dt = q_BxKxRxDh.dtype
  smem = (
      plgpu.SMEM((4 * Bp,), jnp.int32),
      plgpu.SMEM((R, Dh), dt, transforms=tr),
      plgpu.SMEM((stages, bk, Dh), dt, transforms=tr),
      plgpu.SMEM((stages, Dh, bk) if cache_layout else (stages, bk, Dh), dt, transforms=tr),
      plgpu.SMEM((stages, R, bk), jnp.int8, transforms=mask_tr) if has_mask else None,
      plgpu.SMEM((R, bk), dt, transforms=tr) if config.p_in_smem else None,
      plgpu.SMEM((R, Dh), jnp.float32),
      plgpu.SMEM((R,), jnp.float32),
      plgpu.SMEM((R,), jnp.float32),
  )
  barriers = (plgpu.Barrier(num_barriers=1), plgpu.Barrier(num_barriers=1),
              plgpu.Barrier(num_barriers=stages), plgpu.Barrier(num_barriers=stages),
              plgpu.Barrier(num_barriers=stages) if has_mask else None,
              plgpu.Barrier(num_barriers=stages), plgpu.Barrier(num_barriers=stages))
  interpreting = bool(interpret)
  body = functools.partial(_kernel, scale=scale, block_k=bk, num_parts=parts,
                           stages=stages, cache_layout=cache_layout, row_blocks=row_blocks,
                           out_rows=out_rows, p_in_smem=config.p_in_smem,
                           interpret=interpreting)

  def entry(bounds_ref, q_ref, k_ref, v_ref, *rest):
    mask_ref = rest[0] if has_mask else None
    o_ref, m_ref, l_ref = rest[-3:]
    pl.run_scoped(
        lambda *s: body(bounds_ref, q_ref, k_ref, v_ref, mask_ref, o_ref, m_ref, l_ref, s),
        smem, barriers, collective_axes='wg')

  f32 = jnp.float32
  args = (bounds, q_BxKxRxDh, k, v) + ((mask_BxRxS.astype(jnp.int8),) if has_mask else ())
  return plgpu.kernel(
      entry,
      out_type=(jax.ShapeDtypeStruct((B, K, parts, out_rows, Dh), f32),
                jax.ShapeDtypeStruct((B, K, parts, out_rows), f32),
                jax.ShapeDtypeStruct((B, K, parts, out_rows), f32)),
      grid=(K * row_blocks, parts, B),  # a kv head's row blocks next to each other
      grid_names=('heads', 'parts', 'batch'),
      num_threads=2,
      thread_name='wg',
      **mosaic_interpret.kernel_kwargs(interpret, approx_math=True),
  )(*args)
