"""Plain-jnp attention: the readable reference every kernel is tested against."""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Finite stand-in for -inf: no inf - inf = NaN anywhere, in values or gradients.
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


def attention_reference(q_BxTxHxDh: jax.Array, k_BxSxKxDh: jax.Array, v_BxSxKxDh: jax.Array,
                        mask_BxTxS: jax.Array, scale: float) -> jax.Array:
  """Grouped-query attention with an explicit boolean mask.

  Args:
    q_BxTxHxDh: queries; H must be a multiple of K (G = H // K queries share a kv head).
    k_BxSxKxDh: keys.
    v_BxSxKxDh: values.
    mask_BxTxS: True where query t may attend to key s. Broadcastable to [B, T, S].
    scale: multiplies q·k (usually Dh ** -0.5).

  Returns:
    [B, T, H, Dh] in the dtype of `q`. Scores and softmax are computed in float32. A query
    with no visible key returns zeros (finite, no gradient), as every kernel does.
  """
  B, T, H, Dh = q_BxTxHxDh.shape
  K = k_BxSxKxDh.shape[2]
  G = H // K
  q_BxTxKxGxDh = q_BxTxHxDh.reshape(B, T, K, G, Dh)
  scores_BxKxGxTxS = jnp.einsum('BTKGd,BSKd->BKGTS', q_BxTxKxGxDh, k_BxSxKxDh,
                                preferred_element_type=jnp.float32) * scale
  mask_Bx1x1xTxS = jnp.broadcast_to(mask_BxTxS, (B, T, k_BxSxKxDh.shape[1]))[:, None, None]
  scores_BxKxGxTxS = jnp.where(mask_Bx1x1xTxS, scores_BxKxGxTxS, MASK_VALUE)
  probs_BxKxGxTxS = jax.nn.softmax(scores_BxKxGxTxS, axis=-1)
  probs_BxKxGxTxS = jnp.where(mask_Bx1x1xTxS.any(-1, keepdims=True), probs_BxKxGxTxS, 0.0)
  out_BxTxKxGxDh = jnp.einsum('BKGTS,BSKd->BTKGd', probs_BxKxGxTxS.astype(v_BxSxKxDh.dtype),
                              v_BxSxKxDh, preferred_element_type=jnp.float32)
  return out_BxTxKxGxDh.reshape(B, T, H, Dh).astype(q_BxTxHxDh.dtype)
