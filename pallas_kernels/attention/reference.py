"""Plain-jnp attention: the readable reference every kernel is tested against."""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Finite stand-in for -inf: no inf - inf = NaN anywhere, in values or gradients.
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


KV_LAYOUTS = ('BSKD', 'BKSD')
# Heads-major keys with at most this many query rows per kv head (T x G) take the
# multiply-reduce path (see `attention_reference`).
ROWWISE_MAX_ROWS = 4


def attention_reference(q_BxTxHxDh: jax.Array, k_BxSxKxDh: jax.Array, v_BxSxKxDh: jax.Array,
                        mask_BxTxS: jax.Array, scale: float, kv_layout: str = 'BSKD'
                        ) -> jax.Array:
  """Grouped-query attention with an explicit boolean mask.

  Args:
    q_BxTxHxDh: queries; H must be a multiple of K (G = H // K queries share a kv head).
    k_BxSxKxDh: keys ([B, K, S, Dh] when kv_layout='BKSD', the decoding cache's layout).
    v_BxSxKxDh: values, laid out as the keys.
    mask_BxTxS: True where query t may attend to key s. Broadcastable to [B, T, S].
    scale: multiplies q·k (usually Dh ** -0.5).
    kv_layout: 'BSKD' (keys as projected) or 'BKSD' (heads-major: each head's keys are
      contiguous, as the batched dots read them).

  Returns:
    [B, T, H, Dh] in the dtype of `q`. Scores and softmax are computed in float32. A query
    with no visible key returns zeros (finite, no gradient), as every kernel does.
  """
  if kv_layout not in KV_LAYOUTS:
    raise ValueError(f'Unknown kv_layout {kv_layout!r}; choose one of {KV_LAYOUTS}.')
  B, T, H, Dh = q_BxTxHxDh.shape
  heads_major = kv_layout == 'BKSD'
  K, S = (k_BxSxKxDh.shape[1], k_BxSxKxDh.shape[2]) if heads_major else (
      k_BxSxKxDh.shape[2], k_BxSxKxDh.shape[1])
  G = H // K
  kv = 'BKSd' if heads_major else 'BSKd'
  q_BxTxKxGxDh = q_BxTxHxDh.reshape(B, T, K, G, Dh)
  # A handful of query rows per kv head (decoding): a dot of so few rows is a matrix-vector
  # product, which XLA on CPU runs through transposed copies of the whole cache; a
  # broadcast-multiply-reduce reads each head's keys and values once, in place.
  rowwise = heads_major and T * G <= ROWWISE_MAX_ROWS
  if rowwise:
    q_BxKxGxTx1xDh = q_BxTxKxGxDh.transpose(0, 2, 3, 1, 4)[:, :, :, :, None, :]
    scores_BxKxGxTxS = jnp.sum(
        q_BxKxGxTx1xDh.astype(jnp.float32) * k_BxSxKxDh[:, :, None, None].astype(jnp.float32),
        axis=-1) * scale
  else:
    scores_BxKxGxTxS = jnp.einsum(f'BTKGd,{kv}->BKGTS', q_BxTxKxGxDh, k_BxSxKxDh,
                                  preferred_element_type=jnp.float32) * scale
  mask_Bx1x1xTxS = jnp.broadcast_to(mask_BxTxS, (B, T, S))[:, None, None]
  scores_BxKxGxTxS = jnp.where(mask_Bx1x1xTxS, scores_BxKxGxTxS, MASK_VALUE)
  probs_BxKxGxTxS = jax.nn.softmax(scores_BxKxGxTxS, axis=-1)
  probs_BxKxGxTxS = jnp.where(mask_Bx1x1xTxS.any(-1, keepdims=True), probs_BxKxGxTxS, 0.0)
  if rowwise:
    out_BxKxGxTxDh = jnp.sum(probs_BxKxGxTxS[..., None]
                             * v_BxSxKxDh[:, :, None, None].astype(jnp.float32), axis=-2)
    out_BxTxKxGxDh = out_BxKxGxTxDh.transpose(0, 3, 1, 2, 4)
  else:
    out_BxTxKxGxDh = jnp.einsum(f'BKGTS,{kv}->BTKGd',
                                probs_BxKxGxTxS.astype(v_BxSxKxDh.dtype), v_BxSxKxDh,
                                preferred_element_type=jnp.float32)
  return out_BxTxKxGxDh.reshape(B, T, H, Dh).astype(q_BxTxHxDh.dtype)
