"""The verification core shared by every drafter: score a token tree with one target forward,
walk it with the verification rule, commit the accepted path.

Cache layout of a step (B rows, row b has `base[b]` committed slots = committed tokens minus
the root, since the newest token is fed at the next step as in AR decoding):

  slot base + i  holds tree node i (node 0 = the root)  at position base + depth(i).

`commit_accepted` then moves the accepted path to slots base .. base + keep - 1 and sets the
row lengths, so after every step the cache equals the AR cache on all committed slots.

Randomness is tied to (row, position): the accept tests at depth d use
fold_in(token_key(row, base + d), SALT_ACCEPT) and the residual/bonus token at position t
uses token_key(row, t), so a row's output does not depend on the batch it is in.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

import pallas_kernels.spec_verify as spec_verify
from decoding import sampling as sampling_lib
from decoding.speculative import trees
from models import cache as cache_lib
from models import config as config_lib
from models import masks
from models import transformer as transformer_lib

SALT_ACCEPT = 0x5EC1
SALT_DRAFT = 0xD4AF


def uniforms(keys_B: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Uniforms in (0, 1) (never 0: an accept test u <= 0 must fail), one key per row."""
  bits = jax.vmap(lambda k: jax.random.bits(k, shape, jnp.uint32))(keys_B)
  return sampling_lib.uniform_from_bits(bits)


def position_keys(row_keys_B: jax.Array, positions_B: jax.Array, salt: int) -> jax.Array:
  return jax.vmap(jax.random.fold_in)(sampling_lib.token_keys(row_keys_B, positions_B),
                                      jnp.full(positions_B.shape, salt, jnp.uint32))


def accept_uniforms(row_keys_B: jax.Array, base_B: jax.Array, depth: int, width: int
                    ) -> jax.Array:
  """[B, D, K] uniforms: row d serves the children tested at depth d + 1.

  One batched key derivation over all (row, depth) pairs: the same numbers as deriving each
  depth's keys on its own, in one pass of the hash instead of D.
  """
  B = base_B.shape[0]
  rows_BxD = jnp.broadcast_to(row_keys_B[:, None], (B, depth))
  pos_BxD = base_B[:, None] + 1 + jnp.arange(depth, dtype=base_B.dtype)[None]
  keys_BxD = jax.vmap(lambda k, p: position_keys(k, p, SALT_ACCEPT))(rows_BxD, pos_BxD)
  return jax.vmap(lambda k: uniforms(k, (width,)))(keys_BxD)


def is_recurrent(cfg: config_lib.ModelConfig) -> bool:
  """Whether the model has layers whose state cannot be rolled back by slots alone."""
  return any(kind != config_lib.ATTENTION for kind in cfg.layer_types)


def tree_inputs(tree: trees.Tree, base_B: jax.Array, active_B: jax.Array, cache_size: int,
                chain: bool) -> dict[str, Any]:
  """positions, write slots and attention mask of a forward over `tree` (see module doc)."""
  T = tree.tokens_BxT.shape[1]
  live_BxT = tree.valid_BxT & active_B[:, None]
  positions_BxT = jnp.where(live_BxT, base_B[:, None] + tree.depth_BxT, -1)
  slots_BxT = base_B[:, None] + jnp.arange(T, dtype=jnp.int32)[None, :]
  out = dict(positions=positions_BxT, slots=slots_BxT, mask=None)
  if not chain:
    out['mask'] = masks.block_to_cache_mask(trees.ancestor_mask(tree), base_B, cache_size)
  return out


def forward_tree(model: transformer_lib.Transformer, params: Any, cache: cache_lib.Cache,
                 tree: trees.Tree, base_B: jax.Array, active_B: jax.Array, *, chain: bool,
                 **kwargs) -> transformer_lib.ModelOutput:
  """One forward of `model` over every node of `tree` (tree attention unless a chain).

  Recurrent layers get the tree's parents and return per-node states for `commit_accepted`.
  """
  inp = tree_inputs(tree, base_B, active_B, cache.size, chain)
  if is_recurrent(model.cfg):
    kwargs.update(return_step_states=True,
                  parents_BxT=jnp.where(tree.valid_BxT, tree.parents_BxT, -1))
  return model.apply({'params': params}, tree.tokens_BxT, inp['positions'], cache=cache,
                     write_slots_BxT=inp['slots'], attn_mask=inp['mask'], **kwargs)


@flax.struct.dataclass
class Verdict:
  """What verification decided for each row.

  path_BxD1: accepted node indices, path[0] = 0 (root), -1 after the end.
  accepted_B: accepted drafted tokens (n).
  next_B: the token sampled from the residual (correction, or bonus after a full path).
  new_BxD1: the tokens to commit in order: the accepted drafts, then next (n + 1 of them).
  """
  path_BxD1: jax.Array
  accepted_B: jax.Array
  next_B: jax.Array
  new_BxD1: jax.Array


def verify(tree: trees.Tree, target_logits_BxTxV: jax.Array, *,
           sampling: sampling_lib.SamplingConfig, mode: str, depth: int,
           row_keys_B: jax.Array, base_B: jax.Array, chain: bool = False,
           typical: tuple[float, float] | None = None) -> Verdict:
  """Walks `tree` against the target's logits with rule `mode` (see pallas_kernels.spec_verify).

  The same SamplingConfig turns target logits into p here as was applied to the draft's q.
  `chain`: the tree is the chain (-1, 0, 1, ...) and the closed-form chain rule is used.
  Greedy sampling takes the argmax paths below: no probabilities, no random numbers.
  typical: (epsilon, alpha): Medusa's typical acceptance instead of `mode` when sampling
  (`typical_verify`; lossy).
  """
  if sampling.greedy:
    if chain:
      path_BxD1, n_B, next_B = greedy_chain_verify(tree, target_logits_BxTxV, depth)
    else:
      path_BxD1, n_B, next_B = greedy_tree_verify(tree, target_logits_BxTxV, depth)
    return _verdict(tree, path_BxD1, n_B, next_B)
  logp_BxTxV = sampling_lib.log_probs(target_logits_BxTxV, sampling)
  if typical is not None:
    path_BxD1, n_B, res_BxV = typical_verify(tree, logp_BxTxV, depth, *typical)
  else:
    path_BxD1, n_B, res_BxV = _walk(tree, logp_BxTxV, mode=mode, depth=depth,
                                    row_keys_B=row_keys_B, base_B=base_B, chain=chain)
  next_B = sampling_lib.sample_from_log_probs(
      sampling_lib.token_keys(row_keys_B, base_B + n_B + 1), res_BxV)
  return _verdict(tree, path_BxD1, n_B, next_B)


def _walk(tree: trees.Tree, logp_BxTxV: jax.Array, *, mode: str, depth: int,
          row_keys_B: jax.Array, base_B: jax.Array, chain: bool
          ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(path [B, depth + 1], n [B], residual log p [B, V]) of the lossless rule `mode`."""
  logq = None if mode == 'deterministic' else tree.logq_BxTxV
  K = tree.children_BxTxK.shape[2]
  if mode == 'traversal':  # one stream of leaf tests: up to T - 1, laid out as [D, K']
    K = max(K, -(-(tree.tokens_BxT.shape[1] - 1) // depth))
  u_BxDxK = accept_uniforms(row_keys_B, base_B, depth, K)
  if chain:
    n_B, res_BxV = spec_verify.chain_verify(
        logp_BxTxV, None if logq is None else logq[:, :depth], tree.tokens_BxT[:, 1:],
        tree.valid_BxT[:, 1:], u_BxDxK[:, :, 0], mode=mode)
    d_1xD1 = jnp.arange(depth + 1, dtype=jnp.int32)[None]
    return jnp.where(d_1xD1 <= n_B[:, None], d_1xD1, -1), n_B, res_BxV
  return spec_verify.tree_verify(logp_BxTxV, logq, tree.tokens_BxT, tree.children_BxTxK,
                                 u_BxDxK, mode=mode)


def _verdict(tree: trees.Tree, path_BxD1: jax.Array, n_B: jax.Array, next_B: jax.Array
             ) -> Verdict:
  drafted_BxD = jnp.take_along_axis(tree.tokens_BxT, jnp.maximum(path_BxD1[:, 1:], 0), axis=1)
  new_BxD1 = jnp.concatenate([drafted_BxD, jnp.zeros_like(next_B)[:, None]], axis=1)
  new_BxD1 = new_BxD1.at[jnp.arange(new_BxD1.shape[0]), n_B].set(next_B)
  return Verdict(path_BxD1=path_BxD1, accepted_B=n_B, next_B=next_B, new_BxD1=new_BxD1)


def greedy_chain_verify(tree: trees.Tree, target_logits_BxTxV: jax.Array, depth: int
                        ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Greedy verification of a chain: (path [B, depth+1], n [B], next token [B]).

  Draft i is accepted iff it and every draft before it equal the target's argmax after the
  previous node; the next token is the argmax after the last accepted one.
  """
  top_BxT = jnp.argmax(target_logits_BxTxV, axis=-1).astype(jnp.int32)
  match_BxD = (tree.tokens_BxT[:, 1:depth + 1] == top_BxT[:, :depth]) & tree.valid_BxT[:, 1:depth + 1]
  n_B = jnp.sum(jnp.cumprod(match_BxD.astype(jnp.int32), axis=1), axis=1).astype(jnp.int32)
  d_1xD1 = jnp.arange(depth + 1, dtype=jnp.int32)[None]
  path_BxD1 = jnp.where(d_1xD1 <= n_B[:, None], d_1xD1, -1)
  next_B = jnp.take_along_axis(top_BxT, n_B[:, None], axis=1)[:, 0]
  return path_BxD1, n_B, next_B


def greedy_tree_verify(tree: trees.Tree, target_logits_BxTxV: jax.Array, depth: int
                       ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Greedy verification of a whole tree at once: (path [B, depth+1], n [B], next token [B]).

  The same result as walking the tree with the deterministic rule under one-hot p (the
  reference walk tests each node's children in order and descends into the first that equals
  the target's argmax), but without a sequential loop: a node is on the path iff it and each
  of its ancestors is the first matching child of its parent, which one ancestor-mask
  reduction decides for every node. The walk costs depth x children sequential steps of
  V-wide work — on a GPU, hundreds of tiny kernels per step — this costs a handful.
  """
  B, T = tree.tokens_BxT.shape
  top_BxT = jnp.argmax(target_logits_BxTxV, axis=-1).astype(jnp.int32)
  parent_BxT = jnp.maximum(tree.parents_BxT, 0)
  match_BxT = (tree.valid_BxT & (tree.parents_BxT >= 0)
               & (tree.tokens_BxT == jnp.take_along_axis(top_BxT, parent_BxT, axis=1)))
  kids_BxTxK = tree.children_BxTxK
  K = kids_BxTxK.shape[2]
  kid_match = (kids_BxTxK >= 0) & jnp.take_along_axis(
      match_BxT, jnp.maximum(kids_BxTxK, 0).reshape(B, T * K), axis=1).reshape(B, T, K)
  first_k = jnp.argmax(kid_match, axis=-1)  # the first True in test order
  first_kid_BxT = jnp.where(kid_match.any(-1), jnp.take_along_axis(
      kids_BxTxK, first_k[..., None], axis=-1)[..., 0], -1)
  node_T = jnp.arange(T, dtype=jnp.int32)
  chosen_BxT = (node_T[None] == 0) | (
      (tree.parents_BxT >= 0)
      & (jnp.take_along_axis(first_kid_BxT, parent_BxT, axis=1) == node_T[None]))
  anc_BxTxT = trees.ancestor_mask(tree)
  ok_BxT = ~jnp.any(anc_BxTxT & ~chosen_BxT[:, None, :], axis=-1)
  ok_BxT &= (tree.valid_BxT | (node_T[None] == 0)) & (tree.depth_BxT <= depth)
  depth_BxT = jnp.where(ok_BxT, tree.depth_BxT, -1)
  n_B = jnp.max(depth_BxT, axis=1).astype(jnp.int32)
  d_D1 = jnp.arange(depth + 1, dtype=jnp.int32)
  path_BxD1 = jnp.max(jnp.where(depth_BxT[:, None, :] == d_D1[None, :, None], node_T, -1),
                      axis=-1)
  end_B = jnp.take_along_axis(path_BxD1, n_B[:, None], axis=1)[:, 0]
  next_B = jnp.take_along_axis(top_BxT, end_B[:, None], axis=1)[:, 0]
  return path_BxD1, n_B, next_B


def typical_thresholds(logp_BxTxV: jax.Array, epsilon: float, alpha: float) -> jax.Array:
  """[B, T]: min(epsilon, alpha * exp(-H(p))) of each node's next-token distribution p
  (Medusa's typical acceptance; H in nats)."""
  p = jnp.exp(logp_BxTxV)
  entropy = -jnp.sum(jnp.where(p > 0, p * logp_BxTxV, 0.0), axis=-1)
  return jnp.minimum(epsilon, alpha * jnp.exp(-entropy))


def typical_log_probs(logp_BxV: jax.Array, epsilon: float, alpha: float) -> jax.Array:
  """log p restricted to the tokens at or above the typical threshold (-inf elsewhere; not
  renormalised, as the samplers need not): how typical acceptance draws its next tokens."""
  thr = typical_thresholds(logp_BxV, epsilon, alpha)[..., None]
  return jnp.where(jnp.exp(logp_BxV) >= thr, logp_BxV, sampling_lib.NEG_INF)


def typical_verify(tree: trees.Tree, logp_BxTxV: jax.Array, depth: int, epsilon: float,
                   alpha: float) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Medusa's typical acceptance (Cai et al. 2024, section 2.3.1; lossy): a drafted token x
  after node u passes iff p_u(x) > min(epsilon, alpha * exp(-H(p_u))), with p the target's
  distribution after the sampling settings; the accepted path is the deepest whose every
  node passes (ties: the likeliest path under p), and the next token is drawn from p at the
  path's end restricted to the tokens at or above that node's threshold (renormalised;
  the most likely token always is). Not distribution-preserving: it favours the target's
  likelier tokens. Returns (path [B, depth + 1], n [B], the next token's log-probs [B, V]).
  """
  B, T, V = logp_BxTxV.shape
  node_T = jnp.arange(T, dtype=jnp.int32)
  parent_BxT = jnp.maximum(tree.parents_BxT, 0)
  thr_BxT = typical_thresholds(logp_BxTxV, epsilon, alpha)
  flat = parent_BxT * V + jnp.clip(tree.tokens_BxT, 0, V - 1)
  lp_BxT = jnp.take_along_axis(logp_BxTxV.reshape(B, T * V), flat, axis=1)  # log p_parent(x)
  is_root = node_T[None] == 0
  passes_BxT = (tree.valid_BxT & (tree.parents_BxT >= 0)
                & (jnp.exp(lp_BxT) > jnp.take_along_axis(thr_BxT, parent_BxT, axis=1)))
  passes_BxT |= is_root
  anc_BxTxT = trees.ancestor_mask(tree)
  ok_BxT = ~jnp.any(anc_BxTxT & ~passes_BxT[:, None, :], axis=-1)
  ok_BxT &= (tree.valid_BxT | is_root) & (tree.depth_BxT <= depth)
  # The path's log-likelihood under p (the root contributes nothing).
  loglik_BxT = jnp.sum(jnp.where(anc_BxTxT & ~is_root[:, None, :],
                                 jnp.where(is_root, 0.0, lp_BxT)[:, None, :], 0.0), axis=-1)
  n_B = jnp.max(jnp.where(ok_BxT, tree.depth_BxT, -1), axis=1).astype(jnp.int32)
  best_BxT = ok_BxT & (tree.depth_BxT == n_B[:, None])
  end_B = jnp.argmax(jnp.where(best_BxT, loglik_BxT, -jnp.inf), axis=1).astype(jnp.int32)
  on_path_BxT = jnp.take_along_axis(anc_BxTxT, end_B[:, None, None], axis=1)[:, 0]
  on_path_BxT |= is_root
  d_D1 = jnp.arange(depth + 1, dtype=jnp.int32)
  path_BxD1 = jnp.max(jnp.where(on_path_BxT[:, None, :]
                                & (tree.depth_BxT[:, None, :] == d_D1[None, :, None]),
                                node_T, -1), axis=-1)
  end_logp_BxV = jnp.take_along_axis(logp_BxTxV, end_B[:, None, None], axis=1)[:, 0]
  return path_BxD1, n_B, typical_log_probs(end_logp_BxV, epsilon, alpha)


def commit_accepted(cache: cache_lib.Cache, base_B: jax.Array, path_BxD1: jax.Array,
                    keep_B: jax.Array, *, chain: bool, step_states: Any = None,
                    node_slots_BxT: jax.Array | None = None,
                    defer: bool = False) -> cache_lib.Cache:
  """The cache after a verified step: the first `keep` nodes of the accepted path committed.

  The tree's nodes were written at slots base + node (or `node_slots` when a drafter laid its
  own cache out differently); the path's first keep nodes (root included; keep >= 1 for
  active rows, 0 leaves a row as it was) move to slots base .. base + keep - 1 and the row
  length becomes base + keep. Attention layers move slots (`Cache.gather`; skipped for a
  chain, where the path already is a prefix). `defer`: the keys and values move when the next
  forward writes each layer (`Cache.gather(defer=True)`: a loop whose every step begins with a
  forward over this cache, carrying it as `Cache.owing(depth + 1)`).
  Recurrent layers cannot be moved by slot: when the forward returned `step_states` (per-node
  states, see models.delta_cache) each recurrent layer takes the state after the last kept
  node (`Cache.select_step`). This is the single place where rollback happens.
  """
  B, D1 = path_BxD1.shape
  keep_B = jnp.asarray(keep_B, jnp.int32)
  d_1xD1 = jnp.arange(D1, dtype=jnp.int32)[None, :]
  if step_states is not None:
    last_B = jnp.take_along_axis(path_BxD1, jnp.clip(keep_B - 1, 0, D1 - 1)[:, None], 1)[:, 0]
    # keep 0 (inactive row): -1 = the state before the call.
    cache = cache.select_step(jnp.where(keep_B > 0, last_B, -1), step_states)
  lengths_B = (base_B + keep_B).astype(jnp.int32)
  if chain and node_slots_BxT is None:
    return cache.replace(lengths=jnp.minimum(cache.lengths, lengths_B))
  kept_BxD1 = d_1xD1 < keep_B[:, None]
  if node_slots_BxT is None:
    src_BxD1 = base_B[:, None] + path_BxD1
  else:
    src_BxD1 = jnp.take_along_axis(node_slots_BxT, jnp.maximum(path_BxD1, 0), axis=1)
  src_BxD1 = jnp.where(kept_BxD1, src_BxD1, -1)
  dst_BxD1 = jnp.where(kept_BxD1, base_B[:, None] + d_1xD1, -1)
  return cache.gather(src_BxD1, dst_BxD1, jnp.minimum(cache.lengths, lengths_B), defer=defer)
