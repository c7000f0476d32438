"""Exact-match tasks: generators give solvable problems their scorers accept, scorers reject
wrong answers, rows fit and put weights on the answer only, and batches are deterministic."""

import numpy as np
import pytest

from data import tokenizers
from data.tasks import countdown, exact_match, infilling, iterator, sudoku

TASKS = ['sudoku4', 'sudoku9', 'countdown3', 'countdown4', 'infill']


@pytest.mark.parametrize('name', TASKS)
def test_generated_answers_score_as_solved_and_fit(name):
  task = exact_match.get(name)
  rng = np.random.default_rng(0)
  for _ in range(50):
    prompt, answer = task.generate(rng)
    assert task.score(prompt, answer), (prompt, answer)
    assert len(prompt) <= task.max_prompt_chars and len(answer) <= task.max_answer_chars


def test_sudoku_grids_are_valid_and_scorer_rejects_broken_ones():
  rng = np.random.default_rng(1)
  for n in (2, 3):
    grid = sudoku.solved_grid(rng, n)
    flat = ''.join(grid.reshape(-1).astype(str))
    blank = '.' * len(flat)
    assert sudoku.is_valid_solution(blank, flat)
    swapped = flat[1] + flat[0] + flat[2:]          # breaks two columns
    assert not sudoku.is_valid_solution(blank, swapped)
    assert not sudoku.is_valid_solution(blank, flat[:-1])   # too short
    assert not sudoku.is_valid_solution(flat[:-1] + '.', flat[-1] + '0')  # wrong count
    # The blanks' digits alone also count; a full grid must keep every clue.
    assert sudoku.is_valid_solution(flat[:-1] + '.', flat[-1])
    wrong = str(int(flat[-1]) % (n * n) + 1)
    assert not sudoku.is_valid_solution(flat[:-1] + '.', wrong)
    clue = ('1' if flat[0] != '1' else '2') + '.' * (len(flat) - 1)
    assert not sudoku.is_valid_solution(clue, flat)
  puzzle, answer = sudoku.make_puzzle(rng, 2, 6, 10)
  assert 6 <= puzzle.count('.') <= 10 and len(answer) == 16


def test_countdown_scorer_checks_arithmetic_numbers_and_target():
  ok = countdown.is_valid_solution
  assert ok('3,7,25>46', '7*3=21,21+25=46')
  assert ok('3,7,25>46', '3*7=21,25+21=46')         # another correct derivation
  assert not ok('3,7,25>46', '7*3=22,22+24=46')     # wrong arithmetic
  assert not ok('3,7,25>46', '7*7=49,49-3=46')      # 7 used twice
  assert not ok('3,7,25>46', '7*3=21')              # misses the target
  assert not ok('3,7,25>46', '7*3=21,21+25=46,')    # trailing garbage
  assert not ok('8,3>2', '8/3=2')                   # inexact division


def test_infilling_is_exact_match():
  assert infilling.is_exact('12 15 18|27 30|', '21 24')
  assert not infilling.is_exact('12 15 18|27 30|', '21 24 ')
  assert not infilling.is_exact('12 15 18|27 30|', '21')


def test_rows_weight_the_answer_only_and_are_deterministic():
  tok = tokenizers.make_tokenizer('byte')
  task = exact_match.get('countdown3')
  make = exact_match.batch_fn(task, tok, seq_len=task.min_seq_len)
  batch = make(np.random.default_rng(3), 4)
  assert batch['tokens'].shape == (4, task.min_seq_len + 1)
  assert batch['weights'].shape == (4, task.min_seq_len)
  for row, w in zip(batch['tokens'], batch['weights']):
    sep = list(row).index(tok.special_id('<sep>'))
    assert row[0] == tok.bos_id and w[:sep].sum() == 0 and w[sep:].all()
    answer = tok.decode(row[sep + 1:])
    prompt = tok.decode(row[1:sep])
    assert task.score(prompt, answer)
  again = make(np.random.default_rng(3), 4)
  np.testing.assert_array_equal(batch['tokens'], again['tokens'])
  it = iterator.SyntheticIterator(make, seed=0, batch_size=4)
  assert not np.array_equal(next(it)['tokens'], next(it)['tokens'])
  with pytest.raises(ValueError, match='raise data.seq_len'):
    exact_match.encode_example(tok, '1,2>3', '1+2=3', seq_len=5)


def test_unknown_task_is_a_clear_error():
  with pytest.raises(ValueError, match='registered tasks'):
    exact_match.get('sudoku5')
  assert set(TASKS) <= set(exact_match.names())
