"""CNTP (wyzjack/CNTP): when the next token is uncertain, try several continuations and keep
the most likely one.

At every position the entropy H of the next-token distribution (unfiltered) sets the number
of trials

  N = 1 + floor((n_max - 1) * clip((H - h_low) / (h_high - h_low), 0, 1)).

With N > 1 the row's cache is forked N ways (the cache pytree tiled along the batch: fixed
shapes, n_max forks for every row, the surplus masked) and each trial samples a span until
punctuation (`stop_ids`), EOS, `max_span` tokens or the budget. The trial with the lowest
perplexity exp(mean NLL) under the model's own (temperature-1) distribution is committed:
its tokens, its cache, its next-token logits. Rows with N = 1 take one plain AR step (the
batch runs the trial branch only when some row needs it).

Trial 0 uses the AR key of each position (fold_in(row_key, position)), trial j > 0 folds j
in as well, so with n_max = 1 CNTP is the AR decoder token for token. Lossy: it changes the
sampling distribution (towards low perplexity); report quality next to speed.

Statistics: target_forwards = sequential forward calls while the row was active (a trial
span costs its longest trial); other_forwards = token-forwards of the discarded trials;
extra: trial_spans (spans with N > 1), trial_tokens (tokens of all trials).
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
from decoding.latent import feedback
from models import cache as cache_lib

PUNCTUATION = tuple(ord(c) for c in '.,;:!?\n')  # byte tokenizer ids


@flax.struct.dataclass
class Span:
  """All trials of one span, rows r = b * n_max + j: tokens [R, L], lengths [R], summed NLL
  [R] (temperature-1 model log-probs), valid [R] (j < N_b); the chosen trial per row [B],
  and its cache and next-token logits [B, V]."""
  tokens_RxL: jax.Array
  length_R: jax.Array
  nll_R: jax.Array
  valid_R: jax.Array
  chosen_B: jax.Array
  cache: Any
  logits_BxV: jax.Array


def num_trials(entropy_B: jax.Array, n_max: int, h_low: float, h_high: float) -> jax.Array:
  frac = jnp.clip((entropy_B - h_low) / max(h_high - h_low, 1e-9), 0.0, 1.0)
  return (1 + jnp.floor((n_max - 1) * frac)).astype(jnp.int32)


def trial_span(forward, cache: Any, logits_BxV: jax.Array, start_B: jax.Array,
               row_keys_B: jax.Array, n_trials_B: jax.Array, room_B: jax.Array, *, n_max: int,
               max_span: int, sampling: sampling_lib.SamplingConfig, stop_ids: tuple[int, ...],
               eos_id: int) -> Span:
  """Runs n_max forked trials per row from (cache, logits) and picks the best valid one.

  start_B: position of the first trial token; room_B: tokens the row may still generate
  (0 = inactive row: no valid trial). `forward(tokens_R, pos_R, cache) -> (logits, cache)`.
  """
  B, M, L = logits_BxV.shape[0], n_max, max_span
  rep = lambda x: jnp.repeat(x, M, axis=0)
  j_R = jnp.tile(jnp.arange(M), B)
  valid_R = (j_R < rep(n_trials_B)) & (rep(room_B) > 0)
  start_R, room_R = rep(start_B), rep(room_B)

  def cond(c):
    return jnp.any(c[5])

  def body(c):
    cache_R, logits_RxV, toks_RxL, len_R, nll_R, live_R = c
    pos_R = start_R + len_R
    keys_R = position_keys(row_keys_B, pos_R, j_R, M)
    tok_R = sampling_lib.sample(keys_R, logits_RxV, sampling)
    lp_R = jnp.take_along_axis(jax.nn.log_softmax(logits_RxV, -1), tok_R[:, None], 1)[:, 0]
    new_logits, cache_R = forward(tok_R, jnp.where(live_R, pos_R, -1), cache_R)
    toks_RxL = base.write_tokens(toks_RxL, tok_R[:, None], len_R, live_R.astype(jnp.int32))
    nll_R = nll_R - jnp.where(live_R, lp_R, 0.0)
    len_R = len_R + live_R
    stop_R = (jnp.isin(tok_R, jnp.asarray(stop_ids + (eos_id,), jnp.int32))
              | (len_R >= L) | (len_R >= room_R))
    logits_RxV = jnp.where(live_R[:, None], new_logits, logits_RxV)
    return cache_R, logits_RxV, toks_RxL, len_R, nll_R, live_R & ~stop_R

  R = B * M
  init = (jax.tree.map(rep, cache), rep(logits_BxV), jnp.zeros((R, L), jnp.int32),
          jnp.zeros((R,), jnp.int32), jnp.zeros((R,), jnp.float32), valid_R)
  cache_R, logits_RxV, toks_RxL, len_R, nll_R, _ = jax.lax.while_loop(cond, body, init)
  ppl_BxM = jnp.where(valid_R, nll_R / jnp.maximum(len_R, 1), jnp.inf).reshape(B, M)
  chosen_B = jnp.argmin(ppl_BxM, axis=1).astype(jnp.int32)
  r_B = jnp.arange(B) * M + chosen_B
  return Span(tokens_RxL=toks_RxL, length_R=len_R, nll_R=nll_R, valid_R=valid_R,
              chosen_B=chosen_B, cache=jax.tree.map(lambda x: x[r_B], cache_R),
              logits_BxV=logits_RxV[r_B])


def position_keys(row_keys_B: jax.Array, pos_R: jax.Array, j_R: jax.Array, n_max: int
                  ) -> jax.Array:
  """Key of trial j's token at its position: the AR key (j = 0) or fold_in(AR key, j)."""
  ar_R = sampling_lib.token_keys(jnp.repeat(row_keys_B, n_max, axis=0), pos_R)
  folded_R = jax.vmap(jax.random.fold_in)(ar_R, j_R)
  return jax.lax.select(j_R == 0, ar_R, folded_R)


@flax.struct.dataclass
class CNTPState:
  """cache (all committed tokens fed), logits_BxV for the next token, progress (tokens,
  counts, target and trial forwards, done flags: `base.Progress`), spans_B, trial_tokens_B."""
  cache: Any
  logits_BxV: jax.Array
  progress: base.Progress
  spans_B: jax.Array
  trial_tokens_B: jax.Array


@registry.register
@dataclasses.dataclass(frozen=True)
class CNTPDecoder(base.Decoder):
  """CNTP (lossy): entropy-triggered trials on forked caches, lowest perplexity kept."""
  name: ClassVar[str] = 'cntp'
  family: ClassVar[str] = 'latent'
  lossless: ClassVar[bool] = False
  n_max: int = 4
  h_low: float = 0.01
  h_high: float = 1.5
  max_span: int = 16
  stop_ids: tuple[int, ...] = PUNCTUATION

  def __post_init__(self):
    if self.n_max < 1 or self.max_span < 1:
      raise ValueError('n_max and max_span must be >= 1.')
    if self.h_high <= self.h_low:
      raise ValueError(f'h_high ({self.h_high}) must exceed h_low ({self.h_low}).')

  def generate(self, models: base.Models, params: dict[str, Any], prompt_BxP: jax.Array,
               prompt_len_B: jax.Array, row_keys_B: jax.Array, *, max_new_tokens: int,
               cache_size: int, eos_id: int, pad_id: int) -> base.DecodeResult:
    target, p = models.target, params['target']
    B, N = prompt_BxP.shape[0], max_new_tokens
    logits_BxV, cache, _ = base.prefill(target, p, prompt_BxP, prompt_len_B,
                                        cache_lib.Cache.init(target.cfg, B, cache_size))

    def forward(tok_R, pos_R, cache):
      out = target.apply({'params': p}, tok_R[:, None], pos_R[:, None], cache=cache)
      return out.logits_BxTxV[:, 0], out.cache

    zeros = jnp.zeros((B,), jnp.int32)
    state = CNTPState(cache=cache, logits_BxV=logits_BxV,
                      progress=base.Progress.start(B, N, pad_id=pad_id, target_forwards=1),
                      spans_B=zeros, trial_tokens_B=zeros)

    def ar_step(s: CNTPState) -> CNTPState:
      active_B = s.progress.active_B
      pos_B = prompt_len_B + s.progress.num_generated_B
      tok_B = sampling_lib.sample(sampling_lib.token_keys(row_keys_B, pos_B), s.logits_BxV,
                                  self.sampling)
      logits, cache = forward(tok_B, jnp.where(active_B, pos_B, -1), s.cache)
      prog = s.progress.commit(tok_B[:, None], active_B.astype(jnp.int32),
                               active_B & (tok_B == eos_id), N)
      # The last token's forward is not needed.
      prog = prog.replace(target_forwards_B=prog.target_forwards_B + (active_B & ~prog.done_B))
      return s.replace(cache=cache, progress=prog,
                       logits_BxV=jnp.where(active_B[:, None], logits, s.logits_BxV))

    def trial_step(s: CNTPState, n_trials_B: jax.Array) -> CNTPState:
      active_B = s.progress.active_B
      room_B = jnp.where(active_B, N - s.progress.num_generated_B, 0)
      span = trial_span(forward, s.cache, s.logits_BxV,
                        prompt_len_B + s.progress.num_generated_B, row_keys_B, n_trials_B,
                        room_B, n_max=self.n_max, max_span=self.max_span, sampling=self.sampling,
                        stop_ids=tuple(self.stop_ids), eos_id=eos_id)
      r_B = jnp.arange(B) * self.n_max + span.chosen_B
      len_B = jnp.where(active_B, span.length_R[r_B], 0)
      toks_BxL = span.tokens_RxL[r_B]
      count_B, hit_eos_B = base.truncate_at_eos(toks_BxL, len_B, room_B, eos_id)
      valid_len_BxM = jnp.where(span.valid_R, span.length_R, 0).reshape(B, self.n_max)
      prog = s.progress.commit(toks_BxL, count_B, hit_eos_B, N)
      ends_B = (prog.done_B & active_B).astype(jnp.int32)  # its last forward is not needed
      prog = prog.replace(
          target_forwards_B=prog.target_forwards_B + valid_len_BxM.max(1) - ends_B,
          other_forwards_B=prog.other_forwards_B + valid_len_BxM.sum(1) - len_B)
      return s.replace(
          cache=span.cache, logits_BxV=jnp.where(active_B[:, None], span.logits_BxV,
                                                 s.logits_BxV), progress=prog,
          spans_B=s.spans_B + (active_B & (n_trials_B > 1)),
          trial_tokens_B=s.trial_tokens_B + valid_len_BxM.sum(1))

    def step_fn(s: CNTPState) -> CNTPState:
      n_trials_B = num_trials(feedback.entropy(s.logits_BxV), self.n_max, self.h_low,
                              self.h_high)
      need = jnp.any((n_trials_B > 1) & s.progress.active_B)
      # not lax.cond, whose branches each got a copy of the cache (base.switch_in_place)
      return base.switch_in_place(need.astype(jnp.int32),
                                  [ar_step, lambda s: trial_step(s, n_trials_B)], s)

    state = jax.lax.while_loop(lambda s: ~jnp.all(s.progress.done_B), step_fn, state)
    return state.progress.result(
        {'trial_spans': state.spans_B, 'trial_tokens': state.trial_tokens_B})
