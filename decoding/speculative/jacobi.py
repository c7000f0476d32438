"""Jacobi decoding and lookahead decoding as drafters of the shared verification loop.

Jacobi (Santilli et al. 2023): keep a window of W guesses for the next positions; one target
forward over [root, guesses] gives, at every node, the target's prediction for the following
position (a Jacobi iteration y_i <- argmax p(. | y_<i)). The verifier accepts the longest
prefix the target agrees with (plus one token), and the predictions beyond it become the next
guesses. Verified with the deterministic rule this is exact under greedy (the classic claim)
and under sampling too.

Lookahead (Fu et al. 2024), simplified: the same Jacobi window is one branch of a token tree
whose other branches are n-grams from a pool keyed by the root token; every step the Jacobi
branch's predictions (the newest trajectory level) feed the pool with its n-grams. The
original collects n-grams along the diagonals of an (N - 1)-level window computed in the same
forward; we keep one level (docs/speculative.md).

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
  token (pool_ok marks filled entries); ptr_BxV: next slot to overwrite per key."""
  guess_BxW: jax.Array
  pool_BxVxPxL: jax.Array
  pool_ok_BxVxP: jax.Array
  ptr_BxV: jax.Array


@dataclasses.dataclass(frozen=True)
class LookaheadDrafter(drafter_lib.Drafter):
  """Jacobi window + n-gram pool, all verified as one token trie (see module docstring)."""
  kind: ClassVar[str] = 'lookahead'
  window: int = 5
  ngram: int = 3
  pool: int = 4

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

  def init(self, env, prefill, first_B):
    B, V = first_B.shape[0], env.target.cfg.vocab_size
    L = max(self.ngram - 1, 1)
    return LookaheadState(
        guess_BxW=jnp.broadcast_to(first_B[:, None], (B, self.window)),
        pool_BxVxPxL=jnp.zeros((B, V, self.pool, L), jnp.int32),
        pool_ok_BxVxP=jnp.zeros((B, V, self.pool), bool),
        ptr_BxV=jnp.zeros((B, V), jnp.int32))

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
    b = jnp.arange(B)

    def insert(i, s):
      pool, pool_ok, ptr = s
      key = level[:, i]
      cont = jax.lax.dynamic_slice_in_dim(level, i + 1, L, axis=1)  # [B, L]
      have = jnp.any(jnp.all(pool[b, key] == cont[:, None], axis=-1) & pool_ok[b, key], -1)
      write = step.active_B & ~have
      slot = ptr[b, key]
      key_w = jnp.where(write, key, pool.shape[1])
      pool = pool.at[b, key_w, slot].set(cont, mode='drop')
      pool_ok = pool_ok.at[b, key_w, slot].set(True, mode='drop')
      ptr = ptr.at[b, key_w].set((slot + 1) % self.pool, mode='drop')
      return pool, pool_ok, ptr

    pool, pool_ok, ptr = jax.lax.fori_loop(
        0, n_grams, insert, (state.pool_BxVxPxL, state.pool_ok_BxVxP, state.ptr_BxV))
    return LookaheadState(guess_BxW=guess, pool_BxVxPxL=pool, pool_ok_BxVxP=pool_ok,
                          ptr_BxV=ptr)


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

  def update(self, env, state, step):
    cands, ok = self._candidates(state, step.tree.tokens_BxT[:, 0])
    rep = trees.representative(cands, ok)[:, -1, :self.window]  # Jacobi branch nodes [B, W]
    pred = jnp.argmax(step.out.logits_BxTxV, axis=-1).astype(jnp.int32)
    guess = _next_guesses(pred, rep, step.keep_B, state.guess_BxW, step.active_B)
    # The Jacobi branch's own verdict: guess i + 1 stands if the target's prediction at the
    # branch node of depth i (the root for i = 0) equals it.
    B, W = state.guess_BxW.shape
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
    b = jnp.arange(B)
    pool, pool_ok, ptr = state.pool_BxVxPxL, state.pool_ok_BxVxP, state.ptr_BxV
    have = jnp.any(jnp.all(pool[b, key] == cont[:, None], axis=-1) & pool_ok[b, key], -1)
    write = step.active_B & (accepted_B < W - 1) & ~have  # a tail of >= 2 guesses
    slot = ptr[b, key]
    key_w = jnp.where(write, key, pool.shape[1])
    pool = pool.at[b, key_w, slot].set(cont, mode='drop')
    pool_ok = pool_ok.at[b, key_w, slot].set(True, mode='drop')
    ptr = ptr.at[b, key_w].set((slot + 1) % self.pool, mode='drop')
    return LookaheadState(guess_BxW=guess, pool_BxVxPxL=pool, pool_ok_BxVxP=pool_ok,
                          ptr_BxV=ptr)
