"""Plain-jnp decode / tree attention: T queries over a cache prefix plus T' new tokens."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels.attention.reference import attention_reference


def visible_slots(lengths_B: jax.Array, S: int, mask_BxTxS: jax.Array | None = None,
                  T: int = 1) -> jax.Array:
  """[B, T, S] bool: slot s < lengths[b], ANDed with `mask` when given."""
  vis = jnp.arange(S)[None, None, :] < lengths_B[:, None, None]
  if mask_BxTxS is not None:
    return vis & mask_BxTxS
  return jnp.broadcast_to(vis, (lengths_B.shape[0], T, S))


def slot_bounds(mask_BxTxS: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(start_B, lo_B, hi_B) int32 of a [B, T, S] visibility mask, for the kernels' tile loops.

  start: the first slot any query of row b sees (S when none): key tiles wholly below it are
  never read (a sliding window's tiles before the window). [lo, hi): the first run of slots
  every query of the row sees (lo the first such slot, hi the first slot after it that some
  query does not see; lo = hi = S when there is none): key tiles wholly inside it (and below
  the length) are computed without the mask. A decode step sees [0, length) (its window),
  a verification tree the committed prefix."""
  S = mask_BxTxS.shape[-1]
  slot = jnp.arange(S, dtype=jnp.int32)
  seen_by_all = jnp.all(mask_BxTxS, axis=1)
  first = lambda where: jnp.min(jnp.where(where, slot, S), axis=1).astype(jnp.int32)
  start = first(jnp.any(mask_BxTxS, axis=1))
  lo = first(seen_by_all)
  hi = first(~seen_by_all & (slot[None, :] >= lo[:, None]))
  return start, lo, hi


def decode_attention_reference(q_BxTxHxDh: jax.Array, k_BxSxKxDh: jax.Array,
                               v_BxSxKxDh: jax.Array, lengths_B: jax.Array,
                               mask_BxTxS: jax.Array | None = None,
                               k_new_BxNxKxDh: jax.Array | None = None,
                               v_new_BxNxKxDh: jax.Array | None = None,
                               new_mask_BxTxN: jax.Array | None = None, *,
                               scale: float, kv_layout: str = 'BSKD') -> jax.Array:
  """See `decode_attention`: cache slots s < lengths (AND mask) plus new tokens by new_mask.

  kv_layout='cache': k [B, K, S, Dh], v [B, K, Dh, S] (models.cache); new tokens stay
  [B, N, K, Dh].
  """
  B, T = q_BxTxHxDh.shape[:2]
  cache = kv_layout == 'cache'
  S = k_BxSxKxDh.shape[2] if cache else k_BxSxKxDh.shape[1]
  vis = visible_slots(lengths_B, S, mask_BxTxS, T)
  k, v = k_BxSxKxDh, v_BxSxKxDh
  if k_new_BxNxKxDh is not None:
    kn, vn = k_new_BxNxKxDh.astype(k.dtype), v_new_BxNxKxDh.astype(v.dtype)
    if cache:  # [B, N, K, Dh] -> k [B, K, N, Dh], v [B, K, Dh, N]
      kn, vn = jnp.swapaxes(kn, 1, 2), jnp.transpose(vn, (0, 2, 3, 1))
    k = jnp.concatenate([k, kn], axis=2 if cache else 1)
    v = jnp.concatenate([v, vn], axis=3 if cache else 1)
    vis = jnp.concatenate([vis, jnp.broadcast_to(new_mask_BxTxN, (B, T, k_new_BxNxKxDh.shape[1]))],
                          axis=-1)
  return attention_reference(q_BxTxHxDh, k, v, vis, scale, kv_layout=kv_layout)


def ancestor_mask(parents_BxN: jax.Array) -> jax.Array:
  """[B, N, N] bool: node i sees node j iff j is i or an ancestor (parents[i] < i; -1 root).

  By pointer doubling: log2(N) rounds of 'ancestor of an ancestor' (no sequential loop).
  """
  B, N = parents_BxN.shape
  eye = jnp.eye(N, dtype=jnp.bool_)
  par = jnp.where(parents_BxN >= 0, parents_BxN, jnp.arange(N)[None, :])  # root -> itself
  anc = eye[None] | jax.nn.one_hot(par, N, dtype=jnp.bool_)  # self or parent
  jump = par
  for _ in range(max(1, (N - 1).bit_length())):
    anc = anc | jnp.take_along_axis(anc, jnp.broadcast_to(jump[:, :, None], (B, N, N)), axis=1)
    jump = jnp.take_along_axis(jump, jump, axis=1)
  return anc
