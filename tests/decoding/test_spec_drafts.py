"""What drafters propose and the tree structure they build, against plain-Python references
(losslessness never depends on the drafts, so tests of greedy == AR cannot catch a drafter
that proposes the wrong thing: these can)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from decoding.speculative import ngram, trees
from models import masks


def _lookup_reference(ctx: list[int], base: int, ngram_max: int, gamma: int):
  """The continuation of the latest earlier occurrence of the longest trailing n-gram.

  ctx[0..base] are the committed tokens (ctx[base] is the newest). Returns the drafts (up
  to gamma, never past ctx[base]) or [] without a match.
  """
  for n in range(ngram_max, 0, -1):
    if base - n + 1 < 0:
      continue
    suffix = ctx[base - n + 1:base + 1]
    for start in range(base - n, -1, -1):  # the match must end before the suffix does
      if ctx[start:start + n] == suffix:
        follow = list(range(start + n, min(start + n + gamma, base + 1)))
        return [ctx[i] for i in follow]
  return []


@pytest.mark.parametrize('ngram_max,gamma', [(3, 4), (1, 2), (4, 6)])
def test_prompt_lookup_proposes_the_latest_longest_match(ngram_max, gamma):
  rng = np.random.default_rng(ngram_max * 10 + gamma)
  B, S = 64, 40
  drafter = ngram.PromptLookupDrafter(gamma=gamma, ngram=ngram_max)
  # Small vocabularies make many (partial) matches; bases from 0 to S - 1.
  ctx = rng.integers(0, rng.integers(2, 6, size=(B, 1)), size=(B, S))
  base = rng.integers(0, S, size=B)
  ctx = np.where(np.arange(S)[None] <= base[:, None], ctx, -1).astype(np.int32)
  active = rng.random(B) < 0.9
  state = ngram.ContextState(ctx_BxS=jnp.asarray(ctx))
  root = jnp.asarray(ctx[np.arange(B), base])
  tree, _, _, _ = jax.jit(lambda s, r, b, a: drafter.propose(None, s, None, r, b, a))(
      state, root, jnp.asarray(base, jnp.int32), jnp.asarray(active))
  tokens, valid = np.asarray(tree.tokens_BxT), np.asarray(tree.valid_BxT)
  found = 0
  for b in range(B):
    want = _lookup_reference(ctx[b].tolist(), int(base[b]), ngram_max, gamma) if active[b] else []
    n = int(valid[b, 1:].sum())
    assert n == len(want), (b, want, tokens[b], valid[b])
    assert valid[b, 1:1 + n].all()  # a prefix
    assert tokens[b, 1:1 + n].tolist() == want
    found += n > 0
  assert 0 < found < B  # both cases occur


def _random_template(rng, T):
  parents = [-1] + [int(rng.integers(0, i)) for i in range(1, T)]
  ranks = [0] * T
  seen: dict[int, int] = {}
  for i in range(1, T):
    ranks[i] = seen.get(parents[i], 0)
    seen[parents[i]] = ranks[i] + 1
  return trees._bfs(parents, ranks)  # pylint: disable=protected-access


@pytest.mark.parametrize('k,depth', [(1, 1), (2, 3), (3, 2), (4, 4)])
def test_dynamic_candidate_depths_follow_the_rounds(k, depth):
  """The root, its k children at depth 1, then k^2 candidates per round at depths 2 ..
  depth: as many as `dynamic_candidates` counts, in the order the rounds add them."""
  got = trees.dynamic_candidate_depths(k, depth)
  assert len(got) == 1 + trees.dynamic_candidates(k, depth)
  assert got.tolist() == sorted(got.tolist())
  assert [int(np.sum(got == d)) for d in range(depth + 1)] == [1, k] + [k * k] * (depth - 1)

@pytest.mark.parametrize('seed', range(4))
def test_tree_structure_matches_the_sequential_definitions(seed):
  """from_template's validity closure, children table and ancestor mask; the pointer-doubling
  ancestors; the gathered cache mask — each against its sequential / scatter definition."""
  rng = np.random.default_rng(seed)
  tpl = _random_template(rng, int(rng.integers(2, 30)))
  B, T = 8, tpl.size
  valid = rng.random((B, T)) < 0.8
  tokens = rng.integers(0, 9, size=(B, T)).astype(np.int32)
  tree = trees.from_template(tpl, jnp.asarray(tokens), jnp.asarray(valid))
  parents = np.asarray(tpl.parents)
  want_valid = valid.copy()
  want_valid[:, 0] = True
  for i in range(1, T):  # parents precede children: one sequential pass closes the set
    want_valid[:, i] &= want_valid[:, parents[i]]
  np.testing.assert_array_equal(tree.valid_BxT, want_valid)
  anc = np.asarray(jax.vmap(masks.tree_mask)(jnp.asarray(np.where(want_valid, parents, -1))))
  want_anc = anc & want_valid[:, None, :] & want_valid[:, :, None]
  np.testing.assert_array_equal(tree.ancestors_BxTxT, want_anc)
  np.testing.assert_array_equal(
      trees.ancestors_from_parents(jnp.broadcast_to(jnp.asarray(parents), (B, T)),
                                   tpl.max_depth)[0], masks.tree_mask(jnp.asarray(parents)))
  want_kids = np.asarray(trees.children_table(tree.parents_BxT, tree.valid_BxT,
                                              tpl.max_children))
  np.testing.assert_array_equal(tree.children_BxTxK, want_kids)
  base = jnp.asarray(rng.integers(0, 20, size=B), jnp.int32)
  S = 20 + T + 3
  slots = base[:, None] + jnp.arange(T)[None]
  np.testing.assert_array_equal(
      masks.block_to_cache_mask(tree.ancestors_BxTxT, base, S),
      masks.local_to_cache_mask(tree.ancestors_BxTxT, slots, base, S))
  # One local mask shared by every row (batch 1) against per-row starts.
  shared = tree.ancestors_BxTxT[:1]
  np.testing.assert_array_equal(
      masks.block_to_cache_mask(shared, base, S),
      masks.local_to_cache_mask(jnp.broadcast_to(shared, (B, T, T)), slots, base, S))
  # A few query rows over all the block's slots (a draft round's frontier over its
  # candidates), with the block partly past the cache's end.
  for size in (S, 12 + T // 2):
    lifted = masks.local_to_cache_mask(tree.ancestors_BxTxT, slots, base, size)
    np.testing.assert_array_equal(
        masks.block_to_cache_mask(tree.ancestors_BxTxT[:, 1:4], base, size), lifted[:, 1:4])
