"""The canvas loop shared by LLaDA, Fast-dLLM threshold, LocalLeap and ETE decoding.

One `jax.lax.while_loop`; each step, for every active row:
  1. forward the model (how depends on `cache`, below) and read the predictions for the
     row's *region*: its current block (and the next one with `cross_block`);
  2. choose a token for every masked region position (greedy or sampled, see
     `canvas.token_stats`) and let the decoder's `commit_mask` pick which to unmask;
  3. write them; the current block becomes the block of the first masked position; the row
     is done when nothing before its end (first committed <eos>, or N) is masked.

Caches (`cache` setting):
  'none'    every step runs the whole sequence (exact).
  'prefix'  bidirectional models (Fast-dLLM PrefixCache, approximate): at a block's first step
            the whole sequence runs and fills the cache; later steps run the current block
            through the end of the canvas against the cached prefix. Fixed shapes make that
            window N + shift wide, so it saves the prompt only.
            Block-causal models: the exact BD3-LM cache. The prompt is prefilled once; each
            step runs [previous block, current block] (2 x block_size) with BlockCausal
            attention over the cache, which then holds the clean KV of every earlier block.
  'dual'    bidirectional models (DualCache, approximate): at a block's first step the whole
            sequence runs; later steps run only the current block against cached prefix *and*
            suffix K/V.
With `delay` (dKV-Cache-style delayed caching, bidirectional 'dual' only) there are no
refreshes after the first step: every step runs [previous block, current block], so tokens
decoded in the previous block get their K/V recomputed once with their final values
(delayed by one block) and frozen after; the suffix keeps the K/V of the first step.
The approximate caches drift from recomputation; `measure_drift=1` also runs the exact
forward every step (counted as other forwards) and reports extra['drift_max_abs_logit']
(max |logit difference| over the region's masked positions), ['drift_top1_disagree'] and
['drift_positions'].

Refreshes are per row (rows reach block starts at different steps): in a step where some row
refreshes, both forwards run and each row keeps its own; a row's output never depends on
the rest of the batch.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from decoding import base
from decoding.diffusion import canvas
from models import cache as cache_lib
from models import masks as masks_lib

CACHE_MODES = ('none', 'prefix', 'dual')


@dataclasses.dataclass(frozen=True)
class StepContext:
  """What a commit rule may look at besides the statistics: the region's canvas indices and
  per-position keys, the current sequence, the layout, and the models (a guide)."""
  n_BxR: jax.Array
  keys_BxR: jax.Array
  seq_BxL: jax.Array
  layout: canvas.Layout
  models: base.Models
  params: dict[str, Any]


@flax.struct.dataclass
class EngineState:
  """Loop state.

  seq_BxL: prompt + canvas (masks where undecided), by absolute position.
  cache: the model's cache (None with cache='none').
  refreshed_blk_B: the block at whose start the cache was last refilled (-1: never).
  progress: target forwards / extra forwards (guide, drift checks) while the row was active,
    steps that committed exactly m tokens, row finished (`base.Progress`; the output is the
    canvas).
  drift_BxK: [max |logit diff|, top-1 disagreements, positions compared] per row.
  steps: loop iterations (a safety bound: every active step commits >= 1 token).
  """
  seq_BxL: jax.Array
  cache: Any
  refreshed_blk_B: jax.Array
  progress: base.Progress
  drift_BxK: jax.Array
  steps: jax.Array


@dataclasses.dataclass(frozen=True)
class CanvasDecoder(canvas.DiffusionDecoder):
  """Base of the region-step decoders; subclasses define `commit_mask`.

  cache: 'none' | 'prefix' | 'dual' (see the module docstring).
  delay: 1 = delayed caching (with cache='dual', bidirectional models).
  cross_block: 1 = the region is the current and the next block.
  measure_drift: 1 = compare every cached step with the exact forward (diagnostic).
  """
  cache: str = 'none'
  delay: int = 0
  cross_block: int = 0
  measure_drift: int = 0

  def commit_mask(self, stats: canvas.TokenStats, eligible_BxR: jax.Array,
                  ctx: StepContext) -> jax.Array:
    """Which eligible region positions to unmask this step [B, R]."""
    raise NotImplementedError

  def other_forwards_per_step(self) -> int:
    """Forwards of extra models a step runs (e.g. a guide). Default 0."""
    return 0

  def validate(self, vocab_size: int) -> None:
    self.check_settings(vocab_size)
    if self.cache not in CACHE_MODES:
      raise ValueError(f'cache must be one of {CACHE_MODES}, got {self.cache!r}.')
    if self.block_causal and self.cache == 'dual':
      raise ValueError("cache='dual' is for bidirectional models; block-causal models use "
                       "the exact cache='prefix'.")
    if self.delay and (self.cache != 'dual'):
      raise ValueError("delay=1 (delayed caching) goes with cache='dual'.")

  def generate(self, models: base.Models, params: dict[str, Any], prompt_BxP: jax.Array,
               prompt_len_B: jax.Array, row_keys_B: jax.Array, *, max_new_tokens: int,
               cache_size: int, eos_id: int, pad_id: int) -> base.DecodeResult:
    model, p = models.target, params['target']
    self.validate(model.cfg.vocab_size)
    B, P = prompt_BxP.shape
    N, bs, shift = max_new_tokens, self.block_size, self.shift
    layout = canvas.Layout(prompt_len_B=prompt_len_B.astype(jnp.int32), P=P, N=N)
    L = layout.L
    R = bs * (2 if self.cross_block else 1)
    blk_BxN = canvas.block_ids(layout, bs, absolute=bool(self.block_causal))
    mask_spec = masks_lib.BlockCausal(bs) if self.block_causal else 'bidirectional'
    cached = self.cache != 'none'
    exact_cache = bool(self.block_causal) and cached
    if cached and cache_size < L:
      cache_size = L  # slot = position; padding positions are never written.

    def apply(tokens, positions, cache):
      return model.apply({'params': p}, tokens, positions, cache=cache, attn_mask=mask_spec)

    full_pos_BxL = layout.positions(jnp.broadcast_to(jnp.arange(L), (B, L)))

    def region(seq_BxL):
      """Current block, region start, region canvas indices, eligibility."""
      cv = canvas.canvas_of(seq_BxL, layout)
      masked = cv == self.mask_id
      first = jnp.argmax(masked, axis=1)
      cur_B = jnp.take_along_axis(blk_BxN, first[:, None], axis=1)[:, 0]
      start_B = jnp.argmax(blk_BxN == cur_B[:, None], axis=1)
      n_BxR = start_B[:, None] + jnp.arange(R)[None, :]
      nc = jnp.minimum(n_BxR, N - 1)
      in_range = n_BxR < N
      blk_r = jnp.take_along_axis(blk_BxN, nc, axis=1)
      ok_blk = (blk_r == cur_B[:, None]) | (bool(self.cross_block) & (blk_r == cur_B[:, None] + 1))
      eligible = in_range & ok_blk & jnp.take_along_axis(masked, nc, axis=1)
      return cv, cur_B, n_BxR, eligible

    def region_logits(logits_BxWxV, pos_BxW, start_B, n_BxR):
      """Logits predicting the region's canvas positions from a window forward."""
      W = logits_BxWxV.shape[1]
      e = layout.prompt_len_B[:, None] + n_BxR - shift - start_B[:, None]
      ok = (e >= 0) & (e < W) & (n_BxR < N)
      ec = jnp.clip(e, 0, W - 1)
      ok &= jnp.take_along_axis(pos_BxW, ec, axis=1) >= 0
      return jnp.take_along_axis(logits_BxWxV, ec[..., None], axis=1), ok

    def window_spec(cur_B):
      """(start, width) of the cached step's input window."""
      cv_start = jnp.argmax(blk_BxN == cur_B[:, None], axis=1)
      blk_abs = layout.prompt_len_B + cv_start  # absolute position of the block start
      if exact_cache:
        s = (blk_abs // bs) * bs - bs
        return s, 2 * bs
      if self.cache == 'prefix':
        return blk_abs - shift, N + shift
      if self.delay:
        return blk_abs - bs - shift, 2 * bs + shift
      return blk_abs - shift, bs + shift

    def rows_only(pos_BxT, rows_B):
      """Positions with the rows outside `rows_B` (None: every row) made padding: those rows
      write nothing to the cache, and their logits are not used."""
      return pos_BxT if rows_B is None else jnp.where(rows_B[:, None], pos_BxT, -1)

    def full(seq_BxL, cache, rows_B=None):
      out = apply(seq_BxL, rows_only(full_pos_BxL, rows_B), cache)
      return out.logits_BxTxV, full_pos_BxL, jnp.zeros((B,), jnp.int32), out.cache

    def windowed(seq_BxL, cache, cur_B, rows_B=None):
      start_B, W = window_spec(cur_B)
      tokens, pos = canvas.window(seq_BxL, layout, start_B, W)
      out = model.apply({'params': p}, tokens, rows_only(pos, rows_B), cache=cache,
                        attn_mask=mask_spec)
      return out.logits_BxTxV, pos, start_B, out.cache

    keys_of = lambda n_BxR: canvas.position_keys(row_keys_B, layout.prompt_len_B[:, None] +
                                                 n_BxR)
    M = R + 1
    drift0 = jnp.zeros((B, 3), jnp.float32)
    if not cached:
      cache0, nfe0 = None, 0
    else:
      cache0 = cache_lib.Cache.init(model.cfg, B, cache_size)
      nfe0 = 0
      if exact_cache:  # prefill the prompt once (block-causal, exact)
        cache0 = apply(prompt_BxP, base.prompt_positions(prompt_BxP, prompt_len_B), cache0).cache
        nfe0 = 1
    state = EngineState(seq_BxL=canvas.initial_sequence(prompt_BxP, layout, self.mask_id, pad_id),
                        cache=cache0, refreshed_blk_B=jnp.full((B,), -1, jnp.int32),
                        progress=base.Progress.start(B, N, hist_size=M, target_forwards=nfe0,
                                                     tokens=False),
                        drift_BxK=drift0, steps=jnp.zeros((), jnp.int32))

    def cond_fn(s: EngineState) -> jax.Array:
      return ~jnp.all(s.progress.done_B) & (s.steps <= N)

    def step_fn(s: EngineState) -> EngineState:
      active = s.progress.active_B
      cv, cur_B, n_BxR, eligible = region(s.seq_BxL)
      if not cached:
        logits, pos, start, _ = full(s.seq_BxL, None)
        rl, ok = region_logits(logits, pos, start, n_BxR)
        new_cache, refreshed = None, s.refreshed_blk_B
      else:
        if exact_cache or self.delay:
          need = s.refreshed_blk_B < 0
        else:
          need = s.refreshed_blk_B != cur_B

        rows, cache = None, s.cache
        if not exact_cache:
          # The rows that refresh run the full forward, in its own loop that runs only when
          # some active row refreshes; then every other row runs the windowed one. Each
          # forward writes its own rows only (the others' positions are padding), so the one
          # cache is updated in place: a lax.cond copied it into its branches, and selecting
          # rows between two forwards' caches copied it too.
          def refresh(c):  # c: (region logits, their mask, the cache)
            lf, pf, sf, cf = full(s.seq_BxL, c[2], need)
            rf, okf = region_logits(lf, pf, sf, n_BxR)
            return rf, okf, cf

          shapes = jax.eval_shape(refresh, (None, None, s.cache))
          rf, okf, cache = base.switch_in_place(
              jnp.any(need & active).astype(jnp.int32), [None, refresh],
              (jnp.zeros(shapes[0].shape, shapes[0].dtype),
               jnp.zeros(shapes[1].shape, shapes[1].dtype), s.cache))
          rows = ~need
        lw, pw, sw, new_cache = windowed(s.seq_BxL, cache, cur_B, rows)
        rl, ok = region_logits(lw, pw, sw, n_BxR)
        if not exact_cache:
          rl, ok = canvas.select_rows(need, rf, rl), canvas.select_rows(need, okf, ok)
        refreshed = jnp.where(need & active, cur_B, s.refreshed_blk_B)
      eligible = eligible & ok
      stats = canvas.token_stats(rl, keys_of(n_BxR), self.sampling, self.mask_id)
      ctx = StepContext(n_BxR=n_BxR, keys_BxR=keys_of(n_BxR), seq_BxL=s.seq_BxL, layout=layout,
                        models=models, params=params)
      commit = self.commit_mask(stats, eligible, ctx) & eligible & active[:, None]
      drift = s.drift_BxK
      other = self.other_forwards_per_step()
      if cached and self.measure_drift:
        le, pe, se, _ = full(s.seq_BxL, None)
        re_, _ = region_logits(le, pe, se, n_BxR)
        finite = jnp.isfinite(re_) & jnp.isfinite(rl)
        diff = jnp.where(finite, jnp.abs(re_ - rl), 0.0).at[..., self.mask_id].set(0.0)
        m = eligible & active[:, None]
        worst = jnp.max(jnp.where(m, jnp.max(diff, -1), 0.0), axis=1)
        disagree = jnp.sum(m & (jnp.argmax(re_.at[..., self.mask_id].set(-jnp.inf), -1)
                                != jnp.argmax(rl.at[..., self.mask_id].set(-jnp.inf), -1)), 1)
        drift = jnp.stack([jnp.maximum(drift[:, 0], worst), drift[:, 1] + disagree,
                           drift[:, 2] + jnp.sum(m, 1)], axis=1)
        other = other + 1  # the full forward compared against
      # Write the committed region tokens.
      tokens_BxN = jnp.zeros((B, N), jnp.int32)
      where_BxN = jnp.zeros((B, N), bool)
      b_Bx1 = jnp.arange(B)[:, None]
      idx = jnp.where(commit, n_BxR, N)
      tokens_BxN = tokens_BxN.at[b_Bx1, idx].set(stats.token, mode='drop')
      where_BxN = where_BxN.at[b_Bx1, idx].set(True, mode='drop')
      seq = canvas.write_canvas(s.seq_BxL, layout, tokens_BxN, where_BxN)
      done = s.progress.done_B | canvas.row_done(canvas.canvas_of(seq, layout), self.mask_id,
                                                 eos_id)
      progress = s.progress.count(active, other_B=other, committed_B=jnp.sum(commit, axis=1))
      return EngineState(seq_BxL=seq, cache=new_cache, refreshed_blk_B=refreshed,
                         progress=progress.replace(done_B=done), drift_BxK=drift,
                         steps=s.steps + 1)

    state = jax.lax.while_loop(cond_fn, step_fn, state)
    extra = {}
    if cached and self.measure_drift:
      extra = {'drift_max_abs_logit': state.drift_BxK[:, 0],
               'drift_top1_disagree': state.drift_BxK[:, 1].astype(jnp.int32),
               'drift_positions': state.drift_BxK[:, 2].astype(jnp.int32)}
    return canvas.result(canvas.canvas_of(state.seq_BxL, layout), self.mask_id, eos_id, pad_id,
                         state.progress, extra)
