"""workbench: loading a trained run, its decoders' extra runs, prompts, running decoders."""

import json
from types import SimpleNamespace

import pytest

import testlib
import workbench
from benchmarks import common
from benchmarks import diffusion
from benchmarks import speculative
from decoding import Models, SamplingConfig, registry, run_decoder
from workdir import loading


@pytest.fixture(scope='module')
def bench(trained_workdir):
  return workbench.Workbench.load(trained_workdir)


def test_load_gives_the_run_its_tokenizer_config_and_kind(bench, trained_workdir):
  loaded = loading.load_model(trained_workdir)
  assert bench.step == loaded.step == 20
  assert bench.config == loaded.config and bench.workdir == loaded.workdir
  assert bench.kind == loaded.kind and bench.kind.describe() == 'causal'
  assert bench.tokenizer.vocab_size == loaded.tokenizer.vocab_size
  assert bench.name == loaded.workdir.rstrip('/').split('/')[-1]
  assert 'causal' in workbench.describe_run(bench) and 'step 20' in workbench.describe_run(bench)


def test_ar_results_equal_the_decoding_runner(bench):
  texts, prompts = bench.heldout_prompts(3, chars=40)
  assert len(texts) == 3 and all(len(t) == 40 for t in texts)
  assert prompts == [bench.tokenizer.encode(t, add_bos=True) for t in texts]
  rows, stats = bench.run_one(bench.decoder('ar'), prompts, max_new_tokens=10)
  ref, ref_stats = run_decoder(registry.build('ar'), Models(bench.model),
                               {'target': bench.params}, prompts, max_new_tokens=10,
                               cache_size=64, eos_id=bench.tokenizer.eos_id,
                               pad_id=bench.tokenizer.pad_id)
  assert [r.tokens for r in rows] == [r.tokens for r in ref]
  assert (stats.generated, stats.target_forwards) == (ref_stats.generated,
                                                      ref_stats.target_forwards)


def test_decoders_from_specs_settings_and_runs(bench, trained_workdir):
  dec = bench.decoder('prompt_lookup:gamma=2', SamplingConfig(temperature=1.0))
  assert dec.gamma == 2 and dec.sampling.temperature == 1.0
  # runs={'draft': DIR} fills the unset draft_workdir; an explicit setting wins.
  assert bench.decoder('speculative', runs={'draft': trained_workdir}).draft_workdir == (
      trained_workdir)
  assert bench.decoder('speculative:draft_workdir=x', runs={'draft': 'y'}).draft_workdir == 'x'
  labelled = bench.decoders(['ar', 'prompt_lookup:gamma=3'], SamplingConfig())
  assert [label for label, _ in labelled] == ['ar', 'prompt_lookup(gamma=3)']
  # The decoder is checked against the run's kind.
  with pytest.raises(ValueError, match='needs a diffusion model'):
    bench.decoder('llada')


def test_a_declared_draft_run_is_loaded_once_and_lossless(bench, trained_workdir):
  _, prompts = bench.heldout_prompts(2, chars=40)
  spec = bench.decoder('speculative:gamma=3', runs={'draft': trained_workdir})
  results = bench.run([bench.decoder('ar'), spec], prompts, max_new_tokens=10)
  assert [r.tokens for r in results['ar'][0]] == [r.tokens for r in results['speculative'][0]]
  assert bench.run_of(trained_workdir) is bench.target  # the target itself, not reloaded
  models, params = bench.models_for(spec)
  assert [k for k, _ in models.extras] == ['draft'] and set(params) >= {'target', 'draft'}


def test_a_missing_extra_run_is_a_clear_error(bench, tmp_path):
  spec = bench.decoder('speculative', runs={'draft': str(tmp_path)})
  assert bench.missing_runs(spec) == {'draft': str(tmp_path)}
  with pytest.raises(workbench.MissingRunError,
                     match=r"Decoder 'speculative' needs model 'draft' \(.*no checkpoints"):
    bench.run([spec], [[1, 2]], max_new_tokens=4)
  with pytest.raises(ValueError, match="holds no 'medusa' trees"):
    bench.add_heads('medusa', bench.workdir)
  assert not workbench.has_checkpoint(str(tmp_path)) and workbench.has_checkpoint(bench.workdir)


def test_read_prompts_sources(bench, tmp_path):
  tok = bench.tokenizer
  assert workbench.read_prompts(tok, prompt='ab', prompts_file=None, heldout=0,
                                prompt_chars=0) == [tok.encode_prompt('ab')]
  f = tmp_path / 'p.jsonl'
  f.write_text(json.dumps('x') + '\n' + json.dumps({'prompt': 'yz'}) + '\n')
  assert workbench.read_prompts(tok, prompt=None, prompts_file=str(f), heldout=0,
                                prompt_chars=0) == [tok.encode_prompt('x'),
                                                    tok.encode_prompt('yz')]
  held = workbench.read_prompts(tok, prompt=None, prompts_file=None, heldout=2,
                                prompt_chars=30, data_config=bench.config.get('data'))
  assert held == bench.heldout_prompts(2, 30)[1]
  with pytest.raises(ValueError, match='Give exactly one of'):
    workbench.read_prompts(tok, prompt='a', prompts_file=str(f), heldout=0, prompt_chars=0)


def test_speculative_benchmark_runs_on_the_workbench(trained_workdir, tmp_path, capsys,
                                                    monkeypatch):
  """benchmarks.speculative: the target is its own draft; heads runs missing are skipped;
  the file written after each method names those not reached yet (a run cut short says so).
  Each row's forward probes (over 1 and the step's T tokens) run once per round of its
  passes, and the report's ideal is loop tau x t(1) / t(T) from them."""
  written, calls = [], []
  write = speculative._write
  monkeypatch.setattr(speculative, '_write', lambda *a: (written.append(list(a[4])),
                                                         write(*a)))
  testlib.counting_forward_probes(monkeypatch, calls)
  args = SimpleNamespace(target=trained_workdir, draft=trained_workdir, medusa='',
                         mtp=str(tmp_path / 'none'), kangaroo='', dtype='', temperature=0.0,
                         batch_size=2, prompts=2, prompt_chars=40, max_new_tokens=8,
                         repeats=2, methods='draft chain g4,prompt lookup,medusa', part='',
                         merge=False, raw_dir=str(tmp_path / 'raw'), probes=1)
  with open(speculative.run(args)) as f:
    raw = json.load(f)
  assert raw['rows']['draft chain g4']['equals_ar'] and raw['rows']['prompt lookup']['equals_ar']
  chain = raw['rows']['draft chain g4']
  assert [T for T, _ in chain['forward_ms']] == [1, 5] and chain['forward_mask'] == 'causal'
  for T, ms in chain['forward_ms']:  # the best of its calls, one per round
    assert ms == pytest.approx(1e3 * min(t for T2, t in calls[:2 * args.repeats] if T2 == T))
  assert len(calls) == args.repeats * sum(len(r['forward_ms']) for n, r in raw['rows'].items()
                                          if n != 'ar')
  for name in ('draft chain g4', 'prompt lookup'):  # a batch waits for its slowest row
    row = raw['rows'][name]
    assert row['loop_tau'] == pytest.approx(raw['rows']['ar']['loop_steps'] / row['loop_steps'])
  monkeypatch.setattr(common, 'RESULTS_DIR', str(tmp_path))
  text = open(speculative.report(str(tmp_path / 'raw'), 'spec_probe')).read()
  line = [l for l in text.splitlines() if l.startswith('| draft chain g4 |')][-1]
  ms = dict(chain['forward_ms'])
  ideal = chain['loop_tau'] * ms[1] / ms[5]
  assert (f"| {chain['loop_tau']:.2f} | 5.0 | {ms[5] / ms[1]:.2f} | {ideal:.2f}x | "
          f"{chain['speedup'] / ideal:.2f} |") in line, line
  assert raw['skipped'] == ['medusa (needs medusa)']
  assert written[0] == ['prompt lookup (not reached: the run ended before it)',
                        'medusa (not reached: the run ended before it)']
  assert written[-1] == raw['skipped']
  assert "mtp: no checkpoint in" in capsys.readouterr().out


def test_diffusion_benchmark_opens_runs_through_the_workbench(bench, trained_workdir, tmp_path):
  assert diffusion.open_run(str(tmp_path)) is None
  run = diffusion.open_run(trained_workdir)
  assert run.workdir == bench.workdir and 'causal' in diffusion.LOADED[run.name]
  _, prompts = bench.heldout_prompts(2, chars=40)
  rows, stats, dec = diffusion.run('ar', {}, run, prompts, 8)
  ref, _ = bench.run_one(bench.decoder('ar'), prompts, max_new_tokens=8)
  assert dec.name == 'ar' and [r.tokens for r in rows] == [r.tokens for r in ref]
  assert stats.generated == sum(len(r.tokens) for r in ref)
