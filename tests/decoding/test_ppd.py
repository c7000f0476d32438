"""PPD (decoding/speculative/ppd.py): prompt tokens riding in the verifying forward draft a
tree; greedy output equals AR token for token on a ragged batch; the tree builder maximises
the expected accepted length (brute force); the budget follows the forward-cost curve."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import testlib
from testlib import small_config
from decoding import Models, registry, run_decoder
from decoding.speculative import ppd, trees
from models import Transformer, init_params
from models import ppd as ppd_model
from models.kind import ModelKind

V = 48
PAD = 0
PROMPTS = [[1, 5, 9, 3, 1, 5, 9], [2, 7], [4, 4, 8, 1, 6, 2, 9, 4, 4], [3]]
N_NEW = 24
CACHE = 160


@pytest.fixture(scope='module')
def setup():
  """A 3-layer target with spread logits and 3 prompt tokens of a large scale (drafts that
  vary with the context and are sometimes right)."""
  target = Transformer(small_config(vocab_size=V, num_layers=3))
  tp = init_params(Transformer(small_config(vocab_size=V, num_layers=3, init_std=0.3)),
                   jax.random.key(7))
  cfg = target.cfg
  prompts = ppd_model.init_params(cfg.d_model, 3, jax.random.key(3), 0.3)
  models = Models(target)
  params = {'target': tp, 'ppd': prompts}
  eos, ref = testlib.ragged_ar_reference(models, params, PROMPTS, max_new_tokens=N_NEW,
                                         cache_size=CACHE, pad_id=PAD)
  return models, params, eos, ref


METHODS = {
    'static': dict(tree_nodes=10, auto_size=False),
    'chain': dict(tree='chain', gamma=3),
    'auto-sized': dict(budgets='2,6,12', forward_costs='1,1.1,5'),
}


@pytest.mark.parametrize('method', list(METHODS))
def test_greedy_equals_ar_on_a_ragged_batch(setup, method):
  models, params, eos, ref = setup
  dec = registry.build('ppd', METHODS[method])
  stats = testlib.decode_like_ar(dec, models, params, PROMPTS, eos, ref, max_new_tokens=N_NEW,
                                 cache_size=CACHE, pad_id=PAD)
  # The prompt tokens ride in the target's forward: one per step; one other forward per row
  # (the prompt tokens after the prompt, before the first step).
  assert stats.other_forwards == len(PROMPTS)
  acc = stats.extra['accepted_by_depth']
  assert acc[0] > 0, 'some drafts should be accepted (the test must exercise accepted paths)'
  if method == 'auto-sized':  # prepared: the budget with the most tokens per unit of cost
    prof = ppd.PPD_PROFILE[:3]
    value = lambda n: (1 + ppd.expected_accept(ppd.accept_tree(n, prof), prof)) / {
        2: 1, 6: 1.1, 12: 5}[n]
    assert stats.extra['drafted_tokens'] <= 6 * stats.extra['spec_steps']
    assert max((2, 6, 12), key=value) == 6
    prepared = dec.prepare(models, params, batch=4, cache_size=CACHE)
    assert prepared.tree_nodes == 6 and not prepared.auto_size
    flat = registry.build('ppd', dict(budgets='2,6,12', forward_costs='1,1,1'))
    assert flat.prepare(models, params, batch=4, cache_size=CACHE).tree_nodes == 12


def _brute_force(nodes, acc):
  """Best expected accepted length over every connected tree of `nodes` nodes in the full
  tree of depth len(acc) with len(acc[d]) children per node at depth d."""
  universe = [(None, 0, 0)]  # (parent index, depth, rank) ; index 0 = root
  frontier = [0]
  for d, row in enumerate(acc):
    nxt = []
    for p in frontier:
      for r in range(len(row)):
        universe.append((p, d + 1, r))
        nxt.append(len(universe) - 1)
    frontier = nxt
  value = [1.0] * len(universe)
  for i in range(1, len(universe)):
    p, d, r = universe[i]
    value[i] = value[p] * acc[d - 1][r]
  best = 0.0
  for subset in itertools.combinations(range(1, len(universe)), nodes):
    chosen = set(subset) | {0}
    if all(universe[i][0] in chosen for i in subset):
      best = max(best, sum(value[i] for i in subset))
  return best


@pytest.mark.parametrize('acc', [((0.6, 0.3, 0.05), (0.5, 0.2, 0.1)),
                                 ((0.2, 0.7, 0.1), (0.9, 0.05, 0.3)),  # unsorted ranks
                                 ((0.5, 0.5), (0.5, 0.5), (0.5, 0.5))])
def test_accept_tree_maximises_expected_accept_length(acc):
  for nodes in range(1, 7):
    tpl = ppd.accept_tree(nodes, acc)
    assert tpl.size == nodes + 1 and tpl.max_depth <= len(acc)
    assert ppd.expected_accept(tpl, acc) == pytest.approx(_brute_force(nodes, acc), abs=1e-12)


def test_accept_tree_and_profile_errors():
  with pytest.raises(ValueError, match='probabilities'):
    ppd.accept_tree(4, ((1.5,),))
  with pytest.raises(ValueError, match='nodes >= 1'):
    ppd.accept_tree(0, ((0.5,),))
  assert ppd.parse_accuracy('0.6,0.1;0.4') == ((0.6, 0.1), (0.4,))
  with pytest.raises(ValueError, match='rows of top-r'):
    ppd.parse_accuracy('a;b')
  with pytest.raises(ValueError, match='one row per depth'):
    registry.build('ppd', dict(accuracy='0.5', gamma=2, auto_size=False))
  with pytest.raises(ValueError, match='No measured cost'):
    ppd.choose_nodes(((0.5,),), 1, {4: 1.0}, (1, 2))


def test_clear_errors_without_prompt_tokens(setup):
  models, params, eos, _ = setup
  dec = registry.build('ppd', dict(tree_nodes=4, auto_size=False))
  with pytest.raises(ValueError, match='ppd heads'):
    dec.for_model({'target': ModelKind()})
  run = lambda d, p: run_decoder(d, models, p, PROMPTS, max_new_tokens=4, cache_size=CACHE,
                                 eos_id=eos, pad_id=PAD)
  with pytest.raises(ValueError, match='trained prompt tokens'):
    run(dec, {'target': params['target']})
  with pytest.raises(ValueError, match='3 prompt tokens'):
    run(registry.build('ppd', dict(tree='chain', gamma=4, accuracy='.5;.5;.5;.5')), params)


def test_attach_mask_matches_the_training_layout():
  """Prompt tokens attached to the nodes of a chain see what they see in a training row."""
  T, K = 5, 3
  _, mask = ppd_model.layout(T, K)
  local = ppd_model.attach_mask(jnp.asarray(trees.chain(T - 1).ancestors())[None], K)[0]
  np.testing.assert_array_equal(np.asarray(local), mask)


def test_prompt_logits_in_the_verifying_forward_match_a_full_forward(setup):
  """Each tree node's prompt candidates, computed in the cached tree forward, equal those of
  a plain forward over the node's whole path with prompt tokens attached (as in training)."""
  from decoding import SamplingConfig  # pylint: disable=g-import-not-at-top
  from decoding.speculative import drafter as drafter_lib  # pylint: disable=g-import-not-at-top
  from models import Cache  # pylint: disable=g-import-not-at-top
  models, params, _, _ = setup
  target, tp = models.target, params['target']
  prefix = jnp.asarray([[1, 5, 9, 3, 7, 2], [4, 4, 8, 1, 6, 2]], jnp.int32)
  B, L = prefix.shape
  tpl = trees.branching([2, 2, 1])
  drafter = ppd.PPDDrafter(template=tpl)
  cache = jax.jit(lambda p, c: target.apply({'params': p}, prefix, cache=c).cache)(
      tp, Cache.init(target.cfg, B, 64))
  tokens = jax.random.randint(jax.random.key(2), (B, tpl.size), 0, V)
  valid = jnp.ones((B, tpl.size), bool).at[1, 2].set(False)  # row 1 drops node 2's subtree
  tree = trees.from_template(tpl, tokens, valid)
  env = drafter_lib.Env(models=models, params=params, sampling=SamplingConfig(),
                        mode='deterministic', row_keys_B=None, prompt_BxP=prefix,
                        prompt_len_B=jnp.full((B,), L), cache_size=64, max_new_tokens=8)
  G, R = drafter.gamma, tpl.max_rank
  state = ppd.PPDState(cand_BxGxR=jnp.zeros((B, G, R), jnp.int32), ready_B=jnp.ones(B, bool),
                       node_cand_BxTxGxR=jnp.zeros((B, tpl.size, G, R), jnp.int32))
  base = jnp.full((B,), L, jnp.int32)
  out, state = jax.jit(lambda st, c, t: drafter.target_forward(
      env, st, c, t, base, jnp.ones((B,), bool)))(state, cache, tree)
  assert out.logits_BxTxV.shape == (B, tpl.size, V)
  anc = tpl.ancestors()
  prompts = params['ppd']['prompts']
  full = jax.jit(lambda seq: ppd_model.forward_with_prompts(target, tp, prompts, seq))
  depths = np.asarray(tpl.depths)
  checked = 0
  for b in range(B):
    for leaf in np.nonzero(depths == tpl.max_depth)[0]:
      if not bool(tree.valid_BxT[b, leaf]):
        continue
      path = np.nonzero(anc[leaf])[0]  # root .. leaf, in depth order
      seq = jnp.concatenate([prefix[b], tokens[b, path]])[None]
      base_logits, prompt_logits = full(seq)  # one forward covers every node of the path
      for d, n in enumerate(path):
        np.testing.assert_allclose(out.logits_BxTxV[b, n], base_logits[0, L + d], atol=2e-4)
        want = jax.lax.top_k(prompt_logits[0, L + d], tpl.max_rank)[1]
        np.testing.assert_array_equal(state.node_cand_BxTxGxR[b, n], want)
        checked += 1
  assert checked > 2 * tpl.size
