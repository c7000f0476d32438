"""benchmarks/gpu_suite.sh: stages documented and implemented alike, the rehearsal sets every
size the GPU run sets, each planned call fits the 10 minutes of one device call, and the
configs and choices the spec_small/peer stages rely on."""

from __future__ import annotations

import json
import os
import re
from types import SimpleNamespace

import pytest

from configs import lm, spec_draft, spec_heads

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUITE = os.path.join(ROOT, 'benchmarks', 'gpu_suite.sh')
CALL_SECONDS = 600      # one call of the lent machine
START_MARGIN = 30       # start-up, wheels and copying the results back
# The calls docs/gpu_suite.md plans (stage names after spec_small's expansion).
CALLS = {
    'spec_small,peer': ('small_target', 'drafters', 'spec_small', 'spec_small_report', 'peer'),
    'fwd_cost,spec_system,step_cost': ('fwd_cost', 'spec_system', 'step_cost'),
    't1,spec_system,step_cost': ('t1', 'spec_system', 'step_cost'),
    'spec_bf16,fwd_cost,step_cost': ('spec_bf16', 'fwd_cost', 'step_cost'),
    'graphs,fwd_small': ('graphs', 'fwd_small'),  # in two sessions' leftovers, or one call
    'graphs,fwd_small,ops': ('graphs', 'fwd_small', 'ops'),
    'star': ('star', 'star_bench'),  # issue 18's planning comparison
    'star,lossy': ('star', 'star_bench', 'lossy'),  # and its lossy decoders' speed
}


@pytest.fixture(scope='module')
def script() -> str:
  with open(SUITE) as f:
    return f.read()


def _case_stages(text: str) -> set[str]:
  body = text[text.index('  case $s in'):]
  return set(re.findall(r'^    ([a-z0-9_]+)\)', body, re.M))


def _documented_stages(text: str) -> set[str]:
  head = text[text.index('# Stages'):text.index('# The calls')]
  return set(re.findall(r'^#   ([a-z0-9_]+) ', head, re.M))


def _limits(text: str) -> dict[str, int]:
  """Default limit of every stage call: `stage NAME "${X_LIMIT:-N}"` or `stage NAME N`."""
  found = re.findall(r'\b(?:parallel_)?stage ([a-z0-9_]+) (?:"\$\{[A-Z0-9_]+:-(\d+)\}"|(\d+))', text)
  return {name: int(a or b) for name, a, b in found}


def _defaults(text: str, block: str) -> set[str]:
  """Variables a branch of the REHEARSE switch defaults (`: "${VAR:=...}"`)."""
  start = text.index('if [ "$REHEARSE" = 1 ]; then')
  mid = text.index('\nelse\n', start)
  end = text.index('\nfi\n', mid)
  part = text[start:mid] if block == 'rehearse' else text[mid:end]
  return set(re.findall(r'\$\{([A-Z0-9_]+):=', part))


def test_every_documented_stage_is_implemented_and_the_reverse(script):
  documented, implemented = _documented_stages(script), _case_stages(script)
  parts = {'small_target', 'drafters', 'small_bench'}
  assert documented == (implemented - parts) | {'spec_small'}
  assert 'spec_small/small_target,drafters,small_bench' in script


def test_the_rehearsal_sets_every_size_the_gpu_run_sets(script):
  gpu, rehearse = _defaults(script, 'gpu'), _defaults(script, 'rehearse')
  assert gpu and gpu <= rehearse
  assert rehearse - gpu == {'LIMIT_SCALE', 'PARALLEL_DRAFTERS', 'SYSTEM_VERIFIERS'}
  for var in gpu | rehearse:  # each one reaches a command
    assert len(re.findall(rf'\${{?{var}\b', script)) >= 2, var
  # the rehearsal writes nowhere near benchmarks/results or runs/
  assert 'export LEAPFROG_RESULTS_DIR=$R/results' in script
  assert '"${SMALL_RUNS:=$R/runs}"' in script


@pytest.mark.parametrize('call', sorted(CALLS))
def test_each_planned_call_fits_one_device_call(script, call):
  limits = _limits(script)
  stages = CALLS[call]
  assert set(stages) <= set(limits), set(stages) - set(limits)
  # each stage gets SIGINT at its limit (SIGKILL 15 s later if it ignores it): with every
  # stage at its limit the call still ends in time unless stages ignore SIGINT
  total = sum(limits[s] for s in stages)
  assert total + START_MARGIN <= CALL_SECONDS, (call, total)


def test_peer_measures_the_runs_spec_small_trained(script):
  peer = script[script.index('    peer)'):]
  peer = peer[:peer.index(';;')]
  for run in ('small', 'draft', 'medusa', 'mtp', 'kangaroo', 'eagle3'):
    assert f'$w/{run}' in peer, run
  assert 'SPEC_RUNS' not in peer


def test_head_configs_match_the_target_they_train_on():
  """The heads objectives refuse a target whose model section differs (dtype included)."""
  for size in ('test', 'small', 'base'):
    target = lm.get_config(size).model.to_dict()
    for kind in ('medusa', 'mtp', 'kangaroo', 'eagle3'):
      heads = spec_heads.get_config(f'{kind},{size}').model.to_dict()
      if size == 'test':  # the suite's rehearsal passes --config.model.dtype=bfloat16
        heads['dtype'] = target['dtype']
      assert heads == target, (kind, size)
  assert spec_draft.get_config('corpus,tiny').model.max_seq_len >= 512 + 1


def test_peer_adds_the_fastest_lossless_method(tmp_path):
  from benchmarks import spec_peer  # pylint: disable=g-import-not-at-top
  raw = tmp_path / 't0_b1.json'
  raw.write_text(json.dumps({'rows': {
      'ar': {'tau': 1.0, 'tokens_per_s': 100.0},
      'medusa': {'tau': 2.0, 'speedup': 1.8, 'equals_ar': True},
      'mtp': {'tau': 2.0, 'speedup': 2.5, 'equals_ar': True},          # above tau: noise
      'kangaroo': {'tau': 3.0, 'speedup': 2.2, 'equals_ar': False},    # not lossless here
      'prompt lookup': {'tau': 1.5, 'speedup': 1.2, 'equals_ar': True}}}))

  class Args:
    methods = 'draft chain g4,prompt lookup'
    best_from = str(raw)

  assert spec_peer._method_names(Args) == ['draft chain g4', 'prompt lookup', 'medusa']
  Args.methods = 'bogus'
  with pytest.raises(ValueError, match='Unknown methods'):
    spec_peer._method_names(Args)


def test_peer_report_keeps_what_was_measured_and_flags_speedups_above_tau(tmp_path,
                                                                         monkeypatch):
  """The peer's file is written after our side and after each transformers row: a run cut
  short says what it lacks; a speedup above tau is flagged and never the 'best of ours'."""
  from benchmarks import common, spec_peer  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(common, 'RESULTS_DIR', str(tmp_path))
  args = SimpleNamespace(dtype='bfloat16', max_new_tokens=8, repeats=1, target='t', draft='d',
                         name='peer_t')
  toks = [[1, 2, 3]]
  ours = {'ar': dict(tokens=toks, generated=3, tau=1.0, tokens_per_s=100.0),
          'medusa': dict(tokens=toks, generated=3, tau=2.5, tokens_per_s=180.0),
          'prompt lookup': dict(tokens=toks, generated=3, tau=3.0, tokens_per_s=313.0)}
  text = open(spec_peer.report(args, ours, {}, '', 1)).read()
  assert '3.13x (!)' in text and '| medusa | 1.80x |' in text  # best: medusa, not the flagged
  assert 'Not measured in this run (cut short or not reached): assisted' in text
  assert 'Goal (>= 2x assisted generation tokens/s at batch 1, on a GPU): not measured' in text
  theirs = {spec_peer.ASSISTED: dict(tokens=toks, generated=3, tokens_per_s=60.0)}
  text = open(spec_peer.report(args, ours, theirs, 'torch x, cpu', 1)).read()
  assert '| best of ours vs assisted generation | medusa | 3.00x |' in text
  assert 'generate()' in text.split('Not measured in this run')[1].split('\n')[0]
  assert 'two devices' not in text
  import jax  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')  # ours on a GPU, torch on CPU
  text = open(spec_peer.report(args, ours, theirs, 'torch x, transformers y, cpu, bf16',
                               1)).read()
  assert 'compare two devices' in text and 'not measured: this run is not on a GPU' in text


def test_every_run_the_drafters_stage_trains_is_benchmarked(script):
  """A drafter trained in `drafters` is handed to spec_small (and peer) and has a method."""
  from benchmarks import speculative  # pylint: disable=g-import-not-at-top
  drafters = script[script.index('    drafters)'):]
  trained = set(re.findall(r'--workdir=\$w/([a-z0-9_]+)', drafters[:drafters.index(';;')]))
  bench = script[script.index('    small_bench)'):]
  bench = bench[:bench.index(';;')]
  assert trained == set(speculative.RUNS), trained
  for run in trained:
    assert f'--{run}=$w/{run}' in bench, run
  methods = re.search(r'SMALL_METHODS=\$\{SMALL_METHODS:-([^}]*)\}', script).group(1).split(',')
  assert set(methods) <= set(speculative.METHODS)
  needed = {r for m in methods for r in speculative.METHODS[m][2]}
  assert needed == trained, (needed, trained)


def test_spec_mem_cpu_script_trains_what_it_benchmarks():
  """benchmarks/spec_mem_cpu.sh: its methods exist, each run they need is trained by a stage
  and handed to the benchmark, and the configs it names build for the `mem` target."""
  from benchmarks import speculative  # pylint: disable=g-import-not-at-top
  with open(os.path.join(ROOT, 'benchmarks', 'spec_mem_cpu.sh')) as f:
    text = f.read()
  methods = re.search(r'METHODS=\$\{METHODS:-([^}]*)\}', text).group(1).split(',')
  assert set(methods) <= set(speculative.METHODS), set(methods) - set(speculative.METHODS)
  default = re.search(r'stages=\$\{1:-([^}]*)\}', text).group(1).split(',')
  assert default[0] == 'target' and default[-3:] == ['bench', 'more', 'peer'], default
  # the curve of record, and the report's ideals for rows measured without forward probes
  assert default.index('curve') < default.index('bench'), default
  trained = set(default[1:-3]) - {'curve'}
  more = re.search(r'MORE_METHODS=\$\{MORE_METHODS:-([^}]*)\}', text).group(1).split(',')
  assert set(more) <= set(methods), set(more) - set(methods)
  more_stage = text[text.index('    more)'):]
  more_stage = more_stage[:more_stage.index(';;')]
  for run in speculative.RUNS:  # never a default run of another target
    assert f'--{run}=$RUNS/{run}' in more_stage, run
  needed = {r for m in methods for r in speculative.METHODS[m][2]}
  assert needed <= trained, needed - trained
  bench = text[text.index('    bench)'):]
  for run in trained:
    assert f'--{run}=$RUNS/{run}' in bench, run
  assert '--prompt_chars=120' in bench and 'NEW:-128' in text  # within the 256 trained
  assert '--config.data.seq_len=256' in text
  draft = spec_draft.get_config('corpus,tiny')
  assert draft.model.d_model == lm.get_config('tiny').model.d_model
  for kind in trained - {'draft'}:
    c = spec_heads.get_config(f'{kind},mem')
    assert c.model.d_model == lm.get_config('mem').model.d_model, kind
