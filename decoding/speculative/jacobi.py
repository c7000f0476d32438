"""Jacobi decoding and lookahead decoding as drafters of the shared verification loop.

Jacobi (Santilli et al. 2023): keep a window of W guesses for the next positions; one target
forward over [root, guesses] gives, at every node, the target's prediction for the following
position (a Jacobi iteration y_i <- argmax p(. | y_<i)). The verifier accepts the longest
prefix the target agrees with (plus one token), and the predictions beyond it become the next
guesses. Verified with the deterministic rule this is exact under greedy (the classic claim)
and under sampling too.

Lookahead (Fu et al. 2024): n-grams from a pool keyed by the root token are verified as one
token trie, with the Jacobi window as one more branch. The pool is fed by the lookahead
branch, `lookahead` chains of N - 1 guesses (N = `ngram`) computed in the same forward but
never verified: chain c holds the diagonal of the paper's 2D window, guesses for the
positions root + c .. root + c + N - 2, each attending to the committed prefix, the root and
its chain predecessors. The target's prediction after a chain's last guess completes an
n-gram (the chain plus it) for the pool, and becomes the chain's newest guess as its oldest
leaves (one Jacobi iteration of every diagonal per step). The chains' slots lie past the
tree's, so no cache entry of theirs is ever committed. The Jacobi branch's predictions (one
trajectory level) feed the pool too. `lookahead=0` keeps that level alone (the first
version here).

Jacobi Forcing's decoder (Hu et al. 2025): a window of several Jacobi blocks plus rejection
recycling, a pool of the window's rejected tails verified as extra trie branches. Meant for a
model trained with the `jacobi_forcing` objective (configs/jacobi_forcing.py), lossless on any.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import flax.struct
import jax
import jax.numpy as jnp

from decoding.speculative import drafter as drafter_lib
from decoding.speculative import trees
from decoding.speculative import verify as verify_lib
from models import masks


@flax.struct.dataclass
class JacobiState:
  """guess_BxW: guesses for positions base + 1 .. base + W (base: the root's position)."""
  guess_BxW: jax.Array


def _next_guesses(pred_BxT: jax.Array, node_of_BxL: jax.Array, keep_B: jax.Array,
                  old_BxC: jax.Array, active_B: jax.Array) -> jax.Array:
  """Guesses after a step, [B, C]: the prediction made at the Jacobi node of depth keep + j
  for position new_base + 1 + j; beyond the L verified nodes (node_of_BxL: the node index of
  depths 1..L) the last prediction is repeated. C >= L: the state may hold more guesses than
  one step verifies (an adaptive window, `JacobiDrafter.state_nodes`)."""
  L, C = node_of_BxL.shape[1], old_BxC.shape[1]
  depth_BxC = keep_B[:, None] + jnp.arange(C)[None]  # node depth whose prediction we need
  # Jacobi node at depth l (1..L) is node_of[l - 1]; depth 0 is the root (node 0).
  node_BxC = jnp.where(depth_BxC == 0, 0, jnp.take_along_axis(
      node_of_BxL, jnp.clip(depth_BxC - 1, 0, L - 1), axis=1))
  node_BxC = jnp.where(depth_BxC <= L, node_BxC, node_of_BxL[:, -1:])
  new = jnp.take_along_axis(pred_BxT, node_BxC, axis=1)
  return jnp.where(active_B[:, None], new, old_BxC)


def _shift_guesses(old_BxC: jax.Array, keep_B: jax.Array, active_B: jax.Array) -> jax.Array:
  """Guesses after a step that verified none of them (an AR step) and committed keep_B
  tokens, [B, C]: old guess keep + j for new position j (the last one repeated beyond C)."""
  C = old_BxC.shape[1]
  src_BxC = jnp.minimum(keep_B[:, None] + jnp.arange(C)[None], C - 1)
  return jnp.where(active_B[:, None], jnp.take_along_axis(old_BxC, src_BxC, axis=1), old_BxC)


@dataclasses.dataclass(frozen=True)
class JacobiDrafter(drafter_lib.ChainDrafter):
  """Jacobi iteration over a window of `window` guesses (a chain).

  state_nodes: nodes of the longest window the state serves (0 = this one's): the state keeps
  max(window, state_nodes - 1) guesses and a step verifies the first `window`, so that windows
  of several lengths share one state (adaptive.py; an AR step, which verifies no guess,
  moves them on by the token it commits)."""
  kind: ClassVar[str] = 'jacobi'
  chain_field: ClassVar[str] = 'window'
  window: int = 5
  state_nodes: int = 0

  def init(self, env, prefill, first_B):
    C = max(self.window, self.state_nodes - 1)
    return JacobiState(jnp.broadcast_to(first_B[:, None], (first_B.shape[0], C)))

  def propose(self, env, state, cache, root_B, base_B, active_B):
    tokens = jnp.concatenate([root_B[:, None], state.guess_BxW[:, :self.window]], axis=1)
    tree = trees.from_template(trees.chain(self.window), tokens,
                               jnp.broadcast_to(active_B[:, None], tokens.shape))
    return tree, state, cache, jnp.zeros_like(base_B)

  def update(self, env, state, step):
    B, T = step.out.logits_BxTxV.shape[:2]
    if T == 1:  # an AR step (adaptive.py): no guess was verified, the root moved one on
      return JacobiState(_shift_guesses(state.guess_BxW, step.keep_B, step.active_B))
    pred = jnp.argmax(step.out.logits_BxTxV, axis=-1).astype(jnp.int32)
    W = self.window
    node_of = jnp.broadcast_to(jnp.arange(1, W + 1, dtype=jnp.int32), (B, W))
    return JacobiState(_next_guesses(pred, node_of, step.keep_B, state.guess_BxW,
                                     step.active_B))


@flax.struct.dataclass
class LookaheadState:
  """guess_BxW: the Jacobi window; pool_BxVxPxL: n-gram continuations keyed by their first
  token (pool_ok marks filled entries); ptr_BxV: next slot to overwrite per key;
  chains_BxCxL: the lookahead branch's C chains of L = N - 1 guesses; ahead_BxC: the target's
  prediction after each chain's last guess in the latest forward."""
  guess_BxW: jax.Array
  pool_BxVxPxL: jax.Array
  pool_ok_BxVxP: jax.Array
  ptr_BxV: jax.Array
  chains_BxCxL: jax.Array
  ahead_BxC: jax.Array


def _insert_ngrams(pool, pool_ok, ptr, keys_BxN, conts_BxNxL, write_BxN, size: int):
  """Pool after inserting n-grams (key, continuation) one after another where `write`, each
  into its key's next slot (round robin over `size`), skipping ones already held."""
  B = keys_BxN.shape[0]
  b = jnp.arange(B)

  def insert(i, s):
    pool, pool_ok, ptr = s
    key, cont = keys_BxN[:, i], conts_BxNxL[:, i]
    have = jnp.any(jnp.all(pool[b, key] == cont[:, None], axis=-1) & pool_ok[b, key], -1)
    write = write_BxN[:, i] & ~have
    slot = ptr[b, key]
    key_w = jnp.where(write, key, pool.shape[1])
    pool = pool.at[b, key_w, slot].set(cont, mode='drop')
    pool_ok = pool_ok.at[b, key_w, slot].set(True, mode='drop')
    ptr = ptr.at[b, key_w].set((slot + 1) % size, mode='drop')
    return pool, pool_ok, ptr

  return jax.lax.fori_loop(0, keys_BxN.shape[1], insert, (pool, pool_ok, ptr))


@dataclasses.dataclass(frozen=True)
class LookaheadDrafter(drafter_lib.Drafter):
  """Jacobi window + n-gram pool, all verified as one token trie (see module docstring)."""
  kind: ClassVar[str] = 'lookahead'
  window: int = 5
  ngram: int = 3
  pool: int = 4
  lookahead: int = 5  # chains of the lookahead branch (the paper's W); 0 = none

  @property
  def length(self) -> int:
    """Candidate length in the trie: max(window, ngram - 1)."""
    return max(self.window, self.ngram - 1)

  @property
  def max_nodes(self) -> int:
    return 1 + (self.pool + 1) * self.length

  @property
  def max_depth(self) -> int:
    return self.length

  @property
  def max_children(self) -> int:
    return self.pool + 1

  def _branch(self, env) -> tuple[int, int]:
    """(C, L): the lookahead branch's chains and their length (C = 0: no branch; recurrent
    targets, whose per-token states roll back along the tree only, get none)."""
    L = max(self.ngram - 1, 1)
    if self.lookahead == 0 or verify_lib.is_recurrent(env.target.cfg):
      return 0, L
    return self.lookahead, L

  def extra_cache_slots(self) -> int:
    return self.max_nodes + self.lookahead * max(self.ngram - 1, 1)

  def init(self, env, prefill, first_B):
    B, V = first_B.shape[0], env.target.cfg.vocab_size
    C, L = self._branch(env)
    # The chains start as the prompt's last C * L tokens, wrapped around a shorter prompt:
    # real n-grams of the context, each extended by the target at the first step.
    n = env.prompt_len_B[:, None]
    idx = jnp.mod(n - C * L + jnp.arange(C * L)[None], jnp.maximum(n, 1))
    chains = jnp.take_along_axis(env.prompt_BxP, idx, axis=1).reshape(B, C, L)
    return LookaheadState(
        guess_BxW=jnp.broadcast_to(first_B[:, None], (B, self.window)),
        pool_BxVxPxL=jnp.zeros((B, V, self.pool, L), jnp.int32),
        pool_ok_BxVxP=jnp.zeros((B, V, self.pool), bool),
        ptr_BxV=jnp.zeros((B, V), jnp.int32),
        chains_BxCxL=chains.astype(jnp.int32), ahead_BxC=jnp.zeros((B, C), jnp.int32))

  def target_forward(self, env, state, cache, tree, base_B, active_B):
    """The tree and, past it, the lookahead branch in one forward; the tree's outputs go to
    verification, the branch's predictions into the state."""
    C, L = self._branch(env)
    if C == 0:
      return super().target_forward(env, state, cache, tree, base_B, active_B)
    B, T = tree.tokens_BxT.shape
    inp = verify_lib.tree_inputs(tree, base_B, active_B, cache.size, chain=False)
    # Chain c (0-based) guesses positions base + c + 1 .. base + c + L; it sees the root and
    # its own earlier guesses (the prefix comes with the cache mask).
    c_N, l_N = jnp.repeat(jnp.arange(C), L), jnp.tile(jnp.arange(L), C)
    pos_BxN = jnp.where(active_B[:, None], base_B[:, None] + 1 + c_N + l_N, -1)
    chain_NxN = (c_N[:, None] == c_N[None]) & (l_N[None] <= l_N[:, None])
    N = C * L
    local = jnp.zeros((B, T + N, T + N), bool)
    local = local.at[:, :T, :T].set(trees.ancestor_mask(tree))
    local = local.at[:, T:, 0].set(tree.valid_BxT[:, :1])
    local = local.at[:, T:, T:].set(jnp.broadcast_to(chain_NxN, (B, N, N)))
    tokens = jnp.concatenate([tree.tokens_BxT, state.chains_BxCxL.reshape(B, N)], axis=1)
    out = env.target.apply(
        {'params': env.target_params}, tokens,
        jnp.concatenate([inp['positions'], pos_BxN], axis=1), cache=cache,
        write_slots_BxT=base_B[:, None] + jnp.arange(T + N, dtype=jnp.int32)[None],
        attn_mask=masks.block_to_cache_mask(local, base_B, cache.size))
    last = T + jnp.arange(C) * L + L - 1  # each chain's last guess
    ahead = jnp.argmax(out.logits_BxTxV[:, last], axis=-1).astype(jnp.int32)
    out = out.replace(logits_BxTxV=out.logits_BxTxV[:, :T],
                      last_hidden_BxTxD=out.last_hidden_BxTxD[:, :T])
    return out, state.replace(ahead_BxC=ahead)

  def _candidates(self, state, root_B):
    B = root_B.shape[0]
    Lc = self.length
    b = jnp.arange(B)
    pool = state.pool_BxVxPxL[b, root_B]  # [B, P, L]
    ok = state.pool_ok_BxVxP[b, root_B]  # [B, P]
    L = pool.shape[2]
    pad = Lc - L
    pool = jnp.pad(pool, ((0, 0), (0, 0), (0, pad)))
    pool_ok = jnp.pad(jnp.broadcast_to(ok[:, :, None], (B, self.pool, L)),
                      ((0, 0), (0, 0), (0, pad)))
    jac = jnp.pad(state.guess_BxW, ((0, 0), (0, Lc - self.window)))[:, None]
    jac_ok = (jnp.arange(Lc) < self.window)[None, None].repeat(B, 0)
    cands = jnp.concatenate([pool, jac], axis=1)  # Jacobi branch last
    cands_ok = jnp.concatenate([pool_ok, jac_ok], axis=1)
    return cands, cands_ok

  def propose(self, env, state, cache, root_B, base_B, active_B):
    cands, ok = self._candidates(state, root_B)
    tree = trees.trie(cands, ok & active_B[:, None, None], root_B)
    tree = tree.replace(valid_BxT=tree.valid_BxT.at[:, 0].set(active_B))
    return tree, state, cache, jnp.zeros_like(base_B)

  def update(self, env, state, step):
    cands, ok = self._candidates(state, step.tree.tokens_BxT[:, 0])
    rep = trees.representative(cands, ok)[:, -1, :self.window]  # Jacobi branch nodes [B, W]
    pred = jnp.argmax(step.out.logits_BxTxV, axis=-1).astype(jnp.int32)
    guess = _next_guesses(pred, rep, step.keep_B, state.guess_BxW, step.active_B)
    # The newest trajectory level: the target's predictions after the root and along the
    # Jacobi branch; its n-grams go into the pool.
    level = jnp.concatenate([pred[:, :1], jnp.take_along_axis(pred, rep, axis=1)], axis=1)
    L = state.pool_BxVxPxL.shape[3]
    n_grams = level.shape[1] - L
    B = level.shape[0]
    keys = level[:, :max(n_grams, 0)]
    conts = jnp.stack([level[:, i + 1:i + 1 + L] for i in range(n_grams)], axis=1) \
        if n_grams > 0 else jnp.zeros((B, 0, L), jnp.int32)
    # The lookahead branch's n-grams (each chain and the prediction after it) go in first,
    # the Jacobi level's after them; then every chain moves on by that prediction.
    chains, ahead = state.chains_BxCxL, state.ahead_BxC
    C = chains.shape[1]
    if C:
      full = jnp.concatenate([chains, ahead[:, :, None]], axis=2)  # [B, C, L + 1]
      keys = jnp.concatenate([full[:, :, 0], keys], axis=1)
      conts = jnp.concatenate([full[:, :, 1:], conts], axis=1)
      chains = jnp.where(step.active_B[:, None, None], full[:, :, 1:], chains)
    write = jnp.broadcast_to(step.active_B[:, None], keys.shape)
    pool, pool_ok, ptr = _insert_ngrams(state.pool_BxVxPxL, state.pool_ok_BxVxP,
                                        state.ptr_BxV, keys, conts, write, self.pool)
    return state.replace(guess_BxW=guess, pool_BxVxPxL=pool, pool_ok_BxVxP=pool_ok,
                         ptr_BxV=ptr, chains_BxCxL=chains)


@dataclasses.dataclass(frozen=True)
class JacobiForcingDrafter(LookaheadDrafter):
  """Jacobi Forcing's decoder (Hu et al. 2025): a Jacobi window of `window` = blocks x block
  guesses plus rejection recycling, verified as one token trie.

  Multi-block: the K blocks of n are one window of K * n guesses iterated together (block k
  is guessed on top of the unconverged guesses before it) and verified as one chain; the
  paper's policy of starting block k + 1 only once block k has ceil(r * n) accepted tokens
  (a compute saving of its padded batch) is not modelled. Rejection recycling: after each
  step, the Jacobi window's rejected tail (its guesses from the first one the target
  rejected on) goes into a pool keyed by its first token; when a later root equals that
  token, the rest of the tail is verified as one more branch of the trie (`pool` branches
  per root). The pool's entries are `window` tokens long (`ngram` = window + 1).
  """
  kind: ClassVar[str] = 'jacobi_forcing'
  lookahead: int = 0

  def update(self, env, state, step):
    cands, ok = self._candidates(state, step.tree.tokens_BxT[:, 0])
    rep = trees.representative(cands, ok)[:, -1, :self.window]  # Jacobi branch nodes [B, W]
    pred = jnp.argmax(step.out.logits_BxTxV, axis=-1).astype(jnp.int32)
    guess = _next_guesses(pred, rep, step.keep_B, state.guess_BxW, step.active_B)
    # The Jacobi branch's own verdict: guess i + 1 stands if the target's prediction at the
    # branch node of depth i (the root for i = 0) equals it.
    W = state.guess_BxW.shape[1]
    before = jnp.concatenate([pred[:, :1], jnp.take_along_axis(pred, rep, axis=1)[:, :-1]], 1)
    match = jnp.cumprod((before == state.guess_BxW).astype(jnp.int32), axis=1)
    accepted_B = jnp.sum(match, axis=1)  # guesses of the branch that stand
    # Rejected tail g[a], g[a + 1], ... (0-based a = accepted): key g[a], continuation the
    # rest, padded with its last token to the pool's length.
    L = state.pool_BxVxPxL.shape[3]
    src = jnp.minimum(accepted_B[:, None] + 1 + jnp.arange(L)[None], W - 1)
    cont = jnp.take_along_axis(state.guess_BxW, src, axis=1)  # [B, L]
    key = jnp.take_along_axis(state.guess_BxW, jnp.minimum(accepted_B, W - 1)[:, None],
                              axis=1)[:, 0]
    write = step.active_B & (accepted_B < W - 1)  # a tail of >= 2 guesses
    pool, pool_ok, ptr = _insert_ngrams(state.pool_BxVxPxL, state.pool_ok_BxVxP,
                                        state.ptr_BxV, key[:, None], cont[:, None],
                                        write[:, None], self.pool)
    return state.replace(guess_BxW=guess, pool_BxVxPxL=pool, pool_ok_BxVxP=pool_ok,
                         ptr_BxV=ptr)
