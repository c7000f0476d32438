"""benchmarks.diffusion's goals table: which setting a goal is judged on, and its status."""

from benchmarks import diffusion as bd


def _row(part, decoder, settings, nfe, quality, model='mdlm', tokens=None):
  return bd.Row(part=part, model=model, decoder=decoder, settings=settings,
                nfe_per_token=nfe, tokens_per_forward=1.0 / nfe, tokens_per_s=1.0,
                quality=quality, quality_name='solved %' if part == 'sudoku4' else 'AR ppl',
                extra={}, tokens=tokens or [[1, 2]])


def _goal(table, prefix):
  return next(g for g in table if g[0].startswith(prefix))


def test_goal_uses_the_fastest_setting_that_keeps_quality():
  rows = [
      _row('sudoku4', 'llada', '', 1.0, 50.0),
      _row('sudoku4', 'fast_dllm', 'threshold=0.7', 0.2, 40.0),  # faster, loses 10 points
      _row('sudoku4', 'fast_dllm', '', 0.3, 49.5),               # within 1 point
  ]
  g = _goal(bd.goals(rows), 'sudoku4: fast_dllm')
  assert g[2] == 'met', g
  assert '0.30 NFE/token' in g[1]


def test_goal_falls_back_to_the_fastest_and_is_not_met_when_quality_drops():
  rows = [
      _row('sudoku4', 'llada', '', 1.0, 50.0),
      _row('sudoku4', 'fast_dllm', 'threshold=0.7', 0.2, 40.0),
  ]
  g = _goal(bd.goals(rows), 'sudoku4: fast_dllm')
  assert g[2] == 'not met'
  assert '0.20 NFE/token' in g[1]


def test_code_goal_reads_quality_as_ar_perplexity_within_slack():
  rows = [
      _row('code', 'llada', '', 1.0, 10.0),
      _row('code', 'fast_dllm', '', 0.3, 10.4),   # +4%: kept
      _row('code', 'localleap', '', 0.3, 11.0),   # +10%: lost
  ]
  table = bd.goals(rows)
  assert _goal(table, 'code: fast_dllm')[2] == 'met'
  assert _goal(table, 'code: localleap')[2] == 'not met'
  assert 'within 5%' in _goal(table, 'code: fast_dllm')[0]
