"""Attention over an explicit boolean mask, as the model calls it, with an `impl=` switch.

impl:
  'xla'     the plain-jnp reference (`reference.attention_reference`), any backend/dtype.
  'cudnn'   `jax.nn.dot_product_attention(implementation='cudnn')` (GPU, bf16/fp16,
            Dh <= 256); the boolean mask is passed as a dense mask.
  'pallas'  the Pallas kernels of this backend (on CPU: the GPU-style kernels in interpret
            mode): few queries per kv head (T x G <= 128: decoding, tree verification) go to
            `decode_attention` (split-K over the slots below the last visible one), longer
            calls to `flash_attention` with the dense mask read per tile and empty tiles
            skipped. 'pallas_gpu' / 'pallas_tpu' pick a kernel family explicitly.
  'mosaic'  our Hopper kernels where one fits the call, else 'pallas': the decode and verify
            cases go to the Hopper decode kernel (`decode_attention/hopper.py`, the cache's
            layout and the mask read in place, row blocks of 128 beyond 128 rows, mask tiles
            only past the slots every query sees), the explicit case to the flash kernel as
            with 'pallas' (the Hopper flash kernel takes no mask array).
  'auto'    what `pallas_kernels.dispatch` says for this platform and call: case 'causal'
            (the caller's `index_mask`: the model's training forward), 'decode' (T x G <=
            128 over a cache), 'verify' (T x G <= 512 over a cache) or 'explicit'
            (otherwise), the dtype, head dim and lengths, and whether K/V come in the cache
            layout (which the kernels would copy). On a GPU today: cuDNN for 'causal',
            'explicit' and 'verify' (bf16/fp16), XLA for decoding from the cache layout; XLA
            on CPU and TPU. `choose_impl` tells which and why for the masked cases (the
            causal one is `flash_attention.choose_impl`'s).

The mask-free entry points (causal/block-causal/segments by positions) are
`pallas_kernels.flash_attention.flash_attention` and
`pallas_kernels.decode_attention.{decode_attention, tree_attention}`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels import dispatch
from pallas_kernels.attention import vendor
from pallas_kernels.attention.reference import KV_LAYOUTS, MASK_VALUE, attention_reference

IMPLS = ('auto', 'xla', 'cudnn', 'pallas', 'pallas_gpu', 'pallas_tpu', 'mosaic')
DECODE_ROWS = 128  # T x G at most this (over a cache): the decode kernel
VERIFY_ROWS = 512  # T x G at most this (over a cache): verification (the Hopper decode kernel)


def call_case(T: int, S: int, G: int) -> str:
  """The dispatch case of a masked-attention call: 'decode', 'verify' or 'explicit'."""
  if S <= T:
    return 'explicit'
  return ('decode' if T * G <= DECODE_ROWS else 'verify' if T * G <= VERIFY_ROWS
          else 'explicit')


def choose_impl(q_BxTxHxDh: jax.Array, k: jax.Array, kv_layout: str = 'BSKD',
                platform: str | None = None) -> dispatch.Choice:
  """What impl='auto' runs for this call (see `pallas_kernels.dispatch`)."""
  _, T, H, Dh = q_BxTxHxDh.shape
  K, S = (k.shape[1], k.shape[2]) if kv_layout == 'cache' else (k.shape[2], k.shape[1])
  return dispatch.choose('attention', call_case(T, S, H // K), platform=platform,
                         dtype=q_BxTxHxDh.dtype, head_dim=Dh, q_len=T, kv_len=S,
                         has_mask=True, cache_layout=kv_layout == 'cache')


def attention(q_BxTxHxDh: jax.Array, k_BxSxKxDh: jax.Array, v_BxSxKxDh: jax.Array,
              mask_BxTxS: jax.Array, *, scale: float | None = None,
              impl: str = 'auto', kv_layout: str = 'BSKD',
              index_mask: tuple[bool, int] | None = None) -> jax.Array:
  """Masked grouped-query attention; shapes as in `attention_reference`.

  `kv_layout='cache'`: k is [B, K, S, Dh] and v [B, K, Dh, S] (the decoding cache's layout,
  models.cache). The XLA path and the decode kernel (GPU-style) read them as they are; the
  flash kernel, the TPU decode kernel and cuDNN get [B, S, K, Dh] copies.
  `index_mask`: (causal, window) when the caller knows that `mask_BxTxS` is exactly that
  rule by index over T == S keys: causal, query t sees keys t - w < s <= t (w = window, 0 =
  no window); bidirectional (window 0), every key: the model's training and cache-free
  forwards. The call is then the dispatch's causal case, run by `flash_attention(causal=c,
  window=w)` without the mask array (cuDNN's is_causal or no mask, splash, our Hopper or
  Triton kernel); where that case resolves to XLA the dense-mask path below runs as without
  the hint.
  A query with no visible key gets zeros in every implementation.
  """
  if impl not in IMPLS:
    raise ValueError(f'Unknown attention impl {impl!r}; choose one of {IMPLS}.')
  if kv_layout not in KV_LAYOUTS:
    raise ValueError(f'Unknown kv_layout {kv_layout!r}; choose one of {KV_LAYOUTS}.')
  if scale is None:
    scale = q_BxTxHxDh.shape[-1] ** -0.5
  if (index_mask is not None and kv_layout == 'BSKD'
      and q_BxTxHxDh.shape[1] == k_BxSxKxDh.shape[1]):
    causal, window = index_mask
    if window and not causal:
      raise ValueError('index_mask: a window needs causal=True (a one-sided window over '
                       'bidirectional attention is not the causal case).')
    # Imported here: see below.
    from pallas_kernels import flash_attention as flash  # pylint: disable=g-import-not-at-top
    run = impl if impl != 'auto' else flash.choose_impl(
        q_BxTxHxDh, k_BxSxKxDh, default_positions=True, segments=False, dense=False,
        causal=causal, block_causal_size=None, window=window).impl
    if run == 'mosaic' and flash.hopper.unsupported(q_BxTxHxDh.dtype, q_BxTxHxDh.shape[-1],
                                                    'causal'):
      run = 'pallas'  # 'mosaic' is our Hopper kernels where one fits the call
    if run != 'xla':
      return flash.flash_attention(q_BxTxHxDh, k_BxSxKxDh, v_BxSxKxDh, causal=causal,
                                   window=window, scale=scale, impl=run)
  if impl == 'auto':
    impl = choose_impl(q_BxTxHxDh, k_BxSxKxDh, kv_layout).impl
  if impl == 'xla':
    return attention_reference(q_BxTxHxDh, k_BxSxKxDh, v_BxSxKxDh, mask_BxTxS, scale,
                               kv_layout=kv_layout)
  B, T, H, _ = q_BxTxHxDh.shape
  cache = kv_layout == 'cache'
  S, K = (k_BxSxKxDh.shape[2], k_BxSxKxDh.shape[1]) if cache else k_BxSxKxDh.shape[1:3]
  mask_BxTxS = jnp.broadcast_to(mask_BxTxS, (B, T, S))
  # Imported here: both packages import this package (vendor, reference); at the top of
  # this file the import of either one first fails with a cycle (tried).
  from pallas_kernels.decode_attention import decode_attention  # pylint: disable=g-import-not-at-top
  from pallas_kernels.flash_attention import flash_attention  # pylint: disable=g-import-not-at-top
  case = call_case(T, S, H // K)
  if impl != 'cudnn' and (case == 'decode' or (impl == 'mosaic' and case == 'verify')):
    # Read only the slots up to the last one any query of the row sees; the GPU-style
    # kernel reads the cache layout in place.
    seen_BxS = mask_BxTxS.any(axis=1)
    lengths_B = jnp.max(jnp.where(seen_BxS, jnp.arange(1, S + 1), 0), axis=1)
    return decode_attention(q_BxTxHxDh, k_BxSxKxDh, v_BxSxKxDh, lengths_B,
                            mask_BxTxS=mask_BxTxS, scale=scale, impl=impl, kv_layout=kv_layout)
  # The explicit case, and 'verify' for 'pallas': the flash kernel with the dense mask (no
  # Hopper kernel takes a mask array over many rows).
  if impl == 'mosaic':
    impl = 'pallas'
  if cache:  # cuDNN and flash take [B, S, K, Dh]: copies
    k_BxSxKxDh = jnp.swapaxes(k_BxSxKxDh, 1, 2)
    v_BxSxKxDh = jnp.transpose(v_BxSxKxDh, (0, 3, 1, 2))
  if impl == 'cudnn':
    return vendor.cudnn_attention(q_BxTxHxDh, k_BxSxKxDh, v_BxSxKxDh, mask_BxTxS=mask_BxTxS,
                                  scale=scale)
  return flash_attention(q_BxTxHxDh, k_BxSxKxDh, v_BxSxKxDh, mask_BxTxS=mask_BxTxS,
                         causal=False, scale=scale, impl=impl)


__all__ = ['attention', 'attention_reference', 'choose_impl', 'call_case', 'MASK_VALUE', 'IMPLS',
           'KV_LAYOUTS']
