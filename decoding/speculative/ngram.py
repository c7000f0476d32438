"""Training-free drafters from token statistics: prompt lookup and Token Recycling.

Both propose tokens without a distribution, so they are verified with the deterministic rule
(accept x with probability p(x), else remove x from p): lossless under sampling too.

Prompt lookup (Saxena 2023): find the most recent earlier occurrence of the context's last n
tokens (n = ngram .. 1, longest first) and propose the tokens that followed it.

Token Recycling (Luo et al. 2024): a table [V, k] of each token's latest top-k successors
(from the target's logits), expanded breadth-first into a static tree: the node of rank r
under a node holding token x proposes table[x, r]. After every target forward the rows of
all tree tokens are overwritten with the top-k of the logits the target gave them.
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


@flax.struct.dataclass
class ContextState:
  """ctx_BxS: every committed token at its position (prompt and generated), -1 beyond."""
  ctx_BxS: jax.Array


def init_context(env: drafter_lib.Env, first_B: jax.Array) -> jax.Array:
  B, P = env.prompt_BxP.shape
  S = env.cache_size
  t_1xP = jnp.arange(P)[None]
  ctx = jnp.full((B, S), -1, jnp.int32).at[:, :P].set(
      jnp.where(t_1xP < env.prompt_len_B[:, None], env.prompt_BxP, -1))
  return ctx.at[jnp.arange(B), env.prompt_len_B].set(first_B)


def write_committed(ctx_BxS: jax.Array, step: drafter_lib.Step) -> jax.Array:
  """Writes this step's committed tokens at positions base + 1 .. base + keep."""
  new_BxD1 = step.verdict.new_BxD1
  B, D1 = new_BxD1.shape
  d = jnp.arange(D1)[None]
  pos = jnp.where(d < step.keep_B[:, None], step.base_B[:, None] + 1 + d, ctx_BxS.shape[1])
  return ctx_BxS.at[jnp.arange(B)[:, None], pos].set(new_BxD1, mode='drop')


@dataclasses.dataclass(frozen=True)
class PromptLookupDrafter(drafter_lib.ChainDrafter):
  """Copies the continuation of the latest earlier match of the trailing n-gram (a chain)."""
  kind: ClassVar[str] = 'prompt_lookup'
  gamma: int = 4
  ngram: int = 3

  def init(self, env, prefill, first_B):
    return ContextState(ctx_BxS=init_context(env, first_B))

  def propose(self, env, state, cache, root_B, base_B, active_B):
    ctx = state.ctx_BxS
    B, S = ctx.shape
    G, N = self.gamma, self.ngram
    # The trailing N tokens (oldest first) and, for every earlier slot e, whether the k + 1
    # tokens ending at e equal the trailing k + 1 (k = 0 .. N - 1): one pass of shifted
    # compares for all n-gram lengths at once.
    sfx_BxN = jnp.take_along_axis(
        ctx, jnp.clip(base_B[:, None] - (N - 1) + jnp.arange(N)[None], 0, S - 1), axis=1)
    match, ends = jnp.ones((B, S), bool), []
    for k in range(N):
      back = jnp.pad(ctx, ((0, 0), (k, 0)), constant_values=-2)[:, :S]  # ctx[e - k]
      match = match & (back == sfx_BxN[:, N - 1 - k:N - k])
      ends.append(match)
    e_1x1xS = jnp.arange(S)[None, None]
    n_1xNx1 = jnp.arange(1, N + 1)[None, :, None]
    # The match must end before the suffix does, start at slot >= 0, and the suffix exist.
    ok = (jnp.stack(ends, axis=1) & (e_1x1xS < base_B[:, None, None])
          & (e_1x1xS - n_1xNx1 + 1 >= 0) & (base_B[:, None, None] - n_1xNx1 + 1 >= 0))
    last_end_BxN = jnp.max(jnp.where(ok, e_1x1xS, -1), axis=2)  # latest match per length
    best_n_B = jnp.max(jnp.where(last_end_BxN >= 0, jnp.arange(1, N + 1)[None], 0), axis=1)
    end_B = jnp.take_along_axis(last_end_BxN, jnp.maximum(best_n_B - 1, 0)[:, None], 1)[:, 0]
    idx = end_B[:, None] + 1 + jnp.arange(G)[None]  # what followed the longest latest match
    valid = (best_n_B[:, None] > 0) & (idx <= base_B[:, None]) & active_B[:, None]
    drafts = jnp.take_along_axis(ctx, jnp.clip(idx, 0, S - 1), axis=1)
    tokens = jnp.concatenate([root_B[:, None], jnp.maximum(drafts, 0)], axis=1)
    valid = jnp.concatenate([active_B[:, None], valid], axis=1)
    tree = trees.from_template(trees.chain(G), tokens, valid)
    return tree, state, cache, jnp.zeros_like(base_B)

  def update(self, env, state, step):
    return ContextState(ctx_BxS=write_committed(state.ctx_BxS, step))


@flax.struct.dataclass
class RecyclingState:
  """table_BxVxK: each token's latest top-k successors (per row, so rows stay independent)."""
  table_BxVxK: jax.Array


@dataclasses.dataclass(frozen=True)
class TokenRecyclingDrafter(drafter_lib.TemplateDrafter):
  """Token Recycling: a successor table expanded into a static tree (see module docstring)."""
  kind: ClassVar[str] = 'token_recycling'
  template: trees.Template = dataclasses.field(
      default_factory=lambda: trees.best_first(80, 6, trees.RECYCLING_PROFILE))
  k: int = 8

  def __post_init__(self):
    if self.template.max_rank > self.k:
      raise ValueError(f'The Token Recycling tree uses successor rank '
                       f'{self.template.max_rank - 1} but the table keeps k={self.k}.')

  def _write(self, table_BxVxK, tokens_BxT, logits_BxTxV, valid_BxT):
    top_BxTxK = drafter_lib.top_children(logits_BxTxV, self.k)
    V = table_BxVxK.shape[1]
    B = tokens_BxT.shape[0]
    rows = jnp.where(valid_BxT, tokens_BxT, V)
    return table_BxVxK.at[jnp.arange(B)[:, None], rows].set(top_BxTxK, mode='drop')

  def init(self, env, prefill, first_B):
    B = env.prompt_BxP.shape[0]
    V = env.target.cfg.vocab_size
    table = jnp.zeros((B, V, self.k), jnp.int32)
    valid = jnp.arange(env.prompt_BxP.shape[1])[None] < env.prompt_len_B[:, None]
    return RecyclingState(self._write(table, env.prompt_BxP, prefill.logits_BxTxV, valid))

  def propose(self, env, state, cache, root_B, base_B, active_B):
    tpl = self.template
    B = root_B.shape[0]
    parents, ranks = np.asarray(tpl.parents), np.asarray(tpl.ranks)
    tokens = jnp.zeros((B, tpl.size), jnp.int32).at[:, 0].set(root_B)
    b = jnp.arange(B)[:, None]
    for s, e in tpl.levels()[1:]:
      tokens = tokens.at[:, s:e].set(state.table_BxVxK[b, tokens[:, parents[s:e]],
                                                       ranks[s:e][None, :]])
    tree = trees.from_template(tpl, tokens, jnp.broadcast_to(active_B[:, None], tokens.shape))
    return tree, state, cache, jnp.zeros_like(base_B)

  def update(self, env, state, step):
    valid = step.tree.valid_BxT & step.active_B[:, None]
    return RecyclingState(self._write(state.table_BxVxK, step.tree.tokens_BxT,
                                      step.out.logits_BxTxV, valid))
