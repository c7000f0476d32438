"""The training-throughput sweep (`benchmarks/train_throughput.py`): its order, its budget,
a failing setting as a row, the best MFU against the goal, and one real step at toy size."""

import itertools
import os

import pytest

from benchmarks import common
from benchmarks import train_throughput as tt


def test_settings_nest_remat_then_batch_then_attention():
  assert tt.settings('dots,block', '16,8', 'auto,mosaic')[:3] == [
      ('dots', 16, 'auto'), ('dots', 16, 'mosaic'), ('dots', 8, 'auto')]
  assert len(tt.settings('dots,block', '16,8', 'auto,mosaic')) == 8


def test_sweep_rows_errors_best_and_budget(tmp_path, monkeypatch):
  monkeypatch.setattr(common, 'RESULTS_DIR', str(tmp_path))
  mfu = {('dots', 16, 'auto'): 0.31, ('dots', 16, 'mosaic'): 0.42}

  def fake(args, remat, batch, impl):
    if impl == 'pallas':
      raise RuntimeError('RESOURCE_EXHAUSTED: out of memory | while allocating')
    return ['base', '1040.3M', 'bfloat16', batch, 2048, {}, remat, impl, 1.0, 1.0, 1.0,
            mfu[(remat, batch, impl)]]
  monkeypatch.setattr(tt, '_setting', fake)
  clock = itertools.count(0, 50)  # each call of the clock: 50 s later
  monkeypatch.setattr(tt.time, 'monotonic', lambda: next(clock))
  path = tt.main(['--remat=dots', '--batch=16,8', '--attention_impl=auto,mosaic,pallas',
                  '--budget_s=160', '--out=t'])
  text = open(path).read()
  assert os.path.basename(path) == 'train_throughput_base_t.md'
  rows = [l for l in text.splitlines() if l.startswith('| base')]
  assert len(rows) == 3  # the budget stops the sweep before the fourth setting
  assert 'RuntimeError: RESOURCE_EXHAUSTED: out of memory / while allocating' in rows[2]
  assert 'Best: remat dots, batch 16, attention mosaic: MFU 0.42' in text
  assert '(goal 0.4 on one H200 in bf16: met)' in text
  assert 'Not reached within the budget: remat dots, batch 8, attention auto;' in text
  with pytest.raises(SystemExit, match='Unknown remat'):
    tt.main(['--remat=some'])


def test_one_real_setting_at_toy_size(tmp_path, monkeypatch):
  monkeypatch.setattr(common, 'RESULTS_DIR', str(tmp_path))
  path = tt.main(['--preset=test', '--seq_len=32', '--batch=8', '--steps=1',
                  '--dtype=float32'])
  table = [l for l in open(path).read().splitlines() if l.startswith('|')]
  assert table[0] == '| ' + ' | '.join(tt.HEADER) + ' |'
  row = table[2].strip('|').split('|')
  assert len(row) == len(tt.HEADER) and float(row[tt.HEADER.index('tokens/s')]) > 0
