"""Exact-match tasks: generators give solvable problems their scorers accept, scorers reject
wrong answers, rows fit and put weights on the answer only, and batches are deterministic."""

import numpy as np
import pytest

from data import tokenizers
from data.tasks import countdown, exact_match, infilling, iterator, stargraph, sudoku

TASKS = ['sudoku4', 'sudoku9', 'countdown3', 'countdown4', 'infill', 'star3', 'star2']


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


def _forward_paths(prompt):
  """Every node's path from the start, by a forward search over the edges (the generator's
  and solver's backward walk is not used)."""
  edges_s, _, (start, _) = prompt.rpartition('=')
  children = {}
  for e in edges_s.split(' '):
    children.setdefault(e[0], []).append(e[1])
  paths, frontier = {start: start}, [start]
  while frontier:
    node = frontier.pop()
    for c in children.get(node, []):
      assert c not in paths, prompt  # a tree: every node reached once
      paths[c] = paths[node] + c
      frontier.append(c)
  return children, paths


@pytest.mark.parametrize('degree,arm', [(3, 4), (2, 1), (5, 3)])
def test_star_graphs_are_path_stars_and_the_answer_is_the_path(degree, arm):
  rng = np.random.default_rng(degree * 10 + arm)
  goals = set()
  for _ in range(100):
    prompt, answer = stargraph.make_star(rng, degree, arm)
    children, paths = _forward_paths(prompt)
    start, goal = prompt[-2:]
    assert len(paths) == 1 + degree * arm and len(set(paths)) == len(paths)
    assert len(children[start]) == degree     # the centre has `degree` arms ...
    leaves = [n for n in paths if n not in children]
    assert len(leaves) == degree and all(len(paths[n]) == arm + 1 for n in leaves)
    assert all(len(c) == 1 for n, c in children.items() if n != start)  # ... each a path
    assert goal in leaves and answer == paths[goal] == stargraph.solve(prompt)
    assert stargraph.is_path(prompt, answer)
    goals.add(answer[1])
    # Every other answer fails: the same walk down another arm, a prefix, a missing node.
    for leaf in leaves:
      assert stargraph.is_path(prompt, paths[leaf]) == (leaf == goal)
    assert not stargraph.is_path(prompt, answer[:-1])
    assert not stargraph.is_path(prompt, answer + answer[-1])
    if arm > 1:
      assert not stargraph.is_path(prompt, answer[0] + answer[2:])
  assert len(goals) > 10  # the letters vary between graphs


def test_registered_star_tasks_have_their_stated_shape():
  for name, (degree, arm) in stargraph.DEGREE_ARM.items():
    prompt, answer = exact_match.get(name).generate(np.random.default_rng(5))
    children, paths = _forward_paths(prompt)
    assert len(children[prompt[-2]]) == degree and len(answer) == arm + 1, name


def test_star_diagnosis_and_bad_input():
  rng = np.random.default_rng(3)
  prompt, answer = stargraph.make_star(rng, 3, 4)
  children, paths = _forward_paths(prompt)
  start = prompt[-2]
  other = next(paths[n] for n in paths if len(paths[n]) == 5 and paths[n][1] != answer[1])
  assert stargraph.diagnose(prompt, answer) == dict(ends=True, first_step=True, walk=True)
  assert stargraph.diagnose(prompt, other) == dict(ends=False, first_step=False, walk=True)
  unused = next(c for c in stargraph.LABELS if c not in paths)
  assert stargraph.diagnose(prompt, answer[:3] + unused * 2) == dict(ends=False,
                                                                     first_step=True,
                                                                     walk=False)
  assert stargraph.diagnose(prompt, answer[:3] + unused + answer[-1]) == dict(
      ends=True, first_step=True, walk=False)
  assert stargraph.diagnose(prompt, start + answer[2:]) == dict(ends=False, first_step=False,
                                                                walk=False)
  assert stargraph.solve('ab bc') is None and stargraph.solve('ab cb=ac') is None
  assert stargraph.solve('ab bc=ad') is None  # the goal is not reached
  with pytest.raises(ValueError, match='degree >= 2'):
    stargraph.make_star(rng, 1, 4)
  with pytest.raises(ValueError, match='labels'):
    stargraph.make_star(rng, 9, 3)
  with pytest.raises(ValueError, match='Not a path-star'):
    stargraph.diagnose('ab', 'a')


def test_sudoku_diagnosis_and_bad_input():
  """Hand-built answers to one puzzle: its solution; a valid grid that breaks a clue (the
  solution with digits 1 and 2 swapped everywhere, still a valid grid); a grid that keeps
  the clues but breaks the rules; a short answer; the blanks only."""
  solution = '1234341221434321'  # rows 1234 / 3412 / 2143 / 4321: a valid 4x4 grid
  puzzle = '1.3.34...1..4..1'
  assert sudoku.is_valid_solution(puzzle, solution)
  swapped = solution.translate(str.maketrans('12', '21'))
  assert sudoku.diagnose(puzzle, solution) == dict(grid=True, clues=True, valid=True)
  assert sudoku.diagnose(puzzle, swapped) == dict(grid=True, clues=False, valid=True)
  broken = solution[:1] + '3' + solution[2:]  # the blank at cell 1 filled wrong
  assert sudoku.diagnose(puzzle, broken) == dict(grid=True, clues=True, valid=False)
  assert sudoku.diagnose(puzzle, solution[:15]) == dict(grid=False, clues=False, valid=False)
  assert sudoku.diagnose(puzzle, solution[:15] + '5') == dict(grid=False, clues=False,
                                                               valid=False)
  blanks = ''.join(a for p, a in zip(puzzle, solution) if p == '.')
  assert sudoku.diagnose(puzzle, blanks) == dict(grid=True, clues=True, valid=True)
  rng = np.random.default_rng(4)
  for _ in range(20):  # every generated puzzle's own answer passes all three
    p, a = exact_match.get('sudoku4').generate(rng)
    assert sudoku.diagnose(p, a) == dict(grid=True, clues=True, valid=True)
  with pytest.raises(ValueError, match='Not a sudoku puzzle'):
    sudoku.diagnose('1.3', '123')


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
