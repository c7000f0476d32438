"""ProsQA-style graph reachability (Coconut's ProsQA, compact byte format).

A directed acyclic graph over letters; the question names a source and two candidates, and
exactly one candidate is reachable from the source. As in ProsQA the graph has distractors:
dead-end branches off the path (so following an edge at random fails) and a second chain
leading to the unreachable candidate (which may even point into the source's side).

  question  'ab,cd,bc,ef,...|a:c/f'   edges 'uv' (u -> v), then source:candidate/candidate
  steps     'a>b.' 'b>c.'             the path from the source, one edge per step
  answer    'c'                       the reachable candidate

Train: paths of 2-4 hops, 12 nodes. OOD: paths of 5-6 hops, 18 nodes (longer chains than
ever trained on).
"""

from __future__ import annotations

import numpy as np

from data.tasks import reasoning

SPLIT_SETTINGS = {'train': dict(hops=(2, 4), nodes=12), 'ood': dict(hops=(5, 6), nodes=18)}
MAX_EDGES = 17  # 6 path + 4 chain + 3 + 1 cross + 3 dead-end edges at most (OOD)


def make_example(rng: np.random.Generator, hops: int, nodes: int) -> reasoning.Example:
  """One graph with a unique `hops`-edge path from source to target."""
  names = reasoning.letters(rng, nodes)
  path, rest = names[:hops + 1], names[hops + 1:]
  n_dist = min(hops, max(1, len(rest) // 2))
  chain, extra = rest[:n_dist], rest[n_dist:]
  edges = set(zip(path[:-1], path[1:])) | set(zip(chain[:-1], chain[1:]))
  # Distractor chain side: extra nodes hang off it, it may point into the source side.
  s_extra, d_extra = extra[:len(extra) // 2], extra[len(extra) // 2:]
  for x in d_extra:
    edges.add((chain[int(rng.integers(len(chain)))], x))
  if chain and rng.random() < 0.7:
    edges.add((chain[int(rng.integers(len(chain)))], path[int(rng.integers(1, len(path)))]))
  # Source side: dead-end branches from path nodes (never back into the path).
  for i, x in enumerate(s_extra):
    parent = path[int(rng.integers(len(path) - 1))] if i % 2 == 0 or i == 0 else s_extra[i - 1]
    edges.add((parent, x))
  target, distractor = path[-1], chain[-1]
  edge_list = sorted(edges)  # a set's order depends on the hash seed
  rng.shuffle(edge_list)
  first, second = (target, distractor) if rng.random() < 0.5 else (distractor, target)
  question = ','.join(u + v for u, v in edge_list) + f'|{path[0]}:{first}/{second}'
  steps = tuple(f'{u}>{v}.' for u, v in zip(path[:-1], path[1:]))
  return reasoning.Example(question=question, steps=steps, answer=target)


def reachable(edges: list[tuple[str, str]], source: str) -> set[str]:
  """Nodes reachable from `source` (the scorer's ground truth)."""
  out, todo = set(), [source]
  while todo:
    u = todo.pop()
    for a, b in edges:
      if a == u and b not in out:
        out.add(b)
        todo.append(b)
  return out


def parse_question(question: str) -> tuple[list[tuple[str, str]], str, tuple[str, str]]:
  edges_text, query = question.split('|')
  source, candidates = query.split(':')
  a, b = candidates.split('/')
  return [(e[0], e[1]) for e in edges_text.split(',')], source, (a, b)


def _generate(rng: np.random.Generator, split: str) -> reasoning.Example:
  lo, hi = SPLIT_SETTINGS[split]['hops']
  return make_example(rng, int(rng.integers(lo, hi + 1)), SPLIT_SETTINGS[split]['nodes'])


@reasoning.register('prosqa')
def prosqa() -> reasoning.ReasoningTask:
  return reasoning.ReasoningTask(
      name='prosqa', generate=_generate, max_question_chars=3 * MAX_EDGES + 5, max_steps=6,
      max_step_chars=4, max_answer_chars=1,
      description='ProsQA-style reachability: 12 nodes, 2-4 hop paths, distractor chain',
      ood_description='18 nodes, 5-6 hop paths')
