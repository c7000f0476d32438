"""The vendors' attention kernels behind our conventions: cuDNN (NVIDIA) and splash (TPU).

Both return [B, T, H, Dh] in q's dtype and, like every implementation here, zeros for a
query that sees no key (cuDNN alone would return the mean of the values: its boolean mask
becomes an additive bias).

  cudnn_attention   `jax.nn.dot_product_attention(implementation='cudnn')`: bf16/fp16, head
                    dim a multiple of 8 and <= 256 (Hopper; 128 before); causal and causal
                    sliding windows without a mask array, anything else as a dense mask.
  splash_attention  `jax.experimental.pallas.ops.tpu.splash_attention`: causal, full or
                    causal-window masks built statically (no mask array), segment ids; T and
                    S multiples of its 128 blocks. Off a TPU it raises unless `interpret`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels import common

# Indirection so tests can run the argument construction through implementation='xla'.
_dot_product_attention = jax.nn.dot_product_attention


def cudnn_attention(q_BxTxHxDh: jax.Array, k_BxSxKxDh: jax.Array, v_BxSxKxDh: jax.Array, *,
                    mask_BxTxS: jax.Array | None = None, causal: bool = False,
                    window: int = 0, scale: float) -> jax.Array:
  """cuDNN flash attention. `causal`/`window` (keys at positions > query - window) assume
  default positions with T == S (query t is key t); `mask_BxTxS` is ANDed on top."""
  if window and not causal:
    raise ValueError('cudnn_attention: a window needs causal=True (cuDNN has no right window).')
  dtype = jnp.result_type(q_BxTxHxDh, k_BxSxKxDh, v_BxSxKxDh)
  q, k, v = (x.astype(dtype) for x in (q_BxTxHxDh, k_BxSxKxDh, v_BxSxKxDh))
  mask = None if mask_BxTxS is None else mask_BxTxS.astype(jnp.bool_)[:, None]
  out = _dot_product_attention(q, k, v, mask=mask, scale=scale, is_causal=causal,
                               local_window_size=(window - 1, 0) if window else None,
                               implementation='cudnn')
  if mask_BxTxS is not None:  # a query with no visible key: zeros, as everywhere else
    seen_BxT = jnp.broadcast_to(mask_BxTxS, (q.shape[0], q.shape[1], k.shape[1])).any(-1)
    out = jnp.where(seen_BxT[:, :, None, None], out, 0)
  return out.astype(q_BxTxHxDh.dtype)


def splash_attention(q_BxTxHxDh: jax.Array, k_BxSxKxDh: jax.Array, v_BxSxKxDh: jax.Array, *,
                     causal: bool = True, window: int = 0, scale: float,
                     q_segment_ids_BxT: jax.Array | None = None,
                     kv_segment_ids_BxS: jax.Array | None = None,
                     interpret: bool = False) -> jax.Array:
  """jax's splash attention (TPU). Default positions, T == S; GQA by H // K query heads per
  kv head. `interpret=True` runs it interpreted (any backend; slow)."""
  if common.platform() != 'tpu' and not interpret:
    raise ValueError(f'splash attention runs on a TPU (platform {common.platform()!r}); pass '
                     "interpret=True to interpret it, or use impl='xla'.")
  # pylint: disable-next=g-import-not-at-top
  from jax.experimental.pallas.ops.tpu import splash_attention as splash
  B, T, H, Dh = q_BxTxHxDh.shape
  S = k_BxSxKxDh.shape[1]
  if causal and window:
    head_mask = splash.LocalMask((T, S), window_size=(window - 1, 0), offset=0)
  elif causal:
    head_mask = splash.CausalMask((T, S))
  elif window:
    raise ValueError('splash_attention: a window needs causal=True here.')
  else:
    head_mask = splash.FullMask((T, S))
  bq, bkv = min(128, T), min(128, S)
  block = splash.BlockSizes(block_q=bq, block_kv=bkv, block_kv_compute=bkv, block_q_dkv=bq,
                            block_kv_dkv=bkv, block_kv_dkv_compute=bkv, block_q_dq=bq,
                            block_kv_dq=bkv)
  kernel = splash.make_splash_mha(splash.MultiHeadMask([head_mask] * H), block_sizes=block,
                                  head_shards=1, q_seq_shards=1, interpret=bool(interpret))
  dtype = q_BxTxHxDh.dtype
  q = (q_BxTxHxDh.astype(jnp.float32) * scale).astype(dtype).transpose(0, 2, 1, 3)
  k = k_BxSxKxDh.astype(dtype).transpose(0, 2, 1, 3)
  v = v_BxSxKxDh.astype(dtype).transpose(0, 2, 1, 3)
  if q_segment_ids_BxT is None:
    out = jax.vmap(kernel)(q, k, v)
  else:
    seg = splash.SegmentIds(q=jnp.broadcast_to(q_segment_ids_BxT, (B, T)).astype(jnp.int32),
                            kv=jnp.broadcast_to(kv_segment_ids_BxS, (B, S)).astype(jnp.int32))
    out = jax.vmap(kernel)(q, k, v, segment_ids=seg)
  return out.transpose(0, 2, 1, 3).astype(dtype)
