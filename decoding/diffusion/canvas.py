"""What the diffusion decoders share: settings, the canvas layout, token statistics, the
commit rules and the statistics every decoder returns.

Layout. Row b's prompt occupies absolute positions 0..P_b-1 and its canvas the next N
positions P_b..P_b+N-1 (N = max_new_tokens), all held in one buffer `seq_BxL` (L = P + N, P
the padded prompt width) indexed by absolute position; entries past P_b + N are padding
(position -1: never attended, never written). Cache slot = position. Canvas index n of row b is
position P_b + n; a masked entry holds `mask_id`.

Blocks. The canvas is decoded in semi-autoregressive blocks of `block_size`: the current
block of a row is the block of its first masked position. Bidirectional models number blocks
from the canvas start (LLaDA); block-causal models (BD3-LM, SDAR) from position 0, so blocks
line up with the attention blocks the model was trained with.

Shift. A model trained with the logit shift (Dream-style AR adaptation) predicts position q at
position q-1; without it, at q. A forward over the window of positions [s, s+W) therefore
predicts positions [s + shift, s + W + shift); decoders put one extra leading token in front
of their window when `shift` is set.

A row is done when no masked position lies before its end: the first committed <eos> (kept)
or N. Output tokens after the end are `pad_id`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Mapping

import jax
import jax.numpy as jnp

from decoding import base
from decoding import sampling as sampling_lib
from models import kind as kind_lib
import pallas_kernels.common as kernel_common

NEG_INF = -jnp.inf


@dataclasses.dataclass(frozen=True)
class DiffusionDecoder(base.Decoder):
  """Settings every diffusion decoder has. -1 means 'take it from the model's kind':
  `for_model({'target': ModelKind, ...})` fills them (sample.py and the benchmarks call it).

  mask_id: the <mask> token (byte tokenizer: 259, BPE: 3).
  shift: 1 if the model reads predictions one position left (Dream-style), else 0.
  block_causal: 1 for block-causal models (BD3-LM, SDAR): attention blocks = block_size.
  block_size: semi-autoregressive block length (canvas positions).
  """
  family: ClassVar[str] = 'diffusion'
  lossless: ClassVar[bool] = False
  model_kinds: ClassVar[tuple[str, ...]] = ('diffusion',)
  mask_id: int = -1
  shift: int = -1
  block_causal: int = -1
  block_size: int = 32

  def for_model(self, kinds: Mapping[str, kind_lib.ModelKind]) -> 'DiffusionDecoder':
    """This decoder checked against the target's kind, with the -1 settings taken from it.

    A block-causal model also fixes block_size to the block length it was trained with.
    """
    return self.completed_for(kinds['target'])

  def completed_for(self, kind: kind_lib.ModelKind, role: str = '') -> 'DiffusionDecoder':
    """The check (a diffusion model) and completion of `for_model` against one model's kind
    (`role`: which model, for the message; default the target)."""
    who = f'Decoder {self.name!r}' + (f' ({role})' if role else '')
    kind_lib.require(kind, ('diffusion',), who,
                     hint="decode it with 'assd'" if kind.any_order else '')
    updates: dict[str, Any] = {}
    if self.mask_id < 0:
      updates['mask_id'] = kind.mask_id
    if self.shift < 0:
      updates['shift'] = int(kind.shift)
    if self.block_causal < 0:
      updates['block_causal'] = int(kind.attention == 'block_causal')
    if updates.get('block_causal', self.block_causal) == 1 and kind.block_size > 0:
      updates['block_size'] = kind.block_size
    return dataclasses.replace(self, **updates)

  def check_settings(self, vocab_size: int) -> None:
    """Clear errors for unresolved or impossible settings (raised while tracing)."""
    for name in ('mask_id', 'shift', 'block_causal'):
      if getattr(self, name) < 0:
        raise ValueError(
            f'Decoder {self.name!r}: {name} is unset (-1). Set --decoder_config.{name}=... '
            '(mask_id: the <mask> token id, 259 for the byte tokenizer; shift: 1 for models '
            'trained with the logit shift; block_causal: 1 for block diffusion) or build the '
            'decoder with .for_model(kinds).')
    if not 0 <= self.mask_id < vocab_size:
      raise ValueError(f'mask_id={self.mask_id} is outside the vocabulary ({vocab_size}).')
    if self.shift not in (0, 1) or self.block_causal not in (0, 1):
      raise ValueError('shift and block_causal must be 0 or 1.')
    if self.block_size <= 0:
      raise ValueError(f'block_size must be positive, got {self.block_size}.')

  def extra_cache_slots(self, max_new_tokens: int) -> int:
    del max_new_tokens
    return 0


# ---------------------------------------------------------------------------- layout

@dataclasses.dataclass(frozen=True)
class Layout:
  """Static shapes and per-row offsets of a batch of canvases."""
  prompt_len_B: jax.Array
  P: int  # padded prompt width
  N: int  # canvas length (max_new_tokens)

  @property
  def L(self) -> int:
    return self.P + self.N

  @property
  def end_B(self) -> jax.Array:
    """One past each row's last canvas position."""
    return self.prompt_len_B + self.N

  def positions(self, idx_BxW: jax.Array) -> jax.Array:
    """Absolute positions of buffer entries (-1 where padding or out of range)."""
    return jnp.where((idx_BxW >= 0) & (idx_BxW < self.end_B[:, None]), idx_BxW, -1)

  def canvas_abs(self) -> jax.Array:
    """[B, N] absolute position of each canvas index."""
    return self.prompt_len_B[:, None] + jnp.arange(self.N)[None, :]


def initial_sequence(prompt_BxP: jax.Array, layout: Layout, mask_id: int, pad_id: int
                     ) -> jax.Array:
  """[B, L]: prompt, then N masks, then padding."""
  B = prompt_BxP.shape[0]
  idx_1xL = jnp.arange(layout.L)[None, :]
  prompt_BxL = jnp.pad(prompt_BxP, ((0, 0), (0, layout.N)), constant_values=pad_id)
  plen = layout.prompt_len_B[:, None]
  seq = jnp.where(idx_1xL < plen, prompt_BxL, jnp.where(idx_1xL < plen + layout.N, mask_id,
                                                        pad_id))
  return seq.astype(jnp.int32).reshape(B, layout.L)


def canvas_of(seq_BxL: jax.Array, layout: Layout) -> jax.Array:
  """[B, N] canvas tokens."""
  return jnp.take_along_axis(seq_BxL, jnp.minimum(layout.canvas_abs(), layout.L - 1), axis=1)


def write_canvas(seq_BxL: jax.Array, layout: Layout, tokens_BxN: jax.Array,
                 where_BxN: jax.Array) -> jax.Array:
  """seq with canvas index n set to tokens[b, n] where `where`."""
  idx = jnp.where(where_BxN, layout.canvas_abs(), layout.L)
  return seq_BxL.at[jnp.arange(seq_BxL.shape[0])[:, None], idx].set(tokens_BxN, mode='drop')


def window(seq_BxL: jax.Array, layout: Layout, start_B: jax.Array, W: int
           ) -> tuple[jax.Array, jax.Array]:
  """Tokens and positions of the W entries starting at absolute position start_B."""
  idx_BxW = start_B[:, None] + jnp.arange(W)[None, :]
  tokens = jnp.take_along_axis(seq_BxL, jnp.clip(idx_BxW, 0, layout.L - 1), axis=1)
  return tokens, layout.positions(idx_BxW)


def block_ids(layout: Layout, block_size: int, absolute: bool) -> jax.Array:
  """[B, N] block index of each canvas position (absolute: blocks of position // size,
  renumbered so the canvas's first block is 0)."""
  n_1xN = jnp.arange(layout.N)[None, :]
  if not absolute:
    return jnp.broadcast_to(n_1xN // block_size, (layout.prompt_len_B.shape[0], layout.N))
  plen = layout.prompt_len_B[:, None]
  return (plen + n_1xN) // block_size - plen // block_size


# ---------------------------------------------------------------------------- statistics

@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TokenStats:
  """Per predicted position: the chosen token, its probability under the model (SUBS, T=1),
  the entropy of that distribution (nats) and the top-1 minus top-2 probability margin."""
  token: jax.Array
  conf: jax.Array
  entropy: jax.Array
  margin: jax.Array


def token_stats(logits_BxWxV: jax.Array, keys_BxW: jax.Array,
                sampling: sampling_lib.SamplingConfig, mask_id: int) -> TokenStats:
  """Chosen tokens and confidence statistics from logits (float32).

  Tokens: argmax under greedy sampling, else a draw from `sampling.log_probs` by the
  foundation's exponential race (23-bit uniforms: no temperature-lowering truncation).
  The mask token is never chosen (SUBS).
  """
  logits = logits_BxWxV.astype(jnp.float32).at[..., mask_id].set(NEG_INF)
  B, W, V = logits.shape
  logp = jax.nn.log_softmax(logits, axis=-1)
  if sampling.greedy:
    token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
  else:
    token = sampling_lib.sample_from_log_probs(
        keys_BxW.reshape(B * W), sampling_lib.log_probs(logits, sampling).reshape(B * W, V)
    ).reshape(B, W)
  conf = jnp.exp(jnp.take_along_axis(logp, token[..., None], axis=-1)[..., 0])
  p = jnp.exp(logp)
  entropy = -jnp.sum(jnp.where(p > 0, p * logp, 0.0), axis=-1)
  top2 = kernel_common.top_k(p, 2)[0]
  return TokenStats(token=token, conf=conf, entropy=entropy, margin=top2[..., 0] - top2[..., 1])


def position_keys(row_keys_B: jax.Array, positions_BxW: jax.Array) -> jax.Array:
  """Keys per (row, absolute position): the randomness of a position does not depend on the
  step it is decoded at, the batch, or the decoder (so FreeDave and DiffuSpec stay exact)."""
  return jax.vmap(lambda k, p: jax.vmap(lambda q: jax.random.fold_in(k, q))(p))(
      row_keys_B, positions_BxW)


def scatter_to_canvas(stats: TokenStats, pred_pos_BxW: jax.Array, valid_BxW: jax.Array,
                      layout: Layout, into: TokenStats | None = None
                      ) -> tuple[TokenStats, jax.Array]:
  """Moves window statistics to canvas indices. Returns (stats [B, N], covered [B, N])."""
  B, N = layout.prompt_len_B.shape[0], layout.N
  n_BxW = pred_pos_BxW - layout.prompt_len_B[:, None]
  ok = valid_BxW & (n_BxW >= 0) & (n_BxW < N)
  n_BxW = jnp.where(ok, n_BxW, N)
  b_Bx1 = jnp.arange(B)[:, None]
  if into is None:
    into = TokenStats(token=jnp.zeros((B, N), jnp.int32), conf=jnp.zeros((B, N)),
                      entropy=jnp.zeros((B, N)), margin=jnp.zeros((B, N)))
  out = jax.tree.map(lambda dst, src: dst.at[b_Bx1, n_BxW].set(src, mode='drop'), into, stats)
  covered = jnp.zeros((B, N), jnp.bool_).at[b_Bx1, n_BxW].set(True, mode='drop')
  return out, covered


def select_rows(pick_B: jax.Array, a: Any, b: Any) -> Any:
  """Per row: a where pick_B else b (any pytree with leading batch axes)."""
  def sel(x, y):
    m = pick_B.reshape(pick_B.shape + (1,) * (x.ndim - 1))
    return jnp.where(m, x, y)
  return jax.tree.map(sel, a, b)


# ---------------------------------------------------------------------------- commit rules

def top_k_mask(score_BxN: jax.Array, eligible_BxN: jax.Array, k_B: jax.Array | int
               ) -> jax.Array:
  """The k highest-scoring eligible positions per row (ties: lowest index)."""
  rank = kernel_common.ranks_descending(jnp.where(eligible_BxN, score_BxN, NEG_INF))
  return eligible_BxN & (rank < jnp.reshape(jnp.asarray(k_B), (-1, 1)))


def ranks(score_BxN: jax.Array, eligible_BxN: jax.Array) -> jax.Array:
  """Rank of each eligible position by descending score (ties: lowest index); N if not."""
  r = kernel_common.ranks_descending(jnp.where(eligible_BxN, score_BxN, NEG_INF))
  return jnp.where(eligible_BxN, r, score_BxN.shape[1])


def threshold_mask(conf_BxN: jax.Array, eligible_BxN: jax.Array, tau: float) -> jax.Array:
  """Fast-dLLM: every eligible position with confidence > tau, and always the most
  confident one (tau >= 1: exactly one per step)."""
  return (eligible_BxN & (conf_BxN > tau)) | top_k_mask(conf_BxN, eligible_BxN, 1)


def near_anchor(anchor_BxN: jax.Array, radius: int) -> jax.Array:
  """Positions within `radius` of an anchor (the anchors included)."""
  c = jnp.pad(jnp.cumsum(anchor_BxN.astype(jnp.int32), axis=1), ((0, 0), (1, 0)))
  N = anchor_BxN.shape[1]
  n = jnp.arange(N)
  hi = jnp.minimum(n + radius + 1, N)
  lo = jnp.maximum(n - radius, 0)
  return (c[:, hi] - c[:, lo]) > 0


def localleap_mask(conf_BxN: jax.Array, eligible_BxN: jax.Array, tau_anchor: float,
                   tau_relaxed: float, radius: int) -> jax.Array:
  """LocalLeap: anchors (confidence > tau_anchor) plus their neighbours within `radius`
  whose confidence clears the relaxed threshold; always the most confident position."""
  anchors = eligible_BxN & (conf_BxN > tau_anchor)
  neighbours = eligible_BxN & near_anchor(anchors, radius) & (conf_BxN > tau_relaxed)
  return anchors | neighbours | top_k_mask(conf_BxN, eligible_BxN, 1)


def budget_mask(entropy_BxN: jax.Array, eligible_BxN: jax.Array, budget: jax.Array | float,
                at_least_one: bool = True) -> jax.Array:
  """The lowest-entropy eligible positions whose entropies sum to at most `budget` nats
  (scalar or per row [B]; with `at_least_one` the lowest is always taken): an information
  budget per step."""
  r = ranks(-entropy_BxN, eligible_BxN)
  B, N = entropy_BxN.shape
  sorted_h = jnp.zeros((B, N + 1)).at[jnp.arange(B)[:, None], r].set(
      jnp.where(eligible_BxN, entropy_BxN, jnp.inf))[:, :N]
  cum = jnp.cumsum(sorted_h, axis=1)
  fits = jnp.sum(cum <= jnp.reshape(jnp.asarray(budget), (-1, 1)), axis=1)
  if at_least_one:
    fits = jnp.maximum(fits, 1)
  return eligible_BxN & (r < fits[:, None])


# ---------------------------------------------------------------------------- ends and stats

def row_end(canvas_BxN: jax.Array, committed_BxN: jax.Array, eos_id: int) -> jax.Array:
  """One past the first committed <eos>, else N."""
  N = canvas_BxN.shape[1]
  is_eos = committed_BxN & (canvas_BxN == eos_id)
  return jnp.where(is_eos.any(1), jnp.argmax(is_eos, axis=1) + 1, N)


def row_done(canvas_BxN: jax.Array, mask_id: int, eos_id: int) -> jax.Array:
  """No masked position before the row's end."""
  masked = canvas_BxN == mask_id
  end = row_end(canvas_BxN, ~masked, eos_id)
  return ~jnp.any(masked & (jnp.arange(canvas_BxN.shape[1])[None, :] < end[:, None]), axis=1)


def result(canvas_BxN: jax.Array, mask_id: int, eos_id: int, pad_id: int,
           progress: base.Progress, extra: dict[str, jax.Array] | None = None
           ) -> base.DecodeResult:
  """The DecodeResult: tokens up to each row's end, padding after; counts from `progress`."""
  masked = canvas_BxN == mask_id
  end = row_end(canvas_BxN, ~masked, eos_id)
  keep = jnp.arange(canvas_BxN.shape[1])[None, :] < end[:, None]
  return progress.result(extra, tokens_BxN=jnp.where(keep, canvas_BxN, pad_id),
                         num_generated_B=end)
