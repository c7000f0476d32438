"""The committed results are possible and every figure README.md and docs/ quote is traceable
to them (benchmarks/check_results.py); and that check catches what it is meant to catch."""

import textwrap

import pytest

from benchmarks import check_figures
from benchmarks import check_results as check
from benchmarks import results_text
from benchmarks import common


def test_committed_results_hold_no_impossible_figures():
  problems = check.check_results()
  assert not problems, '\n'.join(problems)


def test_every_figure_in_readme_and_docs_is_in_a_results_file():
  problems = check_figures.check_figures()
  assert not problems, '\n'.join(problems)


# ------------------------------------------------------------------- the check itself

PROVENANCE = """\
- device: cpu / cpu x1 (2 host cores)
- versions: python 3.11.7, jax 0.10.2, flax 0.12.8
- date: 2026-11-23 05:12 UTC
- commit: 0123456789ab (clean)
- command: `python -m benchmarks.x`
"""


@pytest.fixture
def tree(tmp_path, monkeypatch):
  """A repository skeleton: write(relative path, text) -> absolute path."""
  monkeypatch.setattr(results_text, 'ROOT', str(tmp_path))
  monkeypatch.setattr(results_text, 'RESULTS', str(tmp_path / 'benchmarks' / 'results'))
  results_text.numbers_in.cache_clear()

  def write(rel, text):
    path = tmp_path / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    results_text.numbers_in.cache_clear()
    return str(path)
  yield write
  results_text.numbers_in.cache_clear()


def _results_problems(tree, body, name='x.md', provenance=PROVENANCE):
  tree(f'benchmarks/results/{name}', f'# X\n\n{provenance}\n{textwrap.dedent(body)}')
  return check.check_results()


def test_speedup_above_tau_is_flagged_unless_marked(tree):
  table = """\
      | method | τ | NFE/token | speedup vs AR |
      |---|---|---|---|
      | mtp | 1.86 | 1.55 | 4.73x |
      | spec | 3.76 | 1.23 | 4.03x (!) |
      | chain | 1.95 | 1.2 | 0.56x |
      """
  problems = _results_problems(tree, table)
  assert len(problems) == 1 and 'x.md:11: speedup 4.73x above tau 1.86' in problems[0]
  summary = """\
      Summary: tau / speedup against AR
      | method | t0 b1 | t1 b8 |
      |---|---|---|
      | chain | 1.95 / 0.56x | 2.58 / 2.60x |
      | tree | 3.45 / 3.50x (!) | - |
      """
  problems = [p for p in _results_problems(tree, summary, name='y.md') if 'y.md' in p]
  assert len(problems) == 1 and 'speedup 2.6x above tau 2.58' in problems[0]


def test_accuracies_and_percentages_out_of_range(tree):
  body = """\
      | method | acc (in-dist) | solved | HBM util |
      |---|---|---|---|
      | a | 101.5% | 99.2% | 0.44 |
      | b | 14.5% | -3% | 1.20 |
      | c | 0.5 | 50% | 0.48 |
      """
  problems = _results_problems(tree, body)
  assert sorted(p.split(': ', 1)[1] for p in problems) == sorted([
      'percentage 101.5% outside [0, 100]', 'percentage -3% outside [0, 100]',
      "'HBM util' = 1.20 outside [0, 1]"])


def test_goal_marked_met_against_its_own_measurement(tree):
  body = """\
      | goal | measured | status |
      |---|---|---|
      | draft-model tree <= 64 nodes: tau >= 4 | 3.45 (dynamic tree 60) | met |
      | best method >= 2x AR on CPU | 0.66x (mtp) | met |
      | FreeDave >= 1.5 tokens/forward, identical output | 2.01 tokens/forward; identical | met |
      | fast_dllm <= 0.35 NFE/token, <= 1 point loss | 0.13 NFE/token; 100.0% vs 100.0% | met |
      | Token Recycling tau >= 2 | 1.90 | NOT met |
      """
  problems = _results_problems(tree, body)
  assert [p.split(': ', 1)[1] for p in problems] == [
      'goal marked met but measured 3.45 is not >= 4',
      'goal marked met but measured 0.66 is not >= 2']


def test_provenance_and_hand_written_parts(tree):
  no_commit = PROVENANCE.replace('- commit: 0123456789ab (clean)\n', '')
  body = '| a | b |\n|---|---|\n| 1 | 2 |\n\n## Notes (added by hand)\n\nA reading.\n'
  problems = _results_problems(tree, body, provenance=no_commit)
  assert any('provenance lacks commit' in p for p in problems)
  assert any('hand-written part' in p and 'Notes (added by hand)' in p for p in problems)


def test_results_written_by_the_scripts_pass(tree, monkeypatch):
  monkeypatch.setattr(common, 'RESULTS_DIR', results_text.RESULTS)
  common.write_results('fresh', 'Fresh', common.markdown_table(
      ['method', 'tau', 'speedup'], [['ar', '1.00', '1.00x'], ['tree', '3.45', '0.13x']]))
  assert check.check_results() == []


def _figure_problems(tree, doc_text):
  doc = tree('docs/page.md', doc_text)
  return check_figures.check_figures([doc])


RESULTS_MD = """\
    # Decode

    - device: gpu
    - commit: 0123456789ab (clean)

    | batch | decode tok/s | HBM util | ours / peer (decode) | x naive scan |
    |---|---|---|---|---|
    | 1 | 707.8 | 0.4434 | 2.065 | 20.37 |
    | 32 | 1.946e+04 | 0.4812 | 3.498 | 1 |

    ## H100 rows (copied from the log by hand)

    | run | x naive scan |
    |---|---|
    | 1 | 19.9 |
    """


def test_figures_must_round_from_a_number_of_their_kind_in_the_files_they_cite(tree):
  tree('benchmarks/results/decode.md', RESULTS_MD)
  link = '[results](../benchmarks/results/decode.md)'
  ok = f"""\
      On an H100 ({link}): 708 tok/s, 19.5k tok/s at batch 32, 2.07× and 3.50× the peer,
      44% / 48% of HBM peak, the chunked form 20.4× the scan; goal ≥ 70%, `--ratio=9.9x` and
      16 × 2048 rows are not figures.
      """
  assert _figure_problems(tree, ok) == []
  for wrong in ('2.08×', '45%', '700 tok/s', '20.0×', '19.9×', 'τ 2.07'):
    problems = _figure_problems(tree, f'Measured ({link}): {wrong} the peer.\n')
    assert len(problems) == 1 and wrong in problems[0], (wrong, problems)
  # 0.4434 is a fraction, not a ratio; 2.065 is a ratio, not a percentage.
  assert len(_figure_problems(tree, f'Measured ({link}): 0.44× the peer.\n')) == 1
  assert len(_figure_problems(tree, f'Measured ({link}): 2.1% of it.\n')) == 1


def test_a_figure_must_cite_results_and_unbacked_ones_must_say_so(tree):
  tree('benchmarks/results/decode.md', RESULTS_MD)
  problems = _figure_problems(tree, 'It decodes 2.07× faster than the peer.\n')
  assert len(problems) == 1 and 'links a results file' in problems[0]
  section = ('## Speed ([results](../benchmarks/results/decode.md))\n\n'
             'It decodes 2.07× faster than the peer.\n')
  assert _figure_problems(tree, section) == []
  marked = ('## Speed ([results](../benchmarks/results/decode.md))\n\n'
            'XLA asked for 174 GB (from the log, not backed by a results file). '
            'Attention is 6× faster.\n')
  problems = _figure_problems(tree, marked)
  assert len(problems) == 1 and '6×' in problems[0]  # the marker covers its own sentence only
