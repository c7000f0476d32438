"""Sudoku (4x4 and 9x9): fill the blanks; solved = a valid grid that keeps every clue.

Prompt: the puzzle row by row, '.' for a blank (16 or 81 characters). Answer: the full grid
(16 or 81 digits), so answer cell i sits at a fixed offset from puzzle cell i and from its row,
column and box (a relative-position lookup a small Transformer learns quickly). `fill` and the
scorer also accept the blanks' digits alone. A solution is scored by validity of the completed
grid, not against the generator's grid, because a puzzle with few clues can have several
solutions.

Grids come from the canonical pattern  grid[r][c] = (n * (r % n) + r // n + c) % n²  (n = 2
or 3) under the validity-preserving shuffles: digits relabelled, rows permuted within bands,
bands permuted, columns within stacks, stacks, and an optional transpose. Blanks are a uniform
random subset of `blanks` cells, with `blanks` uniform in a range.

Generation order matters here: a cell is easy once its row, column and box are filled, so a
model that decodes in an adaptive order (masked diffusion, most confident cell first) can do
what a left-to-right model cannot.
"""

from __future__ import annotations

import numpy as np

from data.tasks import exact_match

BLANK = '.'


def solved_grid(rng: np.random.Generator, n: int) -> np.ndarray:
  """A random valid grid [n², n²] with digits 1..n²."""
  size = n * n
  r = np.arange(size)
  base = (n * (r[:, None] % n) + r[:, None] // n + r[None, :]) % size

  def shuffled_lines() -> np.ndarray:
    bands = rng.permutation(n)
    return np.concatenate([b * n + rng.permutation(n) for b in bands])

  grid = base[shuffled_lines()][:, shuffled_lines()]
  if rng.random() < 0.5:
    grid = grid.T
  return rng.permutation(size)[grid] + 1


def make_puzzle(rng: np.random.Generator, n: int, min_blanks: int, max_blanks: int
                ) -> tuple[str, str]:
  """(puzzle, answer) strings, row-major: the puzzle with blanks, the full solved grid."""
  grid = solved_grid(rng, n)
  cells = grid.size
  blanks = np.sort(rng.choice(cells, size=int(rng.integers(min_blanks, max_blanks + 1)),
                              replace=False))
  flat = grid.reshape(-1).astype(str)
  puzzle = flat.copy()
  puzzle[blanks] = BLANK
  return ''.join(puzzle), ''.join(flat)


def _shape(puzzle: str) -> tuple[int, int] | None:
  """(size, box side n) of a puzzle of size^2 cells with size = n^2; None otherwise."""
  size = int(round(len(puzzle) ** 0.5))
  n = int(round(size ** 0.5))
  return (size, n) if n * n == size and size * size == len(puzzle) else None


def is_valid_solution(puzzle: str, answer: str) -> bool:
  """True iff `answer` (a full grid, or the blanks' digits) completes `puzzle` validly: it
  keeps every clue and follows the rules (`diagnose`)."""
  if _shape(puzzle) is None:
    return False
  d = diagnose(puzzle, answer)
  return d['clues'] and d['valid']


def diagnose(puzzle: str, answer: str) -> dict[str, bool]:
  """Where a full-grid answer goes wrong: `grid` (as many cells as the puzzle, each a digit
  1 .. size: the format), `clues` (a grid that keeps every clue: copying, no rule needed) and
  `valid` (a grid whose rows, columns and boxes each hold every digit once, whether or not
  it keeps the clues: the rules). A blanks-only answer is read as its filled grid. Solved
  (`is_valid_solution`) = clues and valid."""
  shape = _shape(puzzle)
  if shape is None:
    raise ValueError(f'Not a sudoku puzzle: {puzzle!r}.')
  size, n = shape
  cells = len(puzzle)
  if len(answer) != cells and len(answer) == puzzle.count(BLANK):
    digits = iter(answer)
    answer = ''.join(next(digits) if p == BLANK else p for p in puzzle)
  grid = len(answer) == cells and all(ch.isdigit() and 1 <= int(ch) <= size for ch in answer)
  if not grid:
    return dict(grid=False, clues=False, valid=False)
  clues = all(p == BLANK or p == a for p, a in zip(puzzle, answer))
  g = np.array([int(ch) for ch in answer]).reshape(size, size)
  boxes = g.reshape(n, n, n, n).transpose(0, 2, 1, 3).reshape(size, size)
  want = set(range(1, size + 1))
  valid = all(set(line) == want for lines in (g, g.T, boxes) for line in lines)
  return dict(grid=True, clues=clues, valid=valid)


def _task(name: str, n: int, min_blanks: int, max_blanks: int) -> exact_match.TextTask:
  cells = n ** 4
  return exact_match.TextTask(
      name=name, generate=lambda rng: make_puzzle(rng, n, min_blanks, max_blanks),
      score=is_valid_solution, max_prompt_chars=cells, max_answer_chars=cells,
      description=f'{n * n}x{n * n} sudoku with {min_blanks}-{max_blanks} blanks')


@exact_match.register('sudoku4')
def sudoku4() -> exact_match.TextTask:
  return _task('sudoku4', 2, 6, 10)


@exact_match.register('sudoku9')
def sudoku9() -> exact_match.TextTask:
  return _task('sudoku9', 3, 30, 45)
