"""Attention over an explicit boolean mask, with an `impl=` switch.

impl:
  'xla'   the plain-jnp reference (`reference.attention_reference`), any backend/dtype.
  'cudnn' `jax.nn.dot_product_attention(implementation='cudnn')` (GPU, bf16/fp16, Dh <= 256);
          the boolean mask is passed as a dense mask.
  'auto'  'xla' until the Pallas kernels land (the Pallas issue adds them here).
"""

from __future__ import annotations

import jax

from pallas_kernels.attention.reference import MASK_VALUE, attention_reference

IMPLS = ('auto', 'xla', 'cudnn')


def attention(q_BxTxHxDh: jax.Array, k_BxSxKxDh: jax.Array, v_BxSxKxDh: jax.Array,
              mask_BxTxS: jax.Array, *, scale: float | None = None,
              impl: str = 'auto') -> jax.Array:
  """Masked grouped-query attention; shapes as in `attention_reference`."""
  if scale is None:
    scale = q_BxTxHxDh.shape[-1] ** -0.5
  if impl in ('auto', 'xla'):
    return attention_reference(q_BxTxHxDh, k_BxSxKxDh, v_BxSxKxDh, mask_BxTxS, scale)
  if impl == 'cudnn':
    B, T = q_BxTxHxDh.shape[:2]
    S = k_BxSxKxDh.shape[1]
    mask_Bx1xTxS = jax.numpy.broadcast_to(mask_BxTxS, (B, T, S))[:, None]
    return jax.nn.dot_product_attention(q_BxTxHxDh, k_BxSxKxDh, v_BxSxKxDh, mask=mask_Bx1xTxS,
                                        scale=scale, implementation='cudnn')
  raise ValueError(f'Unknown attention impl {impl!r}; choose one of {IMPLS}.')


__all__ = ['attention', 'attention_reference', 'MASK_VALUE', 'IMPLS']
