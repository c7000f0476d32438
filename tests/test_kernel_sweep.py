"""The kernel block-size sweep (benchmarks/kernel_sweep.py): it picks the fastest setting
whose output is right, never a wrong or failing one, stops at its time budget saying what it
did not reach, and its rehearsal runs every op's kernels in interpret mode."""

import json
import os

import pytest

from benchmarks import common, kernel_sweep


def _fake_op():
  def run(setting):
    if setting['a'] == 5:
      raise RuntimeError('does not compile')
    return lambda: setting['a']
  return kernel_sweep.Op('fake', 'toy', [dict(a=a) for a in (1, 2, 3, 5, 4, 6)], run,
                         check=lambda out: (out != 3, float(out == 3)))


def test_sweep_picks_the_fastest_correct_setting_and_stops_at_its_budget():
  times = {1: 5.0, 2: 3.0, 3: 1.0, 4: 2.0, 6: 0.5}  # 3 is the fastest, but wrong
  ticks = iter(range(100))
  seen = []
  res = kernel_sweep.sweep(_fake_op(), deadline=5, timer=lambda fn: times[fn()],
                           clock=lambda: next(ticks), on_row=lambda r: seen.append(len(r['rows'])))
  by = {r['label']: r for r in res['rows']}
  assert list(by) == ['a=1', 'a=2', 'a=3', 'a=5', 'a=4']  # a=6 comes after the budget
  assert res['not_reached'] == ['a=6'] and seen == [1, 2, 3, 4, 5]
  assert not by['a=3']['ok'] and by['a=3']['seconds'] is None
  assert 'differs' in by['a=3']['note']
  assert not by['a=5']['ok'] and 'does not compile' in by['a=5']['note']
  assert res['best']['label'] == 'a=4' and res['default']['label'] == 'a=1'


def test_rehearsal_runs_every_op_and_its_check_rejects_a_wrong_output(tmp_path, monkeypatch):
  monkeypatch.setattr(common, 'RESULTS_DIR', str(tmp_path))
  kernel_sweep.main(['--rehearse', '--ops=flash,decode,sampling', '--out=test'])
  data = json.load(open(os.path.join(tmp_path, 'kernel_sweep_cpu_test.json')))
  assert [o['op'] for o in data['ops']] == ['flash', 'decode', 'sampling B1', 'sampling B4']
  for o in data['ops']:
    assert len(o['rows']) == 2 and all(r['ok'] for r in o['rows']), o
    assert o['best'] in {r['label'] for r in o['rows']} and not o['not_reached']
  for op in (kernel_sweep.flash_op(True), kernel_sweep.flash_hopper_op(True),
             kernel_sweep.decode_hopper_op(True), kernel_sweep.verify_hopper_op(True)):
    out = op.run({})()
    assert op.check(out)[0] and not op.check(out * 1.05)[0], op.name
  sampling = kernel_sweep.sampling_op(True, 4)
  tokens = sampling.run(dict(parts=0, block_v=256))()
  assert sampling.check(tokens)[0] and not sampling.check(tokens + 1)[0]
  with pytest.raises(SystemExit, match='Unknown ops'):
    kernel_sweep.main(['--ops=flash,nope'])
