"""Flash attention for prefill and training: forward and backward (custom_vjp), GQA.

The mask needs no dense [T, S] array: causal, bidirectional and block-causal come from
positions, packed documents from segment ids, Mistral's sliding window from `window`; an
explicit boolean mask can be ANDed on top (see `mask` for the exact rule). A query with
no visible key gets zeros.

    o_BxTxHxDh = flash_attention(q_BxTxHxDh, k_BxSxKxDh, v_BxSxKxDh, causal=True)

impl: 'auto' (what `pallas_kernels.dispatch` says for this platform and mask case, see
`choose_impl`) | 'xla' | 'pallas' | 'pallas_gpu' | 'pallas_tpu' (see `pallas_kernels.common`)
| 'cudnn' (`jax.nn.dot_product_attention`; masks other than causal/window by default
positions go as a dense mask) | 'splash' (jax's TPU splash attention: case 'causal' or
'segments' only) | 'mosaic' (our Hopper kernel, `hopper.py`: TMA, wgmma and a producer
warpgroup; causal (with or without a window) or no mask by default positions, bf16/fp16,
Dh 64/128/256; its backward is the Triton kernels' or, with `HopperConfig(backward=
HopperBwdConfig())`, ours for Hopper (`hopper_bwd.py`, Dh 64/128); off a GPU it runs in
jax's GPU interpret mode).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from pallas_kernels import common
from pallas_kernels import dispatch
from pallas_kernels.attention import vendor
from pallas_kernels.flash_attention import gpu
from pallas_kernels.flash_attention import hopper
from pallas_kernels.flash_attention import hopper_bwd
from pallas_kernels.flash_attention import mask as mask_lib
from pallas_kernels.flash_attention.mask import FlashMask
from pallas_kernels.flash_attention import tpu
from pallas_kernels.flash_attention.reference import flash_attention_reference

HopperConfig = hopper.HopperConfig
HopperBwdConfig = hopper_bwd.HopperBwdConfig


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Tiles: forward (block_q x block_k) and backward (block_q_bwd x block_k_bwd).

  All powers of two. They are clamped to the (padded) sequence lengths of a call, never
  below 16 (Triton's minimum dot size). num_warps/num_stages: GPU only (None = by Dh).
  """
  block_q: int = 128
  block_k: int = 64
  block_q_bwd: int = 64
  block_k_bwd: int = 64
  num_warps: int | None = None
  num_stages: int = 2

  @classmethod
  def get_default(cls, family: str = 'gpu') -> 'BlockSizes':
    if family == 'tpu':
      return cls(block_q=128, block_k=128, block_q_bwd=128, block_k_bwd=128)
    return cls()

  def __post_init__(self):
    for name in ('block_q', 'block_k', 'block_q_bwd', 'block_k_bwd'):
      b = getattr(self, name)
      if b < 1 or b & (b - 1):
        raise ValueError(f'BlockSizes.{name} must be a power of two, got {b}.')


def _backend(family: str):
  return tpu if family == 'tpu' else gpu


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _flash(q, k, v, fm, family, st):
  return _backend(family).forward(q, k, v, fm, st)[0]


def _flash_fwd(q, k, v, fm, family, st):
  o, lse = _backend(family).forward(q, k, v, fm, st)
  return o, (q, k, v, fm, o, lse)


def _flash_bwd(family, st, res, do):
  q, k, v, fm, o, lse = res
  dq, dk, dv = _backend(family).backward(q, k, v, o, lse, do, fm, st)
  return dq, dk, dv, None


_flash.defvjp(_flash_fwd, _flash_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _flash_hopper(q, k, v, fm, hs, st):
  return _flash_hopper_fwd(q, k, v, fm, hs, st)[0]


def _flash_hopper_fwd(q, k, v, fm, hs, st):
  o, lse = hopper.forward(q, k, v, **hs._asdict())
  return o, (q, k, v, fm, o, lse)


def _flash_hopper_bwd(hs, st, res, do):
  q, k, v, fm, o, lse = res
  if hs.config.backward is None:
    dq, dk, dv = gpu.backward(q, k, v, o, lse, do, fm, st)
  else:
    kw = hs._asdict()
    dq, dk, dv = hopper_bwd.backward(q, k, v, o, lse, do.astype(q.dtype),
                                     config=kw.pop('config').backward, **kw)
  return dq, dk, dv, None


_flash_hopper.defvjp(_flash_hopper_fwd, _flash_hopper_bwd)


class _HopperStatic(NamedTuple):
  causal: bool
  scale: float
  t_real: int
  s_real: int
  window: int
  config: hopper.HopperConfig
  interpret: bool


IMPLS = common.IMPLS + ('cudnn', 'splash', 'mosaic')


def mask_case(T: int, S: int, *, default_positions: bool, segments: bool, dense: bool,
              causal: bool, block_causal_size: int | None, window: int) -> str:
  """The dispatch case of a call (see `pallas_kernels.dispatch_table.CASES`)."""
  if dense:
    return 'explicit'
  if (not default_positions or T != S or (block_causal_size or 1) > 1
      or (window and not causal)):
    return 'positions'
  return 'segments' if segments else 'causal'


def choose_impl(q_BxTxHxDh: jax.Array, k_BxSxKxDh: jax.Array, *, platform: str | None = None,
                **case_kw) -> dispatch.Choice:
  """What impl='auto' runs for this call; `case_kw` as `mask_case` takes them."""
  _, T, _, Dh = q_BxTxHxDh.shape
  S = k_BxSxKxDh.shape[1]
  case = mask_case(T, S, **case_kw)
  return dispatch.choose('attention', case, platform=platform, dtype=q_BxTxHxDh.dtype,
                         head_dim=Dh, q_len=T, kv_len=S, has_mask=case != 'causal')


def flash_attention(q_BxTxHxDh: jax.Array, k_BxSxKxDh: jax.Array, v_BxSxKxDh: jax.Array, *,
                    q_positions_BxT: jax.Array | None = None,
                    kv_positions_BxS: jax.Array | None = None,
                    q_segment_ids_BxT: jax.Array | None = None,
                    kv_segment_ids_BxS: jax.Array | None = None,
                    mask_BxTxS: jax.Array | None = None,
                    causal: bool = True, block_causal_size: int | None = None,
                    window: int = 0, scale: float | None = None,
                    block_sizes: BlockSizes | None = None, impl: str = 'auto',
                    hopper_config: hopper.HopperConfig | None = None) -> jax.Array:
  """Grouped-query attention of T queries over S keys; differentiable in q, k, v.

  Args:
    q_BxTxHxDh, k_BxSxKxDh, v_BxSxKxDh: H a multiple of K.
    q_positions_BxT, kv_positions_BxS: int positions (default: queries are the last T of
      the S keys, kv positions 0..S-1). A negative kv position marks a key that is not
      there (padding, unwritten slot); a negative query position sees no key when causal.
    q_segment_ids_BxT, kv_segment_ids_BxS: int; attend only within equal ids (both or
      neither).
    mask_BxTxS: optional explicit boolean mask ANDed with the rest (it is read per tile;
      prefer positions/segments where they express the mask).
    causal: key position <= query position. False = bidirectional.
    block_causal_size: n > 1 makes it block-causal: key block <= query block, blocks of n
      positions (needs causal=True).
    window: > 0 also hides keys at positions <= query position - window.
    scale: multiplies q.k (default Dh ** -0.5).
    block_sizes: tiles of the Triton/TPU kernels (with impl='mosaic': of its backward).
    hopper_config: tiles and pipelining of impl='mosaic' (default `HopperConfig()`).

  Returns:
    [B, T, H, Dh] in q's dtype.
  """
  B, T, H, Dh = q_BxTxHxDh.shape
  S, K = k_BxSxKxDh.shape[1], k_BxSxKxDh.shape[2]
  if H % K:
    raise ValueError(f'num heads {H} must be a multiple of kv heads {K}.')
  if (q_segment_ids_BxT is None) != (kv_segment_ids_BxS is None):
    raise ValueError('Pass both q_segment_ids_BxT and kv_segment_ids_BxS, or neither.')
  scale = Dh ** -0.5 if scale is None else float(scale)
  causal_block = (block_causal_size or 1) if causal else 0
  if impl not in IMPLS:
    raise ValueError(f'Unknown impl {impl!r}; choose one of {IMPLS}.')
  case_kw = dict(default_positions=q_positions_BxT is None and kv_positions_BxS is None,
                 segments=q_segment_ids_BxT is not None, dense=mask_BxTxS is not None,
                 causal=causal, block_causal_size=block_causal_size, window=window)
  if impl == 'auto':
    impl = choose_impl(q_BxTxHxDh, k_BxSxKxDh, **case_kw).impl
  case = mask_case(T, S, **case_kw)
  if impl == 'splash':
    if case not in ('causal', 'segments'):
      raise ValueError(f"impl='splash' takes causal/bidirectional/window masks by default "
                       f'positions with T == S, and segment ids; this call is {case!r}.')
    return vendor.splash_attention(q_BxTxHxDh, k_BxSxKxDh, v_BxSxKxDh, causal=causal,
                                   window=window, scale=scale,
                                   q_segment_ids_BxT=q_segment_ids_BxT,
                                   kv_segment_ids_BxS=kv_segment_ids_BxS)
  if impl == 'cudnn' and case == 'causal':
    return vendor.cudnn_attention(q_BxTxHxDh, k_BxSxKxDh, v_BxSxKxDh, causal=causal,
                                  window=window, scale=scale)
  if q_positions_BxT is None:
    q_positions_BxT = jnp.arange(S - T, S, dtype=jnp.int32)
  if kv_positions_BxS is None:
    kv_positions_BxS = jnp.arange(S, dtype=jnp.int32)
  i32 = lambda x, shape: None if x is None else jnp.broadcast_to(x, shape).astype(jnp.int32)
  fm = FlashMask(q_pos=i32(q_positions_BxT, (B, T)), kv_pos=i32(kv_positions_BxS, (B, S)),
                 q_seg=i32(q_segment_ids_BxT, (B, T)), kv_seg=i32(kv_segment_ids_BxS, (B, S)),
                 dense=None if mask_BxTxS is None else
                 jnp.broadcast_to(mask_BxTxS, (B, T, S)).astype(jnp.int8))

  if impl == 'mosaic':
    return _hopper_call(q_BxTxHxDh, k_BxSxKxDh, v_BxSxKxDh, fm, case=case, causal=causal,
                        window=window, scale=scale, block_sizes=block_sizes,
                        config=hopper_config or hopper.HopperConfig())
  if impl == 'cudnn':  # any other case: the rule as a dense mask
    return vendor.cudnn_attention(q_BxTxHxDh, k_BxSxKxDh, v_BxSxKxDh, scale=scale,
                                  mask_BxTxS=mask_lib.dense_visible(fm, causal_block, window))
  family, interpret = common.resolve_impl(impl)
  if family == 'xla':
    return flash_attention_reference(q_BxTxHxDh, k_BxSxKxDh, v_BxSxKxDh, fm,
                                     causal_block=causal_block, window=window, scale=scale)
  bs = block_sizes or BlockSizes.get_default(family)
  # Triton needs tiles >= 16; Mosaic TPU wants 128-lane key tiles (interpret mode does not).
  least = 128 if family == 'tpu' and interpret is False else 16
  fit = lambda b, n: max(least, min(b, common.next_pow2(n)))
  bq, bq_b = fit(bs.block_q, T), fit(bs.block_q_bwd, T)
  bk, bk_b = fit(bs.block_k, S), fit(bs.block_k_bwd, S)
  Tp, Sp = common.round_up(T, max(bq, bq_b)), common.round_up(S, max(bk, bk_b))
  Dhp = max(16, common.next_pow2(Dh)) if family == 'gpu' else Dh
  st = _backend(family).Static(
      causal_block=causal_block, window=int(window), scale=scale, block_q=bq, block_k=bk,
      block_q_bwd=bq_b, block_k_bwd=bk_b, has_seg=fm.q_seg is not None,
      has_dense=fm.dense is not None, interpret=interpret, num_warps=bs.num_warps,
      num_stages=bs.num_stages)
  q = common.pad_axis(common.pad_axis(q_BxTxHxDh, 1, Tp), 3, Dhp)
  k = common.pad_axis(common.pad_axis(k_BxSxKxDh, 1, Sp), 3, Dhp)
  v = common.pad_axis(common.pad_axis(v_BxSxKxDh, 1, Sp), 3, Dhp)
  o = _flash(q, k, v, mask_lib.pad(fm, Tp, Sp), family, st)
  return o[:, :T, :, :Dh]


def _hopper_call(q, k, v, fm: FlashMask, *, case: str, causal: bool, window: int, scale: float,
                 block_sizes: BlockSizes | None, config: hopper.HopperConfig) -> jax.Array:
  """impl='mosaic': the Hopper forward over padded inputs; the Triton backward, or the Hopper
  one (`config.backward`)."""
  B, T, H, Dh = q.shape
  S = k.shape[1]
  why = hopper.unsupported(q.dtype, Dh, case)
  if why:
    raise ValueError(f"impl='mosaic' cannot run this call: {why}. Use impl='pallas' or "
                     "'auto'.")
  interpret = common.interpret_arg('gpu') is not False
  if interpret:  # jax's GPU interpreter has no register operand for wgmma
    config = dataclasses.replace(config, p_in_smem=True, backward=config.backward and (
        dataclasses.replace(config.backward, p_in_smem=True)))
  if config.backward is not None and Dh not in hopper_bwd.HEAD_DIMS:
    raise ValueError(f"impl='mosaic' with the Hopper backward takes head dims "
                     f'{hopper_bwd.HEAD_DIMS}, not {Dh}; use HopperConfig(backward=None) '
                     '(the Triton backward).')
  bs = block_sizes or BlockSizes.get_default('gpu')
  fit = lambda b, n: max(16, min(b, common.next_pow2(n)))
  bq_b, bk_b = fit(bs.block_q_bwd, T), fit(bs.block_k_bwd, S)
  t_mult = math.lcm(hopper.COMPUTE_WGS * config.block_q, bq_b)
  s_mult = math.lcm(config.kv_block(Dh), bk_b)
  if config.backward is not None:
    t_mult = math.lcm(t_mult, hopper.COMPUTE_WGS * config.backward.block_q)
    s_mult = math.lcm(s_mult, hopper.COMPUTE_WGS * config.backward.block_kv)
  Tp, Sp = common.round_up(T, t_mult), common.round_up(S, s_mult)
  st = gpu.Static(
      causal_block=1 if causal else 0, window=int(window), scale=scale, block_q=bq_b,
      block_k=bk_b, block_q_bwd=bq_b, block_k_bwd=bk_b, has_seg=False, has_dense=False,
      interpret=interpret, num_warps=bs.num_warps, num_stages=bs.num_stages)
  hs = _HopperStatic(causal=causal, scale=scale, t_real=T, s_real=S, window=int(window),
                     config=config, interpret=interpret)
  pad = lambda x, n: common.pad_axis(x, 1, n)
  o = _flash_hopper(pad(q, Tp), pad(k, Sp), pad(v, Sp), mask_lib.pad(fm, Tp, Sp), hs, st)
  return o[:, :T]


__all__ = ['flash_attention', 'flash_attention_reference', 'choose_impl', 'mask_case',
           'HopperConfig', 'HopperBwdConfig',
           'BlockSizes', 'FlashMask', 'IMPLS']
