"""benchmarks.lossy_speed: its rows, ideals, KV accounting and flags on the `test` preset (the
timings themselves are not checked: speed is measured by the benchmark, not by tests)."""

import json

import pytest

from benchmarks import common
from benchmarks import lossy_speed


def test_rows_ideals_and_kv_entries(tmp_path, monkeypatch):
  monkeypatch.setattr(common, 'RESULTS_DIR', str(tmp_path))
  lossy_speed.main(['--preset=test', '--batches=1', '--skips=1', '--new_tokens=9',
                    '--prompt_tokens=5', '--repeats=1', '--block=3', '--head_steps=2',
                    '--out=ls'])
  rows = {r['decoder']: r for r in json.loads((tmp_path / 'ls.json').read_text())['rows']}
  assert list(rows) == ['ar', 'skipdecode, skip bottom 1', 'early exit, skip top 1',
                        'bitlm per-token, K=3, 2 head calls', 'bitlm folded, K=3, 2 head calls',
                        'hamburger, 3 tokens per step']
  L = 2  # the test preset's layers
  for name in ('skipdecode, skip bottom 1', 'early exit, skip top 1'):
    assert rows[name]['ideal'] == pytest.approx(L / (L - 1))
    assert rows[name]['kv_entries_per_token_per_layer'] == pytest.approx((L - 1) / L)
    assert rows[name]['tau'] == pytest.approx(1.0)
  fold, per_token = rows['bitlm folded, K=3, 2 head calls'], rows['bitlm per-token, K=3, 2 head calls']
  assert fold['ideal'] == pytest.approx(3 * fold['t_fwd_1_ms'] / fold['t_fwd_fold_ms'])
  assert fold['kv_entries_per_token_per_layer'] == 1 / 3
  assert per_token['ideal'] == pytest.approx(3 * per_token['t_fwd_1_ms'] / per_token['t_fwd_k_ms'])
  assert per_token['kv_entries_per_token_per_layer'] == 1.0
  assert fold['tau'] == pytest.approx(3.0)  # 9 tokens: 3 blocks, one backbone forward each
  ham = rows['hamburger, 3 tokens per step']
  assert ham['ideal'] == 3.0 and ham['kv_entries_per_token_per_layer'] == 1 / 3
  assert ham['tau'] == pytest.approx(3.0)  # threshold 0: every step takes 3 tokens
  for r in rows.values():
    assert r['above_ideal'] == (r['speedup'] > 1.05 * r['ideal'])
  text = (tmp_path / 'ls.md').read_text()
  assert 'SPEED ONLY, RANDOM WEIGHTS' in text and '- commit: ' in text
  assert '| 1 | bitlm folded, K=3, 2 head calls | 3.00 | 0.333 |' in text


def test_clear_errors():
  with pytest.raises(ValueError, match=r'each skip must be in 1 \.\. 1, got 2'):
    lossy_speed.decoders(2, [2], 4, 9)
