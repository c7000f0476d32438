"""Infilling: restore the missing middle of an arithmetic progression from both sides.

Prompt: the terms before the gap and the terms after it, separated by '|' and ended by '|',
e.g. '12 15 18|27 30|'. Answer: the missing terms, e.g. '21 24'. Solved = exact match (the
middle is determined: the step is known from either side and the gap's length from the two
values around it).

The answer depends on text to its right, so a model that reads the whole canvas at once
(masked diffusion) is at no disadvantage against one that reads left to right, and the
right-hand side makes the answer's length checkable.
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
