"""Plain-jnp speculative verification: accept/reject tests and residual distributions.

Every function takes log-probabilities that were already processed by the decoder's sampling
config (temperature, top-k, top-p; -inf outside the support) and uniform random numbers in
(0, 1) drawn by the caller (kernels never draw random numbers themselves). Shapes use the
project's axis alphabet: B batch, G draft length, T tree nodes, K children per node,
D tree depth, V vocabulary.

Verification rules (`mode`), all exact: the committed tokens are distributed as the target p.

  'deterministic'  drafts without a proposal distribution (n-gram, top-k children, heads,
                   greedy drafts). Child x is accepted with probability p(x); on rejection
                   p[x] <- 0 and p is renormalised (EAGLE's rule; for one child it is the same
                   as "sample y ~ p, accept while y == x").
  'iid'            children drawn i.i.d. from q (SpecInfer recursive rejection with
                   replacement). Accept x if u <= p(x)/q(x); else p <- norm(max(0, p - q)) and
                   try the next child. With one child this is Leviathan/Chen chain sampling.
  'wor'            children drawn without replacement from q (Gumbel-top-k; Sequoia, RSD).
                   Like 'iid' but after rejecting x also q[x] <- 0 and q is renormalised.
  'kseq'           SpecTr's K-SEQ for k i.i.d. children: accept the first child with
                   u <= p(x) / (rho q(x)), rho solving 1 - (1 - beta)^k = rho beta with
                   beta(rho) = sum_x min(q(x), p(x)/rho); if none is accepted, sample the
                   residual p - c min(q, p/rho), c = (1 - (1 - beta)^k) / beta (<= rho).
  'traversal'      Traversal Verification (Weng et al. 2025) for children drawn i.i.d. from
                   q: leaf to root with sequence-level acceptance probabilities (see
                   `_traversal_row`). On a chain it is block verification (Sun et al. 2024),
                   in closed form (`_chain_traversal`). GPU kernels: `gpu.chain_traversal`,
                   `gpu.tree_traversal`.

When every child is rejected (or a node has no children) the caller samples one token from the
returned residual: the correction token, or the bonus token after a fully accepted path.
Under greedy sampling p is one-hot, so every rule reduces to "accept iff x == argmax p" and
the residual is the one-hot argmax.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

MODES = ('deterministic', 'iid', 'wor', 'kseq', 'traversal')
_TINY = 1e-30
KSEQ_ITERS = 40  # bisection steps for rho: the bracket [1, k] shrinks to k * 2^-40.


def _check_mode(mode: str) -> None:
  if mode not in MODES:
    raise ValueError(f'Unknown verification mode {mode!r}; choose one of {MODES}.')


def require_logq(draft_logq, mode: str) -> None:
  """Every mode but 'deterministic' reads the draft's q: refuse a missing one."""
  if mode != 'deterministic' and draft_logq is None:
    raise ValueError(f"Verification mode {mode!r} needs the draft's log q for every node.")


def traversal_uniforms(u_BxDxK: jax.Array, T: int) -> jax.Array:
  """u [B, D, K] read as one stream of uniforms per row, [B, D * K]: Traversal Verification
  of T nodes takes one per leaf test, at most T - 1."""
  u_BxN = u_BxDxK.reshape(u_BxDxK.shape[0], -1)
  if u_BxN.shape[1] < T - 1:
    raise ValueError(f'Traversal verification of {T} nodes needs {T - 1} uniforms per row, '
                     f'got {u_BxN.shape[1]} (u has shape {u_BxDxK.shape}).')
  return u_BxN


def _normalise_or(fallback_V: jax.Array, r_V: jax.Array) -> jax.Array:
  """r / sum(r), or `fallback` where r has (numerically) no mass.

  Mathematically the residual is empty only when p <= q everywhere, i.e. p == q, and then the
  rejection that asks for it has probability zero; the fallback only guards round-off.
  """
  r_V = jnp.maximum(r_V, 0.0)
  mass = jnp.sum(r_V, axis=-1, keepdims=True)
  return jnp.where(mass > 1e-12, r_V / jnp.maximum(mass, _TINY), fallback_V)


def _log(x: jax.Array) -> jax.Array:
  return jnp.where(x > 0, jnp.log(jnp.maximum(x, _TINY)), -jnp.inf)


def kseq_beta(p_V: jax.Array, q_V: jax.Array, rho: jax.Array) -> jax.Array:
  """beta(rho) = sum_x min(q(x), p(x) / rho), over the last axis."""
  return jnp.sum(jnp.minimum(q_V, p_V / rho[..., None]), axis=-1)


def kseq_rho(p_V: jax.Array, q_V: jax.Array, k: jax.Array) -> jax.Array:
  """The K-SEQ rho in [1, k] with 1 - (1 - beta)^k <= rho beta (upper end of a bisection).

  f(rho) = 1 - (1 - beta(rho))^k - rho beta(rho) is decreasing, f(1) >= 0 >= f(k); the upper
  end of the bracket keeps f <= 0, which is what makes the residual non-negative.
  Leading axes broadcast; k is the number of i.i.d. children (>= 1).

  At most KSEQ_ITERS halvings; the loop stops early once no bracket changes any more (its
  ends are adjacent floats, so every further halving is a no-op): the same rho as all
  KSEQ_ITERS steps, in the ~25 a float32 bracket of width < 64 needs.
  """
  k = jnp.maximum(jnp.asarray(k, jnp.float32), 1.0)
  lo = jnp.ones(p_V.shape[:-1], jnp.float32)
  hi = jnp.broadcast_to(k, lo.shape).astype(jnp.float32)

  def f(rho):
    beta = kseq_beta(p_V, q_V, rho)
    return 1.0 - (1.0 - beta) ** k - rho * beta

  def body(carry):
    i, lo, hi, _ = carry
    mid = 0.5 * (lo + hi)
    neg = f(mid) <= 0
    new_lo, new_hi = jnp.where(neg, lo, mid), jnp.where(neg, mid, hi)
    return i + 1, new_lo, new_hi, jnp.any((new_lo != lo) | (new_hi != hi))

  _, lo, hi, _ = jax.lax.while_loop(lambda c: (c[0] < KSEQ_ITERS) & c[3], body,
                                    (0, lo, hi, jnp.bool_(True)))
  return hi


def kseq_residual(p_V: jax.Array, q_V: jax.Array, k: jax.Array,
                  rho: jax.Array | None = None) -> jax.Array:
  """The K-SEQ residual distribution after all k i.i.d. children were rejected (`rho`:
  `kseq_rho(p_V, q_V, k)` when the caller has it already)."""
  rho = kseq_rho(p_V, q_V, k) if rho is None else rho
  beta = kseq_beta(p_V, q_V, rho)
  kf = jnp.maximum(jnp.asarray(k, jnp.float32), 1.0)
  c = (1.0 - (1.0 - beta) ** kf) / jnp.maximum(beta, _TINY)
  r = p_V - c[..., None] * jnp.minimum(q_V, p_V / rho[..., None])
  return _normalise_or(p_V, r)


# ----------------------------------------------------------------------------------------
# Chain: one draft per position (G drafts, G + 1 target distributions).
# ----------------------------------------------------------------------------------------

def chain_verify_reference(target_logp_BxG1xV: jax.Array, draft_logq_BxGxV: jax.Array | None,
                           draft_BxG: jax.Array, valid_BxG: jax.Array, u_BxG: jax.Array,
                           *, mode: str = 'iid') -> tuple[jax.Array, jax.Array]:
  """Verifies a chain of drafts in closed form (no loop).

  Args:
    target_logp_BxG1xV: target log p at the root and after each draft (G + 1 rows).
    draft_logq_BxGxV: log q each draft was drawn from; None for deterministic drafts.
    draft_BxG: drafted tokens.
    valid_BxG: drafts that exist (a chain may be shorter in some rows); must be a prefix.
    u_BxG: uniforms in (0, 1), one per draft.
    mode: 'deterministic' or 'iid' (one child per node: 'wor' and 'kseq' are the same as
      'iid'; they are accepted and treated as 'iid'), or 'traversal' (block verification,
      in closed form: `_chain_traversal`).

  Returns:
    (accepted drafts n [B], log of the distribution to sample the next token from [B, V]).
  """
  _check_mode(mode)
  if mode == 'traversal':
    return _chain_traversal(target_logp_BxG1xV, draft_logq_BxGxV, draft_BxG, valid_BxG, u_BxG)
  deterministic = mode == 'deterministic' or draft_logq_BxGxV is None
  B, G = draft_BxG.shape
  p_BxG1xV = jnp.exp(target_logp_BxG1xV.astype(jnp.float32))
  p_x_BxG = jnp.take_along_axis(p_BxG1xV[:, :G], draft_BxG[..., None], axis=-1)[..., 0]
  if deterministic:
    ratio_BxG = p_x_BxG
  else:
    q_BxGxV = jnp.exp(draft_logq_BxGxV.astype(jnp.float32))
    q_x_BxG = jnp.take_along_axis(q_BxGxV, draft_BxG[..., None], axis=-1)[..., 0]
    ratio_BxG = p_x_BxG / jnp.maximum(q_x_BxG, _TINY)
  accept_BxG = (u_BxG <= ratio_BxG) & valid_BxG
  n_B = jnp.sum(jnp.cumprod(accept_BxG.astype(jnp.int32), axis=1), axis=1)
  p_n_BxV = jnp.take_along_axis(p_BxG1xV, n_B[:, None, None], axis=1)[:, 0]
  n_draft_B = jnp.minimum(n_B, G - 1)
  rejected_B = (n_B < G) & jnp.take_along_axis(valid_BxG, n_draft_B[:, None], axis=1)[:, 0]
  x_B = jnp.take_along_axis(draft_BxG, n_draft_B[:, None], axis=1)[:, 0]
  if deterministic:
    r_BxV = p_n_BxV * (1.0 - jax.nn.one_hot(x_B, p_n_BxV.shape[-1], dtype=jnp.float32))
  else:
    q_n_BxV = jnp.take_along_axis(q_BxGxV, n_draft_B[:, None, None], axis=1)[:, 0]
    r_BxV = p_n_BxV - q_n_BxV
  res_BxV = jnp.where(rejected_B[:, None], _normalise_or(p_n_BxV, r_BxV), p_n_BxV)
  return n_B.astype(jnp.int32), _log(res_BxV)


# ----------------------------------------------------------------------------------------
# Tree: walk from the root, testing each visited node's children in order.
# ----------------------------------------------------------------------------------------

def _verify_row(logp_TxV, logq_TxV, tokens_T, children_TxK, u_DxK, mode, depth):
  """One row of `tree_verify_reference` (vmapped over B)."""
  T, V = logp_TxV.shape
  K = children_TxK.shape[1]
  p_all_TxV = jnp.exp(logp_TxV.astype(jnp.float32))
  q_all_TxV = None if logq_TxV is None else jnp.exp(logq_TxV.astype(jnp.float32))

  def test_children(cur, u_K):
    """Tests the children of node `cur` in order; returns (accepted child or -1, residual)."""
    p0_V = p_all_TxV[cur]
    q0_V = q_all_TxV[cur] if q_all_TxV is not None else jnp.zeros((V,), jnp.float32)
    kids_K = children_TxK[cur]
    n_kids = jnp.sum(kids_K >= 0)
    rho = kseq_rho(p0_V, q0_V, n_kids) if mode == 'kseq' else jnp.float32(1.0)

    def body(carry, j):
      p_V, q_V, chosen = carry
      child = kids_K[j]
      x = tokens_T[jnp.maximum(child, 0)]
      live = (child >= 0) & (chosen < 0)
      if mode == 'deterministic':
        ratio = p_V[x]
      elif mode == 'kseq':
        ratio = p0_V[x] / jnp.maximum(rho * q0_V[x], _TINY)
      else:
        ratio = p_V[x] / jnp.maximum(q_V[x], _TINY)
      accept = live & (u_K[j] <= ratio)
      reject = live & ~accept
      if mode == 'deterministic':
        new_p = _normalise_or(p_V, p_V.at[x].set(0.0))
        new_q = q_V
      elif mode == 'kseq':
        new_p, new_q = p_V, q_V
      else:
        new_p = _normalise_or(p_V, p_V - q_V)
        new_q = _normalise_or(q_V, q_V.at[x].set(0.0)) if mode == 'wor' else q_V
      p_V = jnp.where(reject, new_p, p_V)
      q_V = jnp.where(reject, new_q, q_V)
      chosen = jnp.where(accept, child, chosen)
      return (p_V, q_V, chosen), None

    (p_V, _, chosen), _ = jax.lax.scan(body, (p0_V, q0_V, jnp.int32(-1)), jnp.arange(K))
    if mode == 'kseq':
      p_V = jnp.where(n_kids > 0, kseq_residual(p0_V, q0_V, n_kids, rho), p0_V)
    return chosen, p_V

  def step(carry, d):
    cur, done, path, n, res_V = carry
    chosen, p_V = test_children(cur, u_DxK[d])
    accepted = ~done & (chosen >= 0)
    stop = ~done & (chosen < 0)
    res_V = jnp.where(stop, p_V, res_V)
    path = path.at[d + 1].set(jnp.where(accepted, chosen, path[d + 1]))
    return (jnp.where(accepted, chosen, cur), done | stop, path, n + accepted, res_V), None

  path0 = jnp.full((depth + 1,), -1, jnp.int32).at[0].set(0)
  init = (jnp.int32(0), jnp.bool_(False), path0, jnp.int32(0), p_all_TxV[0])
  (cur, done, path, n, res_V), _ = jax.lax.scan(step, init, jnp.arange(depth))
  res_V = jnp.where(done, res_V, p_all_TxV[cur])  # a path reaching `depth`: bonus from p.
  return path, n, res_V


def tree_verify_reference(target_logp_BxTxV: jax.Array, draft_logq_BxTxV: jax.Array | None,
                          tokens_BxT: jax.Array, children_BxTxK: jax.Array, u_BxDxK: jax.Array,
                          *, mode: str = 'deterministic'
                          ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Verifies a token tree (node 0 is the root, i.e. the last committed token).

  Args:
    target_logp_BxTxV: target log p after each node (the distribution of its children).
    draft_logq_BxTxV: log q each node's children were drawn from; None for 'deterministic'.
    tokens_BxT: node tokens (the root's is ignored).
    children_BxTxK: children of each node in the order they are tested, -1 padded.
    u_BxDxK: uniforms in (0, 1): row d serves the children tested at depth d + 1. D is the
      deepest node's depth (paths have at most D drafted tokens). Mode 'traversal' reads
      them as one stream of D * K numbers, which must be at least T - 1.
    mode: see the module docstring.

  Returns:
    path_BxD1: the accepted path as node indices (path[0] = 0, the root), -1 after its end.
    n_B: accepted drafted tokens (path length - 1).
    residual_logp_BxV: log of the distribution to sample the next token from.
  """
  _check_mode(mode)
  require_logq(draft_logq_BxTxV, mode)
  if mode == 'traversal':
    return traversal_verify(target_logp_BxTxV, draft_logq_BxTxV, tokens_BxT, children_BxTxK,
                            u_BxDxK)
  depth = u_BxDxK.shape[1]
  logq = None if mode == 'deterministic' else draft_logq_BxTxV
  fn = lambda lp, lq, tok, ch, u: _verify_row(lp, lq, tok, ch, u, mode, depth)
  if logq is None:
    path, n, res = jax.vmap(lambda lp, tok, ch, u: fn(lp, None, tok, ch, u))(
        target_logp_BxTxV, tokens_BxT, children_BxTxK, u_BxDxK)
  else:
    path, n, res = jax.vmap(fn)(target_logp_BxTxV, logq, tokens_BxT, children_BxTxK, u_BxDxK)
  return path, n.astype(jnp.int32), _log(res)


# ----------------------------------------------------------------------------------------
# Traversal Verification: leaf to root, whole paths at once.
# ----------------------------------------------------------------------------------------

def tree_structure(children_TxK: jax.Array, depth: int
                   ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(parent_T, depth_T, rank_T) of one row's tree from its children lists: each node's
  parent (-1 for the root and for nodes no list names), depth (0 for those) and place in its
  parent's list (the order its siblings are tested in)."""
  T, K = children_TxK.shape
  dest = jnp.where(children_TxK >= 0, children_TxK, T)
  parent_T = jnp.full((T,), -1, jnp.int32).at[dest].set(
      jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32)[:, None], (T, K)), mode='drop')
  rank_T = jnp.zeros((T,), jnp.int32).at[dest].set(
      jnp.broadcast_to(jnp.arange(K, dtype=jnp.int32)[None], (T, K)), mode='drop')
  par_T, is_child_T = jnp.maximum(parent_T, 0), parent_T >= 0
  depth_T = jax.lax.fori_loop(0, depth, lambda _, d: jnp.where(is_child_T, d[par_T] + 1, 0),
                              jnp.zeros((T,), jnp.int32))
  return parent_T, depth_T, rank_T


def _traversal_row(logp_TxV, logq_TxV, tokens_T, children_TxK, u_N, depth, wor):
  """One row of `traversal_verify` (vmapped over B).

  Every node v carries its target p_v, its draft q_v (what its children were drawn from) and
  a sequence-level acceptance probability a_v: a_root = 1, a_x = min(1, a_v p_v(x) / q_v(x))
  for a child x of v. Repeatedly take the first leaf of the remaining tree in post-order
  (descend through first remaining children); accept its whole root->leaf path if u <= a_leaf.
  Otherwise delete the leaf and update its parent v:

    p_v <- norm([a_v p_v - q_v]_+),  a_v <- S / (S + 1 - a_v),  S = sum [a_v p_v - q_v]_+,

  then recompute a over v's remaining subtree (untouched so far: post-order finishes a
  subtree before its right siblings). A node whose children are all deleted is a leaf and is
  tested with its updated a; the root (a = 1) is always accepted. The next token is drawn from
  p at the end node (its residual if it lost children, p itself at an original leaf).

  q_v is kept after a rejection because siblings are i.i.d. (with replacement). With `wor`
  (siblings without replacement) the rejected token is removed from q_v as well. Enumerating
  every tree exactly shows each pairing is lossless and the crossed ones (and the variant
  a_v <- min(1, S / (1 - q_v(x)))) are not; see tests/pallas_kernels/test_spec_traversal.py.
  """
  T, _ = logp_TxV.shape
  p_TxV = jnp.exp(logp_TxV.astype(jnp.float32))
  q_TxV = jnp.exp(logq_TxV.astype(jnp.float32))
  kid_ok_TxK = children_TxK >= 0
  kids_TxK = jnp.maximum(children_TxK, 0)
  node_T = jnp.arange(T, dtype=jnp.int32)
  parent_T, depth_T, _ = tree_structure(children_TxK, depth)
  par_T = jnp.maximum(parent_T, 0)
  is_child_T = parent_T >= 0

  # Updated p and q rows live in one slot per depth, not in a carried [T, V] table: a node
  # whose p changed (it lost a child) is an ancestor of every later leaf until it is deleted
  # itself (post-order), so at most one updated node per depth is alive at any time.
  S = depth + 1

  def row(table_TxV, slot_node_S, slot_SxV, v):  # the current p (or q) of node v: [V]
    d = depth_T[v]
    return jnp.where(slot_node_S[d] == v, slot_SxV[d], table_TxV[v])

  def propagate(a_T, ratio_T, fixed_T):  # a_x = min(1, a_parent ratio_x), top down
    body = lambda _, a: jnp.where(fixed_T, a, jnp.minimum(1.0, a[par_T] * ratio_T))
    return jax.lax.fori_loop(0, depth, body, a_T)

  def first_leaf(alive_T):
    def first_kid(v):
      ok_K = kid_ok_TxK[v] & alive_T[kids_TxK[v]]
      return jnp.where(jnp.any(ok_K), kids_TxK[v, jnp.argmax(ok_K)], -1)
    leaf, _ = jax.lax.while_loop(lambda c: c[1] >= 0, lambda c: (c[1], first_kid(c[1])),
                                 (jnp.int32(0), first_kid(0)))
    return leaf

  def step(c):
    alive_T, slot_node_S, slot_p_SxV, slot_q_SxV, a_T, fixed_T, ratio_T, i, _ = c
    leaf = first_leaf(alive_T)
    accept = (leaf == 0) | (u_N[jnp.minimum(i, u_N.shape[0] - 1)] <= a_T[leaf])
    reject = ~accept
    v = par_T[leaf]
    d = depth_T[v]
    a_v = a_T[v]
    p_V = row(p_TxV, slot_node_S, slot_p_SxV, v)
    q_V = row(q_TxV, slot_node_S, slot_q_SxV, v)
    r_V = jnp.maximum(a_v * p_V - q_V, 0.0)
    s = jnp.sum(r_V)
    den = s + 1.0 - a_v  # 0 only when a_v = 1 and p_v = q_v: the rejection had probability 0
    new_a = jnp.where(den > 1e-12, s / jnp.maximum(den, _TINY), 1.0)
    new_p = _normalise_or(p_V, r_V)
    new_q = _normalise_or(q_V, q_V.at[tokens_T[leaf]].set(0.0)) if wor else q_V
    write_S = reject & (jnp.arange(S) == d)  # a select, not a scatter: cheaper under vmap
    slot_p_SxV = jnp.where(write_S[:, None], new_p[None], slot_p_SxV)
    slot_q_SxV = jnp.where(write_S[:, None], new_q[None], slot_q_SxV)
    slot_node_S = jnp.where(write_S, v, slot_node_S)
    a_T = a_T.at[v].set(jnp.where(reject, new_a, a_v))
    fixed_T = fixed_T.at[v].set(fixed_T[v] | reject)
    new_ratio_T = new_p[tokens_T] / jnp.maximum(new_q[tokens_T], _TINY)
    ratio_T = jnp.where(reject & (parent_T == v), new_ratio_T, ratio_T)
    a_T = propagate(a_T, ratio_T, fixed_T)
    alive_T = alive_T.at[leaf].set(accept)
    return (alive_T, slot_node_S, slot_p_SxV, slot_q_SxV, a_T, fixed_T, ratio_T, i + (leaf != 0),
            jnp.where(accept, leaf, -1))

  # p_parent(x) / q_parent(x) of every node x
  ratio_T = p_TxV[par_T, tokens_T] / jnp.maximum(q_TxV[par_T, tokens_T], _TINY)
  fixed_T = ~is_child_T
  a_T = propagate(jnp.ones((T,), jnp.float32), ratio_T, fixed_T)
  alive_T = (node_T == 0) | is_child_T
  slots_SxV = jnp.zeros((S, p_TxV.shape[1]), jnp.float32)
  init = (alive_T, jnp.full((S,), -1, jnp.int32), slots_SxV, slots_SxV, a_T, fixed_T, ratio_T,
          jnp.int32(0), jnp.int32(-1))
  out = jax.lax.while_loop(lambda c: c[-1] < 0, step, init)  # <= T tests: each deletes one
  slot_node_S, slot_p_SxV, end = out[1], out[2], out[-1]

  def up(_, c):
    node, path = c
    path = path.at[jnp.where(node >= 0, depth_T[jnp.maximum(node, 0)], depth + 1)].set(
        node, mode='drop')
    return jnp.where(node > 0, parent_T[jnp.maximum(node, 0)], -1), path

  _, path = jax.lax.fori_loop(0, depth + 1, up, (end, jnp.full((depth + 1,), -1, jnp.int32)))
  return path, depth_T[end], row(p_TxV, slot_node_S, slot_p_SxV, end)


def traversal_verify(target_logp_BxTxV: jax.Array, draft_logq_BxTxV: jax.Array,
                     tokens_BxT: jax.Array, children_BxTxK: jax.Array, u_BxDxK: jax.Array,
                     *, without_replacement: bool = False
                     ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Traversal Verification of a token tree (`tree_verify_reference(mode='traversal')`).

  Arguments and results as `tree_verify_reference`, except that u_BxDxK is read as one stream
  of D * K uniforms per row (one per leaf test; a tree of T nodes needs at most T - 1) and D
  still bounds the path length. `without_replacement`: siblings were drawn without
  replacement (q minus the rejected token, the update quoted from a reimplementation of the
  paper; not a `mode`: no drafter draws such trees for it yet).
  Plain jnp only: a `lax.while_loop` of at most T leaf tests per row.
  """
  T = target_logp_BxTxV.shape[1]
  depth = u_BxDxK.shape[1]
  u_BxN = traversal_uniforms(u_BxDxK, T)
  require_logq(draft_logq_BxTxV, 'traversal')
  row = lambda lp, lq, tok, ch, u: _traversal_row(lp, lq, tok, ch, u, depth,
                                                  without_replacement)
  path, n, res = jax.vmap(row)(target_logp_BxTxV, draft_logq_BxTxV, tokens_BxT,
                               children_BxTxK, u_BxN)
  return path, n.astype(jnp.int32), _log(res)


def _chain_traversal(target_logp_BxG1xV, draft_logq_BxGxV, draft_BxG, valid_BxG, u_BxG):
  """Traversal Verification on a chain (block verification) in closed form.

  The walk of `traversal_verify` on one path: a_0 = 1, a_d = min(1, a_{d-1} p_{d-1}(x_d) /
  q_{d-1}(x_d)); the leaf m (the last valid draft) is tested with a_m and u_0; each rejection
  updates the parent d once (its only child is gone), with its original a_d, to
  S_d / (S_d + 1 - a_d), S_d = sum [a_d p_d - q_d]_+ (1 where that rejection had probability
  0), and tests it with u_{m-d}; so every updated a is known before the walk starts. The walk
  ends at the deepest node that passes (the root always does); its next-token distribution is
  p_m at the leaf (the bonus), else norm([a_n p_n - q_n]_+).
  """
  require_logq(draft_logq_BxGxV, 'traversal')
  G = draft_BxG.shape[1]
  p_BxG1xV = jnp.exp(target_logp_BxG1xV.astype(jnp.float32))
  q_BxGxV = jnp.exp(draft_logq_BxGxV.astype(jnp.float32))
  idx = draft_BxG[..., None]
  p_x_BxG = jnp.take_along_axis(p_BxG1xV[:, :G], idx, axis=-1)[..., 0]
  q_x_BxG = jnp.take_along_axis(q_BxGxV, idx, axis=-1)[..., 0]
  ratio_BxG = p_x_BxG / jnp.maximum(q_x_BxG, _TINY)
  a = [jnp.ones(p_x_BxG.shape[:1], jnp.float32)]
  for d in range(G):
    a.append(jnp.minimum(1.0, a[-1] * ratio_BxG[:, d]))
  a_BxG1 = jnp.stack(a, axis=1)  # before any update
  s_BxG = jnp.sum(jnp.maximum(a_BxG1[:, :G, None] * p_BxG1xV[:, :G] - q_BxGxV, 0.0), axis=-1)
  den_BxG = s_BxG + 1.0 - a_BxG1[:, :G]
  a_new_BxG = jnp.where(den_BxG > 1e-12, s_BxG / jnp.maximum(den_BxG, _TINY), 1.0)
  # The walk: node d (1..G) is tested iff d <= m, with a_m at the leaf, else its updated a
  # (the last node is never a parent: its updated value is never read).
  m_B = jnp.sum(jnp.cumprod(valid_BxG.astype(jnp.int32), axis=1), axis=1)
  d_G = jnp.arange(1, G + 1)
  updated_BxG = jnp.concatenate([a_new_BxG[:, 1:], a_BxG1[:, G:]], axis=1)
  a_test_BxG = jnp.where(d_G[None] == m_B[:, None], a_BxG1[:, 1:], updated_BxG)
  u_at_BxG = jnp.take_along_axis(u_BxG, jnp.clip(m_B[:, None] - d_G[None], 0, G - 1), axis=1)
  pass_BxG = (d_G[None] <= m_B[:, None]) & (u_at_BxG <= a_test_BxG)
  n_B = jnp.max(jnp.where(pass_BxG, d_G[None], 0), axis=1).astype(jnp.int32)
  p_n_BxV = jnp.take_along_axis(p_BxG1xV, n_B[:, None, None], axis=1)[:, 0]
  n_q = jnp.minimum(n_B, G - 1)
  q_n_BxV = jnp.take_along_axis(q_BxGxV, n_q[:, None, None], axis=1)[:, 0]
  a_n_B = jnp.take_along_axis(a_BxG1, n_B[:, None], axis=1)[:, 0]
  r_BxV = jnp.maximum(a_n_B[:, None] * p_n_BxV - q_n_BxV, 0.0)
  res_BxV = jnp.where((n_B < m_B)[:, None], _normalise_or(p_n_BxV, r_BxV), p_n_BxV)
  return n_B, _log(res_BxV)
