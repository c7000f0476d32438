"""Autoregressive decoding over the KV cache: the baseline every other decoder must match."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import flax.struct
import jax
import jax.numpy as jnp

from decoding import base
from decoding import h2o as h2o_lib
from decoding import registry
from decoding import sampling as sampling_lib
from models import cache as cache_lib


@flax.struct.dataclass
class ARState:
  """Loop state of `ARDecoder`.

  cache: the target's KV cache; lengths[b] = prompt_len[b] + num_generated[b] - 1 (the last
    generated token is fed at the next step). With `h2o`, an `h2o.H2OCache` of `h2o` slots.
  last_B: the newest token of each row (the next step's input).
  progress: tokens, counts and done flags (`base.Progress`; one token per target forward).
  """
  cache: cache_lib.Cache | h2o_lib.H2OCache
  last_B: jax.Array
  progress: base.Progress


@registry.register
@dataclasses.dataclass(frozen=True)
class ARDecoder(base.Decoder):
  """Autoregressive: batched prefill, then one token per target forward over the KV cache
  (with h2o=BUDGET: H2O eviction, lossy).

  `h2o=BUDGET` (with `recent=R`) decodes through the H2O heavy-hitter cache of BUDGET slots
  (`decoding/h2o.py`): lossy once tokens are evicted; 0 (default) = the full cache.
  """
  name: ClassVar[str] = 'ar'
  family: ClassVar[str] = 'autoregressive'
  lossless: ClassVar[bool] = True
  h2o: int = 0      # H2O cache budget in slots (0 = full cache, lossless)
  recent: int = 0   # H2O: the newest positions never evicted

  def is_lossless(self) -> bool:
    return not self.h2o

  def cheaper_steps(self) -> bool:
    return bool(self.h2o)

  def prefill(self, models: base.Models, params: dict[str, Any], prompt_BxP: jax.Array,
              prompt_len_B: jax.Array, cache_size: int) -> tuple[jax.Array, cache_lib.Cache]:
    """(logits at each row's last prompt token [B, V], the target's cache after the prompt:
    lengths = prompt lengths). Subclasses fill the cache another way (`kv_predict`)."""
    target = models.target
    cache = cache_lib.Cache.init(target.cfg, prompt_BxP.shape[0], cache_size)
    logits_BxV, cache, _ = base.prefill(target, params['target'], prompt_BxP, prompt_len_B,
                                        cache)
    return logits_BxV, cache

  def generate(self, models: base.Models, params: dict[str, Any], prompt_BxP: jax.Array,
               prompt_len_B: jax.Array, row_keys_B: jax.Array, *, max_new_tokens: int,
               cache_size: int, eos_id: int, pad_id: int) -> base.DecodeResult:
    target, p = models.target, params['target']
    B = prompt_BxP.shape[0]
    N = max_new_tokens
    policy = h2o_lib.H2OPolicy(self.h2o, self.recent) if self.h2o else None
    if policy is not None:
      logits_BxV, cache = policy.prefill(target, p, prompt_BxP, prompt_len_B, cache_size)
    else:
      if self.recent:
        raise ValueError('ar: recent is an H2O setting; set h2o=BUDGET too.')
      logits_BxV, cache = self.prefill(models, params, prompt_BxP, prompt_len_B, cache_size)
    first_B = sampling_lib.sample(sampling_lib.token_keys(row_keys_B, prompt_len_B),
                                  logits_BxV, self.sampling)
    state = ARState(cache=cache, last_B=first_B,
                    progress=base.Progress.start(B, N, pad_id=pad_id, eos_id=eos_id,
                                                 first_B=first_B, target_forwards=1))

    def cond_fn(s: ARState) -> jax.Array:
      return ~jnp.all(s.progress.done_B)

    def step_fn(s: ARState) -> ARState:
      active_B = s.progress.active_B
      pos_B = prompt_len_B + s.progress.num_generated_B - 1
      tokens_Bx1, pos_Bx1 = s.last_B[:, None], jnp.where(active_B, pos_B, -1)[:, None]
      if policy is not None:
        out, cache = policy.forward(target, p, tokens_Bx1, pos_Bx1, s.cache)
      else:
        out = target.apply({'params': p}, tokens_Bx1, pos_Bx1, cache=s.cache)
        cache = out.cache
      next_B = sampling_lib.sample(sampling_lib.token_keys(row_keys_B, pos_B + 1),
                                   out.logits_BxTxV[:, 0], self.sampling)
      next_B = jnp.where(active_B, next_B, pad_id)
      progress = s.progress.count(active_B).commit(next_B[:, None], active_B.astype(jnp.int32),
                                                   next_B == eos_id, N)
      return ARState(cache=cache, last_B=next_B, progress=progress)

    state = jax.lax.while_loop(cond_fn, step_fn, state)
    return state.progress.result()
