"""H2O heavy-hitter KV eviction (Zhang et al. 2023) as a cache policy for one-token-per-step
decoding: `ar:h2o=BUDGET:recent=R`, `skipdecode:...:h2o=BUDGET:recent=R`. Lossy (the model
attends to fewer tokens than it saw).

The cache has a fixed number of slots, `budget` (or the full cache size if smaller), and each
slot keeps the logical position of the token it holds, so keys keep the RoPE of their original
position wherever they are stored (`models.cache`: positions are not slots). Every slot
carries the attention mass its token has received so far (summed over the queries that saw
it, the heads and the layers: `Transformer(return_attention=True)`).

  step:   the new token is written into the free slot and attends to at most `budget`
          tokens, itself included; its attention is added to the slots' scores (the written
          slot's score restarts from zero).
  evict:  while slots remain unused the next one is free; once all `budget` are in use, the
          token with the lowest accumulated score that is not among the `recent` newest
          positions is evicted: its slot is where the next token goes. It is never attended
          to again (the next call overwrites the slot before its attention runs).
  prompt: a prompt that fits in budget - 1 slots is prefilled in place; a longer one is
          prefilled in full, then the `recent` newest prompt tokens plus the heaviest others
          (scores summed over all prompt queries) are kept, budget - 1 in all.

So with budget >= prompt + generated tokens nothing is ever evicted, and the output is the
full cache's, bit for bit.

Differences from the paper: one kept set per row shared by all layers and heads (scores summed
over them), where H2O keeps one per layer and head; the shared set is what a cache of `budget`
slots can hold when every layer writes a token to the same slot. Budgets here count the
current token. Not for decoders that write several tokens per step and roll back
(speculative, diffusion): eviction would need rollback too.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from decoding import base
from models import cache as cache_lib
from models import config as config_lib
import pallas_kernels.common as kernel_common


@flax.struct.dataclass
class H2OCache:
  """cache: the model's cache of `budget` slots; scores_BxS: accumulated attention mass per
  slot; free_B: the slot the next token of each row is written to."""
  cache: cache_lib.Cache
  scores_BxS: jax.Array
  free_B: jax.Array


def evict_slot(scores_BxS: jax.Array, positions_BxS: jax.Array, newest_B: jax.Array,
               recent: int) -> jax.Array:
  """The slot to evict per row: the lowest score among held tokens (position >= 0) older than
  the `recent` newest positions (position <= newest - recent); ties go to the lowest slot."""
  old_BxS = (positions_BxS >= 0) & (positions_BxS <= newest_B[:, None] - recent)
  return jnp.argmin(jnp.where(old_BxS, scores_BxS, jnp.inf), axis=1).astype(jnp.int32)


def after_step(h: H2OCache, cache: cache_lib.Cache, mass_BxS: jax.Array, newest_B: jax.Array,
               active_B: jax.Array, recent: int) -> H2OCache:
  """The policy's update after a forward that wrote one token per active row at `h.free_B`:
  scores grow by this step's attention, and the next free slot is chosen."""
  S = cache.size
  b = jnp.arange(h.scores_BxS.shape[0])
  scores = h.scores_BxS.at[b, h.free_B].set(jnp.where(active_B, 0.0, h.scores_BxS[b, h.free_B]))
  scores = scores + jnp.where(active_B[:, None], mass_BxS, 0.0)
  evict_B = evict_slot(scores, cache.positions, newest_B, recent)
  free_B = jnp.where(cache.lengths < S, cache.lengths, evict_B)
  return H2OCache(cache=cache, scores_BxS=scores, free_B=jnp.where(active_B, free_B, h.free_B))


@dataclasses.dataclass(frozen=True)
class H2OPolicy:
  """A budget of `budget` slots (the current token included) of which the `recent` newest
  positions are never evicted; see the module docstring."""
  budget: int
  recent: int = 0

  def check(self) -> None:
    if self.budget < 2:
      raise ValueError(f'h2o: the budget must be at least 2 slots, got {self.budget}.')
    if not 0 <= self.recent <= self.budget - 1:
      raise ValueError(f'h2o: recent must be in [0, budget - 1] = [0, {self.budget - 1}] (one '
                       f'slot must be evictable), got recent={self.recent}.')

  def prefill(self, model, params: Any, prompt_BxP: jax.Array, prompt_len_B: jax.Array,
              cache_size: int) -> tuple[jax.Array, H2OCache]:
    """(logits at each row's last prompt token [B, V], the policy's cache after the prompt)."""
    self.check()
    cfg = model.cfg
    if config_lib.DELTAPRODUCT in cfg.layer_types:
      raise ValueError('h2o evicts attention keys; models with recurrent (deltaproduct) '
                       'layers are not supported.')
    B, Pw = prompt_BxP.shape
    S = min(self.budget, cache_size)
    if Pw + 1 <= S:  # the prompt fits: prefill in place, nothing evicted
      logits_BxV, cache, out = base.prefill(model, params, prompt_BxP, prompt_len_B,
                                            cache_lib.Cache.init(cfg, B, S),
                                            return_attention=True)
      scores = jnp.sum(out.attention_BxTxS, axis=1)
      return logits_BxV, H2OCache(cache=cache, scores_BxS=scores, free_B=cache.lengths)
    logits_BxV, full, out = base.prefill(model, params, prompt_BxP, prompt_len_B,
                                         cache_lib.Cache.init(cfg, B, Pw), return_attention=True)
    scores_BxP = jnp.sum(out.attention_BxTxS, axis=1)
    keep_B = jnp.minimum(prompt_len_B, S - 1)
    pos_BxP = full.positions
    held = pos_BxP >= 0
    recent = pos_BxP > (prompt_len_B - 1)[:, None] - self.recent
    priority = jnp.where(held, jnp.where(recent, jnp.inf, scores_BxP), -jnp.inf)
    _, idx_BxK = kernel_common.top_k(priority, S - 1)  # the kept slots, the held ones first
    ok_BxK = jnp.arange(S - 1)[None] < keep_B[:, None]
    return logits_BxV, H2OCache(cache=compact(full, idx_BxK, ok_BxK, S),
                                scores_BxS=_pad(jnp.where(ok_BxK, jnp.take_along_axis(
                                    scores_BxP, idx_BxK, 1), 0.0), S, 0.0),
                                free_B=keep_B.astype(jnp.int32))

  def forward(self, model, params: Any, tokens_Bx1: jax.Array, positions_Bx1: jax.Array,
              h: H2OCache, **kwargs) -> tuple[Any, H2OCache]:
    """One token per row (position -1 = inactive row) through the evicting cache; returns the
    model output and the updated policy cache. `kwargs` go to the model (e.g. layer_range)."""
    active_B = positions_Bx1[:, 0] >= 0
    out = model.apply({'params': params}, tokens_Bx1, positions_Bx1, cache=h.cache,
                      write_slots_BxT=h.free_B[:, None], return_attention=True, **kwargs)
    h = after_step(h, out.cache, out.attention_BxTxS[:, 0], positions_Bx1[:, 0], active_B,
                   self.recent)
    return out, h


def _pad(x_BxK: jax.Array, S: int, value) -> jax.Array:
  pad = [(0, 0)] * (x_BxK.ndim - 1) + [(0, S - x_BxK.shape[-1])]
  return jnp.pad(x_BxK, pad, constant_values=value)


def compact(full: cache_lib.Cache, idx_BxK: jax.Array, ok_BxK: jax.Array, S: int
            ) -> cache_lib.Cache:
  """A cache of S slots holding slots idx[b, :] of `full` at slots 0 .. K-1 (entries with
  ok = False and slots K .. S-1 empty); lengths = number of ok entries per row."""
  layers = []
  for layer in full.layers:
    k = jnp.take_along_axis(layer.k, idx_BxK[:, None, :, None], axis=2)
    v = jnp.take_along_axis(layer.v, idx_BxK[:, None, None, :], axis=3)
    k = jnp.pad(k, [(0, 0), (0, 0), (0, S - k.shape[2]), (0, 0)])
    layers.append(cache_lib.KVCache(k=k, v=_pad(v, S, 0)))
  positions = _pad(jnp.where(ok_BxK, jnp.take_along_axis(full.positions, idx_BxK, 1), -1), S, -1)
  return cache_lib.Cache(layers=tuple(layers), positions=positions.astype(jnp.int32),
                         lengths=jnp.sum(ok_BxK, axis=1).astype(jnp.int32))
