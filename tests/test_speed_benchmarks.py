"""The speed benchmarks' machinery: the oracle drafter of the system benchmark, the no-op
model of the step-cost breakdown, the accounting of the committed step-cost results, and the
flag on speedups above tau."""

from __future__ import annotations

import glob
import json
import os
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import testlib
from testlib import small_config
from benchmarks import (common, cost_model, diffusion_cost, forward_cost, harness, oracle,
                        spec_system, step_cost)
from decoding import Models, SamplingConfig, compare, registry, run_decoder
from decoding.runner import RowOutput, RunStats
from models import Transformer, init_params

V = 64
PROMPTS = [[1, 5, 9, 3, 1, 5, 9, 12], [2, 7, 7, 30], [4, 4, 8, 1, 6]]
N_NEW = 40
CACHE = 160


@pytest.fixture(scope='module')
def target():
  cfg = small_config(vocab_size=V, init_std=0.3)  # spread logits: an arbitrary greedy text
  model = Transformer(cfg)
  params = init_params(model, jax.random.key(3))
  rows, _ = run_decoder(registry.build('ar'), Models(model), {'target': params}, PROMPTS,
                        max_new_tokens=N_NEW, cache_size=CACHE, eos_id=-1, pad_id=0)
  return model, params, [r.tokens for r in rows]


def _run_oracle(target, settings, alpha):
  model, params, ar = target
  batches = harness.make_batches(PROMPTS, len(PROMPTS), 0)
  (prompt, lens, keys), = batches
  ref = oracle.reference_rows(prompt, lens, np.asarray([r + [0] * (N_NEW - len(r)) for r in ar]),
                              [len(r) for r in ar], CACHE)
  draft = oracle.OracleDraft.for_target(model.cfg)
  models = Models(model, extras=(('draft', draft),))
  dec = registry.build(settings[0], dict(settings[1], draft_workdir='oracle'))
  params = {'target': params, 'draft': oracle.oracle_params(ref, alpha)}
  rows, stats = run_decoder(dec, models, params, PROMPTS, max_new_tokens=N_NEW,
                            cache_size=CACHE, eos_id=-1, pad_id=0)
  return [r.tokens for r in rows], stats


@pytest.mark.parametrize('verifier', ['chain k=4', 'static tree 16', 'dynamic tree 16',
                                      'multi-draft 4x3 (K-SEQ)'])
def test_oracle_outputs_equal_ar_and_acceptance_follows_alpha(target, verifier):
  """Greedy output equals AR's at every alpha; alpha 0 accepts nothing (one token per
  forward), alpha 1 everything, and tau grows with alpha."""
  ar = target[2]
  taus = []
  for alpha in (0.0, 0.5, 0.8, 1.0):
    tokens, stats = _run_oracle(target, spec_system.VERIFIERS[verifier], alpha)
    assert tokens == ar, (verifier, alpha)
    taus.append(stats.tau)
  depth = registry.build(spec_system.VERIFIERS[verifier][0],
                         dict(spec_system.VERIFIERS[verifier][1], draft_workdir='o'))
  depth = depth.get_drafter().max_depth
  assert taus[0] == pytest.approx(1.0)
  assert taus == sorted(taus) and taus[1] < taus[2] < taus[3]
  # alpha 1: every step commits its whole path plus the bonus token (but the last ones).
  steps = -(-(N_NEW - 1) // (depth + 1))
  assert taus[3] == pytest.approx(N_NEW / (1 + steps), rel=0.05)


def test_oracle_accepts_each_depth_with_probability_alpha(target):
  """The first draft of a chain is accepted in about alpha of the steps (many positions)."""
  for alpha in (0.3, 0.7):
    _, stats = _run_oracle(target, ('speculative', dict(gamma=1)), alpha)
    accepted = stats.extra['accepted_by_depth'][0] / stats.extra['spec_steps']
    assert abs(accepted - alpha) < 0.12, (alpha, accepted)


def test_noop_model_keeps_the_loop_running_and_the_cache_bookkeeping(target):
  """With no-op models a decoder still runs to its token budget with fixed shapes: the
  stand-in for the breakdown's 'everything else'."""
  model, params, _ = target
  noop = cost_model.noop_models(Models(model))
  for name in ('ar', 'prompt_lookup', 'token_recycling', 'layerskip'):
    rows, stats = run_decoder(registry.build(name), noop, {'target': params}, PROMPTS,
                              max_new_tokens=N_NEW, cache_size=CACHE, eos_id=-1, pad_id=0)
    assert all(len(r.tokens) == N_NEW for r in rows), name
    assert stats.target_forwards >= len(PROMPTS)


def test_noop_draft_modules_return_the_real_shapes_and_restore_the_modules(target):
  """Inside `noop_draft_modules` a draft module's call gives (nearly) zeros of exactly the
  real output's shapes and dtypes; outside, the real call again (also after an error)."""
  model, params, _ = target
  extras = step_cost.recipe_extras('eagle3', model, 0, jax.random.key(1))
  (name, p), = extras.items()
  from models import eagle as eagle_lib  # pylint: disable=g-import-not-at-top
  module = eagle_lib.module_for(model.cfg, name, p)
  B, T, D = 2, 3, model.cfg.d_model
  args = (jax.numpy.ones((B, T, D)), jax.numpy.ones((B, T), jax.numpy.int32),
          jax.numpy.broadcast_to(jax.numpy.arange(T), (B, T)),
          params['embed']['embedding'], params['embed']['embedding'])
  real = module.apply({'params': p}, *args)
  with cost_model.noop_draft_modules():
    fake = module.apply({'params': p}, *args)
  assert jax.tree.structure(fake) == jax.tree.structure(real)
  for a, b in zip(jax.tree.leaves(real), jax.tree.leaves(fake)):
    assert a.shape == b.shape and a.dtype == b.dtype
    assert np.abs(np.asarray(b, np.float64)).max() < 1e-20  # zeros + 1e-30 x the inputs
  assert any(np.asarray(a).any() for a in jax.tree.leaves(real))
  with pytest.raises(RuntimeError), cost_model.noop_draft_modules():
    raise RuntimeError('inside')
  again = module.apply({'params': p}, *args)
  for a, b in zip(jax.tree.leaves(real), jax.tree.leaves(again)):
    np.testing.assert_array_equal(a, b)


def test_recipe_stand_ins_run_a_head_decoder_with_free_models(target):
  """Every decoder whose drafter is trained params gets its recipe's initial params; one with
  a cached draft layer (Chimera) runs from them with the target and its draft layer made free
  (the breakdown's 'other' run)."""
  model, params, _ = target
  for name in step_cost.EXTRAS_RECIPES:
    extras = step_cost.recipe_extras(name, model, 3, jax.random.key(1))
    assert extras and all(jax.tree.leaves(t) for t in extras.values()), name
  extras = step_cost.recipe_extras('chimera', model, 3, jax.random.key(1))
  noop = cost_model.noop_models(Models(model))
  with cost_model.noop_draft_modules():
    rows, stats = run_decoder(registry.build('chimera'), noop, {'target': params, **extras},
                              PROMPTS, max_new_tokens=12, cache_size=CACHE, eos_id=-1, pad_id=0)
  assert all(len(r.tokens) == 12 for r in rows)
  assert stats.target_forwards >= len(PROMPTS)


def test_step_tokens():
  cfg = small_config()
  models = Models(Transformer(cfg))
  assert step_cost.step_tokens(registry.build('ar'), models) == 1
  assert step_cost.step_tokens(registry.build('prompt_lookup', {'gamma': 3}), models) == 4
  assert step_cost.step_tokens(registry.build('token_recycling', {'tree_nodes': 9}), models) == 10


def test_committed_step_costs_add_up():
  """In every committed step-cost table the target, drafter and other columns add up to the
  measured step (within 10%), and no speedup above tau is shown unflagged."""
  files = glob.glob(os.path.join(common.RESULTS_DIR, 'step_cost_*.json'))
  assert files, 'no committed step-cost results'
  for path in files:
    with open(path) as f:
      rows = json.load(f)['rows']
    assert rows, path
    for r in rows:
      parts = r['target_ms'] + r['drafter_ms'] + r['other_ms']
      assert abs(parts / r['step_ms'] - 1) <= step_cost.SUM_TOLERANCE, (path, r['decoder'])
      assert r['other_ms'] >= 0 and r['step_ms'] > 0, (path, r['decoder'])
    md = open(path[:-len('.json')] + '.md').read()
    for r in rows:
      if harness.implausible(r):
        assert f"{r['speedup']:.2f}x (!)" in md, (path, r['decoder'])


def test_speedups_above_tau_are_flagged_in_the_tables(tmp_path, monkeypatch):
  monkeypatch.setattr(common, 'RESULTS_DIR', str(tmp_path))
  row = dict(decoder='prompt_lookup', batch=1, step_tokens=4, tau=1.5, step_ms=1.0,
             target_fwd_ms=0.8, target_ms=0.8, drafter_ms=0.0, other_ms=0.2,
             sum_ms=1.0, overhead_share=0.2, speedup=1.7, ideal=1.4, equals_ar=True)
  text = open(step_cost.report([row, dict(row, speedup=1.2)], 'step_cost_t', 't')).read()
  assert '1.70x (!)' in text and '1.20x |' in text
  assert 'split fails' not in text
  # a split with a component below zero (DEL's no-op runs chose other exits) is marked
  odd = dict(row, target_ms=-3.0, other_ms=4.0, overhead_share=4.0)
  assert step_cost.split_failed(odd) and not step_cost.split_failed(
      dict(row, drafter_ms=-0.01))  # within noise
  text = open(step_cost.report([row, odd], 'step_cost_t', 't')).read()
  assert '400% (split fails)' in text and '"split fails":' in text
  sampled = open(step_cost.report([dict(row, equals_ar=None)], 'step_cost_s', 't',
                                  SamplingConfig(temperature=1.0))).read()
  assert 'Sampled (' in sampled and sampled.rstrip().endswith('| - |'), sampled
  sys_row = dict(device='cpu', preset='test', dtype='float32', verifier='chain k=4',
                 tokens_per_step=5, alpha=0.8, batch=1, tau=2.0, tokens_per_s=10.0,
                 ar_tokens_per_s=4.0, speedup=2.5, ideal=2.2, t_ar_ms=1.0, t_fwd_ms=1.0,
                 measured_over_ideal=1.1, equal_to_ar=True)
  args = type('A', (), dict(out='spec_system_t', preset='test', dtype='float32', prompts=1,
                            max_new_tokens=8, repeats=1, embed_scale=1.0))()
  text = open(spec_system.write([sys_row], args)).read()
  assert '2.50x (!)' in text
  assert any('(!)' in g[1] and g[2] == 'NOT met' for g in spec_system.goals([sys_row]))


def test_decoder_specs_carry_their_own_settings():
  assert registry.parse_spec('prompt_lookup:gamma=2:ngram=1') == (
      'prompt_lookup', {'gamma': 2, 'ngram': 1})
  assert registry.parse_spec('speculative:tree=static:branching=4/2/1')[1] == {
      'tree': 'static', 'branching': '4,2,1'}
  with pytest.raises(ValueError, match='Unknown setting'):
    registry.parse_spec('prompt_lookup:gamma_typo=2')
  with pytest.raises(ValueError, match='is not a int'):
    registry.parse_spec('prompt_lookup:gamma=two')
  from decoding import compare  # pylint: disable=g-import-not-at-top
  specs = ['ar', 'prompt_lookup:gamma=2', 'prompt_lookup']
  built = compare.build_decoders(specs, compare.merged_settings(specs), ['ngram'],
                                 SamplingConfig())
  labels = [label for label, _ in built]
  assert labels == ['ar', 'prompt_lookup(gamma=2)', 'prompt_lookup']
  assert built[1][1].gamma == 2 and built[2][1].gamma != 2


def test_diffusion_accounting_of_ar_against_itself(target):
  """The diffusion step accounting on a decoder whose answer is known: cached AR measured
  against itself commits one token per forward and per step, reproduces AR's tokens, and
  times both loops (which of them is faster is a measurement, left to the benchmark: on a
  loaded machine a tiny no-op loop can read slower than the real one)."""
  model, params, ar_tokens = target
  run = SimpleNamespace(model=model, params=params, config={}, workdir='',
                        tokenizer=SimpleNamespace(pad_id=0, eos_id=-1))
  r = diffusion_cost.measure(registry.build('ar'), run, {}, run, PROMPTS, max_new=12,
                             repeats=1)
  assert r['tokens'] == r['ar_tokens'] == [t[:12] for t in ar_tokens]
  assert r['tokens_per_forward'] == pytest.approx(1.0)
  assert r['tokens_per_step'] == pytest.approx(1.0)
  assert r['other_ms'] > 0 and r['step_ms'] > 0 and r['ar_ms_per_token'] > 0


def test_sample_comparison_table_flags_speedups_above_tau():
  """sample.py's table marks a row faster than its tau allows, and only that row."""
  def stats(name, gen, fwd, wall):
    return RunStats(decoder=name, num_prompts=1, generated=gen, target_forwards=fwd,
                    other_forwards=0, wall_time_s=wall, compile_time_s=0.0,
                    step_tokens_hist=[], extra={})
  table = compare.comparison_table({
      'ar': ([], stats('ar', 100, 100, 1.0)),
      'prompt_lookup': ([], stats('prompt_lookup', 100, 50, 0.4)),   # 2.5x at tau 2
      'jacobi': ([], stats('jacobi', 100, 80, 0.9))})                # 1.11x at tau 1.25
  rows = {line.split('|')[1].strip(): line for line in table.splitlines()[2:]}
  assert '2.50x (!)' in rows['prompt_lookup']
  assert '1.11x |' in rows['jacobi'] and '(!)' not in rows['jacobi']



def test_sample_comparison_table_marks_lossless_rows_whose_greedy_tokens_differ():
  """At temperature 0 the table says, per decoder, whether its tokens equal the first
  decoder's; a lossless decoder that differs from AR is a bug and is marked (and named by
  `mismatches`); a lossy one that differs is not; rows compare by prompt index, in any order."""
  def run(name, tokens, lossless=True):
    rows = [RowOutput(index=i, prompt=[1], tokens=t, target_forwards=len(t), other_forwards=0,
                      step_tokens_hist=[], extra={}) for i, t in tokens]
    return rows, RunStats(decoder=name, num_prompts=len(rows), generated=9,
                          target_forwards=9, other_forwards=0, wall_time_s=1.0,
                          compile_time_s=0.0, step_tokens_hist=[], extra={},
                          lossless=lossless)
  ar = [(0, [5, 6, 7]), (1, [8, 9, 10, 11, 12, 13])]
  results = {'ar': run('ar', ar),
             'prompt_lookup': run('prompt_lookup', ar[::-1]),               # same, reordered
             'jacobi(adaptive=True)': run('jacobi', [ar[0], (1, [8, 9, 0, 0, 0, 0])]),
             'ar(h2o=8)': run('ar', [ar[0], (1, [8, 9, 10, 1, 1, 1])], lossless=False)}
  assert compare.mismatches(results) == ['jacobi(adaptive=True)']
  rows = {line.split('|')[1].strip(): line.rstrip() for line in
          compare.comparison_table(results, greedy=True).splitlines()[2:]}
  assert rows['ar'].endswith('| - |') and rows['prompt_lookup'].endswith('| yes |')
  assert rows['jacobi(adaptive=True)'].endswith('| NO (!) |')
  assert rows['ar(h2o=8)'].endswith('| no |')
  assert '= first' not in compare.comparison_table(results)  # sampled: no such column
  # a lossy first decoder is no reference
  assert compare.mismatches(dict([('h2o', results['ar(h2o=8)']), *results.items()])) == []

def test_verifier_table_runs_and_traversal_is_not_below_iid(tmp_path, monkeypatch):
  """benchmarks/verifiers.py at toy size writes its table; on the same static tree and on
  the same chain (same prompts and row keys) traversal's tau is not below iid's beyond 3
  paired standard errors."""
  from benchmarks import verifiers  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(common, 'RESULTS_DIR', str(tmp_path))
  path = verifiers.main(['--prompts=96', '--max_new_tokens=12', '--budgets=8',
                         '--samplings=1', '--out=verifiers_t',
                         '--verifiers=static tree iid,static tree traversal,delayed traversal,'
                         'static tree typical (lossy),chain iid,chain traversal'])
  text = open(path).read()
  assert 'NOT SPEED' in text and '| delayed traversal |' in text and '- commit: ' in text
  assert 'Mean log p of the emitted tokens' in text
  with open(tmp_path / 'verifiers_t.json') as f:
    rows = {r['verifier']: r for r in json.load(f)['rows']}
  assert all(r['tau'] > 1 for k, r in rows.items() if not k.startswith('traversal -'))
  for of in ('static tree', 'chain'):  # block verification is optimal on a chain
    diff = rows[f'traversal - iid (paired, {of})']
    assert diff['tau'] > -3 * diff['se'], diff
  assert rows['delayed traversal']['shape'] == '1,1,3,3'  # delay 2, then 3 rollouts of 2
  # Typical acceptance: lossy, never below its threshold, leaning to likelier tokens than a
  # lossless rule's sample of the same distribution (which does go below the threshold).
  typical, iid = rows['static tree typical (lossy)'], rows['static tree iid']
  assert not typical['lossless'] and iid['lossless']
  assert typical['below_typical'] == 0 and iid['below_typical'] > 0
  assert typical['mean_logp'] > iid['mean_logp']


def test_agreement_counts_positions_over_the_longer_row_and_common_prefixes():
  row = lambda *t: SimpleNamespace(tokens=list(t))
  ref = [row(1, 2, 3, 4), row(5, 6), row(7)]
  out = [row(1, 2, 9, 4), row(5, 6, 8), row(0)]
  frac, prefix = harness.agreement(ref, out)
  assert frac == pytest.approx((3 + 2 + 0) / (4 + 3 + 1))
  assert prefix == pytest.approx((2 + 2 + 0) / 3)


def test_cache_slots_and_the_ar_reference_of_a_run(trained_workdir):
  """`cache_slots` holds the longest prompt, the new tokens and the margin in whole 64-slot
  blocks; `ar_reference` gives the greedy AR tokens `run_decoder` gives for the run."""
  assert harness.cache_slots([[1] * 10, [1] * 70], 5) == 256  # 70 + 5 + 128 = 203
  assert harness.cache_slots([[1] * 3], 61, margin=0) == 64
  import workbench  # pylint: disable=g-import-not-at-top
  bench = workbench.Workbench.load(trained_workdir)
  prompts = [[5, 6, 7, 8], [9, 10]]
  batches = harness.make_batches(prompts, 2, bench.tokenizer.pad_id)
  ref = harness.ar_reference(bench, batches, max_new=6, cache_size=64, eos_id=-1,
                             pad_id=bench.tokenizer.pad_id)
  rows, _ = run_decoder(registry.build('ar'), Models(bench.model), {'target': bench.params},
                        prompts, max_new_tokens=6, cache_size=64, eos_id=-1,
                        pad_id=bench.tokenizer.pad_id)
  assert ref['tokens'] == [r.tokens for r in rows]


def test_forward_cost_variants_parse_and_reach_the_compile():
  assert forward_cost.parse_variants('default,off:xla_gpu_enable_triton_gemm=false:n=3') == [
      ('default', {}), ('off', {'xla_gpu_enable_triton_gemm': False, 'n': 3})]
  for bad in ('a:nokey', 'a,a', 'a:=1'):
    with pytest.raises(ValueError):
      forward_cost.parse_variants(bad)
  cfg = small_config()
  model = Transformer(cfg)
  params = init_params(model, jax.random.key(0))
  kw = dict(batch=1, tokens=2, cache_size=16, context=4, min_seconds=0.0, repeats=1)
  assert cost_model.forward_time(model, params, compiler_options={
      'xla_backend_optimization_level': 0}, **kw) > 0
  with pytest.raises(Exception, match='no_such_xla_option'):  # the options reach XLA
    cost_model.forward_time(model, params, compiler_options={'no_such_xla_option': 1}, **kw)
  seen = []  # what a caller could write after each curve (a run cut short keeps them)
  rows = forward_cost.measure(['test'], [1], [1, 2], dtype='float32', cache=16, context=4,
                              variants=[('default', {}), ('o0', {
                                  'xla_backend_optimization_level': 0}),
                                        ('bad', {'no_such_xla_option': 1}),
                                        ('pad', {'model.min_matmul_rows': 4})],
                              on_rows=lambda r: seen.append(len(r)))
  assert seen == [2, 4, 6]
  assert [(r['preset'], r['tokens']) for r in rows] == [
      ('test', 1), ('test', 2), ('test [o0]', 1), ('test [o0]', 2), ('test [pad]', 1),
      ('test [pad]', 2)]
  assert all(r['ratio'] > 0 for r in rows) and rows[0]['ratio'] == 1.0
  assert rows[-1]['model_fields'] == {'min_matmul_rows': 4} and not rows[-1]['compiler_options']
  # model fields reach the config, and one it refuses is an error before anything is timed
  with pytest.raises(ValueError, match='min_matmul_rows'):
    forward_cost.measure(['test'], [1], [1], dtype='float32', cache=16, context=4,
                         variants=[('default', {}), ('bad', {'model.min_matmul_rows': -1})])


def test_spec_system_json_keeps_the_rows_of_other_runs(tmp_path, monkeypatch):
  """A quick run under another results name must not replace a full run's rows."""
  monkeypatch.setattr(common, 'RESULTS_DIR', str(tmp_path))
  row = dict(device='cpu', preset='mem', dtype='float32', verifier='chain k=4',
             tokens_per_step=5, alpha=0.8, batch=1, tau=2.0, tokens_per_s=10.0,
             ar_tokens_per_s=5.0, speedup=1.5, ideal=1.8, t_ar_ms=1.0, t_fwd_ms=1.1,
             measured_over_ideal=0.83, equal_to_ar=True)
  def args(out):
    return type('A', (), dict(out=out, preset='mem', dtype='float32', prompts=1,
                              max_new_tokens=8, repeats=1, embed_scale=1.0))()
  spec_system.write([row, dict(row, alpha=1.0)], args('spec_system_full'))
  spec_system.write([dict(row, speedup=1.4)], args('spec_system_quick'))
  spec_system.write([dict(row, speedup=1.3)], args('spec_system_quick'))  # a rerun replaces
  rows = json.load(open(tmp_path / 'spec_system.json'))
  assert sorted((r['name'], r['alpha'], r['speedup']) for r in rows) == [
      ('spec_system_full', 0.8, 1.5), ('spec_system_full', 1.0, 1.5),
      ('spec_system_quick', 0.8, 1.3)]


def test_xla_option_variants_reach_every_decoder_compile_and_label_the_rows(
    target, tmp_path, monkeypatch):
  """`--variants` of the system benchmark: a value may list items (';' between variants), the
  options reach the decoders' compiles (an unknown one is XLA's error), and the rows of two
  variants stay apart in the table with their options named."""
  assert forward_cost.parse_variants(
      'default;graphs:xla_gpu_enable_command_buffer=FUSION,WHILE:n=2') == [
          ('default', {}), ('graphs', {'xla_gpu_enable_command_buffer': 'FUSION,WHILE', 'n': 2})]
  model, params, _ = target
  batches = harness.make_batches(PROMPTS[:1], 1, 0)
  kw = dict(max_new=4, cache_size=CACHE, eos_id=-1, pad_id=0)
  with pytest.raises(Exception, match='no_such_xla_option'):
    harness.compile_decoder(registry.build('ar'), Models(model), {'target': params}, batches,
                            compiler_options={'no_such_xla_option': 1}, **kw)
  monkeypatch.setattr(common, 'RESULTS_DIR', str(tmp_path))
  row = dict(device='cpu', preset='test', dtype='float32', verifier='chain k=4',
             tokens_per_step=5, alpha=0.8, batch=1, tau=2.0, tokens_per_s=10.0,
             ar_tokens_per_s=6.0, speedup=1.6, ideal=2.0, t_ar_ms=1.0, t_fwd_ms=1.0,
             measured_over_ideal=0.8, equal_to_ar=True, variant='default',
             compiler_options={})
  graphs = dict(row, variant='graphs', speedup=1.9, measured_over_ideal=0.95,
                compiler_options={'xla_gpu_enable_command_buffer': 'FUSION,WHILE'})
  args = SimpleNamespace(out='spec_system_v', preset='test', dtype='float32', prompts=1,
                         max_new_tokens=8, repeats=1, embed_scale=1.0)
  text = open(spec_system.write([row, graphs], args)).read()
  assert '| chain k=4 | 5 |' in text and '| chain k=4 [graphs] | 5 |' in text
  assert 'FUSION,WHILE' in text and '| 1.000 | 1.000 | 1.90x |' in text
  assert spec_system.goals([row, graphs])[-2][1].startswith('lowest 0.80 (chain k=4, ')


def test_spec_system_times_the_ideal_in_each_rows_own_turns(tmp_path, monkeypatch):
  """The ideal's t_fwd(T) is a probe timed once per round between the row's decode passes
  (not one curve measured before every row), t_AR is the same window's AR step, and so
  measured / ideal = t_fwd(T) / t_step; the output equals AR's."""
  monkeypatch.setattr(common, 'RESULTS_DIR', str(tmp_path))
  calls = []
  testlib.counting_forward_probes(monkeypatch, calls)
  args = SimpleNamespace(preset='test', dtype='float32', embed_scale=1.0, prompts=1,
                         prompt_tokens=24, max_new_tokens=12, verifiers='chain k=4',
                         alphas='0.8', batches='1', repeats=3, out='spec_system_probe',
                         variants='default')
  _, (row,) = spec_system.run(args)
  in_row = [t for T, t in calls if T == row['tokens_per_step']]
  assert len(in_row) == args.repeats  # one per round of the four programs
  assert row['t_fwd_ms'] == pytest.approx(min(in_row) * 1e3)
  assert row['ideal'] == pytest.approx(row['tau'] * row['t_ar_ms'] / row['t_fwd_ms'])
  assert row['measured_over_ideal'] == pytest.approx(row['speedup'] / row['ideal'])
  assert row['equal_to_ar'] and row['tau'] > 1


def test_speculative_report_puts_each_row_next_to_its_ideal(tmp_path, monkeypatch):
  """--curve: T = 1 + drafted tokens per step, t(T) / t(1) linear between measured T, ideal =
  loop tau / that ratio (loop tau: AR's loop iterations over the row's); rows outside the
  curve or without drafts get no ideal; a row's own forward probes win over the curve."""
  from benchmarks import speculative  # pylint: disable=g-import-not-at-top
  curve = [dict(preset='mem', batch=1, tokens=t, ms=ms)
           for t, ms in ((1, 2.0), (2, 2.5), (4, 3.0), (8, 4.0))]
  curve.append(dict(preset='mem', batch=8, tokens=1, ms=50.0))
  assert speculative.curve_ratio(curve, 1, 1) == 1.0
  assert speculative.curve_ratio(curve, 1, 5) == pytest.approx(3.25 / 2.0)
  assert speculative.curve_ratio(curve, 1, 9) is None
  assert speculative.curve_ratio(curve, 4, 2) is None
  monkeypatch.setattr(common, 'RESULTS_DIR', str(tmp_path))
  raw = tmp_path / 'raw'
  raw.mkdir()
  rows = {'ar': dict(tau=1.0, generated=10, target_forwards=10, other_forwards=0,
                     tokens_per_s=100.0, loop_steps=9),
          'draft chain g4': dict(tau=3.3, generated=30, target_forwards=10, other_forwards=40,
                                 tokens_per_s=150.0, ar_tokens_per_s=100.0, speedup=1.5,
                                 drafted_per_step=4.0, equals_ar=True, loop_steps=3),
          'token recycling': dict(tau=2.0, generated=20, target_forwards=10, other_forwards=0,
                                  tokens_per_s=50.0, ar_tokens_per_s=100.0, speedup=0.5,
                                  drafted_per_step=80.0, equals_ar=True, loop_steps=4),
          'draft chain probed': dict(tau=3.3, generated=30, target_forwards=10,
                                     other_forwards=40, tokens_per_s=150.0, ar_tokens_per_s=100.0,
                                     speedup=1.5, drafted_per_step=3.5, equals_ar=True,
                                     loop_tau=2.5, forward_ms=[[1, 2.0], [4, 3.0], [5, 4.0]])}
  (raw / 't0_b1.json').write_text(json.dumps(dict(
      temperature=0.0, batch_size=1, prompts=1, max_new_tokens=10, provenance='- device: cpu',
      commands=['- device: cpu'], skipped=[], rows=rows)))
  (tmp_path / 'curve.json').write_text(json.dumps(dict(rows=curve)))
  text = open(speculative.report(str(raw), 'spec_t', curve=str(tmp_path / 'curve.json'))).read()
  rows_of = lambda name: [l for l in text.splitlines() if l.startswith(f'| {name} |')]
  line = rows_of('draft chain g4')[-1]  # the setting's table (the first: the summary)
  # loop tau 9 / 3 = 3 (not tau 3.3); T = 5: ratio 1.625 (from the curve: *), ideal 3 / 1.625
  # = 1.85x, measured / ideal 1.5 / 1.846 = 0.81
  assert '| 3.00 | 5.0 | 1.62* | 1.85x | 0.81 |' in line, line
  line = rows_of('token recycling')[-1]
  assert '| 2.25 | 81.0 | - | - | - |' in line, line
  # its own probes: T = 4.5 between 4 and 5, ratio 3.5 / 2 = 1.75, ideal 2.5 / 1.75 = 1.43x
  line = rows_of('draft chain probed')[-1]
  assert '| 2.50 | 4.5 | 1.75 | 1.43x | 1.05 |' in line, line
  (tmp_path / 'two.json').write_text(json.dumps(dict(
      rows=curve + [dict(preset='tiny', batch=1, tokens=1, ms=1.0)])))
  with pytest.raises(ValueError, match='one preset'):
    speculative.report(str(raw), 'spec_t', curve=str(tmp_path / 'two.json'))


def test_loop_tau_is_set_by_the_slowest_row_of_a_batch():
  """A batched loop runs until its slowest row is done: AR's iterations over the method's,
  not the rows' mean tau, sets (and bounds) a batch's speedup; at batch 1 the two agree."""
  fake = lambda fwd: SimpleNamespace(target_forwards_B=np.asarray(fwd))
  ar = [fake([17, 17])]          # 16 new tokens per row after the prefill
  ragged = [fake([5, 9])]        # one row took 4 verification steps, the other 8
  assert harness.loop_steps(ragged) == 8 and harness.loop_steps(ar) == 16
  rows_tau = (2 * 16) / (4 + 8)  # the rows' mean tokens per step after the prefill: 2.67
  loop = harness.loop_tau(harness.loop_steps(ar), harness.loop_steps(ragged))
  assert loop == 2.0 < rows_tau
  one = [fake([5]), fake([9])]   # the same rows at batch 1: 12 iterations
  assert harness.loop_tau(harness.loop_steps([fake([17]), fake([17])]),
                          harness.loop_steps(one)) == pytest.approx(rows_tau)
  assert harness.implausible(dict(tau=2.67, loop_tau=2.0, speedup=2.2))
  assert not harness.implausible(dict(tau=2.67, loop_tau=2.0, speedup=1.9))


def test_step_probes_time_one_token_as_ar_does():
  """The ideal's t(1) is AR's step (a causal one-token forward) for every row, tree rows
  included; t(T) uses the step's own mask, at the integers either side of a mean T."""
  from benchmarks import speculative  # pylint: disable=g-import-not-at-top
  assert speculative.step_probes(33.0, tree=True) == [(1, False), (33, True)]
  assert speculative.step_probes(5.3, tree=False) == [(1, False), (5, False), (6, False)]
  assert speculative.step_probes(1.5, tree=True) == [(1, False), (2, True)]
  assert speculative.step_probes(1.0, tree=False) == [(1, False)]


def test_eagle_recipe_variants_and_mean_table():
  """`benchmarks.eagle_recipe`: variants parse as NAME:OVERRIDES (bad or repeated names fail
  clearly), workdir names are safe, and the mean table averages each variant over its seeds."""
  from benchmarks import eagle_recipe  # pylint: disable=g-import-not-at-top
  v = eagle_recipe.parse_variants('a:--x=1 --y=2; b : ;')
  assert v == {'a': ['--x=1', '--y=2'], 'b': []}
  assert set(eagle_recipe.parse_variants(eagle_recipe.DEFAULT_VARIANTS)) == {
      'target head', 'own head', 'own head, 5 TTT steps'}
  for bad in ('a', ':--x', 'a:;a:--y', ' ; '):
    with pytest.raises(ValueError):
      eagle_recipe.parse_variants(bad)
  assert eagle_recipe.workdir_name('own head, 5 TTT', 1) == 'own_head__5_TTT_s1'
  row = lambda name, seed, chain, tree: {
      'variant': name, 'seed': seed, 'overrides': [], 'eval': {'agree1': 0.5},
      'chain 4': {'tau': chain, 'equals_ar': True},
      'dynamic tree 24': {'tau': tree, 'equals_ar': seed == 0}}
  rows = [row('a', 0, 2.0, 3.0), row('a', 1, 3.0, 4.0), row('b', 0, 1.0, 1.5)]
  meta = dict(target='t', size='tiny', steps=3, seeds=[0, 1], prompts=2, max_new_tokens=4,
              last_position=9, train_seq_len=128)
  text = eagle_recipe._body(rows, meta, ['a', 'b'])  # pylint: disable=protected-access
  assert '| a | 2 | 2.5 | 3.5 |' in text and '| b | 1 | 1 | 1.5 |' in text
  assert '| a | 1 | 0.500 | 3 | 4 | NO |' in text  # a row whose tokens differ from AR's


def test_top_k_benchmark_compares_equal_results_and_restores_the_functions():
  from benchmarks import top_k as top_k_bench  # pylint: disable=g-import-not-at-top
  import pallas_kernels.common as kernel_common  # pylint: disable=g-import-not-at-top
  ours = kernel_common.top_k
  with top_k_bench.plain_orderings():
    assert kernel_common.top_k is top_k_bench.plain_top_k
  assert kernel_common.top_k is ours
  rows = top_k_bench.measure_ops(steps=2, repeats=1)
  assert len(rows) == len(top_k_bench.OPS) and all(r[-1] == 'yes' for r in rows), rows


def test_top_k_benchmark_decodes_the_same_tokens_both_ways(trained_workdir):
  from benchmarks import top_k as top_k_bench  # pylint: disable=g-import-not-at-top
  rows, setting = top_k_bench.measure_decode(trained_workdir, 2, 8, 1)
  assert [r[0] for r in rows] == ['before', 'after'] and all(r[-1] == 'yes' for r in rows)
  assert 'top_k=50' in setting and float(rows[1][1]) > 0


def test_spec_adaptive_runs_at_toy_size(tmp_path, monkeypatch):
  """benchmarks/spec_adaptive.py end to end through its command line at toy size (it once
  broke when spec_system.load began to read an option its parser lacked): the file is
  written, says it is a system benchmark, and every output equals AR's."""
  from benchmarks import spec_adaptive  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(common, 'RESULTS_DIR', str(tmp_path))
  monkeypatch.setattr('sys.argv', ['spec_adaptive', '--preset=test', '--fixed=1', '--gamma=2',
                                   '--alphas=0.8', '--prompts=1', '--prompt_tokens=16',
                                   '--max_new_tokens=8', '--repeats=1', '--out=sa_t'])
  spec_adaptive.main()
  text = open(tmp_path / 'sa_t.md').read()
  assert 'A benchmark of the system, not of a drafter' in text
  assert "Every output equals AR's: True (2/2)." in text


def test_every_speculative_method_name_reads_its_node_budget():
  """The report's goals read a draft tree's node budget from its method name, suffixes such as
  '(quarter vocabulary)' included; other methods have none; a quarter-vocabulary method gets
  a quarter of the target's vocabulary as its draft_vocab."""
  from benchmarks import speculative  # pylint: disable=g-import-not-at-top
  budgets = {name: speculative._budget(name) for name in speculative.METHODS}
  assert budgets['draft static tree 60'] == 60
  assert budgets['draft dynamic tree 32 (quarter vocabulary)'] == 32
  assert budgets['draft RSD-S tree 32'] == 32
  assert budgets['draft chain g4 (quarter vocabulary)'] is None
  assert budgets['medusa'] is None and budgets['eagle3 dynamic tree 32'] is None
  quarter = [n for n, (_, s, _) in speculative.METHODS.items()
             if s.get('draft_vocab') == speculative.QUARTER]
  assert len(quarter) == 4 and all('(quarter vocabulary)' in n for n in quarter)


def test_matvec_probe_layouts_compute_the_same_product_and_shapes_parse():
  """W stored [N, K] ('nk') gives x @ W as the [K, N] layout does; a timed loop runs for
  both; bad shapes and layouts are refused."""
  from benchmarks import matvec_probe  # pylint: disable=g-import-not-at-top
  x = jax.random.normal(jax.random.key(0), (3, 16))
  w = jax.random.normal(jax.random.key(1), (16, 24))
  np.testing.assert_allclose(matvec_probe.product(x, w.T, 'nk'), matvec_probe.product(x, w),
                             rtol=1e-5, atol=1e-5)
  for layout in matvec_probe.LAYOUTS:
    assert matvec_probe.time_matmul(2, 16, 24, jnp.float32, steps=3, layout=layout) > 0
  assert matvec_probe.parse_shapes('512x2048, 2048X512') == ((512, 2048), (2048, 512))
  with pytest.raises(ValueError, match='KxN'):
    matvec_probe.parse_shapes('512by2048')
  with pytest.raises(ValueError, match='Unknown layout'):
    matvec_probe.product(x, w, 'kk')
