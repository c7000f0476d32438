"""ASSD: any-subset speculative decoding of an any-subset AR model (Guo & Ermon 2025).

The model (an any-order `ModelKind`, e.g. from training/objectives/as_arm.py) gives, in one
forward of `models.any_order.two_stream_logits`, both the marginals of any positions given
the revealed tokens and the exact conditionals of an order. Decoding fills the canvas in a
fixed order (`ordering`: left to right, or a random permutation per row); sequential
decoding reveals one position per forward and samples the model's joint in that order. ASSD
reveals several per forward with the same joint:

  1. draft: one forward reads the marginals q_i of the next k positions of the order given
     the n revealed tokens, and samples each independently (d_i ~ q_i);
  2. verify: one forward with the drafts in the content stream reads their conditionals
     p_i = p(x_{n+i} | revealed, d_{<i}) and, at once, the marginals of the k positions after
     them given revealed + all drafts;
  3. speculative sampling (`pallas_kernels.spec_verify.chain_verify`): accept d_i while
     u_i <= p_i(d_i) / q_i(d_i); at the first rejection draw from norm(max(p_i - q_i, 0))
     and go back to 1. If all k are accepted, the marginals read in 2 are the next drafts'
     q (they condition on everything revealed) and step 1 is skipped.

p_1 and q_1 condition on the same tokens, so the first draft is always accepted: each round
reveals at least two tokens (k >= 2) for at most two forwards, and a round after a fully
accepted one costs one forward, so ASSD never needs more forwards than tokens (+1), and its
output follows the sequential joint exactly (tested: greedy token for token, sampled by a
chi-square test against the enumerated joint). `draft_len=1` is sequential decoding at one
forward per token. extra: accepted_drafts and revealed (canvas positions decoded: in a
random order also some after the first <eos>, which are cut from the output) per row.
The forwards recompute all L content tokens (no KV cache yet; the content
stream is causal in reveal order, so a cache is possible).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Mapping

import flax.struct
import jax
import jax.numpy as jnp

from decoding import base
from decoding import registry
from decoding import sampling as sampling_lib
from decoding.diffusion import canvas
from decoding.speculative import verify as verify_lib
from models import any_order
from models import kind as kind_lib
from pallas_kernels import spec_verify

ORDERINGS = ('left_to_right', 'random')
_SALT_ORDER, _SALT_DRAFT, _SALT_LOOK, _SALT_ACCEPT, _SALT_NEXT = 0x0D, 0xD4, 0xD5, 0xAC, 0x4E


@flax.struct.dataclass
class ASSDState:
  """seq_BxL: prompt + canvas (revealed tokens, <mask> elsewhere); n_B: canvas positions
  revealed (the first n of the order); draft_BxK / logq_BxKxV: drafts for the next k
  positions of the order and the distributions they were drawn from; have_draft_B: whether
  they are current; accepted_B: drafts accepted; progress (`base.Progress`), steps as in the
  other decoders."""
  seq_BxL: jax.Array
  n_B: jax.Array
  draft_BxK: jax.Array
  logq_BxKxV: jax.Array
  have_draft_B: jax.Array
  accepted_B: jax.Array
  progress: base.Progress
  steps: jax.Array


@registry.register
@dataclasses.dataclass(frozen=True)
class ASSDDecoder(canvas.DiffusionDecoder):
  """ASSD on an any-subset AR model: k independent drafts from the marginals, verified by the
  order's conditionals; lossless against sequential decoding in the same order."""
  name: ClassVar[str] = 'assd'
  lossless: ClassVar[bool] = True
  model_kinds: ClassVar[tuple[str, ...]] = ('any_order',)
  draft_len: int = 4
  ordering: str = 'left_to_right'

  def for_model(self, kinds: Mapping[str, kind_lib.ModelKind]) -> 'ASSDDecoder':
    kind = kinds['target']
    kind_lib.require(kind, self.model_kinds, f'Decoder {self.name!r}')
    mask_id = self.mask_id if self.mask_id >= 0 else kind.mask_id
    return dataclasses.replace(self, mask_id=mask_id, shift=0, block_causal=0)

  def validate(self, vocab_size: int) -> None:
    self.check_settings(vocab_size)
    if self.shift or self.block_causal:
      raise ValueError('assd reads each position at its own query token: shift and '
                       'block_causal must be 0.')
    if self.draft_len < 1:
      raise ValueError(f'draft_len must be >= 1, got {self.draft_len}.')
    if self.ordering not in ORDERINGS:
      raise ValueError(f'ordering must be one of {ORDERINGS}, got {self.ordering!r}.')

  def order(self, row_keys_B: jax.Array, N: int) -> jax.Array:
    """[B, N] the canvas index revealed at each step of the order."""
    B = row_keys_B.shape[0]
    if self.ordering == 'left_to_right':
      return jnp.broadcast_to(jnp.arange(N, dtype=jnp.int32), (B, N))
    u = jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, _SALT_ORDER), (N,)))(
        row_keys_B)
    return jnp.argsort(u, axis=1).astype(jnp.int32)

  def generate(self, models: base.Models, params: dict[str, Any], prompt_BxP: jax.Array,
               prompt_len_B: jax.Array, row_keys_B: jax.Array, *, max_new_tokens: int,
               cache_size: int, eos_id: int, pad_id: int) -> base.DecodeResult:
    del cache_size
    model, p = models.target, params['target']
    self.validate(model.cfg.vocab_size)
    B, P = prompt_BxP.shape
    N, K, V = max_new_tokens, self.draft_len, model.cfg.vocab_size
    layout = canvas.Layout(prompt_len_B=prompt_len_B.astype(jnp.int32), P=P, N=N)
    L = layout.L
    plen = layout.prompt_len_B
    order_BxN = self.order(row_keys_B, N)
    b_Bx1 = jnp.arange(B)[:, None]
    rank_BxN = jnp.zeros((B, N), jnp.int32).at[b_Bx1, order_BxN].set(
        jnp.broadcast_to(jnp.arange(1, N + 1, dtype=jnp.int32), (B, N)))
    idx_1xL = jnp.arange(L)[None, :]
    canvas_rank_BxL = jnp.take_along_axis(
        rank_BxN, jnp.clip(idx_1xL - plen[:, None], 0, N - 1), axis=1)
    # Reveal rank of every buffer entry: prompt 0, canvas its order step, padding never.
    rank_BxL = jnp.where(idx_1xL < plen[:, None], 0,
                         jnp.where(idx_1xL < (plen + N)[:, None], canvas_rank_BxL, N + 1))
    pos_BxL = layout.positions(jnp.broadcast_to(idx_1xL, (B, L)))
    mask_id = self.mask_id

    def abs_pos(ranks_BxQ):
      """Absolute position of the canvas entry revealed at each rank (1..N; others: plen)."""
      c = jnp.take_along_axis(order_BxN, jnp.clip(ranks_BxQ - 1, 0, N - 1), axis=1)
      return jnp.where((ranks_BxQ >= 1) & (ranks_BxQ <= N), plen[:, None] + c, plen[:, None])

    def read(seq, ranks_BxQ, cut_BxQ):
      logits = any_order.two_stream_logits(model, p, seq, pos_BxL, rank_BxL,
                                           abs_pos(ranks_BxQ), cut_BxQ, mask_id)
      return sampling_lib.log_probs(logits.astype(jnp.float32).at[..., mask_id].set(
          canvas.NEG_INF), self.sampling)

    def step_keys(steps, salt):
      """[B] keys of one round and purpose (a row's randomness never depends on the batch)."""
      return jax.vmap(lambda k: jax.random.fold_in(jax.random.fold_in(k, steps), salt))(
          row_keys_B)

    def draw(logq_BxKxV, keys_B):
      keys_BxK = jax.vmap(lambda k: jax.random.split(k, K))(keys_B)
      return jax.vmap(sampling_lib.sample_from_log_probs)(keys_BxK, logq_BxKxV)

    k_1xK = jnp.arange(K, dtype=jnp.int32)[None, :]
    state = ASSDState(
        seq_BxL=canvas.initial_sequence(prompt_BxP, layout, mask_id, pad_id),
        n_B=jnp.zeros((B,), jnp.int32), draft_BxK=jnp.zeros((B, K), jnp.int32),
        logq_BxKxV=jnp.zeros((B, K, V), jnp.float32), have_draft_B=jnp.zeros((B,), bool),
        accepted_B=jnp.zeros((B,), jnp.int32),
        progress=base.Progress.start(B, N, hist_size=K + 2, tokens=False),
        steps=jnp.zeros((), jnp.int32))

    def cond_fn(s: ASSDState) -> jax.Array:
      return ~jnp.all(s.progress.done_B) & (s.steps <= N)

    def step_fn(s: ASSDState) -> ASSDState:
      active = s.progress.active_B
      n = s.n_B
      ranks_BxK = n[:, None] + 1 + k_1xK
      # 1. Draft where the drafts are stale: marginals of the next k positions given n.
      need = active & ~s.have_draft_B

      def draft(_):
        logq = read(s.seq_BxL, ranks_BxK, jnp.broadcast_to(n[:, None], (B, K)))
        return logq, draw(logq, step_keys(s.steps, _SALT_DRAFT))

      logq_new, draft_new = jax.lax.cond(jnp.any(need), draft,
                                         lambda _: (s.logq_BxKxV, s.draft_BxK), None)
      logq = jnp.where(need[:, None, None], logq_new, s.logq_BxKxV)
      drafts = jnp.where(need[:, None], draft_new, s.draft_BxK)
      # 2. Verify: conditionals of the drafts + marginals of the k positions after them.
      valid_BxK = ranks_BxK <= N
      pos_BxK = abs_pos(ranks_BxK)
      seq_d = s.seq_BxL.at[b_Bx1, jnp.where(valid_BxK, pos_BxK, L)].set(drafts, mode='drop')
      next_BxK = ranks_BxK + K
      logp = read(seq_d, jnp.concatenate([ranks_BxK, next_BxK], axis=1),
                  jnp.concatenate([ranks_BxK - 1, jnp.broadcast_to((n + K)[:, None], (B, K))],
                                  axis=1))
      # p_1 and q_1 condition on the same tokens: equal up to rounding; use q_1 exactly so
      # the first draft is always accepted.
      logp_ver = logp[:, :K + 1].at[:, 0].set(logq[:, 0])
      u_BxK = verify_lib.uniforms(step_keys(s.steps, _SALT_ACCEPT), (K,))
      acc_B, res_logp_BxV = spec_verify.chain_verify(logp_ver, logq, drafts, valid_BxK, u_BxK,
                                                     mode='iid')
      kk = jnp.minimum(K, N - n)
      rejected = acc_B < kk
      nxt_B = sampling_lib.sample_from_log_probs(step_keys(s.steps, _SALT_NEXT), res_logp_BxV)
      new_BxK = jnp.where(k_1xK == acc_B[:, None], nxt_B[:, None], drafts)
      count = jnp.where(active, acc_B + rejected, 0)
      write_idx = jnp.where(active[:, None] & (k_1xK < count[:, None]) & valid_BxK, pos_BxK, L)
      seq = s.seq_BxL.at[b_Bx1, write_idx].set(new_BxK, mode='drop')
      n_new = n + count
      # 3. After a fully accepted round the read-ahead marginals are the next drafts.
      look_logq = logp[:, K:]
      look = active & ~rejected
      drafts_next = draw(look_logq, step_keys(s.steps, _SALT_LOOK))
      canv = canvas.canvas_of(seq, layout)
      done = s.progress.done_B | (active & ((n_new >= N) | canvas.row_done(canv, mask_id,
                                                                           eos_id)))
      # A round is one target forward, plus one when the drafts were stale.
      progress = s.progress.count(active, committed_B=count)
      progress = progress.replace(target_forwards_B=progress.target_forwards_B + need,
                                  done_B=done)
      return ASSDState(
          seq_BxL=seq, n_B=n_new, draft_BxK=jnp.where(look[:, None], drafts_next, drafts),
          logq_BxKxV=jnp.where(look[:, None, None], look_logq, logq), have_draft_B=look,
          accepted_B=s.accepted_B + jnp.where(active, acc_B, 0), progress=progress,
          steps=s.steps + 1)

    state = jax.lax.while_loop(cond_fn, step_fn, state)
    return canvas.result(canvas.canvas_of(state.seq_BxL, layout), mask_id, eos_id, pad_id,
                         state.progress, extra={'accepted_drafts': state.accepted_B, 'revealed': state.n_B})
