"""Flash attention forward for Hopper GPUs (sm90): a warp-specialised Mosaic GPU kernel.

What the Triton-lowered kernel of `gpu.py` cannot use on an H100/H200 and the vendor's
kernel does: TMA copies into shared memory, warpgroup matrix multiplies (wgmma) reading their
operands from shared memory, and a producer warpgroup that keeps the next K/V tiles loading
while the consumers compute (issue 16 §2). Layout as the model keeps it, no transposes:
q/o [B, T, H, Dh], k/v [B, S, K, Dh], H a multiple of K (GQA).

One program per (head, pair of query blocks, batch), three warpgroups:

  wg 0, 1   consumers: each owns `block_q` (64, one wgmma M) query rows; per K/V tile
            S = Q·Kᵀ (wgmma, K read through a transposed shared-memory view), an online
            softmax in base 2 (float32 statistics), O += P·V (wgmma; P from registers, or
            staged through shared memory with `p_in_smem`).
  wg 2      producer: TMA-loads K and V tiles of `block_kv` keys into a ring of `stages`
            slots; a slot is reloaded once both consumers have arrived on its "free" barrier.

With `pingpong` the consumers also meet at a barrier twice per tile, the second half a tile
behind the first, so that one's softmax runs while the other's multiplies do.

Masks: causal (queries are the last T of the S keys, the model's prefill and training rule),
optionally with a sliding window, or none; padded keys (S not a multiple of `block_kv`) are
hidden. Tiles a block's rows cannot see are never loaded; tiles every row of a block sees
skip the elementwise mask. Anything else (segments, positions, dense masks) goes to
`gpu.py`.

Outputs as `gpu.forward`'s: (o [B, T, H, Dh], lse [B, H, T] float32 base 2), so the backward
is `gpu.backward` (Triton) unchanged, or `hopper_bwd.backward` (`HopperConfig.backward`).

On a CPU the kernel runs in jax's GPU interpret mode (`pallas_kernels.mosaic_interpret`),
with `p_in_smem=True` (the interpreter has no register operand for wgmma).
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

LOG2E = math.log2(math.e)
MASK_VALUE = common.MASK_VALUE
HEAD_DIMS = dispatch.HOPPER_HEAD_DIMS  # (64, 128, 256)
DTYPES = dispatch.HOPPER_DTYPES  # bf16, fp16
COMPUTE_WGS = 2


@dataclasses.dataclass(frozen=True)
class HopperConfig:
  """Tiles and pipelining of the Hopper kernel.

  block_q: query rows per consumer warpgroup (a multiple of 64: wgmma's M).
  block_kv: keys per K/V tile (a multiple of 64); None = 128 for Dh <= 128, else 64 (so that
    two stages of K and V fit in shared memory at Dh 256).
  stages: K/V ring depth (>= 2).
  p_in_smem: stage the probabilities P through shared memory for P·V (required when
    interpreting; on the GPU a register operand saves the round trip).
  pingpong: order the two consumers' matrix multiplies so that one's softmax runs while the
    other's multiplies do (FlashAttention-3's "ping-pong" schedule; a barrier both consumers
    meet at twice per tile, the second consumer half a tile behind).
  approx_math: fast exp2 / reciprocal on the GPU.
  backward: None = the Triton backward (`gpu.backward`); a `hopper_bwd.HopperBwdConfig` = the
    Hopper backward kernels with those tiles (Dh 64/128).
  """
  block_q: int = 64
  block_kv: int | None = None
  stages: int = 2
  p_in_smem: bool = False
  pingpong: bool = False
  approx_math: bool = True
  backward: 'HopperBwdConfig | None' = None

  def __post_init__(self):
    if self.block_q % 64 or self.block_q <= 0:
      raise ValueError(f'HopperConfig.block_q must be a positive multiple of 64, got '
                       f'{self.block_q}.')
    if self.block_kv is not None and (self.block_kv % 64 or self.block_kv <= 0):
      raise ValueError(f'HopperConfig.block_kv must be a positive multiple of 64, got '
                       f'{self.block_kv}.')
    if self.stages < 2:
      raise ValueError(f'HopperConfig.stages must be >= 2, got {self.stages}.')

  def kv_block(self, head_dim: int) -> int:
    return self.block_kv or (128 if head_dim <= 128 else 64)


SMEM_BYTES = 227 * 1024  # shared memory a block may use on sm90


def smem_bytes(config: HopperConfig, head_dim: int, itemsize: int = 2) -> int:
  """Shared memory the kernel asks for: Q/O tiles, the K/V ring, P (if staged), statistics."""
  bkv = config.kv_block(head_dim)
  n = COMPUTE_WGS * config.block_q * head_dim + 2 * config.stages * bkv * head_dim
  n += COMPUTE_WGS * config.block_q * bkv if config.p_in_smem else 0
  return n * itemsize + COMPUTE_WGS * config.block_q * 4


def unsupported(dtype, head_dim: int, case: str) -> str | None:
  """Why the Hopper kernel cannot run a call (None = it can)."""
  if jnp.dtype(dtype).name not in DTYPES:
    return f'dtype {jnp.dtype(dtype).name} (the Hopper kernel takes {"/".join(DTYPES)})'
  if head_dim not in HEAD_DIMS:
    return f'head dim {head_dim} (the Hopper kernel takes {HEAD_DIMS})'
  if case != 'causal':
    return (f"mask case {case!r} (the Hopper kernel takes causal or no mask by default "
            'positions; the Triton kernel takes the rest)')
  return None


def key_tiles(q0, n_rows: int, *, causal: bool, window: int, offset: int, s_real: int,
           block_kv: int):
  """(first, full_first, full_end, end): the K/V tiles query rows [q0, q0 + n_rows) see are
  [first, end), and every row sees every key of the tiles [full_first, full_end) (traced q0).

  Row r sees keys s < s_real; with causal, s <= offset + r (offset = S - T: the queries are
  the last T of the S keys); with a window w > 0, also s > offset + r - w.
  """
  bkv = jnp.int32(block_kv)
  if not causal:
    end, full_end = lax.div(s_real + bkv - 1, bkv), lax.div(jnp.int32(s_real), bkv)
    return jnp.int32(0), jnp.int32(0), full_end, end
  end = lax.div(jnp.minimum(offset + q0 + n_rows, s_real) + bkv - 1, bkv)
  full_end = lax.div(jnp.minimum(offset + q0 + 1, s_real), bkv)
  if window:
    first = jnp.minimum(lax.div(jnp.maximum(offset + q0 - window + 1, 0), bkv), end)
    lowest_of_last = jnp.maximum(offset + q0 + n_rows - window, 0)  # the last row's first key
    full_first = jnp.clip(lax.div(lowest_of_last + bkv - 1, bkv), first, end)
  else:
    first = full_first = jnp.int32(0)
  return first, full_first, jnp.clip(full_end, full_first, end), end


def visible(rows, cols, *, causal: bool, window: int, s_real: int):
  """Which keys `cols` (slots) queries at positions `rows` see (the offset applied)."""
  seen = cols < s_real
  if causal:
    seen = seen & (cols <= rows)
  if window:
    seen = seen & (cols > rows - window)
  return seen


def online_softmax(s, acc, m, l, dtype):
  """One online-softmax step over a score tile `s` [R, N] (base 2, masked scores at
  MASK_VALUE): (P in `dtype`, acc rescaled, new running max, new running sum)."""
  m_new = jnp.maximum(m, s.max(axis=1))
  alpha = jnp.exp2(m - m_new)
  p = jnp.exp2(s - lax.broadcast_in_dim(m_new, s.shape, [0]))
  l = l * alpha + p.sum(axis=1)
  acc = acc * lax.broadcast_in_dim(alpha, acc.shape, [0])
  return p.astype(dtype), acc, m_new, l


def pair_tiles(tiles, pair0, block_q: int, stages: int):
  """(pair_first, pair_end, slot_of) for the two consumers' query blocks from `pair0`: the
  pair's tiles run from the first row's first to the last row's last; tile j lives in ring
  slot (j - pair_first) % stages."""
  pair_first, _, _, _ = tiles(pair0, block_q)
  _, _, _, pair_end = tiles(pair0, COMPUTE_WGS * block_q)
  return pair_first, pair_end, lambda j: lax.rem(j - pair_first, jnp.int32(stages))


def _kernel(q_ref, k_ref, v_ref, o_ref, lse_ref, scratch, *, causal: bool, window: int,
            scale: float, offset: int, s_real: int, group: int, block_q: int, block_kv: int,
            stages: int, p_in_smem: bool, pingpong: bool, interpret: bool):
  import jax.experimental.pallas.mosaic_gpu as plgpu  # pylint: disable=g-import-not-at-top
  ((q_smem, k_smem, v_smem, p_smem, lse_smem), (k_full, v_full, q_full), (k_free, v_free),
   turn) = scratch
  dtype = q_smem.dtype
  head_dim = q_smem.shape[-1]
  b = lax.axis_index('batch')
  h = lax.axis_index('heads')
  wg = lax.axis_index('wg')
  pair0 = lax.axis_index('q_tiles') * (COMPUTE_WGS * block_q)
  tiles = functools.partial(key_tiles, causal=causal, window=window, offset=offset,
                            s_real=s_real, block_kv=block_kv)
  pair_first, pair_end, slot_of = pair_tiles(tiles, pair0, block_q, stages)
  wgmma_layout = plgpu.Layout.WGMMA
  c = scale * LOG2E

  def meet():
    """Ping-pong: both consumers meet here (a no-op without pingpong)."""
    if pingpong:
      plgpu.barrier_arrive(turn)
      plgpu.barrier_wait(turn)

  @pl.when(wg < COMPUTE_WGS)
  def _consumer():
    mosaic_interpret.registers(232, 'increase', interpret)
    q0 = pair0 + wg * block_q
    first, full_first, full_end, end = tiles(q0, block_q)
    qo = q_smem.at[wg]
    staging = None if p_smem is None else p_smem.at[wg]
    plgpu.copy_gmem_to_smem(q_ref.at[b, pl.ds(q0, block_q), h], qo, q_full.at[wg])
    plgpu.barrier_wait(q_full.at[wg])

    def tile(j, carry, masked: bool):
      acc, m, l = carry
      slot = slot_of(j)
      plgpu.barrier_wait(k_full.at[slot])

      def qk(ref):
        plgpu.wgmma(ref, qo, plgpu.transpose_ref(k_smem.at[slot], (1, 0)))
        meet()  # issued: the other consumer's softmax may go on while this one runs
        return ref[...]
      s = pl.run_scoped(qk, plgpu.ACC((block_q, block_kv), jnp.float32))
      plgpu.barrier_arrive(k_free.at[slot])
      s = s * c
      if masked:
        rows = offset + q0 + mosaic_interpret.iota(jnp.int32, s.shape, 0, wgmma_layout,
                                                   interpret)
        cols = j * block_kv + mosaic_interpret.iota(jnp.int32, s.shape, 1, wgmma_layout,
                                                    interpret)
        s = jnp.where(visible(rows, cols, causal=causal, window=window, s_real=s_real), s,
                      MASK_VALUE)
      p, acc, m_new, l = online_softmax(s, acc, m, l, dtype)
      if pingpong:  # softmax done; P·V waits for the other consumer's multiplies
        plgpu.barrier_arrive(turn)
        plgpu.barrier_wait(v_full.at[slot])
        plgpu.barrier_wait(turn)
      else:
        plgpu.barrier_wait(v_full.at[slot])
      lhs = mosaic_interpret.operand(p, staging, p_in_smem)
      acc = mosaic_interpret.mma(acc, lhs, v_smem.at[slot], (block_q, head_dim), interpret)
      plgpu.barrier_arrive(v_free.at[slot])
      return acc, m_new, l

    def skip(j):
      """A tile of the pair this warpgroup's rows do not see: keep the barriers' phases in
      step and free the slot."""
      slot = slot_of(j)
      plgpu.barrier_wait(k_full.at[slot])
      plgpu.barrier_arrive(k_free.at[slot])
      plgpu.barrier_wait(v_full.at[slot])
      plgpu.barrier_arrive(v_free.at[slot])
      meet()  # the two meetings a computed tile has, so that both consumers meet as often
      meet()

    acc = mosaic_interpret.layout(jnp.zeros((block_q, head_dim), jnp.float32), wgmma_layout,
                                  interpret)
    row = wgmma_layout.reduce(1)
    m = mosaic_interpret.layout(jnp.full((block_q,), MASK_VALUE, jnp.float32), row, interpret)
    l = mosaic_interpret.layout(jnp.zeros((block_q,), jnp.float32), row, interpret)
    if pingpong:  # the second consumer starts half a tile behind the first
      pl.when(wg == 1)(meet)
    pl.loop(pair_first, first)(skip)
    carry = lax.fori_loop(first, full_first, functools.partial(tile, masked=True), (acc, m, l))
    carry = lax.fori_loop(full_first, full_end, functools.partial(tile, masked=False), carry)
    acc, m, l = lax.fori_loop(full_end, end, functools.partial(tile, masked=True), carry)
    pl.loop(end, pair_end)(skip)
    if pingpong:
      pl.when(wg == 0)(meet)

    qo[...] = (acc / lax.broadcast_in_dim(l, acc.shape, [0])).astype(dtype)
    lse_smem.at[wg][...] = m + jnp.log2(l)
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(qo, o_ref.at[b, pl.ds(q0, block_q), h])
    plgpu.copy_smem_to_gmem(lse_smem.at[wg], lse_ref.at[b, h, pl.ds(q0, block_q)])
    plgpu.wait_smem_to_gmem(0)

  pl.when(wg == COMPUTE_WGS)(functools.partial(
      kv_producer, k_ref, v_ref, k_smem, v_smem, (k_full, v_full), (k_free, v_free), b,
      lax.div(h, jnp.int32(group)), block_kv, pair_first, pair_end, stages, interpret))


def kv_producer(k_ref, v_ref, k_smem, v_smem, full, free, b, kv_head, block_kv: int, first,
                end, stages: int, interpret: bool):
  """The producer warpgroup of a kernel over one query head's K/V ([B, S, K, Dh]): gives
  up registers and streams row b's tiles [first, end) of kv head `kv_head` (`stream_kv`)."""
  mosaic_interpret.registers(40, 'decrease', interpret)
  at = lambda ref: lambda j: ref.at[b, pl.ds(j * block_kv, block_kv), kv_head]
  stream_kv(at(k_ref), at(v_ref), k_smem, v_smem, full, free, first, end, stages)


def stream_kv(k_at, v_at, k_smem, v_smem, full, free, first, end, stages: int, with_k=None):
  """The producer's loop: K and V tiles j in [first, end) (the refs `k_at(j)`, `v_at(j)`)
  into ring slot (j - first) % stages, each copy arriving on its `full` barrier, and
  `with_k(j, slot)` after each K copy (more copies freed with it); a slot is reloaded once
  its `free` barrier has completed (every consumer done with it). At the end it waits for the
  last frees, so no barrier phase is left unseen when the program exits."""
  import jax.experimental.pallas.mosaic_gpu as plgpu  # pylint: disable=g-import-not-at-top
  (k_full, v_full), (k_free, v_free) = full, free

  @pl.loop(first, end)
  def _load(j):
    slot = lax.rem(j - first, jnp.int32(stages))

    @pl.when(j - first >= stages)
    def _():
      plgpu.barrier_wait(k_free.at[slot])
    plgpu.copy_gmem_to_smem(k_at(j), k_smem.at[slot], k_full.at[slot])
    if with_k is not None:
      with_k(j, slot)

    @pl.when(j - first >= stages)
    def _():
      plgpu.barrier_wait(v_free.at[slot])
    plgpu.copy_gmem_to_smem(v_at(j), v_smem.at[slot], v_full.at[slot])

  @pl.loop(jnp.maximum(end - stages, first), end)
  def _settle(j):
    slot = lax.rem(j - first, jnp.int32(stages))
    plgpu.barrier_wait(k_free.at[slot])
    plgpu.barrier_wait(v_free.at[slot])


def forward(q, k, v, *, causal: bool, scale: float, t_real: int, s_real: int, window: int = 0,
            config: HopperConfig = HopperConfig(), interpret=False):
  """(o [B, T, H, Dh], lse [B, H, T] float32 base 2) on padded inputs.

  q: [B, T, H, Dh], T a multiple of 2 * block_q; k, v: [B, S, K, Dh], S a multiple of the
  K/V tile. t_real, s_real: the lengths before padding (padded keys are hidden; padded
  query rows are computed and dropped by the caller). window > 0 (causal only): each query
  also hides the keys at positions <= its own - window. interpret: False on the GPU, else
  truthy (the kernel then runs in jax's GPU interpret mode, and needs p_in_smem).
  """
  import jax.experimental.pallas.mosaic_gpu as plgpu  # pylint: disable=g-import-not-at-top
  B, T, H, Dh = q.shape
  S, K = k.shape[1], k.shape[2]
  block_q, block_kv, stages = config.block_q, config.kv_block(Dh), config.stages
  why = unsupported(q.dtype, Dh, 'causal')
  if why:
    raise ValueError(f'Hopper flash attention: unsupported {why}.')
  if smem_bytes(config, Dh, q.dtype.itemsize) > SMEM_BYTES:
    raise ValueError(f'{config} needs {smem_bytes(config, Dh, q.dtype.itemsize)} bytes of '
                     f'shared memory at Dh {Dh}; sm90 has {SMEM_BYTES}. Use fewer stages or '
                     'smaller tiles.')
  if T % (COMPUTE_WGS * block_q) or S % block_kv:
    raise ValueError(f'Hopper flash attention wants T a multiple of {COMPUTE_WGS * block_q} '
                     f'and S of {block_kv}; got T={T}, S={S} (pad first).')
  if H % K:
    raise ValueError(f'num heads {H} must be a multiple of kv heads {K}.')
  if not 0 < s_real <= S or not 0 < t_real <= T or (causal and t_real > s_real):
    raise ValueError(f'lengths t_real={t_real}, s_real={s_real} do not fit T={T}, S={S}.')
  if window < 0 or (window and not causal):
    raise ValueError(f'window {window}: a window is >= 0 and needs causal=True.')
  if interpret and not config.p_in_smem:
    raise ValueError('Interpreting the Hopper kernel needs HopperConfig(p_in_smem=True).')
  interpreting = bool(interpret)
  tr = (plgpu.TilingTransform((8, 64)), plgpu.SwizzleTransform(128))
  smem = (
      plgpu.SMEM((COMPUTE_WGS, block_q, Dh), q.dtype, transforms=tr),
      plgpu.SMEM((stages, block_kv, Dh), k.dtype, transforms=tr),
      plgpu.SMEM((stages, block_kv, Dh), v.dtype, transforms=tr),
      plgpu.SMEM((COMPUTE_WGS, block_q, block_kv), q.dtype, transforms=tr)
      if config.p_in_smem else None,
      plgpu.SMEM((COMPUTE_WGS, block_q), jnp.float32),
  )
  barriers = (plgpu.Barrier(num_barriers=stages), plgpu.Barrier(num_barriers=stages),
              plgpu.Barrier(num_barriers=COMPUTE_WGS))
  free = (plgpu.Barrier(num_arrivals=COMPUTE_WGS, num_barriers=stages),) * 2
  turn = plgpu.Barrier(num_arrivals=COMPUTE_WGS) if config.pingpong else None
  body = functools.partial(
      _kernel, causal=causal, window=window, scale=scale, offset=s_real - t_real, s_real=s_real,
      group=H // K, block_q=block_q, block_kv=block_kv, stages=stages,
      p_in_smem=config.p_in_smem, pingpong=config.pingpong, interpret=interpreting)

  def entry(q_ref, k_ref, v_ref, o_ref, lse_ref):
    pl.run_scoped(lambda *scratch: body(q_ref, k_ref, v_ref, o_ref, lse_ref, scratch),
                  smem, barriers, free, turn, collective_axes='wg')

  return plgpu.kernel(
      entry,
      out_type=(jax.ShapeDtypeStruct(q.shape, q.dtype),
                jax.ShapeDtypeStruct((B, H, T), jnp.float32)),
      grid=(H, T // (COMPUTE_WGS * block_q), B),
      grid_names=('heads', 'q_tiles', 'batch'),
      num_threads=COMPUTE_WGS + 1,
      thread_name='wg',
      **mosaic_interpret.kernel_kwargs(interpret, config.approx_math),
  )(q, k, v)
