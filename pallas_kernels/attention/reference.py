"""Plain-jnp attention: the readable reference every kernel is tested against."""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Finite stand-in for -inf: no inf - inf = NaN anywhere, in values or gradients.
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


KV_LAYOUTS = ('BSKD', 'cache')


def attention_reference(q_BxTxHxDh: jax.Array, k_BxSxKxDh: jax.Array, v_BxSxKxDh: jax.Array,
                        mask_BxTxS: jax.Array, scale: float, kv_layout: str = 'BSKD'
                        ) -> jax.Array:
  """Grouped-query attention with an explicit boolean mask.

  Args:
    q_BxTxHxDh: queries; H must be a multiple of K (G = H // K queries share a kv head).
    k_BxSxKxDh: keys [B, S, K, Dh]; with kv_layout='cache', [B, K, S, Dh] (the decoding
      cache's layout).
    v_BxSxKxDh: values [B, S, K, Dh]; with kv_layout='cache', [B, K, Dh, S] (transposed).
    mask_BxTxS: True where query t may attend to key s. Broadcastable to [B, T, S].
    scale: multiplies q·k (usually Dh ** -0.5).
    kv_layout: 'BSKD' (keys and values as projected) or 'cache' (see models.cache: both
      products are then plain matrix products over the cache as it lies).

  Returns:
    [B, T, H, Dh] in the dtype of `q`. Scores and softmax are computed in float32. A query
    with no visible key returns zeros (finite, no gradient), as every kernel does.
  """
  if kv_layout not in KV_LAYOUTS:
    raise ValueError(f'Unknown kv_layout {kv_layout!r}; choose one of {KV_LAYOUTS}.')
  B, T, H, Dh = q_BxTxHxDh.shape
  cache_layout = kv_layout == 'cache'
  K, S = (k_BxSxKxDh.shape[1], k_BxSxKxDh.shape[2]) if cache_layout else (
      k_BxSxKxDh.shape[2], k_BxSxKxDh.shape[1])
  G = H // K
  k_in, v_in = ('BKSd', 'BKdS') if cache_layout else ('BSKd', 'BSKd')
  q_BxTxKxGxDh = q_BxTxHxDh.reshape(B, T, K, G, Dh)
  scores_BxKxGxTxS = jnp.einsum(f'BTKGd,{k_in}->BKGTS', q_BxTxKxGxDh, k_BxSxKxDh,
                                preferred_element_type=jnp.float32) * scale
  mask_Bx1x1xTxS = jnp.broadcast_to(mask_BxTxS, (B, T, S))[:, None, None]
  scores_BxKxGxTxS = jnp.where(mask_Bx1x1xTxS, scores_BxKxGxTxS, MASK_VALUE)
  probs_BxKxGxTxS = jax.nn.softmax(scores_BxKxGxTxS, axis=-1)
  probs_BxKxGxTxS = jnp.where(mask_Bx1x1xTxS.any(-1, keepdims=True), probs_BxKxGxTxS, 0.0)
  out_BxTxKxGxDh = jnp.einsum(f'BKGTS,{v_in}->BTKGd', probs_BxKxGxTxS.astype(v_BxSxKxDh.dtype),
                              v_BxSxKxDh, preferred_element_type=jnp.float32)
  return out_BxTxKxGxDh.reshape(B, T, H, Dh).astype(q_BxTxHxDh.dtype)
