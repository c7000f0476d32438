"""benchmarks.report: picks up every registered decoder, skips with reasons, measures, writes."""

import dataclasses
import os
import subprocess
import sys
from typing import ClassVar

import numpy as np
import pytest

import testlib
import workbench
from benchmarks import report
from benchmarks import report_files
from decoding import ar, registry
from models import kind as kind_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class _NeedsDraft(ar.ARDecoder):
  """Test-only: wants a draft model through a `draft_workdir` setting."""
  name: ClassVar[str] = 'report_test_needs_draft'
  family: ClassVar[str] = 'speculative'
  draft_workdir: str = ''

  def extra_models(self):
    return {'draft': self.draft_workdir}


@dataclasses.dataclass(frozen=True)
class _Broken(ar.ARDecoder):
  """Test-only: fails while tracing."""
  name: ClassVar[str] = 'report_test_broken'
  family: ClassVar[str] = 'speculative'

  def generate(self, *args, **kwargs):
    raise RuntimeError('boom')


@dataclasses.dataclass(frozen=True)
class _Refuses(ar.ARDecoder):
  """Test-only: refuses the model with a ValueError (like a heads decoder without heads)."""
  name: ClassVar[str] = 'report_test_refuses'
  family: ClassVar[str] = 'speculative'

  def generate(self, *args, **kwargs):
    raise ValueError('needs heads in the target run')


@dataclasses.dataclass(frozen=True)
class _Diffusion(ar.ARDecoder):
  """Test-only: a diffusion-family decoder (needs a diffusion-trained model)."""
  name: ClassVar[str] = 'report_test_diffusion'
  family: ClassVar[str] = 'diffusion'
  lossless: ClassVar[bool] = False
  model_kinds: ClassVar[tuple[str, ...]] = ('diffusion',)


@pytest.fixture
def fake_decoders():
  """Registers the test decoders for one test and removes them after (the registry is
  process-global; other tests list every registered decoder)."""
  classes = (_NeedsDraft, _Broken, _Refuses, _Diffusion)
  for cls in classes:
    registry.register(cls)
  yield [cls.name for cls in classes]
  for cls in classes:
    registry.DECODERS.remove(cls.name)


def _models(workdir, num_prompts):
  return report.offer([workbench.Workbench.load(workdir)], num_prompts=num_prompts,
                      prompt_chars=40)


def test_acceptance_curve_from_step_histogram():
  # 4 steps: one committed 1 token, two committed 2, one committed 3.
  np.testing.assert_allclose(report_files.acceptance_curve([0, 1, 2, 1]), [1.0, 0.75, 0.25])
  np.testing.assert_allclose(report_files.acceptance_curve([0, 5]), [1.0])


def test_decodes_by_the_declared_model_kinds():
  class Spec:
    family = 'speculative'
    model_kinds = ('autoregressive',)

  class Diff:
    family = 'diffusion'
    model_kinds = ('diffusion',)

  ar_kind, mdlm = kind_lib.ModelKind(), kind_lib.ModelKind('bidirectional', mask_id=3)
  bd3 = kind_lib.ModelKind('block_causal', mask_id=3, block_size=4)
  wedlm = kind_lib.ModelKind('causal', mask_id=3, block_size=4)
  any_order = kind_lib.ModelKind('bidirectional', mask_id=3, any_order=True)
  assert report.decodes(Spec, ar_kind) and not report.decodes(Spec, mdlm)
  assert report.decodes(Diff, bd3) and not report.decodes(Diff, ar_kind)
  assert report.decodes(Diff, wedlm) and report.decodes(Spec, wedlm)  # causal and mask-filling
  # An any-subset AR run is read by two-stream queries: only ASSD decodes it.
  from decoding.diffusion import assd  # pylint: disable=g-import-not-at-top
  assert report.decodes(assd.ASSDDecoder, any_order)
  assert not report.decodes(assd.ASSDDecoder, mdlm)
  assert not report.decodes(Spec, any_order) and not report.decodes(Diff, any_order)


def test_parse_settings():
  assert report.parse_settings(['a.gamma=4', 'a.name=x', 'b.p=0.5']) == {
      'a': {'gamma': 4, 'name': 'x'}, 'b': {'p': 0.5}}
  with pytest.raises(ValueError, match='NAME.FIELD=VALUE'):
    report.parse_settings(['gamma=4'])


def test_every_registered_decoder_is_planned_or_skipped_with_a_reason(trained_workdir,
                                                                       fake_decoders):
  models = _models(trained_workdir, 2)
  for name in registry.names():
    fits, reason = report.targets(name, models)
    assert bool(fits) != bool(reason), name
    if fits:
      dec, reason = report.build(name, 0.0, fits[0], {}, {})
      assert (dec is None) == bool(reason), name
  assert 'needs a diffusion model' in report.targets('report_test_diffusion', models)[1]
  assert "['causal']" in report.targets('report_test_diffusion', models)[1]
  _, reason = report.build('report_test_needs_draft', 0.0, models[0], {}, {})
  assert "'draft'" in reason and '--models=draft=DIR' in reason
  dec, _ = report.build('report_test_needs_draft', 0.0, models[0], {'draft': trained_workdir},
                        {})
  assert dec is not None and dec.draft_workdir == trained_workdir


def test_report_rows_quality_and_files(trained_workdir, fake_decoders, tmp_path):
  models = _models(trained_workdir, 3)
  rows, skipped = report.run_report(
      models, decoders=['ar', *fake_decoders], temperatures=(0.0, 1.0), max_new_tokens=8,
      repeats=1, extra_workdirs={'draft': trained_workdir}, log=lambda *_: None)
  by = {(r.method, r.temperature): r for r in rows}
  assert set(by) == {('ar', 0.0), ('ar', 1.0), ('report_test_needs_draft', 0.0),
                     ('report_test_needs_draft', 1.0)}
  ar0, spec0 = by['ar', 0.0], by['report_test_needs_draft', 0.0]
  assert ar0.speedup == 1.0 and ar0.tau == pytest.approx(1.0) and ar0.nfe_per_token == 1.0
  assert spec0.same_as_ar == 'yes' and spec0.tokens == ar0.tokens  # same algorithm
  assert spec0.perplexity == pytest.approx(ar0.perplexity, rel=1e-5)
  assert by['ar', 1.0].perplexity > ar0.perplexity  # sampling is less likely than greedy
  assert 0 <= ar0.entropy_bits < by['ar', 1.0].entropy_bits <= np.log2(8)
  reasons = dict(skipped)
  assert 'needs a diffusion model' in reasons['report_test_diffusion']
  name = models[0].name
  assert reasons['report_test_broken'] == f'failed by {name}: RuntimeError: boom'
  assert reasons['report_test_refuses'] == (f'refused by {name}: ValueError: needs heads in '
                                            'the target run')
  plots = report_files.plot(rows, str(tmp_path))
  assert all(os.path.getsize(tmp_path / p) > 1000 for p in plots)
  text = report_files.markdown(rows, skipped, plots, 'setup')
  assert text.count('\n| ar | autoregressive | yes |') == 2
  assert '`report_test_broken`: failed' in text and 'report_speed_quality.png' in text
  out = str(tmp_path / 'r.md')
  files = report_files.write(out, rows, skipped, 'setup', '- device: x')
  first = open(out).read()
  assert files[-1] == 'r.json' and 'setup' in first and '- device: x' in first
  os.remove(out)
  assert report_files.replot(out) == files
  again = open(out).read().splitlines()
  rendered = [l for l in again if l.startswith('- rendered: from r.json by')]
  assert len(rendered) == 1 and [l for l in again if l not in rendered] == first.splitlines()


def _row(method, tau, speedup, texts):
  return report_files.Row(method=method, family='speculative', lossless=True, temperature=0.0,
                    model='m', tau=tau, nfe_per_token=1.0, tokens_per_s=100.0, generated=8,
                    compile_s=0.0, step_hist=[0, 8], tokens=[], texts=texts, speedup=speedup)


def test_markdown_flags_speedups_above_tau_and_looping_text():
  prose = ['def parse(line):\n    key, value = line.split("=")\n    return key']
  rows = [_row('a', 1.86, 4.73, prose), _row('b', 2.0, 1.5, prose),
          _row('c', 1.0, 1.0, ['the command the command the command the comm'])]
  lines = {l.split(' | ')[0]: l for l in report_files.markdown(rows, [], [], '').splitlines()
           if l.startswith('| ') and not l.startswith('| method')}
  assert '| 4.73x (!) |' in lines['| a'] and '(!)' not in lines['| b'] + lines['| c']
  assert '(degenerate)' in lines['| c'] and '(degenerate)' not in lines['| a'] + lines['| b']
  assert report_files.repeated_fraction(['abcdefgh' * 8]) > 0.8
  assert report_files.repeated_fraction(prose) == 0.0


def test_judge_perplexity_is_the_models_own(trained_workdir):
  """Perplexity equals exp(mean NLL) computed directly from the judge's logits."""
  import jax  # pylint: disable=g-import-not-at-top
  judge = _models(trained_workdir, 1)[0]
  tok, model = judge.bench.tokenizer, judge.bench.model
  prompt, gen = 'import os\n', 'def f(x):\n  return x'
  ppl, entropy = report.judge_quality(judge, [prompt], [gen])
  ids = tok.encode(prompt, add_bos=True) + tok.encode(gen)
  start = len(tok.encode(prompt, add_bos=True))
  logits = jax.jit(model.apply)({'params': judge.bench.params},
                                np.asarray([ids])).logits_BxTxV[0]
  logp = np.asarray(jax.nn.log_softmax(logits, axis=-1))
  nll = [-logp[t - 1, ids[t]] for t in range(start, len(ids))]
  assert ppl == pytest.approx(float(np.exp(np.mean(nll))), rel=1e-4)
  counts = np.unique(tok.encode(gen), return_counts=True)[1] / len(tok.encode(gen))
  assert entropy == pytest.approx(float(-(counts * np.log2(counts)).sum()))


@pytest.mark.slow
def test_command_line_writes_the_report(trained_workdir, tmp_path):
  out = tmp_path / 'r.md'
  env = testlib.subprocess_env()  # one device
  proc = subprocess.run(
      [sys.executable, '-m', 'benchmarks.report', f'--workdirs={trained_workdir}',
       '--decoders=ar', '--num_prompts=2', '--prompt_chars=40', '--max_new_tokens=6',
       '--temperatures=0', '--repeats=1', f'--out={out}'],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  text = out.read_text()
  assert '| ar | autoregressive | yes | 0 |' in text and '- device:' in text
  assert (tmp_path / 'r_speed_quality.png').exists() and (tmp_path / 'r_acceptance.png').exists()
