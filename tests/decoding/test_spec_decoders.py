"""Speculative decoders: greedy == AR token for token for every lossless method, the cache
equals the AR cache after every step, clear errors, and the recurrent rollback hook."""

from __future__ import annotations

import dataclasses
import functools
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import testlib
from testlib import small_config
from decoding import Models, SamplingConfig, base, registry, run_decoder
from decoding.speculative import adaptive
from decoding.speculative import decoders as spec_decoders
from decoding.speculative import drafter as drafter_lib
from decoding.speculative import loop, trees, verify
from models import Cache, Transformer, init_params, sharding
import spec_cases
from spec_cases import CACHE, METHODS, N_NEW, PAD, PROMPTS, V, params_for, step_fn


@pytest.fixture(scope='module')
def setup():
  return spec_cases.build_setup()

@pytest.mark.parametrize('method', list(METHODS))
def test_greedy_equals_ar_on_a_ragged_batch(setup, method):
  models, params, eos, ref = setup
  params = params_for(method, params)
  name, settings = METHODS[method]
  dec = registry.build(name, settings)
  stats = testlib.decode_like_ar(dec, models, params, PROMPTS, eos, ref, max_new_tokens=N_NEW,
                                 cache_size=CACHE, pad_id=PAD)
  steps = stats.extra['spec_steps']
  assert steps == sum(stats.step_tokens_hist)
  acc = stats.extra['accepted_by_depth']
  assert all(a >= b for a, b in zip(acc, acc[1:])) and acc[0] <= steps


def _every_third_step_ar(self, state):
  """A fixed schedule for an adaptive chain: an AR step (variant 0) whenever the steps taken
  so far are a multiple of 3, else the longest chain."""
  steps = jnp.max(jnp.sum(state.choices_BxV, axis=1))
  return jnp.where(steps % 3 == 0, 0, len(self.gammas) - 1).astype(jnp.int32)


ADAPTIVE_WITH_AR = [m for m, (name, s) in METHODS.items() if s.get('adaptive') and
                    registry.build(name, s).get_drafter().gammas[0] == adaptive.AR]


@pytest.mark.parametrize('method', ADAPTIVE_WITH_AR)
def test_ar_steps_between_drafting_steps_keep_the_output_ar(setup, method, monkeypatch):
  """An AR step between drafting steps (an adaptive length's gamma = 0) leaves the drafter a
  state its next draft can use: with AR and drafting steps interleaved the output is AR's,
  and no draft holds an id outside the vocabulary (`run_decoder` raises on one: such an id
  embeds as NaN, and once Jacobi's guesses after an AR step were such ids, the NaN keys in
  the cache's stale slots made the output diverge from AR's)."""
  models, params, eos, ref = setup
  name, settings = METHODS[method]
  gammas = registry.build(name, settings).get_drafter().gammas
  # costs all 1: settings of no other test, so that `run_decoder` compiles this program anew
  dec = registry.build(name, dict(settings, costs=','.join(['1'] * len(gammas))))
  assert isinstance(dec.get_drafter(), adaptive.AdaptiveChain)
  monkeypatch.setattr(adaptive.AdaptiveChain, 'choose', _every_third_step_ar)
  stats = testlib.decode_like_ar(dec, models, params, PROMPTS, eos, ref, max_new_tokens=N_NEW,
                                 cache_size=CACHE, pad_id=PAD)
  used = np.asarray(stats.extra['adaptive_steps'])
  assert used[0] > 0 and used[-1] > used[0], used  # both kinds of step ran
  assert stats.extra['bad_draft_steps'] == 0


@dataclasses.dataclass(frozen=True)
class _OutOfVocab(drafter_lib.ChainDrafter):
  """A broken drafter: its chain holds ids below 0 and at or above the vocabulary size."""
  kind: ClassVar[str] = 'out_of_vocab'
  gamma: int = 3

  def propose(self, env, state, cache, root_B, base_B, active_B):
    bad = jnp.asarray([-7, V, 2 ** 31 - 1], jnp.int32)[:self.gamma]
    tokens = jnp.concatenate([root_B[:, None], jnp.broadcast_to(bad, (root_B.shape[0],
                                                                      self.gamma))], axis=1)
    tree = trees.from_template(trees.chain(self.gamma), tokens,
                               jnp.broadcast_to(active_B[:, None], tokens.shape))
    return tree, state, cache, jnp.zeros_like(base_B)


def test_ids_outside_the_vocabulary_are_never_accepted_and_are_reported(setup):
  """A draft id outside [0, V) would embed as NaN, and its keys/values, rejected but left in
  the cache's stale slots, would reach every later step through the masked products: the
  loop feeds such ids to the forward as 0 (the output stays AR's), counts the steps that held
  one, and `run_decoder` raises on them."""
  models, params, eos, ref = setup
  B, P = len(PROMPTS), max(map(len, PROMPTS))
  prompt = np.full((B, P), PAD, np.int32)
  for i, p in enumerate(PROMPTS):
    prompt[i, :len(p)] = p
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(0), i))(jnp.arange(B))
  env = drafter_lib.Env(models=models, params=params, sampling=SamplingConfig(),
                        mode='deterministic', row_keys_B=keys, prompt_BxP=jnp.asarray(prompt),
                        prompt_len_B=jnp.asarray([len(p) for p in PROMPTS], jnp.int32),
                        cache_size=CACHE, max_new_tokens=N_NEW)
  out = jax.jit(lambda: loop.generate(_OutOfVocab(), env, eos_id=eos, pad_id=PAD))()
  n = np.asarray(out.num_generated_B)
  assert [list(np.asarray(out.tokens_BxN[b, :n[b]])) for b in range(B)] == ref
  np.testing.assert_array_equal(out.extra['bad_draft_steps'], out.extra['spec_steps'])
  assert np.all(np.asarray(out.extra['spec_steps']) > 0)


@pytest.mark.parametrize('method', ['dynamic-tree', 'eagle3-dynamic', 'medusa'])
def test_sharded_tree_decoding_equals_ar(setup, method):
  """Trees owe their path moves across steps (Cache.gather(defer=True)), in the target's
  cache and a draft model's: sharded over data and tensor axes, the tokens stay AR's."""
  models, params, eos, ref = setup
  name, settings = METHODS[method]
  mesh = sharding.make_mesh({'data': 2, 'fsdp': 1, 'tensor': 4})
  rows, _ = run_decoder(registry.build(name, settings), models, params, PROMPTS,
                        max_new_tokens=N_NEW, cache_size=CACHE, eos_id=eos, pad_id=PAD,
                        mesh=mesh)
  assert [r.tokens for r in rows] == ref


@functools.partial(jax.jit, static_argnums=0)
def _ar_cache(model, params, tokens_BxT, lengths_B):
  pos = jnp.where(jnp.arange(tokens_BxT.shape[1])[None] < lengths_B[:, None],
                  jnp.arange(tokens_BxT.shape[1])[None], -1)
  return model.apply({'params': params}, tokens_BxT, pos,
                     cache=Cache.init(model.cfg, tokens_BxT.shape[0], CACHE)).cache


@pytest.mark.parametrize('method', ['dynamic-tree', 'lookahead', 'jacobi_forcing'])
def test_cache_equals_ar_cache_after_every_step(setup, method):
  models, params, eos, ref = setup
  name, settings = METHODS[method]
  init, step, lens = step_fn(registry.build(name, settings), models, params, eos)
  s = init(params)
  target = models.target
  for _ in range(8):
    s = step(params, s)
    committed = s.cache.lengths
    n = np.asarray(s.progress.num_generated_B)
    # The committed tokens: prompt + all generated but the newest (the next root).
    seq = np.zeros((len(PROMPTS), CACHE), np.int32)
    for b, p in enumerate(PROMPTS):
      gen = np.asarray(s.progress.tokens_BxN[b, :n[b] - 1])
      seq[b, :len(p) + len(gen)] = list(p) + list(gen)
    live = ~np.asarray(s.progress.done_B)
    np.testing.assert_array_equal(np.asarray(committed)[live], (np.asarray(lens) + n - 1)[live])
    want = _ar_cache(target, params['target'], jnp.asarray(seq), committed)
    cache = s.cache.settle()  # a tree's path moves lazily (Cache.gather(defer=True))
    for b in np.nonzero(live)[0]:
      L = int(committed[b])
      np.testing.assert_array_equal(cache.positions[b, :L], np.arange(L))
      for got, exp in zip(cache.layers, want.layers):
        np.testing.assert_allclose(got.k[b, :, :L], exp.k[b, :, :L], atol=2e-5)
        np.testing.assert_allclose(got.v[b, ..., :L], exp.v[b, ..., :L], atol=2e-5)
    if not live.any():
      break


def test_bad_inputs_give_clear_errors(setup):
  models, params, eos, _ = setup
  run = lambda dec, m=models, p=params, cache=CACHE: run_decoder(
      dec, m, p, PROMPTS, max_new_tokens=N_NEW, cache_size=cache, eos_id=eos, pad_id=PAD)
  with pytest.raises(ValueError, match="Unknown drafter 'nope'"):
    registry.build('speculative', {'drafter': 'nope'})
  with pytest.raises(ValueError, match='without a distribution q'):
    registry.build('prompt_lookup', {'verifier': 'iid'})
  with pytest.raises(ValueError, match='draft_workdir'):
    registry.build('speculative').extra_models()
  small_vocab = Transformer(small_config(vocab_size=V - 8, num_layers=1))
  sp = init_params(small_vocab, jax.random.key(0))
  with pytest.raises(ValueError, match='same tokenizer'):
    run(registry.build('speculative', {'draft_workdir': 'x'}),
        Models(models.target, extras=(('draft', small_vocab),)), dict(params, draft=sp))
  with pytest.raises(ValueError, match='cache slots'):
    run(registry.build('token_recycling'), cache=48)  # an 81-node tree does not fit
  with pytest.raises(ValueError, match='medusa heads'):
    run(registry.build('medusa'), p={k: v for k, v in params.items() if k != 'medusa'})
  with pytest.raises(ValueError, match='heads'):
    run(registry.build('medusa', {'gamma': 5, 'tree': 'chain'}))
  with pytest.raises(ValueError, match='Exit layer 7'):
    run(registry.build('layerskip', {'exit_layer': 7}))
  with pytest.raises(ValueError, match='Unknown tree'):
    registry.build('speculative', {'tree': 'forest'})


class _FakeRecurrentCache:
  """Records how commit_accepted rolls back a cache with recurrent layers."""

  def __init__(self, lengths):
    self.lengths, self.calls = lengths, []

  def select_step(self, index_B, step_states):
    self.calls.append(('select_step', np.asarray(index_B), step_states))
    return self

  def gather(self, src, dst, lengths, defer=False):
    assert not defer
    self.calls.append(('gather', np.asarray(src), np.asarray(dst), np.asarray(lengths)))
    return self

  def replace(self, lengths):
    self.calls.append(('lengths', np.asarray(lengths)))
    return self


def test_commit_accepted_rewinds_recurrent_state():
  """With step states (recurrent layers) the state after the last kept node is selected;
  attention slots are gathered along the path; rows with keep 0 keep the state before."""
  path = jnp.array([[0, 2, 5, -1], [0, 1, -1, -1], [0, -1, -1, -1]])
  keep = jnp.array([3, 1, 0])
  base = jnp.array([10, 4, 7])
  fake = _FakeRecurrentCache(lengths=jnp.array([16, 10, 7]))
  verify.commit_accepted(fake, base, path, keep, chain=False, step_states='STATES')
  (_, index, states), (_, src, dst, lengths) = fake.calls
  np.testing.assert_array_equal(index, [5, 0, -1])
  assert states == 'STATES'
  np.testing.assert_array_equal(src[0, :3], [10, 12, 15])
  np.testing.assert_array_equal(dst[0, :3], [10, 11, 12])
  assert (src[2] < 0).all() and (dst[2] < 0).all()
  np.testing.assert_array_equal(lengths, [13, 5, 7])
  chain = _FakeRecurrentCache(lengths=jnp.array([16, 10, 7]))
  verify.commit_accepted(chain, base, path, keep, chain=True, step_states='S')
  assert [c[0] for c in chain.calls] == ['select_step', 'lengths']


def test_recurrent_targets_get_parents_and_step_states():
  class Cfg:
    layer_types = ('attention', 'deltaproduct')
  assert verify.is_recurrent(Cfg())
  assert not verify.is_recurrent(small_config())


def test_tree_builders():
  tpl = trees.best_first(80, 6, trees.RECYCLING_PROFILE)
  assert tpl.size == 81 and tpl.max_depth <= 6
  assert all(tpl.parents[i] < i for i in range(1, tpl.size))
  kids = tpl.children()
  for p in range(tpl.size):  # children are ordered by rank and ranks are 0..n-1
    ranks = [tpl.ranks[c] for c in kids[p] if c >= 0]
    assert ranks == list(range(len(ranks)))
  assert trees.branching([2, 2]).size == 7
  assert trees.chain(3).is_chain
  # A trie merges shared prefixes: [5 6 7], [5 6 9], [5 8], [2 3].
  cands = jnp.array([[[5, 6, 7], [5, 6, 9], [5, 8, 0], [2, 3, 0]]])
  ok = jnp.array([[[1, 1, 1], [1, 1, 1], [1, 1, 0], [1, 1, 0]]], bool)
  t = trees.trie(cands, ok, jnp.array([0]))
  valid = np.asarray(t.valid_BxT[0])
  assert valid.sum() == 1 + 7  # root + 5,6,7,9,8,2,3
  tokens = np.asarray(t.tokens_BxT[0])
  kids_root = [int(c) for c in t.children_BxTxK[0, 0] if c >= 0]
  assert [tokens[c] for c in kids_root] == [5, 2]
  with pytest.raises(ValueError, match='parents must precede'):
    trees.Template(parents=(-1, 2, 0), ranks=(0, 0, 0))


@pytest.mark.parametrize('nodes,depth,delay', [(4, 2, 1), (8, 5, 2), (16, 10, 4), (7, 4, 2),
                                               (6, 3, 0)])
def test_delayed_tree_spends_the_budget_below_one_path(nodes, depth, delay):
  """DDTE: `delay` single-child levels, then i.i.d. rollouts of depth - delay drafts (the
  last one shorter) from the end of that path; exactly `nodes` drafted nodes."""
  tpl = trees.delayed(nodes, depth, delay)
  assert tpl.size == nodes + 1 and tpl.max_depth == depth
  kids = tpl.children()
  n_kids = (kids >= 0).sum(1)
  assert list(n_kids[:delay]) == [1] * delay  # the delayed path 0 -> 1 -> ... -> delay
  assert tpl.parents[:delay + 1] == tuple(range(-1, delay))
  k = -(-(nodes - delay) // (depth - delay))
  assert n_kids[delay] == k and [tpl.ranks[c] for c in kids[delay][:k]] == list(range(k))
  assert n_kids[delay + 1:].max() <= 1  # below the branch node: chains (rank 0)
  assert all(tpl.ranks[i] == 0 for i in range(1, tpl.size) if tpl.parents[i] != delay)
  decoder = registry.build('speculative', dict(draft_workdir='x', tree='static',
                                               tree_nodes=nodes, gamma=depth, delay=delay,
                                               verifier='traversal'))
  if delay:
    assert decoder.template() == tpl
  assert trees.delayed(6, 4, 2) == trees.branching([1, 1, 2, 1])
  with pytest.raises(ValueError, match='delayed tree'):
    trees.delayed(4, 3, 3)
  with pytest.raises(ValueError, match='needs tree=static'):
    registry.build('speculative', dict(draft_workdir='x', delay=2))
  with pytest.raises(ValueError, match='no tree spec'):
    registry.build('speculative', dict(draft_workdir='x', tree='static', delay=1,
                                       branching='2,1'))


def test_settings_are_validated():
  d = spec_decoders.SpeculativeDecoder(draft_workdir='x')
  assert d.verification_mode() == 'deterministic'  # greedy
  s = SamplingConfig(temperature=1.0)
  assert registry.build('speculative', {'draft_workdir': 'x'}, s).verification_mode() == 'iid'
  assert registry.build('speculative', {'draft_workdir': 'x', 'tree': 'static'},
                        s).verification_mode() == 'wor'
  assert registry.build('token_recycling', {}, s).verification_mode() == 'deterministic'
  tv = {'draft_workdir': 'x', 'tree': 'static', 'verifier': 'traversal'}
  assert registry.build('speculative', tv, s).verification_mode() == 'traversal'
  # Greedy runs every verifier as 'deterministic' (so greedy == AR holds as for the others).
  assert registry.build('speculative', tv).verification_mode() == 'deterministic'
  with pytest.raises(ValueError, match='i.i.d.'):
    registry.build('speculative', dict(tv, tree='dynamic'), s)
  with pytest.raises(ValueError, match='without a distribution q'):
    registry.build('prompt_lookup', {'verifier': 'traversal'}, s)
  with pytest.raises(ValueError, match='gamma'):
    registry.build('speculative', {'gamma': 0})
  with pytest.raises(ValueError, match='draft_loop'):
    registry.build('speculative', {'draft_loop': 'sometimes'})
  with pytest.raises(ValueError, match='draft_loop'):
    registry.build('layerskip', {'draft_loop': 'unrolled'})
  with pytest.raises(ValueError, match='block must be >= 1'):
    registry.build('jacobi_forcing', {'block': 0})
  with pytest.raises(ValueError, match='recycle must be >= 0'):
    registry.build('jacobi_forcing', {'recycle': -1})
  jf = registry.build('jacobi_forcing', {'block': 4, 'blocks': 3, 'recycle': 0}).get_drafter()
  assert jf.kind == 'jacobi' and jf.window == 12  # no recycling: the plain Jacobi window


@pytest.mark.parametrize('template', [trees.best_first(80, 6, trees.RECYCLING_PROFILE),
                                      trees.branching([3, 2, 2])], ids=['recycling80', '3x2x2'])
def test_greedy_tree_verify_equals_the_walk(template):
  """The parallel greedy verifier equals the reference walk under one-hot p (path, accepted
  count, next token) on trees whose tokens mostly follow the target's argmax, with duplicated
  siblings (the walk takes the first) and invalid subtrees."""
  from pallas_kernels.spec_verify import reference as ref  # pylint: disable=g-import-not-at-top
  B, V, T = 64, 12, template.size
  ks = jax.random.split(jax.random.key(0), 4)
  logits = 3 * jax.random.normal(ks[0], (B, T, V))
  top = jnp.argmax(logits, -1)
  parents = np.asarray(template.parents)
  guess = jnp.where(jax.random.bernoulli(ks[1], 0.7, (B, T)), top[:, np.maximum(parents, 0)],
                    jax.random.randint(ks[2], (B, T), 0, V))  # small V: many duplicates
  valid = jax.random.bernoulli(ks[3], 0.9, (B, T))
  tree = trees.from_template(template, guess.astype(jnp.int32), valid)
  depth = template.max_depth
  path, n, nxt = jax.jit(verify.greedy_tree_verify, static_argnums=2)(tree, logits, depth)
  onehot = jnp.where(jax.nn.one_hot(top, V, dtype=bool), 0.0, -jnp.inf)
  u = jnp.full((B, depth, tree.children_BxTxK.shape[2]), 0.5)
  path_ref, n_ref, res_ref = ref.tree_verify_reference(onehot, None, tree.tokens_BxT,
                                                       tree.children_BxTxK, u,
                                                       mode='deterministic')
  np.testing.assert_array_equal(n, n_ref)
  np.testing.assert_array_equal(path, path_ref)
  np.testing.assert_array_equal(nxt, jnp.argmax(res_ref, -1))
  assert len(set(np.asarray(n).tolist())) >= 3  # the cases vary


def test_draft_loop_runs_a_fixed_count_unless_rows_can_stop_early():
  """'while' ends when no row drafts on; 'fixed' always runs its count (a scan, which XLA runs
  without a host round trip per iteration on a GPU) and passes stopped rows through;
  'unroll' runs the same passes with no loop; 'auto' unrolls up to UNROLL_MAX passes, takes
  'fixed' beyond, and 'while' where rows can stop early."""
  cond = lambda c: c[0] < c[1]
  body = lambda c: (c[0] + 1, c[1], c[2] + jnp.where(c[0] < c[1], 1, 0))
  carry = (jnp.int32(0), jnp.int32(2), jnp.int32(0))
  w = drafter_lib.draft_loop(cond, body, carry, 5, 'while', can_stop_early=False)
  f = drafter_lib.draft_loop(cond, body, carry, 5, 'fixed', can_stop_early=True)
  u = drafter_lib.draft_loop(cond, body, carry, 5, 'unroll', can_stop_early=True)
  assert (int(w[0]), int(w[2])) == (2, 2) and (int(f[0]), int(f[2])) == (5, 2)
  assert [int(x) for x in u] == [int(x) for x in f]
  prims = lambda stop, n=5, kind='auto': {e.primitive.name for e in jax.make_jaxpr(
      lambda c: drafter_lib.draft_loop(cond, body, c, n, kind, stop))(carry).eqns}
  assert not prims(False) & {'scan', 'while'}  # unrolled
  assert not prims(True, kind='unroll') & {'scan', 'while'}
  big = drafter_lib.UNROLL_MAX + 1
  assert 'scan' in prims(False, big) and 'while' not in prims(False, big)
  assert 'while' in prims(True)
  with pytest.raises(ValueError, match='draft_loop'):
    drafter_lib.draft_loop(cond, body, carry, 5, 'unrolled', False)


@pytest.mark.parametrize('index', [0, 1, 2])
def test_switch_in_place_equals_lax_switch(index):
  """Each index runs its branch and only it (a branch run twice, or another one too, would
  change the counter or the vector); the result equals lax.switch's, under jit too."""
  branches = [lambda c, k=k: (c[0] + 1, c[1] * (k + 2) + k, c[2].at[k].add(1.0))
              for k in range(3)]
  carry = (jnp.int32(0), jnp.arange(4, dtype=jnp.int32), jnp.zeros((3,), jnp.float32))
  want = jax.lax.switch(index, branches, carry)
  for got in (base.switch_in_place(jnp.int32(index), branches, carry),
              jax.jit(lambda i: base.switch_in_place(i, branches, carry))(index)):
    jax.tree.map(np.testing.assert_array_equal, got, want)
  assert int(want[0]) == 1 and float(jnp.sum(want[2])) == 1.0
  # a None branch leaves the carry as it is, and adds no loop
  with_none = [None if k == 1 else b for k, b in enumerate(branches)]
  got = jax.jit(lambda i: base.switch_in_place(i, with_none, carry))(index)
  jax.tree.map(np.testing.assert_array_equal, got, carry if index == 1 else want)
  prims = [e.primitive.name for e in jax.make_jaxpr(
      lambda i: base.switch_in_place(i, with_none, carry))(index).eqns]
  assert prims.count('while') == 2
