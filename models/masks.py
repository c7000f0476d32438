"""Attention masks: one code path for causal, bidirectional, block-causal and explicit masks.

A mask is built from the *positions* of queries and keys (never from slot indices), plus
which keys are visible at all (`key_valid`: padding and uncommitted cache slots are not).

`attn_mask` argument of the model:
  None or 'causal'     key position <= query position.
  'bidirectional'      every visible key.
  BlockCausal(n)       key block <= query block, blocks of n positions (block diffusion, SDAR).
  bool array           [B, T, S] (or broadcastable): explicit; S = cache slots when a cache
                       is passed, else T. It is ANDed with key validity, so padding and
                       uncommitted slots never leak in.
"""

from __future__ import annotations

import dataclasses
from typing import Union

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class BlockCausal:
  """Block-causal by positions: a query sees keys of its own and all earlier blocks."""
  block_size: int

  def __post_init__(self):
    if self.block_size <= 0:
      raise ValueError(f'BlockCausal.block_size must be positive, got {self.block_size}.')


MaskSpec = Union[None, str, BlockCausal, jax.Array]
MODES = ('causal', 'bidirectional')


def build_mask(q_pos_BxT: jax.Array, k_pos_BxS: jax.Array, key_valid_BxS: jax.Array,
               spec: MaskSpec, window: int = 0) -> jax.Array:
  """Returns the boolean mask [B, T, S] for `spec` (see module docstring).

  `window` > 0 (sliding-window attention, Mistral) also hides, in every mode, keys whose
  position is `window` or more before the query's: k_pos > q_pos - window.
  """
  valid_Bx1xS = key_valid_BxS[:, None, :]
  if window > 0:  # [B, T, S] from here on; every mode below ANDs with it.
    valid_Bx1xS = valid_Bx1xS & (k_pos_BxS[:, None, :] > q_pos_BxT[:, :, None] - window)
  if spec is None or (isinstance(spec, str) and spec == 'causal'):
    return valid_Bx1xS & (k_pos_BxS[:, None, :] <= q_pos_BxT[:, :, None])
  if isinstance(spec, str):
    if spec == 'bidirectional':
      return jnp.broadcast_to(valid_Bx1xS, (q_pos_BxT.shape[0], q_pos_BxT.shape[1],
                                            k_pos_BxS.shape[1]))
    raise ValueError(f'Unknown attention mask mode {spec!r}; use one of {MODES}, '
                     'BlockCausal(n) or a boolean array.')
  if isinstance(spec, BlockCausal):
    n = spec.block_size
    return valid_Bx1xS & (k_pos_BxS[:, None, :] // n <= q_pos_BxT[:, :, None] // n)
  mask = jnp.asarray(spec)
  if mask.dtype != jnp.bool_:
    raise TypeError(f'An explicit attention mask must be boolean, got {mask.dtype}.')
  B, T, S = q_pos_BxT.shape[0], q_pos_BxT.shape[1], k_pos_BxS.shape[1]
  if mask.ndim == 2:
    mask = mask[None]
  if mask.ndim != 3 or mask.shape[1] != T or mask.shape[2] != S or mask.shape[0] not in (1, B):
    raise ValueError(f'Explicit attention mask has shape {mask.shape}; expected [B, T, S] = '
                     f'[{B}, {T}, {S}] (S is the cache size when a cache is passed).')
  return valid_Bx1xS & mask


def local_to_cache_mask(local_BxTxT: jax.Array, write_slots_BxT: jax.Array,
                        lengths_B: jax.Array, cache_size: int,
                        see_prefix: bool = True) -> jax.Array:
  """Lifts a mask among the T new tokens into a [B, T, S] mask over cache slots.

  Used by tree verification and diffusion canvases: the T new tokens are written at
  `write_slots`; new token t sees new token u where `local[b, t, u]`, and (if `see_prefix`)
  every committed slot s < lengths[b].
  """
  B, T = write_slots_BxT.shape
  slots_BxT = jnp.where(write_slots_BxT < 0, cache_size, write_slots_BxT)
  out_BxTxS = jnp.zeros((B, T, cache_size), jnp.bool_)
  b_idx = jnp.arange(B)[:, None, None]
  t_idx = jnp.arange(T)[None, :, None]
  out_BxTxS = out_BxTxS.at[b_idx, t_idx, slots_BxT[:, None, :]].set(
      jnp.broadcast_to(local_BxTxT, (B, T, T)), mode='drop')
  if see_prefix:
    out_BxTxS |= (jnp.arange(cache_size)[None, None, :] < lengths_B[:, None, None])
  return out_BxTxS


def block_to_cache_mask(local_BxQxN: jax.Array, start_B: jax.Array, cache_size: int,
                        see_prefix: bool = True) -> jax.Array:
  """`local_to_cache_mask` for new tokens written at the contiguous slots start ..
  start + N - 1 (and, if `see_prefix`, every slot s < start visible): a gather instead of a
  scatter. Q queries, [B, Q, S]; query q sees new slot start + n where `local[b, q, n]`
  (Q = N for a call's own tokens; a draft round's Q frontier nodes see their ancestors among
  N candidates). A local mask of batch 1 is shared by the rows.
  """
  B, (Q, N) = start_B.shape[0], local_BxQxN.shape[-2:]
  rel_BxS = jnp.arange(cache_size)[None, :] - start_B[:, None]
  inside_BxS = (rel_BxS >= 0) & (rel_BxS < N)
  local_BxQxN = jnp.broadcast_to(local_BxQxN, (B, Q, N))
  out_BxQxS = jnp.take_along_axis(
      local_BxQxN, jnp.broadcast_to(jnp.clip(rel_BxS, 0, N - 1)[:, None, :], (B, Q, cache_size)),
      axis=2) & inside_BxS[:, None, :]
  if see_prefix:
    out_BxQxS |= (rel_BxS < 0)[:, None, :]
  return out_BxQxS


def tree_mask(parents_N: jax.Array) -> jax.Array:
  """Ancestor-or-self mask [N, N] of a token tree given parent indices (-1 for the root).

  Node i may attend to node j iff j is i or one of i's ancestors. Parents must precede
  children (parents[i] < i).
  """
  N = parents_N.shape[-1]

  def body(i, mask):
    p = parents_N[i]
    row = jnp.where(p >= 0, mask[jnp.maximum(p, 0)], jnp.zeros((N,), jnp.bool_))
    return mask.at[i].set(row.at[i].set(True))

  return jax.lax.fori_loop(0, N, body, jnp.zeros((N, N), jnp.bool_))


def two_stream_mask(content_rank_BxL: jax.Array, query_cut_BxQ: jax.Array) -> jax.Array:
  """The any-order (any-subset AR) mask over [L content tokens, Q query tokens], [B, L+Q, L+Q].

  Content token i holds its token; it sees content j iff rank[j] <= rank[i] (rank: the order
  in which positions are revealed; equal ranks, e.g. a prompt at rank 0, see each other).
  Query token q holds <mask> at the position it predicts; it sees content j iff
  rank[j] <= cut[q], and itself. No content token sees a query, so queries never change the
  content stream (XLNet's two streams, as one sequence with shared weights). A query for the
  position of rank r with cut r-1 reads p(x_r | x_{<r}); with a smaller cut it reads the
  marginal given fewer revealed tokens (ASSD's drafts).
  """
  B, L = content_rank_BxL.shape
  Q = query_cut_BxQ.shape[1]
  cc = content_rank_BxL[:, None, :] <= content_rank_BxL[:, :, None]
  qc = content_rank_BxL[:, None, :] <= query_cut_BxQ[:, :, None]
  qq = jnp.broadcast_to(jnp.eye(Q, dtype=jnp.bool_), (B, Q, Q))
  top = jnp.concatenate([cc, jnp.zeros((B, L, Q), jnp.bool_)], axis=2)
  bottom = jnp.concatenate([qc, qq], axis=2)
  return jnp.concatenate([top, bottom], axis=1)
