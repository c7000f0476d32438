"""Self-speculation by early exit: LayerSkip, Kangaroo and DEL (chains).

The draft is the target's own first E layers. Drafting runs layers [0, E) one token at a
time *into the target's cache* (those K/V are exactly what the full forward would write), and
turns the residual stream after layer E into a distribution either through the model's final
norm and head (LayerSkip) or through a trained Kangaroo adapter (one attention layer with its
own cache, two norms, the shared head). Drafting stops at `gamma` tokens or, per row, once the
top-1 probability falls below `stop_below` (Kangaroo: 0.6).

Verification reuses the shallow work: layers [0, E) run only on the one drafted token they
have not seen (the last), then layers [E, L) run on the whole chain from the cached shallow
hidden states. The deterministic rule verifies (lossless).

`draft_vocab=N`: the draft scores only the N most frequent tokens of the target's training
data (FR-Spec's frequency-ranked head, `models.draft_vocab`): N x D of the head per draft
token instead of V x D, the largest part of an early-exit draft on a large vocabulary; DEL's
shadow tokens read the same rows at every candidate exit. Verification reads the whole head
as before (lossless).

DEL (Zarch et al. 2025) picks the exit layer and the draft length every step from
per-layer acceptance estimated on "shadow tokens": after each verification the hidden state
after every layer at the accepted nodes goes through the shared head, and each candidate
exit's agreement with the committed tokens updates a running acceptance rate. The step then
uses the (exit, length) maximising tokens per unit of compute,
(1 - a^(g+1)) / (1 - a) / (g E / L + 1). One exit per batch (`switch_in_place` over the
candidates), so sampled DEL outputs depend on the batch (greedy ones never do).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import flax.struct
import jax
import jax.numpy as jnp

from decoding import base
from decoding.speculative import drafter as drafter_lib
from decoding.speculative import trees
from decoding.speculative import verify as verify_lib
from models import cache as cache_lib
from models import draft_vocab as draft_vocab_lib
from models import heads as heads_lib
from models import kind as kind_lib


@flax.struct.dataclass
class ExitState:
  """h_BxTxD: residual stream after the exit layer for this step's chain nodes;
  hs_BxTxLxD: DEL only: the residual stream entering every layer (L + 1 entries) per node;
  adapter: the Kangaroo adapter's cache (() without adapter);
  exit_idx: DEL's chosen exit (index into `exits`) for this step; rate_BxE, seen_BxE: DEL's
  running agreement of each candidate exit; exit_hist_BxE: steps run at each exit;
  limit_B: this step's draft length; shadow_ExBxT: each candidate exit's prediction at every
  node of this step (-1 where not observable); head_VdxD: the head's rows over the draft
  vocabulary (`draft_vocab`, gathered once per generation; () without one)."""
  h_BxTxD: jax.Array
  hs_BxTxLxD: jax.Array
  adapter: Any
  exit_idx: jax.Array
  rate_BxE: jax.Array
  seen_BxE: jax.Array
  exit_hist_BxE: jax.Array
  limit_B: jax.Array
  shadow_ExBxT: jax.Array
  head_VdxD: Any = ()


@dataclasses.dataclass(frozen=True)
class EarlyExitDrafter(drafter_lib.ChainDrafter):
  """See module docstring. `exits` has one layer (LayerSkip/Kangaroo) or several (DEL)."""
  kind: ClassVar[str] = 'early_exit'
  # An AR step (adaptive length 0) goes through `target_forward` with the root alone.
  forwards_root_only: ClassVar[bool] = True
  exits: tuple[int, ...] = (1,)
  gamma: int = 4
  stop_below: float = 0.0
  adapter: bool = False  # Kangaroo
  prior: float = 0.5     # DEL: acceptance assumed before any evidence
  loop: str = 'auto'     # the drafting loop (drafter.draft_loop)
  state_nodes: int = 0   # chain nodes the per-node state holds (0 = gamma + 1), so that the
                         # chain lengths of an adaptive length share one state
  num_layers: int = 0    # the target's layers (set by `resolve`; for `step_cost`)
  draft_vocab: int = 0   # draft over the N most frequent tokens (models.draft_vocab; 0 = all)

  @property
  def dynamic(self) -> bool:
    return len(self.exits) > 1

  @property
  def shares_state_across_lengths(self) -> bool:
    """One exit: the per-node state is sized by `state_nodes`, so every chain length shares
    it. DEL picks its own length each step: an adaptive length over it is refused."""
    return not self.dynamic

  @property
  def ar_step_ok(self) -> bool:
    """Kangaroo's adapter keeps a cache of its own that must see every token."""
    return not self.adapter and not self.dynamic

  def step_cost(self, target_cost: float) -> float:
    """gamma draft tokens and the last one through the E of L layers, the other L - E layers
    over the chain: (gamma + 1) E / L + (1 - E / L) target_cost (`Drafter.step_cost`)."""
    if not self.num_layers:
      raise ValueError('step_cost needs a resolved drafter (num_layers).')
    f = self.exits[0] / self.num_layers
    return (self.gamma + 1) * f + (1.0 - f) * target_cost

  def resolve(self, models):
    """exits (0,) = half the layers; () = every layer 1 .. L-1 (DEL)."""
    L = models.target.cfg.num_layers
    out = dataclasses.replace(self, num_layers=L)
    if self.exits == (0,):
      return dataclasses.replace(out, exits=(max(L // 2, 1),))
    if not self.exits:
      return dataclasses.replace(out, exits=tuple(range(1, L)))
    return out

  def check(self, models, params):
    L = models.target.cfg.num_layers
    for e in self.exits:
      if not 0 < e < L:
        raise ValueError(f'Exit layer {e} must be in [1, {L - 1}] for a {L}-layer target.')
    if verify_lib.is_recurrent(models.target.cfg):
      raise ValueError('Early-exit drafting reuses the target cache slot by slot; targets '
                       'with recurrent layers are not supported (use a separate draft model).')
    if self.draft_vocab:
      draft_vocab_lib.run_ids(params, self.draft_vocab, 'Early-exit drafting')
    if self.adapter:
      if heads_lib.KANGAROO not in params:
        raise ValueError("The 'kangaroo' drafter needs an adapter in the target run: "
                         f'{kind_lib.train_heads_hint((heads_lib.KANGAROO,))}.')

  def prefill_kwargs(self):
    return {'return_hidden': True} if self.adapter else {}

  def _adapter_apply(self, env, x, positions, adapter_cache, slots=None, out_emb=None):
    cfg = env.target.cfg
    if out_emb is None:
      out_emb = heads_lib.output_embedding(env.target_params, cfg)
    return heads_lib.KangarooAdapter(cfg).apply(
        {'params': env.params[heads_lib.KANGAROO]}, x, positions, out_emb, cache=adapter_cache,
        write_slots_BxT=slots)

  def _head_rows(self, env):
    """[N, D] rows of the head over the draft vocabulary (() without one)."""
    if not self.draft_vocab:
      return ()
    return draft_vocab_lib.run_head_rows(
        env.params, self.draft_vocab,
        heads_lib.output_embedding(env.target_params, env.target.cfg), 'Early-exit drafting')

  def init(self, env, prefill, first_B):
    B, D = first_B.shape[0], env.target.cfg.d_model
    adapter = ()
    if self.adapter:
      cfg = heads_lib.adapter_config(env.target.cfg)
      adapter = cache_lib.Cache.init(cfg, B, env.cache_size)
      pos = base.prompt_positions(env.prompt_BxP, env.prompt_len_B)
      _, adapter = self._adapter_apply(env, prefill.hidden[self.exits[0]], pos, adapter)
    E = len(self.exits)
    L1 = env.target.cfg.num_layers + 1 if self.dynamic else 1
    dt = env.target.cfg.compute_dtype
    W = max(self.gamma + 1, self.state_nodes)
    return ExitState(h_BxTxD=jnp.zeros((B, W, D), dt),
                     hs_BxTxLxD=jnp.zeros((B, W, L1, D), dt),
                     adapter=adapter, exit_idx=jnp.int32(E - 1),
                     rate_BxE=jnp.full((B, E), self.prior, jnp.float32),
                     seen_BxE=jnp.zeros((B, E), jnp.float32),
                     exit_hist_BxE=jnp.zeros((B, E), jnp.int32),
                     limit_B=jnp.full((B,), self.gamma, jnp.int32),
                     shadow_ExBxT=jnp.full((E, B, W), -1, jnp.int32),
                     head_VdxD=self._head_rows(env))

  # ------------------------------------------------------------------ DEL's choice
  def _choose(self, state, active_B, L):
    """Exit index and draft length maximising expected tokens per unit of compute."""
    w = active_B.astype(jnp.float32)[:, None]
    rate_E = jnp.sum(state.rate_BxE * w, 0) / jnp.maximum(jnp.sum(w), 1.0)
    rate_E = jnp.clip(rate_E, 1e-3, 0.999)
    g = jnp.arange(1, self.gamma + 1, dtype=jnp.float32)  # [G]
    cost_E = jnp.asarray(self.exits, jnp.float32) / L
    tokens_ExG = (1 - rate_E[:, None] ** (g[None] + 1)) / (1 - rate_E[:, None])
    value_ExG = tokens_ExG / (g[None] * cost_E[:, None] + 1.0)
    best = jnp.argmax(value_ExG.reshape(-1))
    e_idx, g_idx = best // self.gamma, best % self.gamma
    return e_idx.astype(jnp.int32), (g_idx + 1).astype(jnp.int32)

  # ------------------------------------------------------------------ drafting
  def _draft(self, exit_layer, env, state, cache, root_B, base_B, active_B, limit_B):
    """Chain drafting through layers [0, exit_layer) of the target, into its cache."""
    G = self.gamma
    B = root_B.shape[0]
    target, p = env.target, env.target_params
    tokens = jnp.zeros((B, G + 1), jnp.int32).at[:, 0].set(root_B)
    valid = jnp.zeros((B, G + 1), bool).at[:, 0].set(active_B)
    h_all = jnp.zeros_like(state.h_BxTxD)
    hs = jnp.zeros_like(state.hs_BxTxLxD)
    rows = state.head_VdxD if self.draft_vocab else None
    hot = (draft_vocab_lib.run_ids(env.params, self.draft_vocab, 'Early-exit drafting')
           if self.draft_vocab else None)
    V = target.cfg.vocab_size

    def body(c):
      j, cache, adapter, tokens, valid, h_all, hs, calls = c
      tok = jax.lax.dynamic_index_in_dim(tokens, j, 1, keepdims=False)
      ok = jax.lax.dynamic_index_in_dim(valid, j, 1, keepdims=False)
      pos = jnp.where(ok, base_B + j, -1)[:, None]
      out = target.apply({'params': p}, tok[:, None], pos, cache=cache,
                         layer_range=(0, exit_layer), return_hidden=True,
                         return_logits=not (self.adapter or self.draft_vocab))
      h = out.hidden[-1]
      logits = out.logits_BxTxV
      if self.adapter:
        logits, adapter = self._adapter_apply(env, h, pos, adapter, out_emb=rows)
      elif self.draft_vocab:
        logits = heads_lib.head_logits(out.last_hidden_BxTxD, rows, target.cfg)
      if self.draft_vocab:
        logits = draft_vocab_lib.expand(logits, hot, V)
      nxt = jnp.argmax(logits[:, 0], -1).astype(jnp.int32)
      keep = ok & (j < limit_B)
      if self.stop_below > 0:
        conf = jnp.max(jax.nn.softmax(logits[:, 0].astype(jnp.float32), -1), -1)
        keep &= conf >= self.stop_below
      tokens = jax.lax.dynamic_update_index_in_dim(tokens, nxt, j + 1, 1)
      valid = jax.lax.dynamic_update_index_in_dim(valid, keep, j + 1, 1)
      h_all = jax.lax.dynamic_update_index_in_dim(h_all, h[:, 0].astype(h_all.dtype), j, 1)
      if self.dynamic:
        layers_BxExD = jnp.stack([x[:, 0] for x in out.hidden], axis=1).astype(hs.dtype)
        node = jax.lax.dynamic_index_in_dim(hs, j, 1, keepdims=False)
        node = node.at[:, :exit_layer + 1].set(layers_BxExD)
        hs = jax.lax.dynamic_update_index_in_dim(hs, node, j, 1)
      return j + 1, out.cache, adapter, tokens, valid, h_all, hs, calls + ok

    def cond(c):
      j, valid = c[0], c[4]
      return (j < G) & jnp.any(jax.lax.dynamic_index_in_dim(valid, j, 1, keepdims=False))

    carry = (jnp.int32(0), cache, state.adapter, tokens, valid, h_all, hs,
             jnp.zeros((B,), jnp.int32))
    _, cache, adapter, tokens, valid, h_all, hs, calls = drafter_lib.draft_loop(
        cond, body, carry, G, self.loop, can_stop_early=self.stop_below > 0 or self.dynamic)
    return cache, adapter, tokens, valid, h_all, hs, calls

  def propose(self, env, state, cache, root_B, base_B, active_B):
    L = env.target.cfg.num_layers
    if self.dynamic:
      e_idx, g = self._choose(state, active_B, L)
      limit_B = jnp.broadcast_to(g, root_B.shape)
      branches = [(lambda e: lambda c: self._draft(e, env, state, c[0], root_B, base_B,
                                                   active_B, limit_B))(e) for e in self.exits]
      # in place: a lax.switch would copy the cache into the chosen branch every step
      G, B = self.gamma, root_B.shape[0]
      cache, adapter, tokens, valid, h_all, hs, calls = base.switch_in_place(
          e_idx, branches, (cache, state.adapter, jnp.zeros((B, G + 1), jnp.int32),
                            jnp.zeros((B, G + 1), bool), state.h_BxTxD, state.hs_BxTxLxD,
                            jnp.zeros((B,), jnp.int32)))
      hist = state.exit_hist_BxE + jax.nn.one_hot(e_idx, len(self.exits), dtype=jnp.int32)[
          None] * active_B[:, None]
    else:
      e_idx = jnp.int32(0)
      limit_B = jnp.full(root_B.shape, self.gamma, jnp.int32)
      cache, adapter, tokens, valid, h_all, hs, calls = self._draft(
          self.exits[0], env, state, cache, root_B, base_B, active_B, limit_B)
      hist = state.exit_hist_BxE + active_B[:, None].astype(jnp.int32)
    tree = trees.from_template(trees.chain(self.gamma), tokens, valid)
    state = state.replace(h_BxTxD=h_all, hs_BxTxLxD=hs, adapter=adapter, exit_idx=e_idx,
                          exit_hist_BxE=hist, limit_B=limit_B)
    return tree, state, cache, calls

  # ------------------------------------------------------------------ verification
  def _verify_forward(self, exit_layer, env, state, cache, tree, base_B, active_B):
    """Layers [0, E) on the last drafted token, then layers [E, L) on the whole chain."""
    G = self.gamma
    target, p = env.target, env.target_params
    L = target.cfg.num_layers
    live = tree.valid_BxT & active_B[:, None]
    positions = jnp.where(live, base_B[:, None] + jnp.arange(G + 1)[None], -1)
    last = target.apply({'params': p}, tree.tokens_BxT[:, G:], positions[:, G:], cache=cache,
                        layer_range=(0, exit_layer), return_hidden=True, return_logits=False)
    h_last = last.hidden[-1]
    adapter = state.adapter
    if self.adapter:
      _, adapter = self._adapter_apply(env, h_last, positions[:, G:], adapter)
    h_all = state.h_BxTxD[:, :G + 1].at[:, G:].set(h_last.astype(state.h_BxTxD.dtype))
    out = target.apply({'params': p}, None, positions, cache=last.cache,
                       inputs_embeds_BxTxD=h_all, layer_range=(exit_layer, L),
                       return_hidden=self.dynamic)
    shadow = jnp.zeros((), jnp.float32)
    if self.dynamic:
      # The residual stream entering every layer at every node: layers <= E from drafting
      # (the last node from the pass above), deeper ones from this forward.
      last_BxExD = jnp.stack([x[:, 0] for x in last.hidden], axis=1)
      hs = state.hs_BxTxLxD.at[:, G, :exit_layer + 1].set(last_BxExD.astype(h_all.dtype))
      deep_BxTxExD = jnp.stack(out.hidden[1:], axis=2).astype(hs.dtype)
      hs = hs.at[:, :, exit_layer + 1:].set(deep_BxTxExD)
      shadow = self._shadow_preds(env, state, hs)
    return out.replace(hidden=None), adapter, shadow

  def _shadow_preds(self, env, state, hs_BxTxLxD):
    """[E, B, T] argmax of the shared head (final norm + output head; its rows over the
    draft vocabulary when there is one) at each candidate exit, for every node: what that
    exit would have drafted there."""
    cfg = env.target.cfg
    if self.draft_vocab:
      out_emb = state.head_VdxD
      hot = draft_vocab_lib.run_ids(env.params, self.draft_vocab, 'Early-exit drafting')
    else:
      out_emb = heads_lib.output_embedding(env.target_params, cfg)
    preds = []
    for e in self.exits:
      normed = heads_lib.final_norm(env.target_params, cfg, hs_BxTxLxD[:, :, e])
      logits = jnp.einsum('BTD,VD->BTV', normed.astype(jnp.float32),
                          out_emb.astype(jnp.float32))
      top = jnp.argmax(logits, -1).astype(jnp.int32)
      preds.append(jnp.take(hot, top) if self.draft_vocab else top)
    return jnp.stack(preds)

  def target_forward(self, env, state, cache, tree, base_B, active_B):
    if tree.tokens_BxT.shape[1] == 1:  # an AR step of an adaptive length: nothing to reuse
      return super().target_forward(env, state, cache, tree, base_B, active_B)
    if self.dynamic:
      branches = [(lambda e: lambda c: self._verify_forward(e, env, state, c[0].cache, tree,
                                                            base_B, active_B))(e)
                  for e in self.exits]
      # in place (see propose); the first exit's output shapes stand for all
      shapes = jax.eval_shape(lambda: self._verify_forward(self.exits[0], env, state, cache,
                                                           tree, base_B, active_B))
      fill = lambda x: jnp.zeros(x.shape, x.dtype)
      out, adapter, shadow = base.switch_in_place(state.exit_idx, branches, (
          shapes[0].replace(logits_BxTxV=fill(shapes[0].logits_BxTxV), cache=cache,
                            last_hidden_BxTxD=fill(shapes[0].last_hidden_BxTxD)),
          state.adapter, jax.tree.map(fill, shapes[2])))
      return out, state.replace(adapter=adapter, shadow_ExBxT=shadow)
    out, adapter, _ = self._verify_forward(self.exits[0], env, state, cache, tree, base_B,
                                           active_B)
    return out, state.replace(adapter=adapter)

  def update(self, env, state, step):
    adapter = state.adapter
    if self.adapter:
      adapter = verify_lib.commit_accepted(adapter, step.base_B, step.verdict.path_BxD1,
                                           step.keep_B, chain=True)
    state = state.replace(adapter=adapter)
    if not self.dynamic:
      return state
    return self._update_rates(state, step, state.shadow_ExBxT)

  def _update_rates(self, state, step, shadow_ExBxT):
    # Node d of the accepted path (d < keep) predicted the committed token new[d].
    D1 = step.verdict.new_BxD1.shape[1]
    kept = (jnp.arange(D1)[None] < step.keep_B[:, None]) & step.active_B[:, None]
    agree = shadow_ExBxT[:, :, :D1] == step.verdict.new_BxD1[None]
    seen = (shadow_ExBxT[:, :, :D1] >= 0) & kept[None]
    hits_BxE = jnp.sum(agree & seen, axis=2).T.astype(jnp.float32)
    n_BxE = jnp.sum(seen, axis=2).T.astype(jnp.float32)
    decay = 0.9
    rate = jnp.where(n_BxE > 0,
                     decay * state.rate_BxE + (1 - decay) * hits_BxE / jnp.maximum(n_BxE, 1),
                     state.rate_BxE)
    return state.replace(rate_BxE=rate, seen_BxE=state.seen_BxE + n_BxE)

  def extra_stats(self, state):
    out = {'exit_steps': state.exit_hist_BxE}
    if self.dynamic:
      out['exit_acceptance'] = state.rate_BxE
    return out
