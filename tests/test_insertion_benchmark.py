"""benchmarks.insertion: which parts run, where their results go, and how the path-star table
reads its rows (the decoding itself is tested in tests/decoding/test_insertion.py)."""

import pytest

from benchmarks import common
from benchmarks import forward_cost
from benchmarks import insertion


def test_parts_and_results_names():
  dev = forward_cost.device_tag()
  args = insertion.parse_args([])
  assert args.parts == ['sudoku4', 'infill'] and args.out == f'insertion_{dev}'
  # Another selection of parts gets a file of its own instead of overwriting the default's.
  assert insertion.parse_args(['--parts=star3']).out == f'insertion_star3_{dev}'
  assert insertion.parse_args(['--parts=star3', '--out=x']).out == 'x'
  with pytest.raises(SystemExit):
    insertion.parse_args(['--parts=star4'])


def test_star_table_reports_solved_and_where_answers_go_wrong(tmp_path, monkeypatch):
  monkeypatch.setattr(common, 'RESULTS_DIR', str(tmp_path))
  monkeypatch.setattr(insertion.diffusion_bench, 'LOADED', {'star3_ar': 'causal'})
  rows = [dict(part='star3', model=m, run=f'star3_{m.lower()}', step=7, decoder=d, solved=s,
               forwards_per_token=1.0, forwards=6, tokens=6, n=100, ends=e, first_step=f,
               walk=w)
          for m, d, s, e, f, w in (('ILM', 'insertion', 91.0, 96.0, 92.0, 95.0),
                                   ('AR', 'ar', 33.0, 97.0, 34.0, 99.0))]
  args = insertion.parse_args(['--parts=star3'])
  text = open(insertion.report(rows, args, 'star_t')).read()
  assert '## star3 (planning)' in text and 'step 7' in text and 'sudoku4' not in text
  assert ('| ILM | star3_ilm (7) | insertion | 91.0 | 2.9 | 96.0 | 92.0 | 95.0 | 1.000 |' in text), text
  assert '| AR | star3_ar (7) | ar | 33.0 | 4.7 | 97.0 | 34.0 | 99.0 | 1.000 |' in text
  assert 'ends right %' in text and 'first step right %' in text
  assert 'degree 3, arms of 4 nodes' in text and '1 in 3' in text
  rows = [dict(r, part='star2') for r in rows]
  text = open(insertion.report(rows, args, 'star_t2')).read()
  assert '## star2 (planning)' in text and 'degree 2, arms of 2 nodes' in text
  assert '1 in 2' in text and '| ILM | star3_ilm (7) | insertion | 91.0 |' in text and 'follows the edges %' in text


def test_sudoku_table_reports_where_answers_go_wrong(tmp_path, monkeypatch):
  monkeypatch.setattr(common, 'RESULTS_DIR', str(tmp_path))
  monkeypatch.setattr(insertion.diffusion_bench, 'LOADED', {'sudoku4_ar': 'causal'})
  rows = [dict(part='sudoku4', model=m, run=f'sudoku4_{m.lower()}', step=9, decoder=d,
               solved=s, forwards_per_token=1.0, forwards=6, tokens=6, n=100, grid=g,
               clues=c, valid=v)
          for m, d, s, g, c, v in (('ILM', 'insertion', 1.0, 99.0, 12.0, 40.0),
                                   ('AR', 'ar', 90.0, 100.0, 96.0, 92.0))]
  text = open(insertion.report(rows, insertion.parse_args(['--parts=sudoku4']), 'su')).read()
  assert '## sudoku4 (planning)' in text and 'step 9' in text
  assert '| ILM | sudoku4_ilm (9) | insertion | 1.0 | 1.0 | 99.0 | 12.0 | 40.0 | 1.000 |' in text
  assert '| AR | sudoku4_ar (9) | ar | 90.0 | 3.0 | 100.0 | 96.0 | 92.0 | 1.000 |' in text
  assert 'keeps the clues %' in text and 'valid grid %' in text and 'ends right' not in text
  assert 'equal training budget' in text and 'larger' not in text


def test_an_ilm_at_a_larger_budget_is_said_so(tmp_path, monkeypatch):
  """`--ilm_step`: the ILM restored at another step than its baselines; the table and its
  heading must not call that an equal budget."""
  args = insertion.parse_args(['--parts=sudoku4', '--step=8000', '--ilm_step=24000'])
  assert (args.step, args.ilm_step) == (8000, 24000)
  monkeypatch.setattr(common, 'RESULTS_DIR', str(tmp_path))
  monkeypatch.setattr(insertion.diffusion_bench, 'LOADED', {'sudoku4_ar': 'causal'})
  rows = [dict(part='sudoku4', model=m, run=f'sudoku4_{m.lower()}', step=st, decoder=d,
               solved=1.0, forwards_per_token=1.0, forwards=6, tokens=6, n=100, grid=1.0,
               clues=1.0, valid=1.0)
          for m, d, st in (('ILM', 'insertion', 24000), ('AR', 'ar', 8000),
                           ('MDLM', 'llada', 8000))]
  text = open(insertion.report(rows, args, 'su3')).read()
  assert 'equal training budget' not in text and 'same rows x steps' not in text
  assert 'the ILM at a larger training budget' in text
  assert 'ILM restored at step 24000 (3 times the rows x steps of the others' in text
  assert 'AR and MDLM at step 8000' in text
  assert '| ILM | sudoku4_ilm (24000) | insertion |' in text
  assert '| AR | sudoku4_ar (8000) | ar |' in text


def test_infill_table_and_keeps_given(tmp_path, monkeypatch):
  assert insertion.keeps_given('12 15 18 21 24', '12 15 ', ' 24')
  assert not insertion.keeps_given('12 15 18 22 24', '12 15 18 21', ' 24')  # a kept term edited
  assert not insertion.keeps_given('12 15', '12 15', '15')  # left and right overlap
  monkeypatch.setattr(common, 'RESULTS_DIR', str(tmp_path))
  monkeypatch.setattr(insertion.diffusion_bench, 'LOADED', {'progression_ilm': 'insertion'})
  rows = [dict(part='infill', model='ILM', run='progression_ilm', step=5, decoder='insertion',
               length='not given', length_right=80.0, kept=40.0, solved=2.0,
               forwards_per_token=1.0, forwards=6, tokens=6, n=100),
          dict(part='infill', model='MDLM', run='progression_mdlm', step=5, decoder='llada',
               length='given (oracle)', length_right=100.0, solved=99.0,
               forwards_per_token=1.0, forwards=6, tokens=6, n=100)]
  text = open(insertion.report(rows, insertion.parse_args(['--parts=infill']), 'inf')).read()
  assert '| ILM | progression_ilm (5) | not given | 2.0 | 1.4 | 80.0 | 40.0 | 1.000 |' in text
  assert '| MDLM | progression_mdlm (5) | given (oracle) | 99.0 | 1.0 | 100.0 | — | 1.000 |' in text
  assert 'keeps the given terms %' in text


def test_pick_lengths_takes_the_likeliest_fill_in_total_or_per_token():
  import numpy as np  # pylint: disable=g-import-not-at-top
  logp = np.array([[-1.0, -3.0, -2.0],    # length 2
                   [-1.5, -2.0, -6.0]])   # length 6
  assert insertion.pick_lengths([2, 6], logp, per_token=False).tolist() == [0, 1, 0]
  # per token: -0.5 / -0.25, -1.5 / -0.33, -1.0 / -1.0 (a tie: the first)
  assert insertion.pick_lengths([2, 6], logp, per_token=True).tolist() == [1, 1, 0]
  with pytest.raises(ValueError, match='candidate lengths'):
    insertion.pick_lengths([2], logp, per_token=False)


def test_mdlm_fill_log_prob_is_the_placed_tokens_log_probs():
  """The fill's log-probability is the sum, over its steps, of log p(placed token) at the
  placed position given the row at that step, recomputed here one step at a time."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from benchmarks import cost_model  # pylint: disable=g-import-not-at-top
  model, params = cost_model.random_model('test', vocab_size=40)
  mask = 39
  rows = np.array([[1, 5, mask, mask, 7, mask, 2, 2],
                   [1, 6, 8, mask, 9, 3, 2, 2]], np.int32)
  filled, fwd, logp = insertion._mdlm_fill(model, params, rows, steps=3, mask_id=mask)
  assert np.asarray(fwd).tolist() == [3, 1]
  expect, tok = np.zeros(2), rows.copy()
  for _ in range(3):
    out = model.apply({'params': params}, tok, attn_mask='bidirectional').logits_BxTxV
    lp = np.asarray(jax.nn.log_softmax(_masked(out, mask), -1))
    for b in range(2):
      where = np.flatnonzero(tok[b] == mask)
      if not len(where):
        continue
      p = where[np.argmax(lp[b, where].max(-1))]
      t = int(np.argmax(lp[b, p]))
      expect[b] += lp[b, p, t]
      tok[b, p] = t
  np.testing.assert_array_equal(np.asarray(filled), tok)
  np.testing.assert_allclose(np.asarray(logp), expect, rtol=1e-5, atol=1e-5)
  assert (np.asarray(logp) < 0).all()


def _masked(logits, mask):
  import numpy as np  # pylint: disable=g-import-not-at-top
  x = np.asarray(logits, np.float32).copy()
  x[..., mask] = -np.inf
  return x
