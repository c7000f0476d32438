"""WeDLM streaming decoding: a sliding window of masks over an exact causal KV cache.

The model (trained by the `wedlm` objective) attends causally in a *physical* order in which
a window's filled tokens come before its masks, each token keeping its logical position.
Every step runs one forward over [last committed token, window of W positions]:

  1. the window's leading run of tokens filled in earlier steps is committed: in this forward
     each of them attended exactly to the committed prefix and the run before it, so the K/V
     it just wrote are the exact causal K/V (nothing is recomputed later) and the cache's
     length moves past them;
  2. every masked window position gets a token (greedy or sampled) and an entropy; positions
     whose entropy plus `distance_penalty` x (distance from the first mask) is below
     `entropy_threshold` are filled, and always the lowest such score;
  3. the window slides by the committed run and refills with masks.

With the logit shift (the objective's `shift`, our default) the prediction for position q is
read at q-1; committing one token per step (entropy_threshold < 0, a large
distance_penalty) is then exactly AR decoding of the same model, token for token (tested).
Lossy otherwise (parallel fills).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import flax.struct
import jax
import jax.numpy as jnp

from decoding import base
from decoding import registry
from decoding.diffusion import canvas
from models import cache as cache_lib
from models import masks as masks_lib
import pallas_kernels.common as kernel_common


@flax.struct.dataclass
class WeDLMState:
  """cache: lengths = committed tokens (prompt + generated); last_B: the newest committed
  token (fed first each step); window_BxW / filled_BxW: the window's tokens (mask where
  unfilled); progress: output, counts, histogram, done flags (`base.Progress`); steps."""
  cache: cache_lib.Cache
  last_B: jax.Array
  window_BxW: jax.Array
  filled_BxW: jax.Array
  progress: base.Progress
  steps: jax.Array


def reorder_mask(filled_BxW: jax.Array) -> jax.Array:
  """[B, W+1, W+1] causal mask in the physical order: the leading committed token, then the
  filled window tokens, then the masked ones (each group by position)."""
  B, W = filled_BxW.shape
  key = jnp.concatenate([jnp.full((B, 1), -1), (~filled_BxW).astype(jnp.int32) * W +
                         jnp.arange(W)[None, :]], axis=1)
  rank = kernel_common.ranks_descending(-key.astype(jnp.float32))  # exact: |key| <= 2W
  return rank[:, None, :] <= rank[:, :, None]


@registry.register
@dataclasses.dataclass(frozen=True)
class WeDLMDecoder(canvas.DiffusionDecoder):
  """WeDLM streaming: sliding mask window, entropy + distance-penalty selection, committed
  prefix in an exact causal KV cache (lossy; one per step = AR)."""
  name: ClassVar[str] = 'wedlm'
  window: int = 16
  entropy_threshold: float = 0.3
  distance_penalty: float = 0.02

  def generate(self, models: base.Models, params: dict[str, Any], prompt_BxP: jax.Array,
               prompt_len_B: jax.Array, row_keys_B: jax.Array, *, max_new_tokens: int,
               cache_size: int, eos_id: int, pad_id: int) -> base.DecodeResult:
    model, p = models.target, params['target']
    self.check_settings(model.cfg.vocab_size)
    if self.window < 1:
      raise ValueError(f'window must be >= 1, got {self.window}.')
    B = prompt_BxP.shape[0]
    N, W, shift = max_new_tokens, self.window, self.shift
    plen = prompt_len_B.astype(jnp.int32)
    cache = cache_lib.Cache.init(model.cfg, B, cache_size)
    _, cache, _ = base.prefill(model, p, prompt_BxP, plen, cache)
    last = jnp.take_along_axis(prompt_BxP, jnp.maximum(plen - 1, 0)[:, None], axis=1)[:, 0]
    state = WeDLMState(cache=cache, last_B=last.astype(jnp.int32),
                       window_BxW=jnp.full((B, W), self.mask_id, jnp.int32),
                       filled_BxW=jnp.zeros((B, W), bool),
                       progress=base.Progress.start(B, N, pad_id=pad_id, hist_size=W + 1,
                                                    target_forwards=1),
                       steps=jnp.zeros((), jnp.int32))
    w_1xW = jnp.arange(W)[None, :]

    def cond_fn(s: WeDLMState) -> jax.Array:
      return ~jnp.all(s.progress.done_B) & (s.steps <= 2 * N + 1)

    def step_fn(s: WeDLMState) -> WeDLMState:
      active = s.progress.active_B
      c = plen + s.progress.num_generated_B                       # committed length
      abs_BxT = (c - 1)[:, None] + jnp.arange(W + 1)[None, :]
      valid_BxT = active[:, None] & (abs_BxT < (plen + N)[:, None])
      pos_BxT = jnp.where(valid_BxT, abs_BxT, -1)
      tokens_BxT = jnp.concatenate([s.last_B[:, None], s.window_BxW], axis=1)
      mask = masks_lib.local_to_cache_mask(reorder_mask(s.filled_BxW), pos_BxT,
                                           s.cache.lengths, s.cache.size)
      out = model.apply({'params': p}, tokens_BxT, pos_BxT, cache=s.cache, attn_mask=mask)
      # 1. Commit the leading run filled before this forward (exact K/V just written).
      run = jnp.sum(jnp.cumprod(s.filled_BxW.astype(jnp.int32), axis=1), axis=1)
      room = N - s.progress.num_generated_B
      count, hit_eos = base.truncate_at_eos(s.window_BxW, run, room, eos_id)
      count = jnp.where(active, count, 0)
      progress = s.progress.count(active, committed_B=count).commit(
          s.window_BxW, count, active & hit_eos, N)
      new_last = jnp.where(count > 0, jnp.take_along_axis(
          s.window_BxW, jnp.maximum(count - 1, 0)[:, None], axis=1)[:, 0], s.last_B)
      # 2. Fill masked window positions by entropy + distance penalty.
      logits = out.logits_BxTxV[:, 1 - shift:W + 1 - shift]
      keys = canvas.position_keys(row_keys_B, c[:, None] + w_1xW)
      stats = canvas.token_stats(logits, keys, self.sampling, self.mask_id)
      eligible = ~s.filled_BxW & valid_BxT[:, 1:]
      first = jnp.argmax(eligible, axis=1)
      score = stats.entropy + self.distance_penalty * (w_1xW - first[:, None])
      score = jnp.where(eligible, score, jnp.inf)
      pick = eligible & ((score < self.entropy_threshold) |
                         (w_1xW == jnp.argmin(score, axis=1)[:, None]))
      window = jnp.where(pick, stats.token, s.window_BxW)
      filled = s.filled_BxW | pick
      # 3. Slide by the committed run and refill with masks.
      src = w_1xW + count[:, None]
      inside = src < W
      window = jnp.where(inside, jnp.take_along_axis(window, jnp.minimum(src, W - 1), axis=1),
                         self.mask_id)
      filled = inside & jnp.take_along_axis(filled, jnp.minimum(src, W - 1), axis=1)
      return WeDLMState(cache=out.cache.truncate(plen + progress.num_generated_B),
                        last_B=new_last, window_BxW=window, filled_BxW=filled, progress=progress,
                        steps=s.steps + 1)

    state = jax.lax.while_loop(cond_fn, step_fn, state)
    return state.progress.result()
