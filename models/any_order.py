"""Any-order reads of one Transformer: the two-stream forward of any-subset AR models.

Used by the `as_arm` objective (training) and the ASSD decoder; the mask is
`models.masks.two_stream_mask`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from models import masks as masks_lib
from models import transformer as transformer_lib


def two_stream_logits(model: transformer_lib.Transformer, params: Any, tokens_BxL: jax.Array,
                      positions_BxL: jax.Array, rank_BxL: jax.Array, query_pos_BxQ: jax.Array,
                      query_cut_BxQ: jax.Array, mask_id: int) -> jax.Array:
  """Query-stream logits [B, Q, V]: query q predicts position query_pos[q] from the content
  tokens [B, L] revealed at rank <= query_cut[q] (rank_BxL: each content token's reveal rank;
  a content position < 0 is padding, never seen). One forward over L + Q tokens."""
  B, Q = query_pos_BxQ.shape
  tokens = jnp.concatenate([tokens_BxL, jnp.full((B, Q), mask_id, tokens_BxL.dtype)], axis=1)
  positions = jnp.concatenate([positions_BxL, query_pos_BxQ], axis=1)
  out = model.apply({'params': params}, tokens, positions,
                    attn_mask=masks_lib.two_stream_mask(rank_BxL, query_cut_BxQ))
  return out.logits_BxTxV[:, tokens_BxL.shape[1]:]
