"""Infilling: restore the missing middle of an arithmetic progression from both sides.

Prompt: the terms before the gap and the terms after it, separated by '|' and ended by '|',
e.g. '12 15 18|27 30|'. Answer: the missing terms, e.g. '21 24'. Solved = exact match (the
middle is determined: the step is known from either side and the gap's length from the two
values around it).

The answer depends on text to its right, so a model that reads the whole canvas at once
(masked diffusion) is at no disadvantage against one that reads left to right, and the
right-hand side makes the answer's length checkable.

'progression' is the in-place form: the row is a whole progression (empty prompt), and
`cut_middle` removes whole terms from its middle at evaluation time; a model fills the gap
where it is, without being told how many tokens are missing (an insertion model can; masked
diffusion needs the number of masks).
"""

from __future__ import annotations

import numpy as np

from data.tasks import exact_match


def make_problem(rng: np.random.Generator, max_start: int = 50, max_step: int = 9,
                 side_terms: int = 2, max_gap: int = 3) -> tuple[str, str]:
  """(prompt, answer) strings."""
  start = int(rng.integers(0, max_start + 1))
  step = int(rng.integers(1, max_step + 1))
  gap = int(rng.integers(1, max_gap + 1))
  terms = [str(start + k * step) for k in range(2 * side_terms + gap)]
  left, middle, right = terms[:side_terms], terms[side_terms:side_terms + gap], terms[
      side_terms + gap:]
  return f'{" ".join(left)}|{" ".join(right)}|', ' '.join(middle)


def is_exact(prompt: str, answer: str) -> bool:
  """Exact match against the determined middle of `prompt`."""
  try:
    left_s, right_s, _ = prompt.split('|')
    left, right = [int(x) for x in left_s.split()], [int(x) for x in right_s.split()]
  except ValueError:
    return False
  if len(left) < 2 or not right:
    return False
  step = left[1] - left[0]
  if step <= 0 or (right[0] - left[-1]) % step:
    return False
  middle = range(left[-1] + step, right[0], step)
  return answer == ' '.join(str(x) for x in middle)


@exact_match.register('infill')
def infill() -> exact_match.TextTask:
  # Terms below 50 + 6 * 9 = 104: at most 3 digits and a space each.
  return exact_match.TextTask(
      name='infill', generate=make_problem, score=is_exact, max_prompt_chars=4 * 4 + 2,
      max_answer_chars=3 * 4 - 1,
      description='middle of an arithmetic progression (2 terms each side, gap of 1-3)')


# ---------------------------------------------------------------------------- in place

PROGRESSION_TERMS = 7


def make_progression(rng: np.random.Generator, max_start: int = 50, max_step: int = 9,
                     terms: int = PROGRESSION_TERMS) -> tuple[str, str]:
  """('', a whole progression) e.g. ('', '12 15 18 21 24 27 30'): the row is the sequence
  itself, so a span can be cut from its middle and filled in place (unknown length)."""
  start = int(rng.integers(0, max_start + 1))
  step = int(rng.integers(1, max_step + 1))
  return '', ' '.join(str(start + k * step) for k in range(terms))


def is_progression(prompt: str, answer: str, terms: int = PROGRESSION_TERMS) -> bool:
  """A progression of `terms` non-negative terms with step 1..9 (what the generator makes)."""
  del prompt
  try:
    xs = [int(x) for x in answer.split(' ')]
  except ValueError:
    return False
  if len(xs) != terms or ' '.join(str(x) for x in xs) != answer:
    return False
  step = xs[1] - xs[0]
  return 1 <= step <= 9 and 0 <= xs[0] and all(b - a == step for a, b in zip(xs, xs[1:]))


def cut_middle(answer: str, rng: np.random.Generator, side_terms: int = 2, max_gap: int = 3
               ) -> tuple[str, str, str]:
  """(left, missing, right): 1..max_gap whole terms cut from the middle of a progression with
  at least `side_terms` terms kept on each side; left + missing + right == answer. The
  missing text is determined (the step is known from either side, the count from the values
  around the cut) but its length is not given."""
  xs = answer.split(' ')
  gap = int(rng.integers(1, max_gap + 1))
  if len(xs) < 2 * side_terms + gap:
    raise ValueError(f'{answer!r} is too short to cut {gap} terms and keep {side_terms} each '
                     'side.')
  k = int(rng.integers(side_terms, len(xs) - side_terms - gap + 1))
  left = ' '.join(xs[:k]) + ' '
  missing = ' '.join(xs[k:k + gap]) + ' '
  right = ' '.join(xs[k + gap:])
  return left, missing, right


@exact_match.register('progression')
def progression() -> exact_match.TextTask:
  # 7 terms below 50 + 6 * 9 = 104: at most 3 digits each, 6 spaces.
  return exact_match.TextTask(
      name='progression', generate=make_progression, score=is_progression,
      max_prompt_chars=0, max_answer_chars=PROGRESSION_TERMS * 4 - 1,
      description='a whole arithmetic progression of 7 terms (for in-place infilling)')
