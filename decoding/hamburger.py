"""HAMburger decoding (Liu & Zhang 2025): `hamburger`.

The model (`models/hamburger.py`, trained by configs/hamburger.py) is a base LM wrapped with a
compositional embedder and a micro-step decoder. Each loop step runs the base once over ONE
entry, the composed embedding of the tokens the previous step produced (at the position of its
last token, written at the next cache slot), and the micro decoder then produces the next
step's 1 .. `max_tokens` tokens: token 1 from the base's head (as AR), tokens 2.. from the
micro decoder, until its continue probability falls below `threshold`. So the base runs once
and the cache grows by one entry per step, not per token.

Lossy: the micro decoder's tokens are trusted without verification. With max_tokens=1 every
step holds one token and the decoder is `ar` on the wrapped base, token for token (tested).
Under sampling every token is drawn from its own distribution (base head or micro decoder)
with the key AR would use for that token index; the step boundary is the deterministic
threshold.

Statistics: target forwards = prefill + one per step; other forwards = micro decoder passes
(at most max_tokens - 1 per step: a pass runs only while some row of the batch continues); extra['kv_entries'] = cache entries written after the prompt
(one per step but the last, whose tokens are never fed back).
"""

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
from models import hamburger as ham_lib
from models import kind as kind_lib


@flax.struct.dataclass
class HamState:
  """Loop state of `HamburgerDecoder`.

  cache: the base's KV cache: the prompt one token per slot, then one entry per step.
  group_BxK / count_B: the tokens of the step just committed (group[b, :count[b]]), the next
    step's base input.
  slot_B: the cache slot the next entry goes to.
  entries_B: entries written after the prompt.
  progress: tokens, counts, done flags, step histogram (`base.Progress`).
  """
  cache: cache_lib.Cache
  group_BxK: jax.Array
  count_B: jax.Array
  slot_B: jax.Array
  entries_B: jax.Array
  progress: base.Progress


@registry.register
@dataclasses.dataclass(frozen=True)
class HamburgerDecoder(base.Decoder):
  """Several tokens per base forward and per KV entry (see the module docstring; lossy).

  max_tokens: most tokens per step (0 = the k the model was trained with; <= k).
  threshold: the micro decoder's continue probability below which a step ends.
  """
  name: ClassVar[str] = 'hamburger'
  family: ClassVar[str] = 'multi_token'
  lossless: ClassVar[bool] = False
  model_heads: ClassVar[tuple[str, ...]] = (ham_lib.HAMBURGER,)
  max_tokens: int = 0
  threshold: float = 0.5

  def __post_init__(self):
    if self.max_tokens < 0:
      raise ValueError(f'hamburger: max_tokens must be >= 0 (0 = the trained k), got '
                       f'{self.max_tokens}.')
    if not 0.0 <= self.threshold <= 1.0:
      raise ValueError(f'hamburger: threshold must be in [0, 1], got {self.threshold}.')

  def is_lossless(self) -> bool:
    return False

  def steps_of(self, hb: Any) -> int:
    """The most tokens per step for trained params['hamburger']."""
    k = ham_lib.max_tokens(hb)
    if self.max_tokens > k:
      raise ValueError(f'hamburger: max_tokens={self.max_tokens}, but the model was trained '
                       f'for steps of at most {k} tokens.')
    return self.max_tokens or k

  def generate(self, models: base.Models, params: dict[str, Any], prompt_BxP: jax.Array,
               prompt_len_B: jax.Array, row_keys_B: jax.Array, *, max_new_tokens: int,
               cache_size: int, eos_id: int, pad_id: int) -> base.DecodeResult:
    if ham_lib.HAMBURGER not in params:
      raise ValueError('Decoder \'hamburger\' needs the embedder and micro decoder beside the '
                       f'target: {kind_lib.train_heads_hint((ham_lib.HAMBURGER,))}.')
    target, p, hb = models.target, params['target'], params[ham_lib.HAMBURGER]
    cfg = target.cfg
    ham_lib.check_model(cfg, ham_lib.max_tokens(hb))
    K = self.steps_of(hb)
    B, N = prompt_BxP.shape[0], max_new_tokens

    def micro_step(logits_BxV, h_BxD, done_B, num_B):
      """The next step's tokens [B, K], count [B] and micro passes run (scalar) from the base's
      output at an entry. A pass runs only while some row's step goes on (`lax.cond`)."""
      key_at = lambda i: sampling_lib.token_keys(row_keys_B, prompt_len_B + num_B + i)
      group = jnp.full((B, K), pad_id, jnp.int32)
      group = group.at[:, 0].set(sampling_lib.sample(key_at(0), logits_BxV, self.sampling))
      count, alive, passes = jnp.ones((B,), jnp.int32), ~done_B, jnp.zeros((), jnp.int32)
      for i in range(1, K):  # K is small and static: unrolled
        alive = alive & (group[:, i - 1] != eos_id)

        def run(carry, i=i):
          group, count, alive, passes = carry
          logits, cont = ham_lib.micro_forward(cfg, p, hb, h_BxD, group[:, :K - 1])
          alive = alive & (jax.nn.sigmoid(cont[:, i]) >= self.threshold)
          tok = sampling_lib.sample(key_at(i), logits[:, i], self.sampling)
          return (group.at[:, i].set(jnp.where(alive, tok, pad_id)), count + alive, alive,
                  passes + 1)

        group, count, alive, passes = jax.lax.cond(jnp.any(alive), run, lambda c: c,
                                                   (group, count, alive, passes))
      return group, count, passes

    def cut(progress, group, count, active_B):
      """(count cut at EOS and the budget, whether the row ended): 0 for inactive rows."""
      return base.truncate_at_eos(group, jnp.where(active_B, count, 0),
                                  N - progress.num_generated_B, eos_id)

    cache = cache_lib.Cache.init(cfg, B, cache_size)
    logits_BxV, cache, out = base.prefill(target, p, prompt_BxP, prompt_len_B, cache,
                                          return_hidden=True)
    last_B = jnp.maximum(prompt_len_B - 1, 0)
    h_BxD = jnp.take_along_axis(out.hidden[-1], last_B[:, None, None], axis=1)[:, 0]
    progress = base.Progress.start(B, N, pad_id=pad_id, hist_size=K + 1, target_forwards=1)
    group, count, passes = micro_step(logits_BxV, h_BxD, progress.done_B,
                                      progress.num_generated_B)
    active = progress.active_B
    count, ended = cut(progress, group, count, active)
    progress = progress.replace(hist_BxM=base.add_hist(progress.hist_BxM, count, active),
                                other_forwards_B=progress.other_forwards_B + passes * active)
    progress = progress.commit(group, count, ended, N)
    state = HamState(cache=cache, group_BxK=group, count_B=count, slot_B=prompt_len_B,
                     entries_B=jnp.zeros((B,), jnp.int32), progress=progress)

    def cond_fn(s: HamState) -> jax.Array:
      return ~jnp.all(s.progress.done_B)

    def step_fn(s: HamState) -> HamState:
      active_B = s.progress.active_B
      x_BxD = ham_lib.compose(cfg, p, hb, s.group_BxK, s.count_B)
      pos_B = jnp.where(active_B, prompt_len_B + s.progress.num_generated_B - 1, -1)
      out = target.apply({'params': p}, None, pos_B[:, None], cache=s.cache,
                         write_slots_BxT=jnp.where(active_B, s.slot_B, -1)[:, None],
                         inputs_embeds_BxTxD=x_BxD[:, None], return_hidden=True)
      group, count, passes = micro_step(out.logits_BxTxV[:, 0], out.hidden[-1][:, 0],
                                        s.progress.done_B, s.progress.num_generated_B)
      count, ended = cut(s.progress, group, count, active_B)
      progress = s.progress.count(active_B, other_B=passes, committed_B=count).commit(
          group, count, ended, N)
      return HamState(cache=out.cache, group_BxK=group, count_B=count,
                      slot_B=s.slot_B + active_B, entries_B=s.entries_B + active_B,
                      progress=progress)

    state = jax.lax.while_loop(cond_fn, step_fn, state)
    return state.progress.result({'kv_entries': state.entries_B})
