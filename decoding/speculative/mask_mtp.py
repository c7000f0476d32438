"""Masked-input multi-token prediction as a lossless drafter ("Your LLM Knows the Future",
arXiv 2507.11851): the target drafts from k <mask> inputs in the same forward that verifies.

The trained tree is a training extra of the target's run (params['mask_mtp']: mask
embeddings, a gated LoRA, the sampler head; models/mask_mtp.py, trained by
configs/mask_mtp.py). Linear decoding, one target forward per step over

  [root, d_1 .. d_n, m_1 .. m_k]      n = k drafts or none; mask j at position base + n + j

The LoRA acts only at the masks (gate m = 1 there) and the masks come after every tree node,
so the tree's logits are exactly the base model's: verification is the usual deterministic
rule (lossless under greedy and sampling). The masks' hidden states predict the k tokens
after the bonus token; they are valid drafts for the next step only if every draft was
accepted (the bonus follows d_n). The sampler head then chains them from the next root:
d'_j = argmax LMhead(sampler([h(m_j); emb(d'_{j-1})])), d'_0 = the root. Otherwise (some
draft rejected, and the first step) the next step verifies the root alone and drafts again:
a step that commits one token. The cache gets the masks' keys past the tree; commit keeps
only the accepted prefix (`verify.commit_accepted`), so they are never visible later.

Quadratic decoding (`quadratic=True`) puts k masks after every chain node instead ((k + 1)^2
inputs; block i sees nodes 0 .. i and its own earlier masks, an explicit mask), so the block
after the last accepted node drafts the next step whatever was accepted.

Drafts are argmax chains (deterministic), verified by the deterministic rule.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import flax.struct
import jax
import jax.numpy as jnp

from decoding import registry
from decoding.speculative import decoders
from decoding.speculative import drafter as drafter_lib
from decoding.speculative import trees
from decoding.speculative import verify as verify_lib
from models import heads as heads_lib
from models import kind as kind_lib
from models import mask_mtp as mask_lib
from models import masks


@flax.struct.dataclass
class MaskState:
  """h_BxKxD: final hidden states of the k masks placed after the current root's parent
  (they predict the k tokens after the root); ready_B: whether h is valid for this step's root
  (else the step drafts nothing); drafts_B: drafts in the tree being verified (0 or k);
  pend_h_BxKxD: the masks of the forward being verified (placed after its last draft)."""
  h_BxKxD: jax.Array
  ready_B: jax.Array
  drafts_B: jax.Array
  pend_h_BxKxD: jax.Array


@dataclasses.dataclass(frozen=True)
class MaskMTPDrafter(drafter_lib.ChainDrafter):
  """See module docstring; `gamma` drafts = masks per forward (<= the trained masks)."""
  kind: ClassVar[str] = mask_lib.MASK_MTP
  gamma: int = 4
  quadratic: bool = False  # k masks after every tree node, not only after the last

  @property
  def mask_blocks(self) -> int:
    return self.gamma + 1 if self.quadratic else 1

  def extra_cache_slots(self) -> int:
    return self.gamma + 1 + self.mask_blocks * self.gamma  # the tree, then the masks

  def check(self, models, params):
    name = mask_lib.MASK_MTP
    if name not in params:
      raise ValueError(f'The {name!r} drafter needs a {name} tree (mask embeddings, gated '
                       f'LoRA, sampler) in the target run: '
                       f'{kind_lib.train_heads_hint((name,))}.')
    cfg = models.target.cfg
    if verify_lib.is_recurrent(cfg):
      raise ValueError("The 'mask_mtp' drafter appends <mask> inputs to the target's own "
                       'forward; targets with recurrent layers are not supported.')
    mask_lib.check_tree(params[name], cfg, "The 'mask_mtp' drafter")
    K = mask_lib.num_masks(params[name])
    if self.gamma > K:
      raise ValueError(f'mask_mtp drafts gamma={self.gamma} tokens but the run has {K} trained '
                       f'masks; lower gamma to <= {K}.')

  def init(self, env, prefill, first_B):
    B, D = first_B.shape[0], env.target.cfg.d_model
    h = jnp.zeros((B, self.gamma, D), prefill.last_hidden_BxTxD.dtype)
    zeros = jnp.zeros((B,), jnp.int32)
    return MaskState(h_BxKxD=h, ready_B=jnp.zeros((B,), bool), drafts_B=zeros,
                     pend_h_BxKxD=jnp.zeros((B, self.mask_blocks) + h.shape[1:], h.dtype))

  def propose(self, env, state, cache, root_B, base_B, active_B):
    G, cfg = self.gamma, env.target.cfg
    tree_p = env.params[mask_lib.MASK_MTP]
    in_emb = heads_lib.input_embedding(env.target_params)
    out_emb = heads_lib.output_embedding(env.target_params, cfg)
    sampler = mask_lib.MaskSampler(cfg)
    prev, toks = root_B, [root_B]
    for j in range(G):
      logits = sampler.apply({'params': tree_p['sampler']}, state.h_BxKxD[:, j:j + 1],
                             prev[:, None], in_emb, out_emb)
      prev = jnp.argmax(logits[:, 0], -1).astype(jnp.int32)
      toks.append(prev)
    tokens = jnp.stack(toks, 1)
    draft = state.ready_B & active_B
    valid = jnp.concatenate([active_B[:, None], jnp.broadcast_to(draft[:, None], (
        draft.shape[0], G))], 1)
    tree = trees.from_template(trees.chain(G), tokens, valid)
    state = state.replace(drafts_B=jnp.where(draft, G, 0).astype(jnp.int32))
    return tree, state, cache, draft.astype(jnp.int32) * G

  def target_forward(self, env, state, cache, tree, base_B, active_B):
    """One forward over the tree and k masks after its last valid node (linear) or after
    every valid node (quadratic), the LoRA at the masks; returns the output over the tree's
    nodes and keeps the masks' hidden states."""
    G, T, N = self.gamma, tree.tokens_BxT.shape[1], self.mask_blocks
    B, M = base_B.shape[0], self.mask_blocks * self.gamma
    inp = verify_lib.tree_inputs(tree, base_B, active_B, cache.size, chain=True)
    j = jnp.arange(1, G + 1, dtype=jnp.int32)[None, None]
    if self.quadratic:  # block i follows node i (positions base + i + j)
      anchor_BxN = jnp.broadcast_to(jnp.arange(N, dtype=jnp.int32)[None], (B, N))
      live_BxN = tree.valid_BxT & active_B[:, None]
    else:  # one block after the last valid node
      anchor_BxN = state.drafts_B[:, None]
      live_BxN = active_B[:, None]
    mask_pos = jnp.where(live_BxN[:, :, None], base_B[:, None, None] + anchor_BxN[:, :, None] + j,
                         -1).reshape(B, M)
    tokens = jnp.concatenate([tree.tokens_BxT, jnp.zeros((B, M), jnp.int32)], 1)
    positions = jnp.concatenate([inp['positions'], mask_pos], 1)
    L = T + M
    gate = jnp.broadcast_to(jnp.arange(L)[None] >= T, (B, L))
    index = jnp.broadcast_to(jnp.concatenate([jnp.zeros((T,), jnp.int32),
                                              jnp.tile(jnp.arange(G), N)])[None], (B, L))
    lora = mask_lib.gated_lora(env.params[mask_lib.MASK_MTP], gate, index)
    if self.quadratic:  # explicit mask: block i sees nodes <= i and its own earlier masks
      slots = base_B[:, None] + jnp.arange(L, dtype=jnp.int32)[None]
      out = env.target.apply({'params': env.target_params}, tokens, positions, cache=cache,
                             write_slots_BxT=slots,
                             attn_mask=masks.block_to_cache_mask(
                                 quadratic_mask(T, G)[None], base_B, cache.size), lora=lora)
    else:  # causal by positions: the masks come after every node
      slots = jnp.concatenate([inp['slots'], jnp.where(mask_pos >= 0, mask_pos, 0)], 1)
      out = env.target.apply({'params': env.target_params}, tokens, positions, cache=cache,
                             write_slots_BxT=slots, lora=lora)
    state = state.replace(pend_h_BxKxD=out.last_hidden_BxTxD[:, T:].reshape(B, N, G, -1).astype(
        state.pend_h_BxKxD.dtype))
    return out.replace(logits_BxTxV=out.logits_BxTxV[:, :T],
                       last_hidden_BxTxD=out.last_hidden_BxTxD[:, :T]), state

  def update(self, env, state, step):
    act = step.active_B
    if self.quadratic:  # the block after the last accepted node precedes the bonus
      block = jnp.clip(step.keep_B - 1, 0, self.gamma)
      full = jnp.ones_like(act)
    else:  # the one block follows the last draft: valid if every draft was accepted
      block = jnp.zeros_like(step.keep_B)
      full = step.keep_B == state.drafts_B + 1
    pend = jnp.take_along_axis(state.pend_h_BxKxD, block[:, None, None, None], 1)[:, 0]
    ready = jnp.where(act, full, state.ready_B)
    h = jnp.where((act & full)[:, None, None], pend, state.h_BxKxD)
    return state.replace(h_BxKxD=h, ready_B=ready)


def quadratic_mask(T: int, G: int) -> jax.Array:
  """[L, L] local attention of quadratic decoding, L = T + T G: the chain's T nodes
  causally, then T blocks of G masks; block i sees nodes 0 .. i and its masks 1 .. j."""
  L = T + T * G
  idx = jnp.arange(L)
  is_mask = idx >= T
  block = jnp.where(is_mask, (idx - T) // G, idx)  # a node's "block" is itself
  node_q = jnp.where(is_mask, block, idx)  # the last node each query sees
  see_node = (~is_mask)[None, :] & (idx[None, :] <= node_q[:, None])
  see_mask = (is_mask[:, None] & is_mask[None, :] & (block[:, None] == block[None, :])
              & (idx[None, :] <= idx[:, None]))
  return see_node | see_mask


@registry.register
@dataclasses.dataclass(frozen=True)
class MaskMTPDecoder(decoders.SpecDecoder):
  """Masked-input multi-token prediction ("Your LLM Knows the Future"): k <mask> inputs
  through a gated LoRA draft the next k tokens in the forward that verifies the current ones;
  linear decoding (needs configs/mask_mtp.py; lossless)."""
  name: ClassVar[str] = 'mask_mtp'
  model_heads: ClassVar[tuple[str, ...]] = (mask_lib.MASK_MTP,)
  drafter_type: ClassVar[type[drafter_lib.Drafter]] = MaskMTPDrafter
  gamma: int = 4               # drafts (= masks) per step, <= the trained masks
  quadratic: bool = False      # masks after every drafted node ((gamma + 1)^2 inputs), so a
                               # partly accepted chain still leaves fresh drafts

  def make_drafter(self, mode):
    del mode  # argmax drafts: every rule verifies them as 'deterministic'
    if self.adaptive:
      raise ValueError("The 'mask_mtp' decoder has no adaptive draft length (its masks are "
                       'sized by gamma); use adaptive=0.')
    return MaskMTPDrafter(gamma=self.gamma, quadratic=self.quadratic)


decoders.DRAFTERS.add('mask_mtp', MaskMTPDecoder)
