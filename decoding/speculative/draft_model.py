"""A separate small draft model (same tokenizer): chain, static tree and dynamic tree.

The draft keeps its own cache with the target's slot layout: committed token at position t in
slot t, tree node i of a step at slot base + i (dynamic trees: candidate c at base + c). Each
step starts with one draft call on [pending, root]: `pending` is the last accepted token when
the draft never processed it (a leaf of the previous tree), else padding. After verification
the accepted path is committed into the draft cache with the same `commit_accepted` as the
target (moving slots, deferred to the next step's first draft call), keeping only nodes the
draft has processed.

`draft_vocab=N`: the draft scores only the N most frequent tokens of the target's training
data (FR-Spec, `models.draft_vocab`; its layers as before, N x D of its head instead of V x D),
its scores spread over the whole vocabulary with NEVER_LOGIT elsewhere, so its proposals and
its q (sampled verification) are over target ids as without it: lossless either way.

Tree shapes:
  chain     G drafts in a row; `stop_below` > 0 stops a row's drafting once the draft's top-1
            probability falls below it (adaptive draft length; the draft loop ends early
            when every row has stopped).
  static    a template (trees.Template): children of a node are its top-k tokens, k i.i.d.
            samples (SpecInfer / K-SEQ) or k samples without replacement (Sequoia).
  dynamic   EAGLE-2 / DySpec: `depth` rounds; each round feeds the `top_k` best frontier
            nodes (by cumulative draft log-probability), each proposes `top_k` children; the
            best `nodes` of all candidates form the tree (scores fall along paths, so the set
            is connected). With the 'wor' rule children are Gumbel-top-k samples scored by
            stochastic-beam-search values and the tree is the per-depth beams (no global
            rerank, which would let deep noise pick shallow nodes): Recursive Speculative
            Decoding's RSD-S, `top_k * depth` nodes.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from decoding import base
from decoding.speculative import drafter as drafter_lib
from decoding.speculative import proposals
from decoding.speculative import trees
from decoding.speculative import verify as verify_lib
from models import cache as cache_lib
from models import draft_vocab as draft_vocab_lib
from models import heads as heads_lib
from models import masks
import pallas_kernels.common as kernel_common

DRAFT = 'draft'


@flax.struct.dataclass
class DraftState:
  """cache: the draft's cache; pending_B: committed token the draft has not processed (-1 =
  none), at position base - 1; processed_BxT / node_slots_BxT: of the last proposed tree;
  head_VdxD: the rows of the draft's head over its draft vocabulary (() without one)."""
  cache: cache_lib.Cache
  pending_B: jax.Array
  processed_BxT: jax.Array
  node_slots_BxT: jax.Array
  head_VdxD: Any = ()


def _how(mode: str) -> str:
  return 'iid' if mode == 'kseq' else mode


@dataclasses.dataclass(frozen=True)
class DraftModelDrafter(drafter_lib.Drafter):
  """See module docstring. `template` for chain/static; (top_k, depth, nodes) for dynamic."""
  kind: ClassVar[str] = 'model'
  has_q: ClassVar[bool] = True
  workdir: str = ''
  shape: str = 'chain'  # chain | static | dynamic
  template: trees.Template | None = None
  top_k: int = 4
  depth: int = 4
  nodes: int = 16
  stop_below: float = 0.0
  mode: str = 'iid'
  state_nodes: int = 0  # chains: width of the per-node state (0 = the chain's), so that
                        # chains of several lengths share one state (adaptive.py)
  loop: str = 'auto'    # chains: the drafting loop (drafter.draft_loop)
  draft_vocab: int = 0  # score only the N most frequent training tokens (models.draft_vocab)
  ar_step_ok: ClassVar[bool] = False  # the draft must see every token: no step skips it

  # ------------------------------------------------------------------ static shape
  @property
  def candidates(self) -> int:
    """Dynamic trees: candidate nodes without the root (`trees.dynamic_candidates`)."""
    return trees.dynamic_candidates(self.top_k, self.depth)

  @property
  def max_nodes(self) -> int:
    if self.shape == 'dynamic':
      if self.stochastic:  # RSD-S: the beams, top_k nodes per depth
        return 1 + self.top_k * self.depth
      return 1 + min(self.nodes, self.candidates)
    return self.template.size

  @property
  def stochastic(self) -> bool:
    """Dynamic trees with 'wor' children: stochastic beam search (RSD-S)."""
    return self.shape == 'dynamic' and self.mode == 'wor'


  @property
  def max_depth(self) -> int:
    return self.depth if self.shape == 'dynamic' else self.template.max_depth

  @property
  def max_children(self) -> int:
    return self.top_k if self.shape == 'dynamic' else self.template.max_children

  @property
  def is_chain(self) -> bool:
    return self.shape == 'chain'

  def extra_cache_slots(self) -> int:
    return 1 + self.candidates if self.shape == 'dynamic' else self.max_nodes

  def extra_models(self) -> dict[str, str]:
    if not self.workdir:
      raise ValueError("The 'model' drafter needs --decoder_config.draft_workdir=DIR (a "
                       'workdir written by train.py with the same tokenizer as the target).')
    return {DRAFT: self.workdir}

  def check(self, models: base.Models, params: dict[str, Any]) -> None:
    if DRAFT not in params:
      raise ValueError("The 'model' drafter needs the draft model's params under 'draft'.")
    drafter_lib.check_vocab('draft model', models[DRAFT], models.target)
    if self.draft_vocab:
      draft_vocab_lib.run_ids(params, self.draft_vocab, 'The draft model')
    if verify_lib.is_recurrent(models[DRAFT].cfg):
      raise ValueError('Draft models with recurrent layers are not supported yet (their '
                       'state cannot follow a multi-call tree draft); use an attention draft.')

  # ------------------------------------------------------------------ helpers
  def _head_rows(self, env):
    """[N, D] rows of the draft's head over its draft vocabulary (() without one): gathered
    once per generation, into the state."""
    if not self.draft_vocab:
      return ()
    return draft_vocab_lib.run_head_rows(
        env.params, self.draft_vocab,
        heads_lib.output_embedding(env.params[DRAFT], env.models[DRAFT].cfg), 'The draft model')

  def _apply(self, env, head_VdxD, dstate_cache, tokens_BxT, positions_BxT, slots_BxT,
             mask=None):
    """The draft's logits [B, T, V] (NEVER_LOGIT outside a draft vocabulary, whose head rows
    are `head_VdxD`) and cache."""
    draft, p = env.models[DRAFT], env.params[DRAFT]
    out = draft.apply({'params': p}, tokens_BxT, positions_BxT, cache=dstate_cache,
                      write_slots_BxT=slots_BxT, attn_mask=mask,
                      return_logits=not self.draft_vocab)
    if not self.draft_vocab:
      return out.logits_BxTxV, out.cache
    hot = draft_vocab_lib.run_ids(env.params, self.draft_vocab, 'The draft model')
    logits = heads_lib.head_logits(out.last_hidden_BxTxD, head_VdxD, draft.cfg)
    return draft_vocab_lib.expand(logits, hot, draft.cfg.vocab_size), out.cache

  def _first_call(self, env, state: DraftState, root_B, base_B, active_B):
    """Feeds [pending, root]; returns the root's logits [B, V] and the cache."""
    pend_ok_B = active_B & (state.pending_B >= 0)
    tokens = jnp.stack([jnp.maximum(state.pending_B, 0), root_B], axis=1)
    positions = jnp.stack([jnp.where(pend_ok_B, base_B - 1, -1),
                           jnp.where(active_B, base_B, -1)], axis=1)
    logits, cache = self._apply(env, state.head_VdxD, state.cache, tokens, positions, positions)
    return logits[:, 1], cache

  prefill_forwards: ClassVar[int] = 1  # the draft's own prefill

  def init(self, env, prefill, first_B):
    del prefill, first_B
    B = env.prompt_BxP.shape[0]
    draft = env.models[DRAFT]
    cache = cache_lib.Cache.init(draft.cfg, B, env.cache_size)
    _, cache, _ = base.prefill(draft, env.params[DRAFT], env.prompt_BxP, env.prompt_len_B,
                               cache)
    if not self.is_chain:  # paths move as the next step's first draft call writes each layer
      cache = cache.owing(self.max_depth + 1)
    T = max(self.max_nodes, self.state_nodes)
    return DraftState(cache=cache, pending_B=jnp.full((B,), -1, jnp.int32),
                      processed_BxT=jnp.zeros((B, T), bool),
                      node_slots_BxT=jnp.zeros((B, T), jnp.int32),
                      head_VdxD=self._head_rows(env))

  # ------------------------------------------------------------------ propose
  def propose(self, env, state, target_cache, root_B, base_B, active_B):
    if self.shape == 'chain':
      return self._propose_chain(env, state, target_cache, root_B, base_B, active_B)
    if self.shape == 'static':
      return self._propose_static(env, state, target_cache, root_B, base_B, active_B)
    return self._propose_dynamic(env, state, target_cache, root_B, base_B, active_B)

  def _draw(self, env, logits_BxNxV, k, positions_B, node_offset):
    keys = proposals.node_keys(drafter_lib.draft_keys(env, positions_B), logits_BxNxV.shape[1],
                               node_offset)
    return proposals.children(logits_BxNxV, k, _how(env.mode), env.sampling, keys)

  def _propose_chain(self, env, state, target_cache, root_B, base_B, active_B):
    G = self.template.size - 1
    B = root_B.shape[0]
    logits_BxV, cache = self._first_call(env, state, root_B, base_B, active_B)
    sampled = not (env.sampling.greedy or env.mode == 'deterministic')
    V = logits_BxV.shape[-1]
    tokens = jnp.zeros((B, G + 1), jnp.int32).at[:, 0].set(root_B)
    valid = jnp.zeros((B, G + 1), bool).at[:, 0].set(True)
    logq = jnp.zeros((B, G + 1, V), jnp.float32) if sampled else None
    calls_B = active_B.astype(jnp.int32)

    def draft_at(j, logits_BxV, tokens, valid, logq):
      """Draft node j from the logits after node j - 1."""
      tok, ok, lq, _ = self._draw(env, logits_BxV[:, None], 1, base_B + j, 0)
      keep = valid[:, j - 1] & ok[:, 0, 0] & active_B
      if self.stop_below > 0:
        conf = jnp.max(jax.nn.softmax(logits_BxV.astype(jnp.float32), -1), -1)
        keep &= conf >= self.stop_below
      tokens = tokens.at[:, j].set(tok[:, 0, 0])
      valid = valid.at[:, j].set(keep)
      if logq is not None:
        logq = logq.at[:, j - 1].set(lq[:, 0])
      return tokens, valid, logq

    tokens, valid, logq = draft_at(1, logits_BxV, tokens, valid, logq)

    def cond(c):
      j, _, _, valid, _, _ = c
      return (j < G) & jnp.any(valid[:, j])

    def body(c):
      j, cache, tokens, valid, logq, calls_B = c
      tok_B = jax.lax.dynamic_index_in_dim(tokens, j, 1, keepdims=False)
      ok_B = jax.lax.dynamic_index_in_dim(valid, j, 1, keepdims=False)
      pos_B = jnp.where(ok_B, base_B + j, -1)
      logits, cache = self._apply(env, state.head_VdxD, cache, tok_B[:, None], pos_B[:, None],
                                  pos_B[:, None])
      tok, ok, lq, _ = self._draw(env, logits, 1, base_B + j + 1, 0)
      keep = ok_B & ok[:, 0, 0]
      if self.stop_below > 0:
        conf = jnp.max(jax.nn.softmax(logits[:, 0].astype(jnp.float32), -1), -1)
        keep &= conf >= self.stop_below
      tokens = jax.lax.dynamic_update_index_in_dim(tokens, tok[:, 0, 0], j + 1, 1)
      valid = jax.lax.dynamic_update_index_in_dim(valid, keep, j + 1, 1)
      if logq is not None:
        logq = jax.lax.dynamic_update_index_in_dim(logq, lq[:, 0], j, 1)
      return j + 1, cache, tokens, valid, logq, calls_B + ok_B

    carry = (jnp.int32(1), cache, tokens, valid, logq, calls_B)
    _, cache, tokens, valid, logq, calls_B = drafter_lib.draft_loop(
        cond, body, carry, G - 1, self.loop, can_stop_early=self.stop_below > 0)
    tree = trees.from_template(self.template, tokens, valid, logq)
    W = max(G + 1, self.state_nodes)
    depth = jnp.arange(W)[None]
    processed = jnp.pad(tree.valid_BxT, ((0, 0), (0, W - G - 1))) & (depth < G)
    state = state.replace(cache=cache, processed_BxT=processed,
                          node_slots_BxT=base_B[:, None] + depth)
    return tree, state, target_cache, calls_B

  def _propose_static(self, env, state, target_cache, root_B, base_B, active_B):
    tpl = self.template
    T, K, D = tpl.size, tpl.max_children, tpl.max_depth
    B = root_B.shape[0]
    levels = tpl.levels()
    parents = np.asarray(tpl.parents)
    ranks = np.asarray(tpl.ranks)
    anc_TxT = tpl.ancestors()
    slots_BxT = base_B[:, None] + jnp.arange(T, dtype=jnp.int32)[None]
    logits_BxV, cache = self._first_call(env, state, root_B, base_B, active_B)
    tokens = jnp.zeros((B, T), jnp.int32).at[:, 0].set(root_B)
    valid = jnp.zeros((B, T), bool).at[:, 0].set(active_B)
    sampled = not (env.sampling.greedy or env.mode == 'deterministic')
    logq = jnp.zeros((B, T, logits_BxV.shape[-1]), jnp.float32) if sampled else None
    fed_logits = logits_BxV[:, None]  # logits after the nodes of the current level
    calls = active_B.astype(jnp.int32)
    full = masks.block_to_cache_mask(jnp.asarray(anc_TxT)[None], base_B, env.cache_size)
    for d in range(1, D + 1):
      ps, pe = levels[d - 1]
      tok, ok, lq, _ = self._draw(env, fed_logits, K, base_B + d, ps)
      if logq is not None:
        logq = logq.at[:, ps:pe].set(lq)
      s, e = levels[d]
      par = parents[s:e] - ps
      child_tok = tok[:, par, ranks[s:e]]
      child_ok = ok[:, par, ranks[s:e]] & valid[:, parents[s:e]]
      tokens = tokens.at[:, s:e].set(child_tok)
      valid = valid.at[:, s:e].set(child_ok)
      if d < D:  # feed this level to get its children's distribution
        pos = jnp.where(valid[:, s:e], base_B[:, None] + d, -1)
        fed_logits, cache = self._apply(env, state.head_VdxD, cache, tokens[:, s:e], pos,
                                        slots_BxT[:, s:e], full[:, s:e])
        calls = calls + jnp.any(valid[:, s:e], axis=1)
    tree = trees.from_template(tpl, tokens, valid, logq)
    depth = jnp.asarray(tpl.depths)[None]
    state = state.replace(cache=cache, processed_BxT=tree.valid_BxT & (depth < D),
                          node_slots_BxT=slots_BxT)
    return tree, state, target_cache, calls

  def _propose_dynamic(self, env, state, target_cache, root_B, base_B, active_B):
    k, D, B = self.top_k, self.depth, root_B.shape[0]
    C1 = 1 + self.candidates  # root + candidates
    wor = env.mode == 'wor' and not env.sampling.greedy
    how = 'wor' if wor else 'deterministic'
    logits_BxV, cache = self._first_call(env, state, root_B, base_B, active_B)
    V = logits_BxV.shape[-1]
    keys = lambda d, n, off: proposals.node_keys(drafter_lib.draft_keys(env, base_B + d), n, off)
    tok, ok, lq, sc = proposals.children(logits_BxV[:, None], k, how, env.sampling,
                                         keys(1, 1, 0))
    # Candidates in rounds: the root, its k children, then k * k per round. Each round's
    # arrays stay a block of their own (its frontier reads only the block before), joined
    # once after the rounds: no update of whole-candidate buffers per round.
    ok0 = ok[:, 0] & active_B[:, None]
    if wor:
      lq0 = jnp.take_along_axis(lq[:, 0], tok[:, 0], -1)  # path log q (for SBS)
      score0 = proposals.sbs_values(jnp.zeros((B, 1)), jnp.zeros((B, 1)), sc)[:, 0]
    else:
      lq0, score0 = None, sc[:, 0]
    anc0 = jnp.zeros((B, k, C1), bool).at[:, :, 0].set(True)
    anc0 = anc0.at[:, jnp.arange(k), jnp.arange(1, k + 1)].set(True)
    # Per block: (tokens, parents, ok, score, path log q, ancestor rows [B, n, C1]).
    blocks = [(root_B[:, None], jnp.full((B, 1), -1, jnp.int32), active_B[:, None],
               jnp.zeros((B, 1)), None, None),
              (tok[:, 0], jnp.zeros((B, k), jnp.int32), ok0,
               jnp.where(ok[:, 0], score0, -jnp.inf), lq0, anc0)]
    fed_nodes = [(jnp.zeros((B, 1), jnp.int32), active_B[:, None])]  # (nodes, fed) per round
    # Per fed slot (root + frontier per round): q of its children, for 'wor' verification.
    logq_fed = jnp.zeros((B, 1 + (D - 1) * k, V), jnp.float32) if wor else None
    fed_slot = jnp.full((B, C1), -1, jnp.int32).at[:, 0].set(0)
    if wor:
      logq_fed = logq_fed.at[:, 0].set(lq[:, 0])
    top = jnp.broadcast_to(jnp.arange(k, dtype=jnp.int32), (B, k))  # within the last block
    frontier = 1 + top  # among the candidates (the root's children start at 1)
    beams = [frontier]
    calls = active_B.astype(jnp.int32)
    b = jnp.arange(B)[:, None]
    for d in range(1, D):
      p_tok, _, p_ok, p_score, p_lq, p_anc = blocks[-1]
      at = lambda x, top=top: jnp.take_along_axis(x, top, 1)
      parent_score = at(p_score)  # [B, k]
      f_ok = at(p_ok) & jnp.isfinite(parent_score)
      pos = jnp.where(f_ok, base_B[:, None] + d, -1)
      f_anc = jnp.take_along_axis(p_anc, top[:, :, None], 1)  # [B, k, C1]
      logits, cache = self._apply(env, state.head_VdxD, cache, at(p_tok), pos,
                                  base_B[:, None] + frontier,
                                  masks.block_to_cache_mask(f_anc, base_B, env.cache_size))
      calls = calls + jnp.any(f_ok, axis=1)
      fed_nodes.append((frontier, f_ok))  # distinct nodes across rounds: one write at the end
      tok, ok, lq, sc = proposals.children(logits, k, how, env.sampling, keys(d + 1, k, 0))
      child_lq = None
      if wor:
        slot_ids = 1 + (d - 1) * k + jnp.arange(k)
        logq_fed = logq_fed.at[:, slot_ids].set(lq)
        fed_slot = fed_slot.at[b, frontier].set(jnp.broadcast_to(slot_ids, (B, k)))
        parent_lq = at(p_lq)
        child_score = proposals.sbs_values(parent_score, parent_lq, sc)
        child_lq = (parent_lq[..., None] + jnp.take_along_axis(lq, tok, -1)).reshape(B, k * k)
      else:
        child_score = parent_score[..., None] + sc
      child_ok = ok & f_ok[..., None]
      child_score = jnp.where(child_ok, child_score, -jnp.inf).reshape(B, k * k)
      start = 1 + k + (d - 1) * k * k
      new = slice(start, start + k * k)  # this round's candidates
      new_anc = jnp.repeat(f_anc, k, axis=1)
      new_anc = new_anc.at[:, :, new].set(new_anc[:, :, new] | jnp.eye(k * k, dtype=bool))
      blocks.append((tok.reshape(B, k * k), jnp.repeat(frontier, k, axis=1),
                     child_ok.reshape(B, k * k), child_score, child_lq, new_anc))
      top = kernel_common.top_k(child_score, k)[1].astype(jnp.int32)
      frontier = start + top
      beams.append(frontier)
    cand_tok, cand_par, score = (jnp.concatenate([blk[i] for blk in blocks], axis=1)
                                 for i in (0, 1, 3))
    cand_depth = jnp.broadcast_to(jnp.asarray(trees.dynamic_candidate_depths(k, D)), (B, C1))
    N = self.max_nodes - 1
    if wor:
      # RSD-S keeps the beams (top_k per depth, chosen by that depth's values alone): a
      # global rerank across depths would let deeper noise decide which shallow nodes stay,
      # which breaks exactness for sampled children.
      sel = jnp.concatenate(beams, axis=1)
      sel_score = jnp.take_along_axis(score, sel, 1)
      sel = sel - 1
    else:
      # EAGLE-2: keep the best `nodes` candidates (deterministic scores fall along paths).
      sel_score, sel = kernel_common.top_k(score[:, 1:], N)
    node_cand, parents, valid, anc = trees.select_candidates(sel, sel_score, cand_par, active_B,
                                                             D)
    tokens = jnp.take_along_axis(cand_tok, node_cand, 1)
    depth = jnp.take_along_axis(cand_depth, node_cand, 1)
    logq = None
    if wor:
      slot = jnp.take_along_axis(fed_slot, node_cand, 1)
      logq = jnp.take_along_axis(logq_fed, jnp.maximum(slot, 0)[:, :, None], 1)
    tree = trees.Tree(tokens, parents, depth, valid, trees.children_table(parents, valid, k),
                      logq, anc & valid[:, None, :] & valid[:, :, None])
    fed = jnp.zeros((B, C1), bool).at[b, jnp.concatenate([n for n, _ in fed_nodes], 1)].set(
        jnp.concatenate([f for _, f in fed_nodes], 1))
    processed = valid & jnp.take_along_axis(fed, node_cand, 1)
    state = state.replace(cache=cache, processed_BxT=processed,
                          node_slots_BxT=base_B[:, None] + node_cand)
    return tree, state, target_cache, calls

  # ------------------------------------------------------------------ update
  def update(self, env, state, step):
    path = step.verdict.path_BxD1
    keep = step.keep_B
    last = jnp.take_along_axis(path, jnp.maximum(keep - 1, 0)[:, None], 1)[:, 0]
    done_last = jnp.take_along_axis(state.processed_BxT, jnp.maximum(last, 0)[:, None], 1)[:, 0]
    dkeep = jnp.where(keep > 0, keep - 1 + done_last.astype(jnp.int32), 0)
    cache = verify_lib.commit_accepted(state.cache, step.base_B, path, dkeep,
                                       chain=self.is_chain,
                                       node_slots_BxT=(state.node_slots_BxT
                                                       if self.shape == 'dynamic' else None),
                                       defer=not self.is_chain)
    last_tok = jnp.take_along_axis(step.tree.tokens_BxT, jnp.maximum(last, 0)[:, None], 1)[:, 0]
    pending = jnp.where((keep >= 2) & ~done_last, last_tok, -1)
    return state.replace(cache=cache, pending_B=jnp.where(step.active_B, pending,
                                                          state.pending_B))
