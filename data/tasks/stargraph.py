"""Path-star graphs (Bachmann & Nagarajan 2024, "The pitfalls of next-token prediction"): the
planning task of the insertion-LM paper (Patel et al. 2025, arXiv 2505.05755).

A path-star graph has a centre and `degree` arms of `arm` nodes each; its directed edges lead
from the centre outward. The prompt lists the edges in random order, then '=', the start (the
centre) and the goal (the leaf of one arm); the answer is the path from start to goal, one
letter per node:

  prompt  'gq yg tc xd kl lz cy dv ek vi te tx=tq'   answer  'tcygq'   (degree 3, arm 4)

Node names are distinct lowercase letters drawn per example, so nothing about the answer is
in the weights. Left to right, only the first step after the centre needs planning (which
of the `degree` children leads to the goal); every later node is the one child of the last.
A model trained by next-token prediction learns that shortcut from the later steps and
guesses the first ("Clever Hans"), so it solves about 1/degree of the graphs. Backwards from
the goal every step is a lookup (each node has one parent), which an order-free model (an
insertion LM, masked diffusion decoding most confident first) can take.
"""

from __future__ import annotations

import string

import numpy as np

from data.tasks import exact_match

LABELS = string.ascii_lowercase


def make_star(rng: np.random.Generator, degree: int = 3, arm: int = 4,
              labels: str = LABELS) -> tuple[str, str]:
  """(prompt, answer) of one path-star graph with distinct one-letter node names."""
  if degree < 2 or arm < 1:
    raise ValueError(f'A path-star graph needs degree >= 2 and arm >= 1, got {degree}, {arm}.')
  n = 1 + degree * arm
  if n > len(labels):
    raise ValueError(f'{n} nodes need {n} labels; {len(labels)} given.')
  nodes = [labels[i] for i in rng.permutation(len(labels))[:n]]
  centre, arms = nodes[0], [nodes[1 + a * arm:1 + (a + 1) * arm] for a in range(degree)]
  edges = [prev + node for path in arms for prev, node in zip([centre] + path[:-1], path)]
  goal_arm = int(rng.integers(degree))
  prompt = ' '.join(edges[i] for i in rng.permutation(len(edges)))
  return f'{prompt}={centre}{arms[goal_arm][-1]}', centre + ''.join(arms[goal_arm])


def solve(prompt: str) -> str | None:
  """The path from start to goal (the two letters after '='), walked back from the goal
  through each node's one parent; None for a prompt that is not a path-star graph question
  (unparsable, a node with two parents, a goal the start does not reach)."""
  edges_s, sep, query = prompt.rpartition('=')
  if not sep or len(query) != 2:
    return None
  start, goal = query
  parent: dict[str, str] = {}
  for edge in edges_s.split(' '):
    if len(edge) != 2 or edge[1] in parent:
      return None
    parent[edge[1]] = edge[0]
  path = [goal]
  while path[-1] != start:
    if path[-1] not in parent or len(path) > len(parent):
      return None
    path.append(parent[path[-1]])
  return ''.join(reversed(path))


def is_path(prompt: str, answer: str) -> bool:
  """The answer is the (unique) path from the prompt's start to its goal."""
  want = solve(prompt)
  return want is not None and answer == want


def diagnose(prompt: str, answer: str) -> dict[str, bool]:
  """Where an answer goes wrong: `ends` (the right length, starting at the start and ending
  at the goal: both are copied from the prompt, no edge needs reading), `first_step` (its
  second node is the start's child on the goal's arm: the one decision that needs planning
  left to right) and `walk` (it starts at the start and follows the edges, wherever it ends:
  what next-token prediction's shortcut gets right even when it picks the wrong arm)."""
  want = solve(prompt)
  if want is None:
    raise ValueError(f'Not a path-star graph question: {prompt!r}.')
  edges = set(prompt.rpartition('=')[0].split(' '))
  walk = (len(answer) >= 1 and answer[0] == want[0]
          and all(a + b in edges for a, b in zip(answer, answer[1:])))
  ends = len(answer) == len(want) and answer[0] == want[0] and answer[-1] == want[-1]
  return dict(ends=ends, first_step=answer[:2] == want[:2], walk=walk)


def _task(name: str, degree: int, arm: int) -> exact_match.TextTask:
  edges = degree * arm
  return exact_match.TextTask(
      name=name, generate=lambda rng: make_star(rng, degree, arm), score=is_path,
      max_prompt_chars=3 * edges - 1 + 3, max_answer_chars=arm + 1,
      description=f'path-star graph, degree {degree}, arms of {arm} nodes: the path from the '
                  'centre to a leaf')


DEGREE_ARM = {'star3': (3, 4), 'star2': (2, 2)}  # the registered tasks' (degree, arm)


@exact_match.register('star3')
def star3() -> exact_match.TextTask:
  return _task('star3', *DEGREE_ARM['star3'])


@exact_match.register('star2')
def star2() -> exact_match.TextTask:
  """The smallest planning instance: 2 arms of 2 nodes ('tl lz ek te=tk' -> 'tek'): one
  choice after the centre, one parent lookup back from the goal."""
  return _task('star2', *DEGREE_ARM['star2'])
