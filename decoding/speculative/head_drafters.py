"""Drafters from heads trained on the target's hidden states: Medusa and DeepSeek-style MTP.

The heads are training extras of the target's run (params['medusa'] / params['mtp'], see
models/heads.py and training/objectives/spec_heads.py); `sample.py --workdir=RUN` passes a
run's extras to the decoders, whose `model_heads` make `Decoder.for_model` refuse a run without
them (its `ModelKind.heads`). Both read the target's final hidden state at the last accepted
node, which the verification forward computed, so drafting costs no target forward.

  Medusa: head k proposes the token k + 1 places after the root, independently of the tokens
          before it; a tree node of depth d and rank r holds head d's r-th best token (among
          the heads' reduced vocabulary when they were trained with one, `models.draft_vocab`).
  MTP:    module k reads module k-1's representation and the embedding of the parent token,
          so proposals are conditioned on the drafted path (chain or tree, top-k children;
          among a reduced vocabulary too).
Both propose deterministically (deterministic verification rule, lossless).
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
from models import draft_vocab
from models import heads as heads_lib
from models import kind as kind_lib


@flax.struct.dataclass
class HiddenState:
  """h_BxD: the target's final hidden state at the node that predicted the root; head_VxD:
  the rows of the output head that heads over a reduced draft vocabulary score
  (`draft_head`, formed once per generation, outside the loop), None for the whole
  vocabulary (the target's head, read from its params)."""
  h_BxD: jax.Array
  head_VxD: jax.Array | None = None


def draft_head(env, name: str) -> jax.Array | None:
  """[Vd, D] the head rows of the `name` heads' reduced draft vocabulary, or None."""
  p = env.params[name]
  if draft_vocab.ids(p) is None:
    return None
  return draft_vocab.head_rows(p, heads_lib.output_embedding(env.target_params, env.target.cfg))


def _head(env, state: HiddenState) -> jax.Array:
  """The head rows the heads score this step."""
  if state.head_VxD is not None:
    return state.head_VxD
  return heads_lib.output_embedding(env.target_params, env.target.cfg)


def _last_prompt_hidden(env, prefill) -> jax.Array:
  last = jnp.maximum(env.prompt_len_B - 1, 0)
  return jnp.take_along_axis(prefill.last_hidden_BxTxD, last[:, None, None], axis=1)[:, 0]


def _accepted_hidden(state: HiddenState, step: drafter_lib.Step) -> HiddenState:
  path, keep = step.verdict.path_BxD1, step.keep_B
  last = jnp.take_along_axis(path, jnp.maximum(keep - 1, 0)[:, None], 1)[:, 0]
  h = jnp.take_along_axis(step.out.last_hidden_BxTxD, last[:, None, None], axis=1)[:, 0]
  return state.replace(h_BxD=jnp.where(step.active_B[:, None], h.astype(state.h_BxD.dtype),
                                       state.h_BxD))


def _need(params, name: str) -> None:
  """The heads in the params at generation (`Decoder.for_model` checks the run's kind before:
  `model_heads`); this catches a caller that skipped it."""
  if name not in params:
    raise ValueError(f'The {name!r} drafter needs {name} heads in the target run: '
                     f'{kind_lib.train_heads_hint((name,))}.')


def _at_decode_time(drafter, params, key: str, who: str):
  """Heads trained over the whole vocabulary given the drafter's decode-time set
  (`draft_vocab.at_decode_time`); unchanged without one or without the heads (`check` says)."""
  if not drafter.draft_vocab or key not in params:
    return params
  return draft_vocab.at_decode_time(params, key, drafter.draft_vocab, who)


@dataclasses.dataclass(frozen=True)
class MedusaDrafter(drafter_lib.TemplateDrafter):
  """Medusa heads over a static tree (template depth <= number of heads)."""
  kind: ClassVar[str] = 'medusa'
  template: trees.Template = dataclasses.field(default_factory=lambda: trees.chain(3))
  draft_vocab: int = 0  # decode-time draft vocabulary for heads trained over the whole one

  def with_draft_vocab(self, params):
    return _at_decode_time(self, params, heads_lib.MEDUSA, 'The Medusa heads')

  def check(self, models, params):
    _need(params, heads_lib.MEDUSA)
    draft_vocab.check_params(params[heads_lib.MEDUSA], heads_lib.MEDUSA)
    K = params[heads_lib.MEDUSA]['w'].shape[0]
    if self.template.max_depth > K:
      raise ValueError(f'The Medusa tree is {self.template.max_depth} deep but the run has '
                       f'{K} heads; lower gamma (or the branching depth) to <= {K}.')

  def init(self, env, prefill, first_B):
    return HiddenState(_last_prompt_hidden(env, prefill), draft_head(env, heads_lib.MEDUSA))

  def propose(self, env, state, cache, root_B, base_B, active_B):
    p = env.params[heads_lib.MEDUSA]
    K = p['w'].shape[0]
    cfg = env.target.cfg
    logits = heads_lib.MedusaHeads(cfg, K).apply(
        {'params': draft_vocab.without(p)}, state.h_BxD[:, None], _head(env, state))
    top_BxKxR = draft_vocab.to_target(
        p, drafter_lib.top_children(logits[:, 0], self.template.max_rank))
    tpl = self.template
    depth, ranks = np.asarray(tpl.depths), np.asarray(tpl.ranks)
    tok = top_BxKxR[:, np.maximum(depth - 1, 0), ranks]  # [B, T]
    tok = tok.at[:, 0].set(root_B)
    tree = trees.from_template(tpl, tok, jnp.broadcast_to(active_B[:, None], tok.shape))
    return tree, state, cache, active_B.astype(jnp.int32)

  def update(self, env, state, step):
    return _accepted_hidden(state, step)


@dataclasses.dataclass(frozen=True)
class MTPDrafter(drafter_lib.TemplateDrafter):
  """Sequential MTP modules over a static tree (template depth <= number of modules)."""
  kind: ClassVar[str] = 'mtp'
  template: trees.Template = dataclasses.field(default_factory=lambda: trees.chain(2))
  draft_vocab: int = 0  # decode-time draft vocabulary for modules trained over the whole one

  def with_draft_vocab(self, params):
    return _at_decode_time(self, params, heads_lib.MTP, 'The MTP modules')

  @staticmethod
  def depth_of(params) -> int:
    return sum(1 for k in params[heads_lib.MTP] if k.startswith('module_'))

  def check(self, models, params):
    _need(params, heads_lib.MTP)
    draft_vocab.check_params(params[heads_lib.MTP], heads_lib.MTP)
    K = self.depth_of(params)
    if self.template.max_depth > K:
      raise ValueError(f'The MTP tree is {self.template.max_depth} deep but the run has {K} '
                       f'MTP modules; lower gamma (or the branching depth) to <= {K}.')

  def init(self, env, prefill, first_B):
    return HiddenState(_last_prompt_hidden(env, prefill), draft_head(env, heads_lib.MTP))

  def propose(self, env, state, cache, root_B, base_B, active_B):
    tpl = self.template
    cfg = env.target.cfg
    p = env.params[heads_lib.MTP]
    module = heads_lib.MTPModules(cfg, self.depth_of(env.params))
    in_emb = heads_lib.input_embedding(env.target_params)
    out_emb = _head(env, state)
    B = root_B.shape[0]
    parents, ranks = np.asarray(tpl.parents), np.asarray(tpl.ranks)
    levels = tpl.levels()
    R = tpl.max_rank
    tokens = jnp.zeros((B, tpl.size), jnp.int32).at[:, 0].set(root_B)
    h_parent = state.h_BxD[:, None]  # representation feeding level 0 (the root)
    level_h = None
    calls = jnp.zeros_like(base_B)
    for d, (s, e) in enumerate(levels[:-1]):
      # Level d nodes (tokens known) -> module d -> their children at level d + 1.
      if d == 0:
        h_in = h_parent
      else:
        ps = levels[d - 1][0]
        h_in = level_h[:, parents[s:e] - ps]
      level_h, logits = module.apply({'params': draft_vocab.without(p)}, d, h_in,
                                     tokens[:, s:e], in_emb, out_emb,
                                     method=heads_lib.MTPModules.step)
      top = draft_vocab.to_target(p, drafter_lib.top_children(logits, R))  # [B, e - s, R]
      cs, ce = levels[d + 1]
      tokens = tokens.at[:, cs:ce].set(top[:, parents[cs:ce] - s, ranks[cs:ce]])
      calls = calls + active_B
    tree = trees.from_template(tpl, tokens, jnp.broadcast_to(active_B[:, None], tokens.shape))
    return tree, state, cache, calls

  def update(self, env, state, step):
    return _accepted_hidden(state, step)
