"""ProntoQA-style multi-hop logic with a distractor chain (compact byte format).

Rules 'u>v' ("every u is a v") and 'u!v' ("every u is not a v"); the entity is a member of
the first concept of a chain that ends in the queried property. A distractor chain ends in
the same property with the opposite polarity, so the answer cannot be read off a single rule.

  question  'a>b,e>f,b!d,c>e,f>d,...|a?d'   rules, then entity-concept ? property
  steps     'a>b.' 'b!d.'                   the chain followed, one rule per step
  answer    'F'                             'T' if the chain's last rule is positive

Train: chains of 2-4 rules. OOD: chains of 5-6 rules.
"""

from __future__ import annotations

import numpy as np

from data.tasks import reasoning

SPLIT_SETTINGS = {'train': (2, 4), 'ood': (5, 6)}
MAX_RULES = 6 + 6 + 3  # chain + distractor chain + loose facts (OOD)


def make_example(rng: np.random.Generator, hops: int) -> reasoning.Example:
  n_dist = int(rng.integers(1, hops + 1))
  names = reasoning.letters(rng, hops + 1 + n_dist + 3)
  chain, prop = names[:hops], names[hops]
  dist = names[hops + 1:hops + 1 + n_dist]
  loose = names[hops + 1 + n_dist:]
  positive = bool(rng.random() < 0.5)
  rules = [(u, '>', v) for u, v in zip(chain[:-1], chain[1:])]
  rules.append((chain[-1], '>' if positive else '!', prop))
  rules += [(u, '>', v) for u, v in zip(dist[:-1], dist[1:])]
  rules.append((dist[-1], '!' if positive else '>', prop))
  # Loose facts: branch off the chains without reaching the property.
  for x in loose:
    rules.append((chain[int(rng.integers(len(chain)))] if rng.random() < 0.5
                  else dist[int(rng.integers(len(dist)))], '>', x))
  steps = tuple(f'{u}{op}{v}.' for u, op, v in rules[:hops])
  order = list(rules)
  rng.shuffle(order)
  question = ','.join(u + op + v for u, op, v in order) + f'|{chain[0]}?{prop}'
  return reasoning.Example(question=question, steps=steps, answer='T' if positive else 'F')


def solve(question: str) -> str:
  """The answer by following the rules from the entity's concept (ground truth)."""
  rules_text, query = question.split('|')
  start, prop = query.split('?')
  rules = {}
  for r in rules_text.split(','):
    rules.setdefault(r[0], []).append((r[1], r[2]))
  todo, seen = [start], set()
  while todo:
    u = todo.pop()
    seen.add(u)
    for op, v in rules.get(u, []):
      if v == prop:
        return 'T' if op == '>' else 'F'
      if op == '>' and v not in seen:
        todo.append(v)
  return '?'


def _generate(rng: np.random.Generator, split: str) -> reasoning.Example:
  lo, hi = SPLIT_SETTINGS[split]
  return make_example(rng, int(rng.integers(lo, hi + 1)))


@reasoning.register('prontoqa')
def prontoqa() -> reasoning.ReasoningTask:
  return reasoning.ReasoningTask(
      name='prontoqa', generate=_generate, max_question_chars=4 * MAX_RULES + 3, max_steps=6,
      max_step_chars=4, max_answer_chars=1,
      description='ProntoQA-style: 2-4 rule chains, a distractor chain of opposite polarity',
      ood_description='5-6 rule chains')
