"""Plain-jnp flash-attention reference: masked grouped-query attention, float32 softmax."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels.attention.reference import attention_reference
from pallas_kernels.flash_attention import mask as mask_lib


def flash_attention_reference(q_BxTxHxDh: jax.Array, k_BxSxKxDh: jax.Array,
                              v_BxSxKxDh: jax.Array, fm: mask_lib.FlashMask, *,
                              causal_block: int, window: int = 0,
                              scale: float) -> jax.Array:
  """Attention of T queries over S keys under the mask described by `fm` (see `mask`).

  Returns [B, T, H, Dh] in q's dtype; a query with no visible key gets zeros.
  """
  return attention_reference(q_BxTxHxDh, k_BxSxKxDh, v_BxSxKxDh,
                             mask_lib.dense_visible(fm, causal_block, window), scale)
