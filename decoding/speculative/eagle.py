"""EAGLE-3 / EAGLE-1 drafters: a one-layer draft on the target's features (models/eagle.py),
drafting a chain or an EAGLE-2 dynamic tree.

The draft layer is a training extra of the target's run (params['eagle3'] / params['eagle1'],
trained by configs/spec_heads.py:eagle3|eagle1); the decoders declare it in `model_heads`.
Its cache has the target's slot layout: the pair (feature of position p - 1, token at p) sits
at slot p. Only pairs built from the *target's* features are ever committed:

  init     the prompt's pairs (target features from the prefill) are written at slots
           1 .. len - 1; the pair (h_{len-1}, first token) waits as pending.
  propose  one draft call writes the pending pairs (the root's pair last, at the root's
           position `base`); its output at the root drafts depth 1. Deeper nodes read their
           parent's draft output as feature (EAGLE's own-feature steps) and sit at slot
           base + node (chain) or base + candidate index (dynamic tree), attending to the
           committed slots and their ancestors.
  verify   the target's forward returns its features (all hidden states for EAGLE-3).
  update   the draft cache rolls back to base + 1 (the draft-feature nodes are dropped) and
           the accepted path's pairs (target feature at path node i, committed token i) at
           positions base + 1 .. base + keep become the next step's pending pairs.

Drafts are deterministic (argmax chain; top-k children scored by cumulative draft
log-probability, EAGLE-2), verified by the deterministic rule: lossless under greedy and
sampling. A draft with a reduced vocabulary (`models.draft_vocab`, params['hot_ids']) scores only
its Vd tokens; its picks are mapped to target ids before they enter the tree.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import flax.struct
import jax
import jax.numpy as jnp

from decoding.speculative import drafter as drafter_lib
from decoding.speculative import proposals
from decoding.speculative import trees
from decoding.speculative import verify as verify_lib
from models import cache as cache_lib
from models import draft_vocab
from models import eagle as eagle_lib
from models import heads as heads_lib
from models import kind as kind_lib
from models import masks
import pallas_kernels.common as kernel_common


@flax.struct.dataclass
class EagleState:
  """cache: the draft's one-layer cache (committed: slots < the root's position);
  pend_feat_BxPxF / pend_tok_BxP / pend_pos_BxP: pairs to write before drafting (position -1 =
  none; valid ones are a prefix, the last is the root's pair); head_VxD: the output head the
  draft reads (`models.eagle.draft_head`), formed once per generation, outside the loop."""
  cache: cache_lib.Cache
  pend_feat_BxPxF: jax.Array
  pend_tok_BxP: jax.Array
  pend_pos_BxP: jax.Array
  head_VxD: jax.Array


@dataclasses.dataclass(frozen=True)
class EagleDrafter(drafter_lib.Drafter):
  """See module docstring. shape 'chain' (gamma drafts) or 'dynamic' (depth gamma, top_k
  frontier and children, `nodes` drafted nodes)."""
  kind: ClassVar[str] = 'eagle'
  variant: str = eagle_lib.EAGLE3
  shape: str = 'chain'
  gamma: int = 4
  top_k: int = 4
  nodes: int = 16
  layers: tuple[int, ...] = ()  # EAGLE-3 feature layers (() = models.eagle default)
  loop: str = 'auto'  # chains: the drafting loop (drafter.draft_loop; every row drafts on)
  draft_vocab: int = 0  # decode-time draft vocabulary for a layer trained over the whole one

  # ------------------------------------------------------------------ static shape
  @property
  def candidates(self) -> int:
    """Dynamic trees: candidate nodes without the root (`trees.dynamic_candidates`)."""
    return trees.dynamic_candidates(self.top_k, self.gamma)

  @property
  def max_nodes(self) -> int:
    if self.shape == 'dynamic':
      return 1 + min(self.nodes, self.candidates)
    return self.gamma + 1

  @property
  def max_depth(self) -> int:
    return self.gamma

  @property
  def max_children(self) -> int:
    return self.top_k if self.shape == 'dynamic' else 1

  @property
  def is_chain(self) -> bool:
    return self.shape == 'chain'

  def extra_cache_slots(self) -> int:
    return 1 + self.candidates if self.shape == 'dynamic' else self.max_nodes

  def with_draft_vocab(self, params):
    """A layer trained over the whole vocabulary, over the decode-time set (its head
    correction, when it has one, cut to the set's rows)."""
    if not self.draft_vocab or self.variant not in params:
      return params
    return draft_vocab.at_decode_time(params, self.variant, self.draft_vocab,
                                      f'The {self.variant} draft layer', ('head_delta',))

  def resolve(self, models):
    if self.layers or self.variant != eagle_lib.EAGLE3:
      return self
    return dataclasses.replace(
        self, layers=eagle_lib.feature_layers(models.target.cfg.num_layers))

  def check(self, models, params):
    if self.variant not in params:
      raise ValueError(f'The {self.variant!r} drafter needs an {self.variant} draft layer in '
                       f'the target run: {kind_lib.train_heads_hint((self.variant,))}.')
    if verify_lib.is_recurrent(models.target.cfg):
      raise ValueError('EAGLE drafters read the target\'s per-position features; targets with '
                       'recurrent layers are not supported yet.')
    cfg = models.target.cfg
    eagle_lib.feature_layers(cfg.num_layers, self.layers)
    delta = params[self.variant].get('head_delta')
    draft_vocab.check_params(params[self.variant], self.variant,
                             None if delta is None else delta.shape[0])
    if self.variant == eagle_lib.EAGLE3:
      have = eagle_lib.num_features(params[self.variant], cfg)
      if have != len(self.layers):
        raise ValueError(f'The eagle3 draft layer was trained on {have} fused target layers '
                         f'but the decoder reads {len(self.layers)} ({self.layers}); pass the '
                         'training run\'s spec.feature_layers as feature_layers=...')

  # ------------------------------------------------------------------ helpers
  def _layer(self, env):
    """The draft layer without its head correction (the decoder passes the merged head)."""
    p = eagle_lib.layer_params(env.params[self.variant])
    return eagle_lib.module_for(env.target.cfg, self.variant, p), p

  def _head(self, env):
    return eagle_lib.draft_head(env.params[self.variant],
                                heads_lib.output_embedding(env.target_params, env.target.cfg))

  def _apply(self, env, head_VxD, x, tokens, positions, cache, slots=None, mask=None):
    module, p = self._layer(env)
    return module.apply({'params': p}, x, tokens, positions,
                        heads_lib.input_embedding(env.target_params), head_VxD, cache=cache,
                        write_slots_BxT=slots, attn_mask=mask)

  def _fuse(self, env, feat):
    module, p = self._layer(env)
    return module.apply({'params': p}, feat, method=eagle_lib.EagleDraft.fuse)

  def _tokens(self, env, draft_ids):
    """Target ids of the draft's vocabulary entries (the same ids without a reduced one)."""
    return draft_vocab.to_target(env.params[self.variant], draft_ids)

  def _features(self, out):
    return eagle_lib.target_features(out, self.variant, self.layers)

  def prefill_kwargs(self):
    return {'return_hidden': True} if self.variant == eagle_lib.EAGLE3 else {}

  def target_forward(self, env, state, cache, tree, base_B, active_B):
    out = verify_lib.forward_tree(env.target, env.target_params, cache, tree, base_B, active_B,
                                  chain=self.is_chain, **self.prefill_kwargs())
    return out, state

  prefill_forwards: ClassVar[int] = 1  # the draft's pass over the prompt

  def init(self, env, prefill, first_B):
    B, P = env.prompt_BxP.shape
    cache = cache_lib.Cache.init(eagle_lib.draft_config(env.target.cfg), B, env.cache_size)
    feat = self._features(prefill)  # [B, P, F]
    plen = env.prompt_len_B
    head = self._head(env)
    if P > 1:  # pairs at positions 1 .. len - 1: (h_{p-1}, x_p)
      pos = jnp.arange(1, P, dtype=jnp.int32)[None]
      pos = jnp.where(pos < plen[:, None], pos, -1)
      _, _, cache = self._apply(env, head, self._fuse(env, feat[:, :-1]), env.prompt_BxP[:, 1:],
                                pos, cache)
    D1 = self.max_depth + 1
    last = jnp.maximum(plen - 1, 0)
    h_last = jnp.take_along_axis(feat, last[:, None, None], axis=1)  # [B, 1, F]
    pend_feat = jnp.zeros((B, D1, feat.shape[-1]), feat.dtype).at[:, :1].set(h_last)
    pend_tok = jnp.zeros((B, D1), jnp.int32).at[:, 0].set(first_B)
    pend_pos = jnp.full((B, D1), -1, jnp.int32).at[:, 0].set(plen)
    return EagleState(cache=cache, pend_feat_BxPxF=pend_feat, pend_tok_BxP=pend_tok,
                      pend_pos_BxP=pend_pos, head_VxD=head)

  # ------------------------------------------------------------------ propose
  def _root_call(self, env, state, active_B):
    """Writes the pending pairs; returns the root's (output feature [B, D], logits [B, V])
    and the cache."""
    pos = jnp.where(active_B[:, None], state.pend_pos_BxP, -1)
    g, logits, cache = self._apply(env, state.head_VxD, self._fuse(env, state.pend_feat_BxPxF),
                                   state.pend_tok_BxP, pos, state.cache)
    n = jnp.sum(state.pend_pos_BxP >= 0, axis=1)
    last = jnp.maximum(n - 1, 0)[:, None, None]
    return (jnp.take_along_axis(g, last, 1)[:, 0], jnp.take_along_axis(logits, last, 1)[:, 0],
            cache)

  def propose(self, env, state, cache, root_B, base_B, active_B):
    g_root, logits_root, dcache = self._root_call(env, state, active_B)
    if self.shape == 'chain':
      tree, dcache, calls = self._chain(env, state.head_VxD, dcache, g_root, logits_root,
                                        root_B, base_B, active_B)
    else:
      tree, dcache, calls = self._dynamic(env, state.head_VxD, dcache, g_root, logits_root,
                                          root_B, base_B, active_B)
    return tree, state.replace(cache=dcache), cache, calls

  def _chain(self, env, head, dcache, g_root, logits_root, root_B, base_B, active_B):
    G, B = self.gamma, root_B.shape[0]
    tokens = jnp.zeros((B, G + 1), jnp.int32).at[:, 0].set(root_B)
    first = self._tokens(env, jnp.argmax(logits_root, -1)).astype(jnp.int32)
    tokens = tokens.at[:, 1].set(first)
    valid = jnp.zeros((B, G + 1), bool).at[:, 0].set(active_B).at[:, 1].set(active_B)

    def body(c):  # feeds node j (its parent's output as feature), drafts node j + 1
      j, dcache, tokens, g = c
      tok_B = jax.lax.dynamic_index_in_dim(tokens, j, 1, keepdims=False)
      pos_B = jnp.where(active_B, base_B + j, -1)
      g_new, logits, dcache = self._apply(env, head, g[:, None], tok_B[:, None],
                                          pos_B[:, None], dcache)
      nxt = self._tokens(env, jnp.argmax(logits[:, 0], -1)).astype(jnp.int32)
      tokens = jax.lax.dynamic_update_index_in_dim(tokens, nxt, j + 1, 1)
      return j + 1, dcache, tokens, g_new[:, 0].astype(g.dtype)

    _, dcache, tokens, _ = drafter_lib.draft_loop(
        lambda c: c[0] < G, body, (jnp.int32(1), dcache, tokens, g_root), G - 1, self.loop,
        can_stop_early=False)
    valid = valid | (active_B[:, None] & (jnp.arange(G + 1) >= 1)[None])
    tree = trees.from_template(trees.chain(G), tokens, valid)
    calls = active_B.astype(jnp.int32) * G
    return tree, dcache, calls

  def _dynamic(self, env, head, dcache, g_root, logits_root, root_B, base_B, active_B):
    """EAGLE-2: `gamma` rounds; each feeds the top_k frontier nodes (by cumulative draft
    log-probability), each proposes its top_k children; the best `nodes` candidates form the
    tree (scores fall along paths, so the kept set is connected)."""
    k, D, B = self.top_k, self.gamma, root_B.shape[0]
    C1 = 1 + self.candidates
    Dm = g_root.shape[-1]
    sc, tok = proposals.top_log_probs(logits_root, k)
    tok = self._tokens(env, tok)
    # Candidates in blocks (the root, its k children, then k * k per round), joined once
    # after the rounds; each round's frontier is gathered from the block before it.
    blocks = [(root_B[:, None], jnp.full((B, 1), -1, jnp.int32), jnp.zeros((B, 1))),
              (tok, jnp.zeros((B, k), jnp.int32), sc)]  # (tokens, parents, scores)
    frontier = jnp.broadcast_to(jnp.arange(1, k + 1, dtype=jnp.int32), (B, k))
    # The frontier's tokens, scores, ancestor rows [B, k, C1] and features (its parent's
    # draft output). Candidate c sits at slot base + c: a frontier node sees the committed
    # slots (those before the root's; the root's pair sits at slot base) and its ancestors.
    f_tok, f_score = tok, sc
    f_anc = jnp.zeros((B, k, C1), bool).at[:, :, 0].set(True)
    f_anc = f_anc.at[:, jnp.arange(k), jnp.arange(1, k + 1)].set(True)
    f_feat = jnp.broadcast_to(g_root[:, None], (B, k, Dm))
    calls = active_B.astype(jnp.int32)
    for d in range(1, D):
      pos = jnp.where(active_B[:, None], base_B[:, None] + d, -1) * jnp.ones((1, k), jnp.int32)
      g, logits, dcache = self._apply(
          env, head, f_feat, f_tok, pos, dcache, slots=base_B[:, None] + frontier,
          mask=masks.block_to_cache_mask(f_anc, base_B, env.cache_size))
      calls = calls + active_B
      csc, ctok = proposals.top_log_probs(logits, k)  # [B, k, k]
      child_tok = self._tokens(env, ctok).reshape(B, k * k)
      child_score = (f_score[..., None] + csc).reshape(B, k * k)
      start = 1 + k + (d - 1) * k * k
      new = slice(start, start + k * k)  # this round's candidates
      new_anc = jnp.repeat(f_anc, k, axis=1)
      new_anc = new_anc.at[:, :, new].set(new_anc[:, :, new] | jnp.eye(k * k, dtype=bool))
      blocks.append((child_tok, jnp.repeat(frontier, k, axis=1), child_score))
      top = kernel_common.top_k(child_score, k)[1].astype(jnp.int32)
      frontier = start + top
      f_tok = jnp.take_along_axis(child_tok, top, 1)
      f_score = jnp.take_along_axis(child_score, top, 1)
      f_anc = jnp.take_along_axis(new_anc, top[:, :, None], 1)
      f_feat = jnp.take_along_axis(g, (top // k)[:, :, None], 1).astype(g_root.dtype)
    cand_tok, cand_par, score = (jnp.concatenate([blk[i] for blk in blocks], axis=1)
                                 for i in range(3))
    cand_depth = jnp.broadcast_to(jnp.asarray(trees.dynamic_candidate_depths(k, D)), (B, C1))
    tree = select_tree(score, cand_tok, cand_par, cand_depth, active_B, self.max_nodes - 1, D,
                       k)
    return tree, dcache, calls

  # ------------------------------------------------------------------ update
  def update(self, env, state, step):
    path, keep, act = step.verdict.path_BxD1, step.keep_B, step.active_B
    D1 = path.shape[1]
    feat = self._features(step.out)  # [B, T, F] at the tree's nodes
    node_feat = jnp.take_along_axis(feat, jnp.maximum(path, 0)[:, :, None], 1)  # [B, D1, F]
    i = jnp.arange(D1)[None]
    ok = (i < keep[:, None]) & act[:, None]
    pend_pos = jnp.where(ok, step.base_B[:, None] + 1 + i, -1)
    cache = state.cache.truncate(jnp.where(act, step.base_B + 1, state.cache.lengths))
    return EagleState(
        cache=cache,
        pend_feat_BxPxF=jnp.where(act[:, None, None], node_feat.astype(state.pend_feat_BxPxF.dtype),
                                  state.pend_feat_BxPxF),
        pend_tok_BxP=jnp.where(act[:, None], step.verdict.new_BxD1, state.pend_tok_BxP),
        pend_pos_BxP=jnp.where(act[:, None], pend_pos, state.pend_pos_BxP),
        head_VxD=state.head_VxD)


def select_tree(score_BxC, cand_tok_BxC, cand_par_BxC, cand_depth_BxC, active_B, N: int,
                D: int, k: int) -> trees.Tree:
  """The best N candidates (candidate 0 = the root) as a tree, parents before children."""
  sel_score, sel = kernel_common.top_k(score_BxC[:, 1:], N)
  node_cand, parents, valid, anc = trees.select_candidates(sel, sel_score, cand_par_BxC,
                                                           active_B, D)
  tokens = jnp.take_along_axis(cand_tok_BxC, node_cand, 1)
  depth = jnp.take_along_axis(cand_depth_BxC, node_cand, 1)
  return trees.Tree(tokens, parents, depth, valid, trees.children_table(parents, valid, k),
                    None, anc & valid[:, None, :] & valid[:, :, None])
