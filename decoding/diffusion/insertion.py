"""Insertion decoding for insertion language models (ILM; Patel et al. 2025, arXiv 2505.05755).

The model (kind `insertion`, from training/objectives/insertion.py) reads the current
sequence with bidirectional attention; the logit of token v at the query of token g scores
inserting v in the gap right after g, and the <eos> logit at position 0 is the stop signal
(sigmoid = P(nothing is missing)). Each step runs one forward over the whole sequence and:

  1. stops the row if P(stop) > stop_threshold (the step counts a forward, inserts nothing);
  2. otherwise inserts one token: (gap, token) = argmax of the joint log-softmax over the
     allowed gaps x the vocabulary without <eos> (greedy), or a draw from it under
     `sampling` (temperature / top-k / top-p / min-p on the flattened joint).

Allowed gaps: those at or after `insert_from` (-1: the last prompt token, i.e. generation
after the prompt; k >= 0: after prompt position k, so the prompt's tail can be infilled in
place, e.g. a span removed from its middle, without saying how many tokens are missing). A
row also ends when it has inserted max_new_tokens tokens (the length cap). One insertion per
forward: forwards per token = 1 + (stop steps) / tokens. No KV cache (each insertion shifts
every later position).

Output: tokens_BxN = the inserted tokens in sequence order, then <eos> if the row stopped
(counted), pad after. extra: `sequence` [B, P + N] the final sequence (prompt with the
insertions, pad after `length`), `length` [B], `stopped` [B] (1 if the stop signal ended the
row, 0 if the cap did). Lossy in the sense of the other diffusion decoders: no AR reference;
greedy decoding is deterministic and batch-invariant.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import flax.struct
import jax
import jax.numpy as jnp

from decoding import base
from decoding import registry
from decoding import sampling as sampling_lib

_SALT = 0x11E


@flax.struct.dataclass
class InsertionState:
  """seq_BxL: the current sequence (prompt + insertions, pad after length_B); inserted_BxL:
  which entries were inserted; length_B: tokens in seq; stopped_B: the stop signal ended the
  row; progress (`base.Progress`, no token buffer); steps: loop iterations."""
  seq_BxL: jax.Array
  inserted_BxL: jax.Array
  length_B: jax.Array
  stopped_B: jax.Array
  progress: base.Progress
  steps: jax.Array


def insert_at(seq_BxL: jax.Array, gap_B: jax.Array, token_B: jax.Array, do_B: jax.Array
              ) -> jax.Array:
  """Inserts token[b] right after seq[b, gap[b]] where do[b] (later entries move right by one;
  the last entry falls off). seq: [B, L]; gap, token, do: [B]."""
  L = seq_BxL.shape[1]
  t_1xL = jnp.arange(L)[None, :]
  g_Bx1 = gap_B[:, None]
  shifted = jnp.concatenate([seq_BxL[:, :1], seq_BxL[:, :-1]], axis=1)
  new = jnp.where(t_1xL <= g_Bx1, seq_BxL,
                  jnp.where(t_1xL == g_Bx1 + 1, token_B[:, None].astype(seq_BxL.dtype), shifted))
  return jnp.where(do_B[:, None], new, seq_BxL)


def joint_log_probs(logits_BxLxV: jax.Array, gap_ok_BxL: jax.Array, eos_id: int) -> jax.Array:
  """[B, L * V] log p(gap, token): one log-softmax over the allowed gaps x the vocabulary
  without <eos> (float32; -inf elsewhere). Index = gap * V + token."""
  B, L, V = logits_BxLxV.shape
  ok = gap_ok_BxL[:, :, None] & (jnp.arange(V) != eos_id)[None, None, :]
  logits = jnp.where(ok, logits_BxLxV.astype(jnp.float32), -jnp.inf).reshape(B, L * V)
  return jax.nn.log_softmax(logits, axis=-1)


@registry.register
@dataclasses.dataclass(frozen=True)
class InsertionDecoder(base.Decoder):
  """Insertion LM decoding: one (gap, token) insertion per forward, anywhere in the allowed
  region, until the stop signal or the length cap (ILM; needs an insertion model)."""
  name: ClassVar[str] = 'insertion'
  family: ClassVar[str] = 'diffusion'
  lossless: ClassVar[bool] = False
  model_kinds: ClassVar[tuple[str, ...]] = ('insertion',)
  stop_threshold: float = 0.5
  insert_from: int = -1

  def validate(self, vocab_size: int, eos_id: int, prompt_width: int) -> None:
    if not 0.0 < self.stop_threshold <= 1.0:
      raise ValueError(f'stop_threshold must be in (0, 1], got {self.stop_threshold} '
                       '(1 = never stop: decode to the length cap).')
    if self.insert_from < -1:
      raise ValueError(f'insert_from must be -1 (after the prompt) or a prompt position >= 0, '
                       f'got {self.insert_from}.')
    if self.insert_from >= prompt_width:
      raise ValueError(f'insert_from={self.insert_from} lies beyond the prompts (width '
                       f'{prompt_width}).')
    if not 0 <= eos_id < vocab_size:
      raise ValueError(f'eos_id={eos_id} is outside the vocabulary ({vocab_size}): the stop '
                       'signal is the <eos> logit.')

  def generate(self, models: base.Models, params: dict[str, Any], prompt_BxP: jax.Array,
               prompt_len_B: jax.Array, row_keys_B: jax.Array, *, max_new_tokens: int,
               cache_size: int, eos_id: int, pad_id: int) -> base.DecodeResult:
    del cache_size
    model, p = models.target, params['target']
    B, P = prompt_BxP.shape
    N, V = max_new_tokens, model.cfg.vocab_size
    self.validate(V, eos_id, P)
    if N < 1:
      raise ValueError(f'max_new_tokens must be >= 1, got {N}.')
    L = P + N
    plen_B = prompt_len_B.astype(jnp.int32)
    t_1xL = jnp.arange(L, dtype=jnp.int32)[None, :]
    seq = jnp.full((B, L), pad_id, jnp.int32).at[:, :P].set(prompt_BxP.astype(jnp.int32))
    seq = jnp.where(t_1xL < plen_B[:, None], seq, pad_id)
    first_gap_B = (plen_B - 1 if self.insert_from < 0
                   else jnp.minimum(self.insert_from, plen_B - 1))
    # With a stop threshold of 1 the stop signal is never read (decode to the cap).
    stop_logit_cut = (math.inf if self.stop_threshold >= 1.0 else
                      math.log(self.stop_threshold) - math.log1p(-self.stop_threshold))
    state = InsertionState(
        seq_BxL=seq, inserted_BxL=jnp.zeros((B, L), bool), length_B=plen_B,
        stopped_B=jnp.zeros((B,), bool),
        progress=base.Progress.start(B, N, tokens=False, hist_size=2),
        steps=jnp.zeros((), jnp.int32))

    def cond(s: InsertionState):
      return jnp.any(s.progress.active_B)

    def step(s: InsertionState) -> InsertionState:
      active = s.progress.active_B
      pos = jnp.where(t_1xL < s.length_B[:, None], t_1xL, -1)
      logits = model.apply({'params': p}, s.seq_BxL, pos, attn_mask='bidirectional').logits_BxTxV
      stop = active & (logits[:, 0, eos_id].astype(jnp.float32) > stop_logit_cut)
      gap_ok = (t_1xL >= first_gap_B[:, None]) & (t_1xL < s.length_B[:, None])
      logp = joint_log_probs(logits, gap_ok, eos_id)
      if self.sampling.greedy:
        choice = jnp.argmax(logp, axis=-1).astype(jnp.int32)
      else:
        keys = jax.vmap(lambda k, n: jax.random.fold_in(jax.random.fold_in(k, _SALT), n))(
            row_keys_B, s.progress.num_generated_B)
        choice = sampling_lib.sample_from_log_probs(
            keys, sampling_lib.log_probs(logp, self.sampling))
      gap, token = choice // V, choice % V
      do = active & ~stop
      seq = insert_at(s.seq_BxL, gap, token, do)
      inserted = insert_at(s.inserted_BxL, gap, jnp.ones_like(do), do)
      length = s.length_B + do
      prog = s.progress.count(active, committed_B=do.astype(jnp.int32))
      num = prog.num_generated_B + do
      prog = prog.replace(num_generated_B=num, done_B=prog.done_B | stop | (num >= N))
      return InsertionState(seq_BxL=seq, inserted_BxL=inserted, length_B=length,
                            stopped_B=s.stopped_B | stop, progress=prog, steps=s.steps + 1)

    state = jax.lax.while_loop(cond, step, state)
    n_B = state.progress.num_generated_B
    # Inserted tokens in sequence order, then <eos> if the row stopped before the cap.
    idx_BxL = jnp.where(state.inserted_BxL, jnp.cumsum(state.inserted_BxL, axis=1) - 1, N)
    tokens = jnp.full((B, N), pad_id, jnp.int32).at[jnp.arange(B)[:, None], idx_BxL].set(
        state.seq_BxL, mode='drop')
    eos_B = state.stopped_B & (n_B < N)
    tokens = tokens.at[jnp.arange(B), jnp.where(eos_B, n_B, N)].set(eos_id, mode='drop')
    return state.progress.result(
        {'sequence': state.seq_BxL, 'length': state.length_B,
         'stopped': state.stopped_B.astype(jnp.int32)},
        tokens_BxN=tokens, num_generated_B=n_B + eos_B)
