"""CtrlDiff (Huang et al. 2025, arXiv 2505.14455): block diffusion whose block size is chosen
per block by a small learned predictor instead of being fixed.

The model: block diffusion trained over blocks of every size of a set (configs/ctrldiff.py,
`diffusion.block_sizes`, e.g. 2,4,8,16). The predictor (`models/block_size.py`, the run's
'ctrldiff' tree): per allowed size b, the probability that one step decodes the next block of
size b right; fitted on labels from the frozen model itself (training/objectives/ctrldiff.py).

Decoding, per row (one `jax.lax.while_loop`, rows independent):
  * Blocks are aligned: the block of size b holding the first masked position s is
    [s // b * b, s // b * b + b). With sizes that divide each other, aligned blocks nest, so
    the blocks decoded so far always form a block-causal partition (a larger block that
    contains earlier, already decoded positions treats them as clean tokens of its own block,
    as the fixed-size decoders treat the prompt's tail). With a constant size b this is the
    block partition of the fixed-size decoders (`llada`/`fast_dllm` with block_causal=1).
  * The prompt is prefilled once with blocks of `block_size`.
  * When a row's block is done, the next size is chosen: `force_size` if set, else the
    predictor reads the final hidden state at s-1 with s-1's block ending at s: from the
    prefill for the first block, else from a *boundary forward* that recomputes the finished
    block clean (counted as a target forward; it writes the same exact cache entries the next
    step would).
  * Each step runs [previous block, current block] (at most 2 x max size, exact cache as the
    BD3-LM cache of `engine.py`: previous-block queries see keys before the current block,
    current-block queries keys up to its end) and commits the `tokens_per_step` most
    confident masked tokens of the block (0 = all of them: one step per block).
Lossy (parallel unmasking). With force_size=b it gives exactly the tokens of `llada`
(block_causal=1, cache='prefix', block_size=b, tokens_per_step as here) and the same target
forwards (tested).

Classifier guidance (the paper's second part, controllable generation): with
`guidance_scale` γ > 0 every step reweights the block's predictions by an attribute
classifier (the run's 'attribute' tree, models/attribute.py) before choosing tokens:
p_guided(x_i = v) ∝ p(x_i = v | x) · p(y = guidance_class | x[i <- v])^γ, exactly over the
`guidance_top_k` most likely candidates per position ('exact') or to first order over the
whole vocabulary ('taylor'); decoding/diffusion/guidance.py has the details. Tokens,
confidences (the order of `tokens_per_step`) and samples all come from the guided
distribution; γ = 0 is the unguided decoder, token for token. With force_size=b this is
guided fixed-size block diffusion (BD3), through the same code; the block-size predictor
reads the model's hidden states only, so guidance changes the sizes only through the tokens.
Lossy twice over: parallel unmasking and the guided distribution. other_forwards counts one
classifier call per step (a batch of B x M x K sequences for 'exact', a forward and backward
for 'taylor').

Statistics: extra['block_size_sum'] (the sizes chosen, summed) and extra['blocks'] per row
(their ratio is the mean block size); extra['model_nll_sum'] and extra['committed']: -log p
of every committed token under the unguided model (T = 1), summed per row, and the number of
tokens committed (their ratio is what guidance costs in the model's own terms: the model's
negative log-likelihood per token of the decoding path).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Mapping

import flax.struct
import jax
import jax.numpy as jnp

from decoding import base
from decoding import registry
from decoding.diffusion import canvas
from decoding.diffusion import guidance as guidance_lib
from models import attribute as attr_lib
from models import block_size as bs_lib
from models import cache as cache_lib
from models import kind as kind_lib
from models import masks as masks_lib


@flax.struct.dataclass
class CtrlDiffState:
  """Loop state.

  seq_BxL: prompt + canvas by absolute position (masks where undecided).
  cache: the exact block-causal cache (slot = position).
  start_B / end_B: the current block [start, end) (absolute positions).
  prev_start_B: start of the block before it (its entries are recomputed clean each step).
  feat_BxD: final hidden state at the last clean position before the next block.
  size_sum_B / blocks_B: sum of chosen block sizes and number of blocks.
  nll_sum_B: -log p_model of every committed token under the unguided model (T = 1, SUBS).
  progress: forwards, commit histogram, done (`base.Progress`).
  steps: loop iterations (a safety bound).
  """
  seq_BxL: jax.Array
  cache: Any
  start_B: jax.Array
  end_B: jax.Array
  prev_start_B: jax.Array
  feat_BxD: jax.Array
  size_sum_B: jax.Array
  nll_sum_B: jax.Array
  blocks_B: jax.Array
  progress: base.Progress
  steps: jax.Array


@registry.register
@dataclasses.dataclass(frozen=True)
class CtrlDiffDecoder(canvas.DiffusionDecoder):
  """CtrlDiff: block diffusion with a learned block size per block (lossy).

  sizes: the allowed block sizes, comma-separated, each dividing the next.
  force_size: > 0 uses this size for every block (no predictor; a fixed-size baseline).
  threshold: the predictor's probability a size must exceed to be chosen (higher = smaller,
    safer blocks); the smallest size when none does.
  tokens_per_step: tokens committed per step inside a block, most confident first; 0 = the
    whole block in one step.
  block_size: the prompt's prefill blocks (must be one of `sizes`).
  guidance_scale: classifier guidance strength γ (0 = off; module docstring).
  guidance_class: the attribute class to steer towards (an index of the classifier's classes).
  guidance: 'exact' (top-k candidates scored by the classifier) or 'taylor' (first order).
  guidance_top_k: candidates per position for 'exact'.
  """
  name: ClassVar[str] = 'ctrldiff'
  sizes: str = '2,4,8,16'
  force_size: int = 0
  threshold: float = 0.5
  tokens_per_step: int = 0
  block_size: int = 16
  block_causal: int = 1
  guidance_scale: float = 0.0
  guidance_class: int = 1
  guidance: str = 'exact'
  guidance_top_k: int = 8

  def for_model(self, kinds: Mapping[str, kind_lib.ModelKind]) -> 'CtrlDiffDecoder':
    if self.force_size <= 0:
      kind_lib.require_heads(kinds['target'], (bs_lib.HEAD,), f'Decoder {self.name!r}')
    if self.guidance_scale > 0:
      kind_lib.require_heads(kinds['target'], (attr_lib.HEAD,), f'Decoder {self.name!r} '
                             f'(guidance_scale={self.guidance_scale})')
    out = self.completed_for(kinds['target'])
    if kinds['target'].attention != 'block_causal':
      raise ValueError(f"Decoder 'ctrldiff' needs a block diffusion model; this model is "
                       f"{kinds['target'].describe()}.")
    return out

  @property
  def size_set(self) -> tuple[int, ...]:
    return bs_lib.parse_sizes(self.sizes)

  def validate(self, vocab_size: int) -> None:
    self.check_settings(vocab_size)
    sizes = self.size_set
    if self.block_causal != 1:
      raise ValueError("Decoder 'ctrldiff' decodes block diffusion models (block_causal=1).")
    if self.force_size and self.force_size not in sizes:
      raise ValueError(f'force_size={self.force_size} is not one of sizes {sizes}.')
    if self.force_size < 0:
      raise ValueError(f'force_size must be >= 0, got {self.force_size}.')
    if self.block_size not in sizes:
      raise ValueError(f'block_size={self.block_size} (the prompt blocks) must be one of '
                       f'sizes {sizes}.')
    if not 0.0 <= self.threshold < 1.0:
      raise ValueError(f'threshold must be in [0, 1), got {self.threshold}.')
    if self.tokens_per_step < 0:
      raise ValueError(f'tokens_per_step must be >= 0 (0 = whole block), got '
                       f'{self.tokens_per_step}.')
    guidance_lib.check(self.guidance_scale, self.guidance, self.guidance_top_k,
                       f'Decoder {self.name!r}')

  def generate(self, models: base.Models, params: dict[str, Any], prompt_BxP: jax.Array,
               prompt_len_B: jax.Array, row_keys_B: jax.Array, *, max_new_tokens: int,
               cache_size: int, eos_id: int, pad_id: int) -> base.DecodeResult:
    model, p = models.target, params['target']
    self.validate(model.cfg.vocab_size)
    sizes = self.size_set
    predict = self.force_size == 0
    if predict and bs_lib.HEAD not in params:
      raise ValueError(f"Decoder 'ctrldiff' needs the run's {bs_lib.HEAD!r} params (or "
                       f'force_size > 0): {kind_lib.train_heads_hint((bs_lib.HEAD,))}.')
    guided = self.guidance_scale > 0
    if guided:
      guidance_lib.check_classifier(params, self.guidance_class, f'Decoder {self.name!r}')
    B, P = prompt_BxP.shape
    N, shift, M = max_new_tokens, self.shift, sizes[-1]
    W = 2 * M
    layout = canvas.Layout(prompt_len_B=prompt_len_B.astype(jnp.int32), P=P, N=N)
    L = layout.L
    cache_size = max(cache_size, L)
    plen = layout.prompt_len_B
    S = cache_size
    slot_S = jnp.arange(S)
    predictor = bs_lib.BlockSizePredictor(len(sizes))

    def choose(feat_BxD, s_B):
      if not predict:
        return jnp.full((B,), self.force_size, jnp.int32)
      logits = predictor.apply({'params': params[bs_lib.HEAD]}, feat_BxD, s_B)
      return bs_lib.choose(logits, sizes, self.threshold)

    def run(tokens_BxW, pos_BxW, end_q_BxW, cache):
      """Forward over a window; query w sees cache slots < end_q[w]."""
      attn = slot_S[None, None, :] < end_q_BxW[:, :, None]
      return model.apply({'params': p}, tokens_BxW, pos_BxW, cache=cache, attn_mask=attn)

    # Prefill the prompt (blocks of block_size) and read the first boundary state at P_b - 1.
    cache0 = cache_lib.Cache.init(model.cfg, B, cache_size)
    pre = model.apply({'params': p}, prompt_BxP, base.prompt_positions(prompt_BxP, prompt_len_B),
                      cache=cache0, attn_mask=masks_lib.BlockCausal(self.block_size))
    feat0 = jnp.take_along_axis(pre.last_hidden_BxTxD, jnp.maximum(plen - 1, 0)[:, None, None],
                                axis=1)[:, 0].astype(jnp.float32)
    pb = self.block_size
    # The "previous block" of the first block: the prompt block before the canvas's block.
    state = CtrlDiffState(
        seq_BxL=canvas.initial_sequence(prompt_BxP, layout, self.mask_id, pad_id),
        cache=pre.cache, start_B=plen, end_B=plen,  # empty: the first step picks a block
        prev_start_B=(plen // pb) * pb - pb, feat_BxD=feat0,
        size_sum_B=jnp.zeros((B,), jnp.int32), blocks_B=jnp.zeros((B,), jnp.int32),
        nll_sum_B=jnp.zeros((B,), jnp.float32),
        progress=base.Progress.start(B, N, hist_size=M + 1, target_forwards=1, tokens=False),
        steps=jnp.zeros((), jnp.int32))
    keys_of = lambda abs_BxR: canvas.position_keys(row_keys_B, abs_BxR)
    w_1xW = jnp.arange(W)[None, :]
    r_1xM = jnp.arange(M)[None, :]
    valid_BxL = layout.positions(jnp.broadcast_to(jnp.arange(L), (B, L))) >= 0

    def cond_fn(s: CtrlDiffState) -> jax.Array:
      return ~jnp.all(s.progress.done_B) & (s.steps <= N)

    def step_fn(s: CtrlDiffState) -> CtrlDiffState:
      active = s.progress.active_B
      cv = canvas.canvas_of(s.seq_BxL, layout)
      first_B = jnp.argmax(cv == self.mask_id, axis=1)
      s_abs = plen + first_B  # first masked position
      need = active & (s_abs >= s.end_B)
      cache, feat, progress = s.cache, s.feat_BxD, s.progress
      if predict:
        # Boundary forward: the finished block [start, s) recomputed clean, as its own block.
        boundary = need & (s.blocks_B > 0)

        def with_boundary(c):  # c: (cache, features), updated in place
          idx = s.start_B[:, None] + w_1xW[:, :M]
          tokens, pos = canvas.window(s.seq_BxL, layout, s.start_B, M)
          # Rows without a boundary write nothing (position -1 is padding), so the cache
          # needs no selection between the old and the new one (which copied it).
          pos = jnp.where((idx < s_abs[:, None]) & boundary[:, None], pos, -1)
          out = run(tokens, pos, jnp.broadcast_to(s_abs[:, None], (B, M)), c[0])
          h = jnp.take_along_axis(out.last_hidden_BxTxD, jnp.clip(
              s_abs - 1 - s.start_B, 0, M - 1)[:, None, None], axis=1)[:, 0]
          return out.cache, jnp.where(boundary[:, None], h.astype(jnp.float32), c[1])

        # not lax.cond, whose branches each got a copy of the cache (base.switch_in_place)
        cache, feat = base.switch_in_place(jnp.any(boundary).astype(jnp.int32),
                                           [None, with_boundary], (s.cache, s.feat_BxD))
        progress = progress.replace(
            target_forwards_B=progress.target_forwards_B + boundary.astype(jnp.int32))
      b_new = choose(feat, s_abs)
      start = jnp.where(need, (s_abs // b_new) * b_new, s.start_B)
      end = jnp.where(need, start + b_new, s.end_B)
      prev_start = jnp.where(need & (s.blocks_B > 0), s.start_B, s.prev_start_B)
      size_sum = s.size_sum_B + jnp.where(need, b_new, 0)
      blocks = s.blocks_B + need.astype(jnp.int32)
      # The step: [previous block, current block], clean prefix then the block.
      w_start = jnp.maximum(jnp.minimum(prev_start, start), end - W)
      idx = w_start[:, None] + w_1xW
      tokens, pos = canvas.window(s.seq_BxL, layout, w_start, W)
      pos = jnp.where(idx < end[:, None], pos, -1)
      end_q = jnp.where(idx < start[:, None], start[:, None], end[:, None])
      out = run(tokens, pos, end_q, cache)
      # Predictions for the block's positions start + r (r < M), read at window index
      # start + r - shift - w_start.
      abs_BxM = start[:, None] + r_1xM
      n_BxM = abs_BxM - plen[:, None]
      e = abs_BxM - shift - w_start[:, None]
      ok = (e >= 0) & (e < W) & (abs_BxM < end[:, None]) & (n_BxM >= 0) & (n_BxM < N)
      rl = jnp.take_along_axis(out.logits_BxTxV, jnp.clip(e, 0, W - 1)[..., None], axis=1)
      masked = jnp.take_along_axis(cv, jnp.clip(n_BxM, 0, N - 1), axis=1) == self.mask_id
      eligible = ok & masked & active[:, None]
      model_logp = jax.nn.log_softmax(rl.astype(jnp.float32).at[..., self.mask_id].set(-jnp.inf),
                                      axis=-1)
      if guided:
        rl = guidance_lib.guided_logits(
            params, rl, s.seq_BxL, valid_BxL, jnp.where(eligible, abs_BxM, 0),
            scale=self.guidance_scale, target_class=self.guidance_class, mode=self.guidance,
            top_k=self.guidance_top_k, mask_id=self.mask_id)
      stats = canvas.token_stats(rl, keys_of(abs_BxM), self.sampling, self.mask_id)
      k = self.tokens_per_step if self.tokens_per_step > 0 else M
      commit = canvas.top_k_mask(stats.conf, eligible, k) & eligible
      nll = -jnp.take_along_axis(model_logp, stats.token[..., None], axis=2)[..., 0]
      nll_sum = s.nll_sum_B + jnp.sum(jnp.where(commit, nll, 0.0), axis=1)
      b_Bx1 = jnp.arange(B)[:, None]
      where_n = jnp.where(commit, n_BxM, N)
      tokens_BxN = jnp.zeros((B, N), jnp.int32).at[b_Bx1, where_n].set(stats.token, mode='drop')
      where_BxN = jnp.zeros((B, N), bool).at[b_Bx1, where_n].set(True, mode='drop')
      seq = canvas.write_canvas(s.seq_BxL, layout, tokens_BxN, where_BxN)
      done = progress.done_B | canvas.row_done(canvas.canvas_of(seq, layout), self.mask_id,
                                               eos_id)
      progress = progress.count(active, other_B=int(guided), committed_B=jnp.sum(commit, axis=1))
      return CtrlDiffState(seq_BxL=seq, cache=out.cache, start_B=start, end_B=end,
                           prev_start_B=prev_start, feat_BxD=feat, size_sum_B=size_sum,
                           nll_sum_B=nll_sum,
                           blocks_B=blocks, progress=progress.replace(done_B=done),
                           steps=s.steps + 1)

    state = jax.lax.while_loop(cond_fn, step_fn, state)
    # Tokens committed (also past an <eos> committed in the same step): from the histogram of
    # tokens committed per step.
    committed = jnp.sum(state.progress.hist_BxM * jnp.arange(M + 1)[None, :], axis=1)
    extra = {'block_size_sum': state.size_sum_B, 'blocks': state.blocks_B,
             'model_nll_sum': state.nll_sum_B, 'committed': committed}
    return canvas.result(canvas.canvas_of(state.seq_BxL, layout), self.mask_id, eos_id, pad_id,
                         state.progress, extra)
