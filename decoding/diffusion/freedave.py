"""FreeDave: lossless parallel decoding by drafting and verifying static decoding steps.

Static decoding (the reference, `llada` with tokens_per_step=1, ordering='confidence') unmasks
one position per forward: the most confident masked position of the current block, with the
token chosen there. FreeDave takes K of those steps per forward:

  from the current forward, candidate j (j = 0..K-1) unmasks the j+1 most confident masked
  positions of the current block, each with its chosen token; one batched forward runs all K
  candidates. Candidate j is what static decoding would reach iff, for every i <= j, the step
  static decoding takes from candidate i-1 (the most confident masked position in *its*
  forward, with its token) is exactly candidate i's extra unmasking. Accept the largest such
  j; its forward is the next round's current forward.

Candidate 0 is static decoding's own step, so every round commits at least one token, and the
output equals static decoding token for token (greedy, and sampled too: tokens are drawn with
per-(row, position) keys). `target_forwards` counts forward calls (each runs K candidate rows
per row: extra['candidate_rows']).
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
from models import masks as masks_lib


@flax.struct.dataclass
class FreeDaveState:
  """seq_BxL: current canvas; token/conf_BxN: the current forward's choices and confidences
  at every canvas position; progress (`base.Progress`), steps: as in the other decoders."""
  seq_BxL: jax.Array
  token_BxN: jax.Array
  conf_BxN: jax.Array
  progress: base.Progress
  steps: jax.Array


@registry.register
@dataclasses.dataclass(frozen=True)
class FreeDaveDecoder(canvas.DiffusionDecoder):
  """FreeDave: K static decoding steps drafted per forward and verified by one batched
  forward; lossless against static one-token-per-step decoding (`llada`)."""
  name: ClassVar[str] = 'freedave'
  lossless: ClassVar[bool] = True
  num_candidates: int = 4

  def generate(self, models: base.Models, params: dict[str, Any], prompt_BxP: jax.Array,
               prompt_len_B: jax.Array, row_keys_B: jax.Array, *, max_new_tokens: int,
               cache_size: int, eos_id: int, pad_id: int) -> base.DecodeResult:
    del cache_size
    model, p = models.target, params['target']
    self.check_settings(model.cfg.vocab_size)
    if self.num_candidates < 1:
      raise ValueError(f'num_candidates must be >= 1, got {self.num_candidates}.')
    B, P = prompt_BxP.shape
    N, K, shift = max_new_tokens, self.num_candidates, self.shift
    layout = canvas.Layout(prompt_len_B=prompt_len_B.astype(jnp.int32), P=P, N=N)
    L = layout.L
    blk_BxN = canvas.block_ids(layout, self.block_size, absolute=bool(self.block_causal))
    mask_spec = masks_lib.BlockCausal(self.block_size) if self.block_causal else 'bidirectional'
    keys_BxN = canvas.position_keys(row_keys_B, layout.canvas_abs())

    def canvas_stats(seq_KxBxL: jax.Array) -> canvas.TokenStats:
      """One forward over K candidates of B rows: stats at every canvas position [K, B, N]."""
      k = seq_KxBxL.shape[0]
      pos_BxL = layout.positions(jnp.broadcast_to(jnp.arange(L), (B, L)))
      flat = seq_KxBxL.reshape(k * B, L)
      out = model.apply({'params': p}, flat, jnp.tile(pos_BxL, (k, 1)), attn_mask=mask_spec)
      e_BxN = jnp.maximum(layout.canvas_abs() - shift, 0)
      e = jnp.tile(e_BxN, (k, 1))
      logits = jnp.take_along_axis(out.logits_BxTxV, e[..., None], axis=1)
      stats = canvas.token_stats(logits, jnp.tile(keys_BxN, (k, 1)), self.sampling,
                                 self.mask_id)
      return jax.tree.map(lambda x: x.reshape(k, B, N), stats)

    seq0 = canvas.initial_sequence(prompt_BxP, layout, self.mask_id, pad_id)
    s0 = canvas_stats(seq0[None])
    state = FreeDaveState(seq_BxL=seq0, token_BxN=s0.token[0], conf_BxN=s0.conf[0],
                          progress=base.Progress.start(B, N, hist_size=K + 1, target_forwards=1,
                                                       tokens=False),
                          steps=jnp.zeros((), jnp.int32))

    def eligible_of(seq_BxL):
      cv = canvas.canvas_of(seq_BxL, layout)
      masked = cv == self.mask_id
      cur = jnp.take_along_axis(blk_BxN, jnp.argmax(masked, axis=1)[:, None], axis=1)
      return masked & (blk_BxN == cur)

    def cond_fn(s: FreeDaveState) -> jax.Array:
      return ~jnp.all(s.progress.done_B) & (s.steps <= N)

    def step_fn(s: FreeDaveState) -> FreeDaveState:
      active = s.progress.active_B
      eligible = eligible_of(s.seq_BxL)
      rank = canvas.ranks(s.conf_BxN, eligible)          # [B, N]; N where not eligible
      n_elig = jnp.sum(eligible, axis=1)
      j_K = jnp.arange(K)
      commit_KxBxN = rank[None] <= j_K[:, None, None]
      seqs = jax.vmap(lambda c: canvas.write_canvas(s.seq_BxL, layout, s.token_BxN, c))(
          commit_KxBxN)
      cand = canvas_stats(seqs)                          # [K, B, N]
      # Candidate j (>= 1) is valid iff static decoding from candidate j-1 takes exactly
      # candidate j's extra step: position of rank j, with the token chosen for it.
      prev_elig = eligible[None] & (rank[None] > j_K[:K - 1, None, None])      # [K-1, B, N]
      prev_conf = jnp.where(prev_elig, cand.conf[:K - 1], -jnp.inf)
      top1 = jnp.argmax(prev_conf, axis=2)                                     # [K-1, B]
      want = jnp.argmax(rank[None] == j_K[1:, None, None], axis=2)             # [K-1, B]
      tok_prev = jnp.take_along_axis(cand.token[:K - 1], top1[..., None], axis=2)[..., 0]
      tok_want = jnp.take_along_axis(s.token_BxN[None], want[..., None], axis=2)[..., 0]
      prev_done = jax.vmap(lambda sq: canvas.row_done(canvas.canvas_of(sq, layout),
                                                      self.mask_id, eos_id))(seqs[:K - 1])
      valid = ((j_K[1:, None] < n_elig[None]) & (top1 == want) & (tok_prev == tok_want)
               & ~prev_done)                                                   # [K-1, B]
      accepted = jnp.sum(jnp.cumprod(valid.astype(jnp.int32), axis=0), axis=0)  # [B]
      pick = lambda x: jnp.take_along_axis(x, accepted[None, :, None], axis=0)[0]
      seq = jnp.where(active[:, None], pick(seqs), s.seq_BxL)
      token = jnp.where(active[:, None], pick(cand.token), s.token_BxN)
      conf = jnp.where(active[:, None], pick(cand.conf), s.conf_BxN)
      done = s.progress.done_B | canvas.row_done(canvas.canvas_of(seq, layout), self.mask_id,
                                                 eos_id)
      progress = s.progress.count(active, committed_B=accepted + 1).replace(done_B=done)
      return FreeDaveState(seq_BxL=seq, token_BxN=token, conf_BxN=conf, progress=progress,
                           steps=s.steps + 1)

    state = jax.lax.while_loop(cond_fn, step_fn, state)
    return canvas.result(canvas.canvas_of(state.seq_BxL, layout), self.mask_id, eos_id, pad_id,
                         state.progress, {'candidate_rows': jnp.full((B,), K, jnp.int32)})
