"""Chimera drafter: the trigram encoder + full-context layer + residual heads of
models/chimera.py, proposing a chain or a static (Medusa-style) tree from one draft call.

The draft is a training extra of the target's run (params['chimera'], trained by
configs/spec_heads.py:chimera); the decoder declares it in `model_heads`. Its one-layer cache
has the target's slot layout: the pair (target hidden state of position q - 1, trigram ending
at x_q) sits at slot q, and only pairs of committed tokens are ever written, so nothing is
rolled back:

  init     the prompt's pairs (hidden states from the prefill) are written at slots
           1 .. len - 1; the pair (h_{len-1}, first token) waits as pending.
  propose  one draft call writes the pending pairs (the root's pair last, at the root's
           position `base`); head k's logits at the root propose depth k: a tree node of
           depth d and rank r holds head d's r-th best token (a chain: the argmax of heads
           1 .. gamma).
  update   the accepted path's pairs (target hidden state at path node i, committed token i)
           at positions base + 1 .. base + keep become the next step's pending pairs; the two
           tokens before them (for the trigram) are kept beside them.

Drafts are deterministic, verified by the deterministic rule: lossless under greedy and
sampling.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from decoding.speculative import drafter as drafter_lib
from decoding.speculative import trees
from decoding.speculative import verify as verify_lib
from models import cache as cache_lib
from models import chimera as chimera_lib
from models import heads as heads_lib
from models import kind as kind_lib


@flax.struct.dataclass
class ChimeraState:
  """cache: the draft's one-layer cache (committed slots only); pend_h_BxPxD / pend_tok_BxP /
  pend_pos_BxP: pairs to write before drafting (position -1 = none; the valid ones are a
  prefix, the last is the root's pair); prev_Bx2: the two tokens before the first pending
  token (ignored where their position is < 0)."""
  cache: cache_lib.Cache
  pend_h_BxPxD: jax.Array
  pend_tok_BxP: jax.Array
  pend_pos_BxP: jax.Array
  prev_Bx2: jax.Array


@dataclasses.dataclass(frozen=True)
class ChimeraDrafter(drafter_lib.TemplateDrafter):
  """Chimera over a static tree (template depth <= number of heads); see module docstring."""
  kind: ClassVar[str] = 'chimera'
  template: trees.Template = dataclasses.field(default_factory=lambda: trees.chain(4))
  prefill_forwards: ClassVar[int] = 1  # the draft's pass over the prompt

  def check(self, models, params):
    if chimera_lib.CHIMERA not in params:
      raise ValueError('The chimera drafter needs a chimera draft in the target run: '
                       f'{kind_lib.train_heads_hint((chimera_lib.CHIMERA,))}.')
    if verify_lib.is_recurrent(models.target.cfg):
      raise ValueError('The chimera drafter reads the target\'s per-position hidden states; '
                       'targets with recurrent layers are not supported yet.')
    K = chimera_lib.num_heads(params[chimera_lib.CHIMERA])
    if self.template.max_depth > K:
      raise ValueError(f'The Chimera tree is {self.template.max_depth} deep but the run has '
                       f'{K} heads; lower gamma (or the branching depth) to <= {K}.')
    V = params[chimera_lib.CHIMERA]['heads'].shape[-1]
    if V != models.target.cfg.vocab_size:
      raise ValueError(f'The chimera draft predicts {V} tokens but the target has '
                       f'{models.target.cfg.vocab_size}: it was trained on another target.')

  def _apply(self, env, h_prev, tri, positions, cache):
    cfg = env.target.cfg
    p = env.params[chimera_lib.CHIMERA]
    return chimera_lib.ChimeraDraft(cfg, chimera_lib.num_heads(p)).apply(
        {'params': p}, h_prev, tri, positions, heads_lib.input_embedding(env.target_params),
        cache=cache)

  def init(self, env, prefill, first_B):
    B, P = env.prompt_BxP.shape
    cache = cache_lib.Cache.init(chimera_lib.draft_config(env.target.cfg), B, env.cache_size)
    h = prefill.last_hidden_BxTxD
    plen = env.prompt_len_B
    if P > 1:  # pairs at positions 1 .. len - 1: (h_{q-1}, trigram ending at x_q)
      pos = jnp.broadcast_to(jnp.arange(P, dtype=jnp.int32), (B, P))
      tri = chimera_lib.trigram_tokens(env.prompt_BxP, pos, jnp.full((B, 2), -1, jnp.int32))
      pos = jnp.where(pos < plen[:, None], pos, -1)
      _, cache = self._apply(env, h[:, :-1], tri[:, 1:], pos[:, 1:], cache)
    D1 = self.max_depth + 1
    last = jnp.maximum(plen - 1, 0)
    h_last = jnp.take_along_axis(h, last[:, None, None], axis=1)  # [B, 1, D]
    idx = jnp.maximum(plen[:, None] - jnp.array([2, 1]), 0)
    prev = jnp.take_along_axis(env.prompt_BxP.astype(jnp.int32), idx, axis=1)
    return ChimeraState(
        cache=cache,
        pend_h_BxPxD=jnp.zeros((B, D1, h.shape[-1]), h.dtype).at[:, :1].set(h_last),
        pend_tok_BxP=jnp.zeros((B, D1), jnp.int32).at[:, 0].set(first_B),
        pend_pos_BxP=jnp.full((B, D1), -1, jnp.int32).at[:, 0].set(plen),
        prev_Bx2=prev)

  def propose(self, env, state, cache, root_B, base_B, active_B):
    pos = jnp.where(active_B[:, None], state.pend_pos_BxP, -1)
    tri = chimera_lib.trigram_tokens(state.pend_tok_BxP, state.pend_pos_BxP, state.prev_Bx2)
    logits, dcache = self._apply(env, state.pend_h_BxPxD, tri, pos, state.cache)
    n = jnp.sum(state.pend_pos_BxP >= 0, axis=1)
    last = jnp.maximum(n - 1, 0)[:, None, None, None]
    root_logits = jnp.take_along_axis(logits, last, 1)[:, 0]  # [B, K, V]
    tpl = self.template
    top_BxKxR = drafter_lib.top_children(root_logits, tpl.max_rank)
    depth, ranks = np.asarray(tpl.depths), np.asarray(tpl.ranks)
    tok = top_BxKxR[:, np.maximum(depth - 1, 0), ranks].at[:, 0].set(root_B)
    tree = trees.from_template(tpl, tok, jnp.broadcast_to(active_B[:, None], tok.shape))
    return tree, state.replace(cache=dcache), cache, active_B.astype(jnp.int32)

  def update(self, env, state, step):
    path, keep, act = step.verdict.path_BxD1, step.keep_B, step.active_B
    D1 = path.shape[1]
    h = step.out.last_hidden_BxTxD
    node_h = jnp.take_along_axis(h, jnp.maximum(path, 0)[:, :, None], 1)  # [B, D1, D]
    i = jnp.arange(D1)[None]
    pend_pos = jnp.where((i < keep[:, None]) & act[:, None], step.base_B[:, None] + 1 + i, -1)
    # The two tokens before position base + 1: x_{base-1} and the root x_base, the last two of
    # [prev, old pending] (n old pending pairs, the root's last).
    seq = jnp.concatenate([state.prev_Bx2, state.pend_tok_BxP], axis=1)
    n = jnp.sum(state.pend_pos_BxP >= 0, axis=1)
    prev = jnp.take_along_axis(seq, jnp.stack([n, n + 1], 1), axis=1)
    return ChimeraState(
        cache=state.cache,
        pend_h_BxPxD=jnp.where(act[:, None, None], node_h.astype(state.pend_h_BxPxD.dtype),
                               state.pend_h_BxPxD),
        pend_tok_BxP=jnp.where(act[:, None], step.verdict.new_BxD1, state.pend_tok_BxP),
        pend_pos_BxP=jnp.where(act[:, None], pend_pos, state.pend_pos_BxP),
        prev_Bx2=jnp.where(act[:, None], prev, state.prev_Bx2))
