"""benchmarks.diffusion_goals: which setting a goal is judged on, and its status."""

from benchmarks import diffusion_goals as bd


def _row(part, decoder, settings, nfe, quality, model='mdlm', tokens=None, **extra):
  return bd.Row(part=part, model=model, decoder=decoder, settings=settings,
                nfe_per_token=nfe, tokens_per_forward=1.0 / nfe, tokens_per_s=1.0,
                quality=quality, quality_name='solved %' if part == 'sudoku4' else 'AR ppl',
                extra=extra, tokens=tokens or [[1, 2]])


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


def test_code_goal_rejects_degenerate_low_entropy_text():
  """A lower perplexity from repetitive text (entropy down more than 5%) does not keep quality."""
  rows = [
      _row('code', 'llada', '', 1.0, 10.0, entropy=4.0),
      _row('code', 'fast_dllm', '', 0.3, 8.0, entropy=3.0),   # lower ppl, entropy -25%
      _row('code', 'ete', '', 0.3, 10.2, entropy=3.9),        # both within 5%
  ]
  table = bd.goals(rows)
  assert _goal(table, 'code: fast_dllm')[2] == 'not met'
  assert _goal(table, 'code: ete')[2] == 'met'


def test_code_goal_is_not_measurable_when_the_reference_text_is_degenerate():
  """One-per-step text with under half the entropy of our AR model's text (whitespace runs)
  makes 'quality kept' vacuous: the goal is not reported as met."""
  rows = [
      _row('code', 'llada', '', 1.0, 1.6, entropy=0.5),
      _row('code', 'fast_dllm', '', 0.3, 1.6, entropy=0.5),
      _row('code', 'ar', '', 1.0, 2.0, model='ar', entropy=2.0),
  ]
  assert _goal(bd.goals(rows), 'code: fast_dllm')[2].startswith('not measurable')
  rows[-1] = _row('code', 'ar', '', 1.0, 2.0, model='ar', entropy=0.9)
  assert _goal(bd.goals(rows), 'code: fast_dllm')[2] == 'met'


def test_assd_goal_needs_identical_output_and_fewer_forwards():
  rows = [
      _row('assd', 'assd', 'sequential', 1.06, 90.0, model='asarm', tokens=[[1, 2, 3]]),
      _row('assd', 'assd', 'draft_len=4', 0.4, 90.0, model='asarm', tokens=[[1, 2, 3]]),
      _row('assd', 'assd', 'draft_len=8', 0.3, 90.0, model='asarm', tokens=[[1, 2, 4]]),
      _row('assd', 'assd', 'ordering=random, sequential', 1.06, 80.0, model='asarm'),
  ]
  goals = [g for g in bd.goals(rows) if 'ASSD' in g[0]]
  assert len(goals) == 2  # the random order has no ASSD row beside its sequential one
  assert goals[0][2] == 'met' and 'draft_len=4' in goals[0][1]
  assert goals[1][2] == 'not met' and 'identical: False' in goals[1][1]
