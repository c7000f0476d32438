"""Decode and tree/verification attention: a few queries over the cache, GQA, split-K.

    o_BxTxHxDh = decode_attention(q_BxTxHxDh, k_BxSxKxDh, v_BxSxKxDh, lengths_B)

Query t of row b sees cache slot s iff s < lengths[b] (and mask[b, t, s] when a mask is
given), plus, when new tokens are passed, new token n iff new_mask[b, t, n]. This covers
  * decoding: T = 1, the new token already written in the cache, lengths = its slot + 1;
  * tree / chain verification: `tree_attention` — the N tree nodes over the committed
    prefix and among themselves by an ancestor mask built from parent indices, their K/V
    passed apart from the cache (not written yet);
  * anything the model expresses as a dense [B, T, S] mask over slots (`mask_BxTxS`; the
    kernel then reads only slots below the per-row bound in `lengths`).
A query that sees nothing gets zeros. Differentiable: the backward pass is the reference's
(XLA) — decoding needs none, but training through a cache (latent reasoning) must work.

impl: 'auto' (what `pallas_kernels.dispatch` says for case 'decode', or 'tree' when new
tokens are passed; see `choose_impl`) | 'xla' | 'pallas' | 'pallas_gpu' | 'pallas_tpu' (see
`pallas_kernels.common`) | 'cudnn' (`jax.nn.dot_product_attention` with the visibility as a
dense mask, new tokens concatenated to the cache) | 'mosaic' (our Hopper kernel, `hopper.py`:
a producer warpgroup TMA-feeding a ring of K/V (and mask) tiles, wgmma; the cache only (no
new tokens), T x G <= 512 rows per kv head (blocks of 128 beyond 128), bf16/fp16, Dh 64/128,
either layout read in place, mask tiles read only past the slots every query sees; off a
GPU it runs in jax's GPU interpret mode).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp

from pallas_kernels import common
from pallas_kernels import dispatch
from pallas_kernels.attention import vendor
from pallas_kernels.decode_attention import gpu
from pallas_kernels.decode_attention import hopper
from pallas_kernels.decode_attention import tpu
from pallas_kernels.decode_attention.reference import (ancestor_mask,
                                                       decode_attention_reference,
                                                       slot_bounds, visible_slots)


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """block_k: cache slots per step (a power of two; the largest power of two <= block_k
  dividing S is used, >= 16). num_parts: split-K parts on GPU (0 = enough programs to fill
  ~132 SMs twice: B * K * parts >= 264)."""
  block_k: int = 128
  num_parts: int = 0
  num_warps: int = 4
  num_stages: int = 2

  @classmethod
  def get_default(cls, family: str = 'gpu') -> 'BlockSizes':
    return cls(block_k=512) if family == 'tpu' else cls()


IMPLS = common.IMPLS + ('cudnn', 'mosaic')
HopperDecodeConfig = hopper.HopperDecodeConfig


def choose_impl(q_BxTxHxDh: jax.Array, k_BxSxKxDh: jax.Array, *, tree: bool = False,
                kv_layout: str = 'BSKD', platform: str | None = None) -> dispatch.Choice:
  """What impl='auto' runs for a call ('tree': new tokens passed apart from the cache)."""
  _, T, _, Dh = q_BxTxHxDh.shape
  S = k_BxSxKxDh.shape[2 if kv_layout == 'cache' else 1]
  return dispatch.choose('attention', 'tree' if tree else 'decode', platform=platform,
                         dtype=q_BxTxHxDh.dtype, head_dim=Dh, q_len=T,
                         kv_len=S + (T if tree else 0),  # cuDNN gets the tree concatenated
                         has_mask=True, cache_layout=kv_layout == 'cache')


def _block_for(S: int, want: int, least: int) -> int:
  b = max(least, common.next_pow2(want))
  while b > least and S % b:
    b //= 2
  return b


def _pack_rows(x_BxTxHxDh: jax.Array, K: int, R: int) -> jax.Array:
  """[B, T, H, Dh] -> [B, K, R, Dh]: row r = t * G + g of kv head k is query head k*G+g."""
  B, T, H, Dh = x_BxTxHxDh.shape
  G = H // K
  x = x_BxTxHxDh.reshape(B, T, K, G, Dh).transpose(0, 2, 1, 3, 4).reshape(B, K, T * G, Dh)
  return common.pad_axis(x, 2, R)


def _row_mask(mask_BxTxX: jax.Array | None, G: int, R: int) -> jax.Array | None:
  """[B, T, X] bool -> [B, R, X] int8 with each query's row repeated for its G heads."""
  if mask_BxTxX is None:
    return None
  return common.pad_axis(jnp.repeat(mask_BxTxX, G, axis=1).astype(jnp.int8), 1, R)


def decode_attention(q_BxTxHxDh: jax.Array, k_BxSxKxDh: jax.Array, v_BxSxKxDh: jax.Array,
                     lengths_B: jax.Array, *, mask_BxTxS: jax.Array | None = None,
                     k_new_BxNxKxDh: jax.Array | None = None,
                     v_new_BxNxKxDh: jax.Array | None = None,
                     new_mask_BxTxN: jax.Array | None = None, scale: float | None = None,
                     block_sizes: BlockSizes | None = None, impl: str = 'auto',
                     kv_layout: str = 'BSKD',
                     hopper_config: HopperDecodeConfig | None = None) -> jax.Array:
  """T queries per row over cache slots [0, lengths) and optional new tokens.

  Args:
    q_BxTxHxDh: queries (T small: 1 for decoding, the tree size for verification).
    k_BxSxKxDh, v_BxSxKxDh: the cache of one layer, H a multiple of K.
    lengths_B: int; slots >= lengths[b] are never read.
    mask_BxTxS: optional bool, ANDed with the length rule.
    k_new_BxNxKxDh, v_new_BxNxKxDh: optional new tokens not in the cache.
    new_mask_BxTxN: bool, which new tokens each query sees (default when T == N: causal,
      query t sees new tokens 0..t).
    scale: multiplies q.k (default Dh ** -0.5).
    kv_layout: 'BSKD', or 'cache': k [B, K, S, Dh] and v [B, K, Dh, S] as models.cache
      stores them, read in place by the reference and the GPU-style kernel (the TPU kernel
      and 'cudnn' get [B, S, K, Dh] copies). New tokens are [B, N, K, Dh] either way.
    hopper_config: tiles, ring depth and parts of impl='mosaic'.

  Returns:
    [B, T, H, Dh] in q's dtype.
  """
  if kv_layout not in ('BSKD', 'cache'):
    raise ValueError(f"Unknown kv_layout {kv_layout!r}; choose 'BSKD' or 'cache'.")
  cache_layout = kv_layout == 'cache'
  B, T, H, Dh = q_BxTxHxDh.shape
  S = k_BxSxKxDh.shape[2] if cache_layout else k_BxSxKxDh.shape[1]
  scale = Dh ** -0.5 if scale is None else float(scale)
  lengths_B = jnp.broadcast_to(jnp.asarray(lengths_B, jnp.int32), (B,))
  if mask_BxTxS is not None:
    mask_BxTxS = jnp.broadcast_to(mask_BxTxS, (B, T, S))
  has_new = k_new_BxNxKxDh is not None
  if has_new:
    N = k_new_BxNxKxDh.shape[1]
    if new_mask_BxTxN is None:
      if N != T:
        raise ValueError(f'new_mask_BxTxN is required when N ({N}) != T ({T}).')
      new_mask_BxTxN = jnp.tril(jnp.ones((T, N), jnp.bool_))
    new_mask_BxTxN = jnp.broadcast_to(new_mask_BxTxN, (B, T, N))

  if impl not in IMPLS:
    raise ValueError(f'Unknown impl {impl!r}; choose one of {IMPLS}.')
  if impl == 'auto':
    impl = choose_impl(q_BxTxHxDh, k_BxSxKxDh, tree=has_new, kv_layout=kv_layout).impl
  if impl == 'mosaic':
    why = hopper.unsupported(q_BxTxHxDh.dtype, Dh, T * (H // k_BxSxKxDh.shape[
        1 if cache_layout else 2]), has_new=has_new)
    if why:
      raise ValueError(f"impl='mosaic' cannot run this call: {why}. Use impl='pallas' or "
                       "'auto'.")
    interpret = common.interpret_arg('gpu') is not False
    cfg = hopper_config or HopperDecodeConfig()
    if interpret:  # jax's GPU interpreter has no register operand for wgmma
      cfg = dataclasses.replace(cfg, p_in_smem=True)
    return _decode(q_BxTxHxDh, k_BxSxKxDh, v_BxSxKxDh, lengths_B, mask_BxTxS, None,
                   ('mosaic', interpret, scale, cfg, kv_layout))
  family, interpret = ('cudnn', False) if impl == 'cudnn' else common.resolve_impl(impl)
  if cache_layout and family in ('cudnn', 'tpu'):  # these take [B, S, K, Dh]: copies
    k_BxSxKxDh = jnp.swapaxes(k_BxSxKxDh, 1, 2)
    v_BxSxKxDh = jnp.transpose(v_BxSxKxDh, (0, 3, 1, 2))
    cache_layout, kv_layout = False, 'BSKD'
  if impl == 'cudnn':
    k, v, vis = k_BxSxKxDh, v_BxSxKxDh, visible_slots(lengths_B, S, mask_BxTxS, T)
    if has_new:
      k = jnp.concatenate([k, k_new_BxNxKxDh.astype(k.dtype)], axis=1)
      v = jnp.concatenate([v, v_new_BxNxKxDh.astype(v.dtype)], axis=1)
      vis = jnp.concatenate([vis, new_mask_BxTxN], axis=-1)
    return vendor.cudnn_attention(q_BxTxHxDh, k, v, mask_BxTxS=vis, scale=scale)
  if family == 'xla':
    return decode_attention_reference(q_BxTxHxDh, k_BxSxKxDh, v_BxSxKxDh, lengths_B,
                                      mask_BxTxS, k_new_BxNxKxDh, v_new_BxNxKxDh,
                                      new_mask_BxTxN, scale=scale, kv_layout=kv_layout)
  new = None if not has_new else (k_new_BxNxKxDh, v_new_BxNxKxDh, new_mask_BxTxN)
  return _decode(q_BxTxHxDh, k_BxSxKxDh, v_BxSxKxDh, lengths_B, mask_BxTxS, new,
                 (family, interpret, scale, block_sizes or BlockSizes.get_default(family),
                  kv_layout))


def _kernel_path(q_BxTxHxDh, k_BxSxKxDh, v_BxSxKxDh, lengths_B, mask_BxTxS, new, static):
  family, interpret, scale, bs, kv_layout = static
  cache_layout = kv_layout == 'cache'  # GPU-style kernel only (the TPU path gets copies)
  B, T, H, Dh = q_BxTxHxDh.shape
  S, K = k_BxSxKxDh.shape[1], k_BxSxKxDh.shape[2]
  if cache_layout:
    K, S = k_BxSxKxDh.shape[1], k_BxSxKxDh.shape[2]
  G = H // K
  # Where each row's visible slots begin and the run every query sees: both GPU kernels read
  # no tile before the first and compute the tiles inside the run without the mask.
  bounds = None if mask_BxTxS is None else slot_bounds(mask_BxTxS)
  if family == 'mosaic':  # bs is a HopperDecodeConfig
    R = hopper.rows_for(T * G)
    Rt = common.round_up(T * G, R)  # row blocks of R
    bk = bs.kv_block(Dh, R)
    Sp = common.round_up(S, bk)
    if cache_layout:
      k, v = common.pad_axis(k_BxSxKxDh, 2, Sp), common.pad_axis(v_BxSxKxDh, 3, Sp)
    else:
      k, v = common.pad_axis(k_BxSxKxDh, 1, Sp), common.pad_axis(v_BxSxKxDh, 1, Sp)
    out_rows = common.round_up(T * G, 8)  # the rows that are queries (a single block)
    o, m, l = hopper.partials(_pack_rows(q_BxTxHxDh, K, Rt), k, v, lengths_B,
                              common.pad_axis(_row_mask(mask_BxTxS, G, Rt), 2, Sp), bounds,
                              scale=scale, cache_layout=cache_layout, config=bs,
                              out_rows=out_rows if out_rows < R else None,
                              interpret=interpret)
    out_BxKxRxDh = gpu.combine(o, m, l, 2.0)[:, :, :T * G]
    out = out_BxKxRxDh.reshape(B, K, T, G, Dh).transpose(0, 2, 1, 3, 4).reshape(B, T, H, Dh)
    return out.astype(q_BxTxHxDh.dtype)
  has_new = new is not None
  on_tpu = family == 'tpu' and interpret is False
  # Triton: power-of-two tiles, dots >= 16. TPU: 8 sublanes (16 for 16-bit q), 128 lanes.
  R = max(16, common.next_pow2(T * G)) if family == 'gpu' else common.round_up(T * G, 16)
  Dhp = max(16, common.next_pow2(Dh)) if family == 'gpu' else Dh
  bk = _block_for(S, bs.block_k, 128 if on_tpu else 16)
  Sp = common.round_up(S, bk)  # a copy of the cache only when S is not a multiple of bk
  if cache_layout:  # k [B, K, S, Dh], v [B, K, Dh, S]
    k = common.pad_axis(common.pad_axis(k_BxSxKxDh, 2, Sp), 3, Dhp)
    v = common.pad_axis(common.pad_axis(v_BxSxKxDh, 3, Sp), 2, Dhp)
  else:
    k = common.pad_axis(common.pad_axis(k_BxSxKxDh, 1, Sp), 3, Dhp)
    v = common.pad_axis(common.pad_axis(v_BxSxKxDh, 1, Sp), 3, Dhp)
  q = common.pad_axis(_pack_rows(q_BxTxHxDh, K, R), 3, Dhp)
  mask = common.pad_axis(_row_mask(mask_BxTxS, G, R), 2, Sp)
  kn = vn = nmask = None
  if has_new:
    k_new_BxNxKxDh, v_new_BxNxKxDh, new_mask_BxTxN = new
    N = k_new_BxNxKxDh.shape[1]
    Np = max(16, common.next_pow2(N)) if family == 'gpu' else common.round_up(N, 8)
    kn = common.pad_axis(common.pad_axis(k_new_BxNxKxDh.astype(k.dtype), 1, Np), 3, Dhp)
    vn = common.pad_axis(common.pad_axis(v_new_BxNxKxDh.astype(v.dtype), 1, Np), 3, Dhp)
    nmask = common.pad_axis(_row_mask(new_mask_BxTxN, G, R), 2, Np)

  if family == 'tpu':
    st = tpu.Static(scale=scale, block_k=bk, has_mask=mask is not None, has_new=has_new,
                    interpret=interpret)
    o, m, l = tpu.partials(q, k, v, lengths_B, mask, kn, vn, nmask, st,
                           None if bounds is None else bounds[0])
    base = math.e
  else:
    nblk = Sp // bk
    parts = bs.num_parts or common.cdiv(264, B * K)
    st = gpu.Static(scale=scale, block_k=bk, num_parts=max(1, min(parts, nblk)),
                    has_mask=mask is not None,
                    has_new=has_new, interpret=interpret, num_warps=bs.num_warps,
                    num_stages=bs.num_stages, cache_layout=cache_layout)
    o, m, l = gpu.partials(q, k, v, lengths_B, mask, kn, vn, nmask, st, bounds)
    base = 2.0
  out_BxKxRxDh = gpu.combine(o, m, l, base)[:, :, :T * G, :Dh]
  out = out_BxKxRxDh.reshape(B, K, T, G, Dh).transpose(0, 2, 1, 3, 4).reshape(B, T, H, Dh)
  return out.astype(q_BxTxHxDh.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _decode(q, k, v, lengths, mask, new, static):
  return _kernel_path(q, k, v, lengths, mask, new, static)


def _decode_fwd(q, k, v, lengths, mask, new, static):
  return _kernel_path(q, k, v, lengths, mask, new, static), (q, k, v, lengths, mask, new)


def _decode_bwd(static, res, g):
  q, k, v, lengths, mask, new = res
  ref = functools.partial(decode_attention_reference, scale=static[2], kv_layout=static[4])
  if new is None:
    f = lambda q, k, v: ref(q, k, v, lengths, mask)
    return (*jax.vjp(f, q, k, v)[1](g), None, None, None)
  kn, vn, nmask = new
  f = lambda q, k, v, kn, vn: ref(q, k, v, lengths, mask, kn, vn, nmask)
  dq, dk, dv, dkn, dvn = jax.vjp(f, q, k, v, kn, vn)[1](g)
  return dq, dk, dv, None, None, (dkn, dvn, None)


_decode.defvjp(_decode_fwd, _decode_bwd)


def tree_attention(q_BxNxHxDh: jax.Array, k_cache_BxSxKxDh: jax.Array,
                   v_cache_BxSxKxDh: jax.Array, prefix_lengths_B: jax.Array,
                   k_tree_BxNxKxDh: jax.Array, v_tree_BxNxKxDh: jax.Array, *,
                   tree_mask_BxNxN: jax.Array | None = None,
                   parents_BxN: jax.Array | None = None, scale: float | None = None,
                   block_sizes: BlockSizes | None = None, impl: str = 'auto') -> jax.Array:
  """N tree nodes attend to the committed prefix and to their ancestors (and themselves).

  Give the tree as `parents_BxN` (parent index, -1 for a root; parents before children)
  or directly as `tree_mask_BxNxN` (any [N, N] visibility among the new tokens: a chain,
  a tree, a bidirectional canvas block).
  """
  if tree_mask_BxNxN is None:
    if parents_BxN is None:
      raise ValueError('Pass parents_BxN or tree_mask_BxNxN.')
    parents_BxN = jnp.broadcast_to(parents_BxN, (q_BxNxHxDh.shape[0], q_BxNxHxDh.shape[1]))
    tree_mask_BxNxN = ancestor_mask(parents_BxN)
  return decode_attention(q_BxNxHxDh, k_cache_BxSxKxDh, v_cache_BxSxKxDh, prefix_lengths_B,
                          k_new_BxNxKxDh=k_tree_BxNxKxDh, v_new_BxNxKxDh=v_tree_BxNxKxDh,
                          new_mask_BxTxN=tree_mask_BxNxN, scale=scale,
                          block_sizes=block_sizes, impl=impl)


__all__ = ['decode_attention', 'tree_attention', 'ancestor_mask', 'decode_attention_reference',
           'choose_impl', 'BlockSizes', 'HopperDecodeConfig', 'IMPLS']
