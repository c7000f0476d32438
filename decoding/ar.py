"""Autoregressive decoding over the KV cache: the baseline every other decoder must match."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import flax.struct
import jax
import jax.numpy as jnp

from decoding import base
from decoding import registry
from decoding import sampling as sampling_lib
from models import cache as cache_lib


@flax.struct.dataclass
class ARState:
  """Loop state of `ARDecoder`.

  cache: the target's KV cache; lengths[b] = prompt_len[b] + num_generated[b] - 1 (the last
    generated token is fed at the next step).
  last_B: the newest token of each row (the next step's input).
  tokens_BxN: output buffer, padded.
  num_generated_B, target_forwards_B: per-row counters.
  done_B: row finished (EOS or budget); finished rows are neither written nor counted.
  """
  cache: cache_lib.Cache
  last_B: jax.Array
  tokens_BxN: jax.Array
  num_generated_B: jax.Array
  target_forwards_B: jax.Array
  done_B: jax.Array


@registry.register
@dataclasses.dataclass(frozen=True)
class ARDecoder(base.Decoder):
  """Autoregressive: batched prefill, then one token per target forward over the KV cache."""
  name: ClassVar[str] = 'ar'
  family: ClassVar[str] = 'autoregressive'
  lossless: ClassVar[bool] = True

  def generate(self, models: base.Models, params: dict[str, Any], prompt_BxP: jax.Array,
               prompt_len_B: jax.Array, row_keys_B: jax.Array, *, max_new_tokens: int,
               cache_size: int, eos_id: int, pad_id: int) -> base.DecodeResult:
    target, p = models.target, params['target']
    B = prompt_BxP.shape[0]
    N = max_new_tokens
    cache = cache_lib.Cache.init(target.cfg, B, cache_size)
    logits_BxV, cache, _ = base.prefill(target, p, prompt_BxP, prompt_len_B, cache)
    first_B = sampling_lib.sample(sampling_lib.token_keys(row_keys_B, prompt_len_B),
                                  logits_BxV, self.sampling)
    state = ARState(
        cache=cache, last_B=first_B,
        tokens_BxN=jnp.full((B, N), pad_id, jnp.int32).at[:, 0].set(first_B),
        num_generated_B=jnp.ones((B,), jnp.int32),
        target_forwards_B=jnp.ones((B,), jnp.int32),
        done_B=(first_B == eos_id) | (N <= 1))

    def cond_fn(s: ARState) -> jax.Array:
      return ~jnp.all(s.done_B)

    def step_fn(s: ARState) -> ARState:
      active_B = ~s.done_B
      pos_B = prompt_len_B + s.num_generated_B - 1
      out = target.apply({'params': p}, s.last_B[:, None],
                         jnp.where(active_B, pos_B, -1)[:, None], cache=s.cache)
      next_B = sampling_lib.sample(sampling_lib.token_keys(row_keys_B, pos_B + 1),
                                   out.logits_BxTxV[:, 0], self.sampling)
      next_B = jnp.where(active_B, next_B, pad_id)
      tokens_BxN = base.write_tokens(s.tokens_BxN, next_B[:, None], s.num_generated_B,
                                     active_B.astype(jnp.int32))
      num_generated_B = s.num_generated_B + active_B
      return ARState(
          cache=out.cache, last_B=next_B, tokens_BxN=tokens_BxN,
          num_generated_B=num_generated_B,
          target_forwards_B=s.target_forwards_B + active_B,
          done_B=s.done_B | (next_B == eos_id) | (num_generated_B >= N))

    state = jax.lax.while_loop(cond_fn, step_fn, state)
    hist_Bx2 = jnp.stack([jnp.zeros_like(state.target_forwards_B), state.target_forwards_B], 1)
    return base.DecodeResult(tokens_BxN=state.tokens_BxN, num_generated_B=state.num_generated_B,
                             target_forwards_B=state.target_forwards_B,
                             other_forwards_B=jnp.zeros((B,), jnp.int32),
                             step_tokens_hist_BxM=hist_Bx2)
