"""Token trees: the one structure every drafter proposes and the verifier walks.

A tree has T nodes; node 0 is the root, the last committed token (not yet in the target's
cache), and every other node is a drafted token. Parents precede children (parents[i] < i),
so a chain of G drafts is the tree parents = (-1, 0, 1, ..., G - 1).

Static templates (numpy, built once per decoder setting) fix the shape: parents, depth and the
rank of each node among its siblings (rank r = "the r-th best proposal of the parent"). Trees
built inside the loop (dynamic trees, tries of n-gram candidates) carry per-row parents and a
validity mask; invalid nodes are padding (never written to the cache, never attended to,
never tested).
"""

from __future__ import annotations

import dataclasses
import heapq
from typing import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np



@flax.struct.dataclass
class Tree:
  """A batch of token trees (see module docstring).

  tokens_BxT: node tokens; node 0 is the root.
  parents_BxT: parent index (-1 for the root).
  depth_BxT: 0 for the root, parent's depth + 1 otherwise.
  valid_BxT: real nodes (padding nodes are skipped everywhere).
  children_BxTxK: each node's valid children in the order the verifier tests them, -1 padded.
  logq_BxTxV: log q each node's children were drawn from (None for deterministic drafts).
  ancestors_BxTxT: node t sees node u iff u is t or one of its ancestors and both are valid
    (None: computed from the parents when asked, see `ancestor_mask`).
  """
  tokens_BxT: jax.Array
  parents_BxT: jax.Array
  depth_BxT: jax.Array
  valid_BxT: jax.Array
  children_BxTxK: jax.Array
  logq_BxTxV: jax.Array | None = None
  ancestors_BxTxT: jax.Array | None = None


@dataclasses.dataclass(frozen=True)
class Template:
  """A static tree shape: nodes in breadth-first order, node 0 the root.

  parents[i] < i; ranks[i] = which proposal of its parent node i is (0 = best);
  depths[i] = parent's depth + 1.
  """
  parents: tuple[int, ...]
  ranks: tuple[int, ...]

  def __post_init__(self):
    if not self.parents or self.parents[0] != -1:
      raise ValueError('A tree template starts with the root (parent -1).')
    for i, p in enumerate(self.parents[1:], 1):
      if not 0 <= p < i:
        raise ValueError(f'Tree node {i} has parent {p}: parents must precede children.')
    if len(self.ranks) != len(self.parents):
      raise ValueError('Tree template: one rank per node.')

  @property
  def size(self) -> int:
    return len(self.parents)

  @property
  def depths(self) -> tuple[int, ...]:
    d = [0] * self.size
    for i in range(1, self.size):
      d[i] = d[self.parents[i]] + 1
    return tuple(d)

  @property
  def max_depth(self) -> int:
    return max(self.depths)

  @property
  def max_children(self) -> int:
    counts = np.bincount(np.asarray(self.parents[1:], np.int64), minlength=self.size)
    return max(1, int(counts.max()) if counts.size else 1)

  @property
  def max_rank(self) -> int:
    return max(self.ranks) + 1

  @property
  def is_chain(self) -> bool:
    return self.parents == tuple(range(-1, self.size - 1))

  def levels(self) -> list[tuple[int, int]]:
    """[start, end) node ranges per depth (breadth-first order makes them contiguous)."""
    d = np.asarray(self.depths)
    out = []
    for k in range(self.max_depth + 1):
      idx = np.nonzero(d == k)[0]
      if idx.size and (idx[-1] - idx[0] + 1 != idx.size):
        raise ValueError('Tree template is not in breadth-first order.')
      out.append((int(idx[0]), int(idx[-1]) + 1))
    return out

  def children(self) -> np.ndarray:
    """[T, K] children of each node ordered by rank, -1 padded."""
    K = self.max_children
    out = -np.ones((self.size, K), np.int32)
    fill = np.zeros(self.size, np.int64)
    for i in sorted(range(1, self.size), key=lambda i: (self.parents[i], self.ranks[i])):
      p = self.parents[i]
      out[p, fill[p]] = i
      fill[p] += 1
    return out

  def ancestors(self) -> np.ndarray:
    """[T, T] bool: node t sees node u iff u is t or an ancestor of t."""
    out = np.eye(self.size, dtype=bool)
    for i in range(1, self.size):
      out[i] |= out[self.parents[i]]
    return out

  def rank_table(self) -> np.ndarray:
    """[T, K] rank of each child slot (for looking up the r-th proposal), -1 padded."""
    kids = self.children()
    ranks = np.asarray(self.ranks)
    return np.where(kids >= 0, ranks[np.maximum(kids, 0)], -1).astype(np.int32)


def chain(length: int) -> Template:
  """G drafted tokens in a row."""
  if length < 1:
    raise ValueError(f'A draft chain needs length >= 1, got {length}.')
  return Template(parents=tuple(range(-1, length)), ranks=(0,) * (length + 1))


def branching(widths: Sequence[int]) -> Template:
  """Every node at depth d has widths[d] children (Medusa-style cartesian trees)."""
  if not widths or any(w < 1 for w in widths):
    raise ValueError(f'Tree branching must be positive integers per depth, got {widths}.')
  parents, ranks, frontier = [-1], [0], [0]
  for w in widths:
    nxt = []
    for p in frontier:
      for r in range(w):
        parents.append(p)
        ranks.append(r)
        nxt.append(len(parents) - 1)
    frontier = nxt
  return _bfs(parents, ranks)


def best_first(nodes: int, max_depth: int, accept_by_rank: Sequence[float]) -> Template:
  """The `nodes`-node tree (plus root) maximising the expected accepted length.

  Node i's acceptance probability is modelled as the product along its path of
  accept_by_rank[rank] (Sequoia's positional acceptance vector); the expected number of
  accepted tokens is the sum over nodes, so taking nodes greedily by that product (which
  falls along every path) gives the optimal connected tree for the model.
  """
  if nodes < 1 or max_depth < 1:
    raise ValueError(f'best_first needs nodes >= 1 and max_depth >= 1, got {nodes}, '
                     f'{max_depth}.')
  acc = [float(a) for a in accept_by_rank]
  if not acc or any(not 0 < a <= 1 for a in acc):
    raise ValueError(f'accept_by_rank must be probabilities in (0, 1], got {accept_by_rank}.')
  parents, ranks, depth = [-1], [0], [0]
  heap = [(-acc[0], 0, 0, 0)]  # (-score, parent, rank, tie-break)
  counter = 1
  while heap and len(parents) <= nodes:
    neg, parent, rank, _ = heapq.heappop(heap)
    parents.append(parent)
    ranks.append(rank)
    depth.append(depth[parent] + 1)
    me = len(parents) - 1
    if rank + 1 < len(acc):  # the next sibling
      heapq.heappush(heap, (neg / acc[rank] * acc[rank + 1], parent, rank + 1, counter))
      counter += 1
    if depth[me] < max_depth:  # the first child
      heapq.heappush(heap, (neg * acc[0], me, 0, counter))
      counter += 1
  return _bfs(parents, ranks)


def delayed(nodes: int, depth: int, delay: int) -> Template:
  """Delayed tree expansion (DDTE, arXiv 2602.16994): one path for `delay` drafts, then the
  rest of the `nodes` budget as i.i.d. rollouts below its end.

  Each rollout is a chain of depth - delay drafts (rank r = the r-th i.i.d. sample of the
  branch node, rank 0 below it), the last one shorter when the budget does not divide; with
  children drawn i.i.d. from q (verifier iid or traversal) the rollouts are independent
  draft continuations. delay = 0 is plain multi-draft (k rollouts from the root); the same
  shape as `branching([1] * delay + [k] + [1] * (depth - delay - 1))` when it divides.
  """
  if not 0 <= delay < depth or nodes <= delay:
    raise ValueError(f'A delayed tree needs 0 <= delay < depth and nodes > delay, got '
                     f'nodes={nodes}, depth={depth}, delay={delay}.')
  parents, ranks = list(range(-1, delay)), [0] * (delay + 1)
  left, rank = nodes - delay, 0
  while left > 0:
    parent = delay
    for d in range(min(depth - delay, left)):
      parents.append(parent)
      ranks.append(rank if d == 0 else 0)
      parent = len(parents) - 1
    left -= depth - delay
    rank += 1
  return _bfs(parents, ranks)


def _bfs(parents: list[int], ranks: list[int]) -> Template:
  """Reorders nodes breadth-first (by depth, then parent, then rank)."""
  depth = [0] * len(parents)
  for i in range(1, len(parents)):
    depth[i] = depth[parents[i]] + 1
  # Level by level: depth, then the parent's new index, then rank.
  new_index = {0: 0}
  order = [0]
  for d in range(1, max(depth) + 1):
    level = [i for i in range(len(parents)) if depth[i] == d]
    level.sort(key=lambda i: (new_index[parents[i]], ranks[i]))
    for i in level:
      new_index[i] = len(order)
      order.append(i)
  return Template(parents=tuple(-1 if i == 0 else new_index[parents[i]] for i in order),
                  ranks=tuple(ranks[i] for i in order))


# Token Recycling's default: 80 drafted nodes, depth <= 6, from a rank-acceptance profile.
RECYCLING_PROFILE = (0.55, 0.2, 0.1, 0.06, 0.04, 0.03, 0.02, 0.015)


def parse(spec: str, *, nodes: int, depth: int, profile: Sequence[float],
          delay: int = 0) -> Template:
  """A template from a setting: 'chain', 'w1,w2,...' (branching per depth) or '' (best-first
  with `nodes` nodes, depth <= `depth`, from the rank-acceptance `profile`; with `delay` > 0
  the delayed tree of `nodes` nodes and depth `depth` instead)."""
  spec = spec.strip()
  if delay:
    if spec:
      raise ValueError(f'A delayed tree (delay={delay}) is built from the node budget; it '
                       f'takes no tree spec (got {spec!r}).')
    return delayed(nodes, depth, delay)
  if spec == 'chain':
    return chain(depth)
  if spec:
    try:
      widths = [int(x) for x in spec.split(',')]
    except ValueError:
      raise ValueError(f"Tree spec {spec!r}: use 'chain', comma-separated branching per "
                       "depth such as '4,2,2,1', or '' for a best-first tree.") from None
    return branching(widths)
  return best_first(nodes, depth, profile)


# --------------------------------------------------------------------------------------
# Inside the loop.
# --------------------------------------------------------------------------------------

def from_template(template: Template, tokens_BxT: jax.Array,
                  valid_BxT: jax.Array | None = None,
                  logq_BxTxV: jax.Array | None = None) -> Tree:
  """A batch of trees of one static shape; invalid nodes drop out with their subtrees.

  Everything structural comes from the template's static tables (parents, depths, children,
  ancestors): inside the loop only validity is computed, in a handful of vectorised ops.
  """
  B, T = tokens_BxT.shape
  if T != template.size:
    raise ValueError(f'{T} tokens for a template of {template.size} nodes.')
  parents_BxT = jnp.broadcast_to(jnp.asarray(template.parents, jnp.int32), (B, T))
  depth_BxT = jnp.broadcast_to(jnp.asarray(template.depths, jnp.int32), (B, T))
  anc_TxT = template.ancestors()
  kids_TxK = template.children()
  if valid_BxT is None:
    kids = jnp.broadcast_to(jnp.asarray(kids_TxK), (B, T, template.max_children))
    anc = jnp.broadcast_to(jnp.asarray(anc_TxT), (B, T, T))
    return Tree(tokens_BxT, parents_BxT, depth_BxT, jnp.ones((B, T), bool), kids, logq_BxTxV,
                anc)
  # A node stays valid iff every node on its path (itself included) is.
  valid_BxT = ~jnp.any(jnp.asarray(anc_TxT)[None] & ~valid_BxT.at[:, 0].set(True)[:, None, :],
                       axis=-1)
  anc = jnp.asarray(anc_TxT)[None] & valid_BxT[:, None, :] & valid_BxT[:, :, None]
  kid_ok = (kids_TxK >= 0)[None] & valid_BxT[:, np.maximum(kids_TxK, 0)]
  return Tree(tokens_BxT, parents_BxT, depth_BxT, valid_BxT,
              pack_children(jnp.broadcast_to(jnp.asarray(kids_TxK), kid_ok.shape), kid_ok),
              logq_BxTxV, anc)


def pack_children(kids_BxTxK: jax.Array, ok_BxTxK: jax.Array) -> jax.Array:
  """Moves each node's valid children to the front, in order; -1 after them (no sort, no
  scatter: K is small, a [B, T, K, K] select does it)."""
  K = kids_BxTxK.shape[2]
  dest_BxTxK = jnp.cumsum(ok_BxTxK.astype(jnp.int32), axis=-1) - 1
  hit_BxTxKxR = ok_BxTxK[..., None] & (dest_BxTxK[..., None] == jnp.arange(K)[None, None, None])
  packed = jnp.sum(jnp.where(hit_BxTxKxR, kids_BxTxK[..., None] + 1, 0), axis=2) - 1
  return packed.astype(jnp.int32)


def ancestors_from_parents(parents_BxT: jax.Array, max_depth: int) -> jax.Array:
  """[B, T, T] bool: u is t or an ancestor of t (parents[t] < t, -1 for a root), ignoring
  validity. Pointer doubling: ceil(log2(max_depth + 1)) rounds of 'ancestor of an ancestor'
  instead of a loop over the T nodes."""
  B, T = parents_BxT.shape
  par_BxT = jnp.where(parents_BxT >= 0, parents_BxT, jnp.arange(T)[None])  # a root: itself
  anc = jnp.eye(T, dtype=jnp.bool_)[None] | jax.nn.one_hot(par_BxT, T, dtype=jnp.bool_)
  jump = par_BxT
  for _ in range(max(0, int(max_depth) - 1).bit_length()):  # reach 1, 2, 4, ... >= max_depth
    anc = anc | jnp.take_along_axis(anc, jnp.broadcast_to(jump[:, :, None], (B, T, T)), axis=1)
    jump = jnp.take_along_axis(jump, jump, axis=1)
  return anc


def dynamic_candidates(top_k: int, depth: int) -> int:
  """Dynamic trees (EAGLE-2): candidate nodes after the root when the first round expands the
  root into top_k children and each later round expands the top_k best frontier nodes into
  top_k children each: k + (depth - 1) k^2."""
  return top_k + (depth - 1) * top_k ** 2


def dynamic_candidate_depths(top_k: int, depth: int) -> np.ndarray:
  """[1 + dynamic_candidates] int32: each candidate's depth (the root 0, its top_k children 1,
  then top_k^2 per later round), in the order the rounds add them."""
  return np.concatenate([[0], np.ones(top_k)] + [np.full(top_k ** 2, d + 1)
                                                 for d in range(1, depth)]).astype(np.int32)


def select_candidates(sel_BxN: jax.Array, sel_score_BxN: jax.Array, cand_par_BxC: jax.Array,
                      active_B: jax.Array, max_depth: int
                      ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """Dynamic trees (EAGLE-2 / RSD-S): the chosen candidates as tree nodes.

  sel_BxN: chosen candidate indices, 0-based over the candidates after the root (candidate
  0); sel_score: their scores (-inf = not kept); cand_par_BxC: each candidate's parent
  candidate (-1 for the root; parents precede children). Returns (node_cand [B, N + 1]: the
  candidate of each node, root first, then by index so parents precede children; parents;
  valid: the node's whole path is kept; ancestors [B, N + 1, N + 1], ignoring validity).
  """
  B, C1 = cand_par_BxC.shape
  N = sel_BxN.shape[1]
  b = jnp.arange(B)[:, None]
  sel = jnp.sort(jnp.where(jnp.isfinite(sel_score_BxN), sel_BxN + 1, C1), axis=1)
  sel_ok = sel < C1
  sel = jnp.minimum(sel, C1 - 1)
  node_cand = jnp.concatenate([jnp.zeros((B, 1), jnp.int32), sel], 1)
  node_ok = jnp.concatenate([active_B[:, None], sel_ok & active_B[:, None]], 1)
  inv = jnp.full((B, C1 + 1), -1, jnp.int32).at[b, jnp.where(node_ok, node_cand, C1)].set(
      jnp.broadcast_to(jnp.arange(N + 1, dtype=jnp.int32), (B, N + 1)))[:, :C1]
  par_cand = jnp.take_along_axis(cand_par_BxC, node_cand, 1)
  parents = jnp.where(par_cand >= 0, jnp.take_along_axis(inv, jnp.maximum(par_cand, 0), 1),
                      -1).at[:, 0].set(-1)
  node_ok = node_ok & ((parents >= 0) | (jnp.arange(N + 1) == 0)[None])
  anc = ancestors_from_parents(parents, max_depth)
  valid = ~jnp.any(anc & ~node_ok[:, None, :], axis=-1)  # whole path kept
  return node_cand, parents, valid, anc


def close_under_ancestors(parents_BxT: jax.Array, valid_BxT: jax.Array,
                          max_depth: int | None = None) -> jax.Array:
  """A node stays valid only if its whole path to the root is (parents precede children)."""
  anc = ancestors_from_parents(parents_BxT, parents_BxT.shape[1] if max_depth is None
                               else max_depth)
  return ~jnp.any(anc & ~valid_BxT[:, None, :], axis=-1)


def children_table(parents_BxT: jax.Array, valid_BxT: jax.Array, K: int) -> jax.Array:
  """[B, T, K] valid children of each node in index order, -1 padded (extra ones dropped)."""
  B, T = parents_BxT.shape
  same_BxTxT = (parents_BxT[:, :, None] == parents_BxT[:, None, :]) & valid_BxT[:, None, :]
  earlier_TxT = jnp.tril(jnp.ones((T, T), bool), -1)
  rank_BxT = jnp.sum(same_BxTxT & earlier_TxT[None], axis=2)
  ok_BxT = valid_BxT & (parents_BxT >= 0) & (rank_BxT < K)
  b = jnp.arange(B)[:, None]
  rows = jnp.where(ok_BxT, parents_BxT, T)
  return jnp.full((B, T, K), -1, jnp.int32).at[b, rows, jnp.minimum(rank_BxT, K - 1)].set(
      jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T)), mode='drop')


def ancestor_mask(tree: Tree) -> jax.Array:
  """[B, T, T]: node t sees node u iff u is t or an ancestor of t, both valid."""
  if tree.ancestors_BxTxT is not None:
    return tree.ancestors_BxTxT
  anc_BxTxT = ancestors_from_parents(jnp.where(tree.valid_BxT, tree.parents_BxT, -1),
                                     tree.parents_BxT.shape[1])
  return anc_BxTxT & tree.valid_BxT[:, None, :] & tree.valid_BxT[:, :, None]


def trie(candidates_BxCxL: jax.Array, valid_BxCxL: jax.Array, root_B: jax.Array) -> Tree:
  """Merges C candidate continuations of length L (after the root) into one tree.

  Node (c, l) (index 1 + c * L + l) holds candidates[c, l]; it is kept only if no earlier
  candidate shares the prefix candidates[c, :l + 1], so shared prefixes are verified once.
  Valid entries must be a prefix of each candidate. Children are tested in candidate order.
  """
  B, C, L = candidates_BxCxL.shape
  valid_BxCxL = valid_BxCxL & (jnp.cumprod(valid_BxCxL.astype(jnp.int32), axis=2) > 0)
  # same_prefix[b, c, c', l]: candidates c and c' agree on tokens 0..l.
  eq_BxCxCxL = (candidates_BxCxL[:, :, None, :] == candidates_BxCxL[:, None, :, :]) & (
      valid_BxCxL[:, :, None, :] & valid_BxCxL[:, None, :, :])
  same_BxCxCxL = jnp.cumprod(eq_BxCxCxL.astype(jnp.int32), axis=3) > 0
  # The first candidate with the same prefix up to l represents (c, l).
  first_BxCxL = jnp.argmax(same_BxCxCxL, axis=2)  # [B, C, L] (c itself at worst)
  keep_BxCxL = valid_BxCxL & (first_BxCxL == jnp.arange(C)[None, :, None])
  # Parent of (c, l): the representative of (c, l - 1), or the root.
  prev_rep_BxCxL = jnp.concatenate(
      [jnp.zeros((B, C, 1), jnp.int32), first_BxCxL[:, :, :-1].astype(jnp.int32)], axis=2)
  node_of = lambda c, l: 1 + c * L + l
  l_1x1xL = jnp.arange(L)[None, None, :]
  parents_BxCxL = jnp.where(l_1x1xL == 0, 0, node_of(prev_rep_BxCxL, l_1x1xL - 1))
  T = 1 + C * L
  tokens_BxT = jnp.concatenate([root_B[:, None], candidates_BxCxL.reshape(B, C * L)], axis=1)
  parents_BxT = jnp.concatenate([-jnp.ones((B, 1), jnp.int32),
                                 parents_BxCxL.reshape(B, C * L)], axis=1)
  valid_BxT = jnp.concatenate([jnp.ones((B, 1), bool), keep_BxCxL.reshape(B, C * L)], axis=1)
  depth_BxT = jnp.concatenate([jnp.zeros((B, 1), jnp.int32),
                               jnp.broadcast_to(1 + l_1x1xL, (B, C, L)).reshape(B, C * L)],
                              axis=1).astype(jnp.int32)
  del T
  return Tree(tokens_BxT.astype(jnp.int32), parents_BxT.astype(jnp.int32), depth_BxT,
              valid_BxT, children_table(parents_BxT, valid_BxT, C))


def representative(candidates_BxCxL: jax.Array, valid_BxCxL: jax.Array) -> jax.Array:
  """[B, C, L] the trie node index that holds candidate c's token l (see `trie`)."""
  B, C, L = candidates_BxCxL.shape
  valid_BxCxL = valid_BxCxL & (jnp.cumprod(valid_BxCxL.astype(jnp.int32), axis=2) > 0)
  eq = (candidates_BxCxL[:, :, None, :] == candidates_BxCxL[:, None, :, :]) & (
      valid_BxCxL[:, :, None, :] & valid_BxCxL[:, None, :, :])
  first_BxCxL = jnp.argmax(jnp.cumprod(eq.astype(jnp.int32), axis=3) > 0, axis=2)
  return (1 + first_BxCxL * L + jnp.arange(L)[None, None, :]).astype(jnp.int32)
