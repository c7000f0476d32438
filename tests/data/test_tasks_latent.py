"""Reasoning tasks: answers are right (checked by independent solvers), traces lead to them,
OOD splits are harder than train, sizes stay within bounds, and generation is deterministic."""

import os
import subprocess
import sys

import numpy as np
import pytest

from data import tokenizers
from data.tasks import multiplication, prontoqa, prosqa, reasoning

TASKS = ['prosqa', 'prontoqa', 'multiplication', 'parity', 'modsum']


@pytest.mark.parametrize('name', TASKS)
@pytest.mark.parametrize('split', ['train', 'ood'])
def test_examples_fit_their_bounds_and_are_deterministic(name, split):
  task = reasoning.get(name)
  exs = reasoning.examples(task, 100, seed=3, split=split)
  assert exs == reasoning.examples(task, 100, seed=3, split=split)
  assert exs != reasoning.examples(task, 100, seed=4, split=split)
  for ex in exs:
    assert len(ex.question) <= task.max_question_chars, ex
    assert 1 <= len(ex.steps) <= task.max_steps, ex
    assert all(len(s) <= task.max_step_chars for s in ex.steps), ex
    assert 1 <= len(ex.answer) <= task.max_answer_chars, ex
    assert task.score(ex, ex.answer) and not task.score(ex, ex.answer + '0')


def test_generation_does_not_depend_on_the_hash_seed():
  """Two processes with different PYTHONHASHSEED generate the same questions (set order)."""
  code = ('from data.tasks import reasoning\n'
          'for name in ("prosqa", "prontoqa", "multiplication", "parity", "modsum"):\n'
          '  print([e.question for e in reasoning.examples(reasoning.get(name), 20, seed=1)])')
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  outs = [subprocess.run([sys.executable, '-c', code], cwd=root, capture_output=True, text=True,
                         env={**os.environ, 'PYTHONHASHSEED': seed, 'JAX_PLATFORMS': 'cpu'},
                         check=True).stdout for seed in ('1', '2')]
  assert outs[0] == outs[1] and outs[0]


def test_prosqa_answer_is_the_only_reachable_candidate_and_steps_are_a_path():
  task = reasoning.get('prosqa')
  for split in ('train', 'ood'):
    for ex in reasoning.examples(task, 200, split=split):
      edges, source, (a, b) = prosqa.parse_question(ex.question)
      reach = prosqa.reachable(edges, source)
      assert ex.answer in (a, b) and ex.answer in reach
      assert ({a, b} - {ex.answer}).isdisjoint(reach)
      node = source
      for step in ex.steps:  # 'u>v.' edges of the graph, chained from the source
        assert step[0] == node and (step[0], step[2]) in edges
        node = step[2]
      assert node == ex.answer
  hops = {s: [len(e.steps) for e in reasoning.examples(task, 100, split=s)]
          for s in ('train', 'ood')}
  assert max(hops['train']) < min(hops['ood'])


def test_prontoqa_answers_follow_the_rules_and_distractors_disagree():
  task = reasoning.get('prontoqa')
  answers = []
  for ex in reasoning.examples(task, 200):
    assert prontoqa.solve(ex.question) == ex.answer
    rules = ex.question.split('|')[0].split(',')
    prop = ex.question.split('?')[1]
    into_prop = [r for r in rules if r[2] == prop]
    assert len(into_prop) == 2 and into_prop[0][1] != into_prop[1][1]  # opposite polarity
    assert all(s[:3] in rules for s in ex.steps)
    answers.append(ex.answer)
  assert 0.3 < np.mean([a == 'T' for a in answers]) < 0.7


def test_multiplication_steps_are_running_sums():
  task = reasoning.get('multiplication')
  for split, digits in (('train', 3), ('ood', 4)):
    for ex in reasoning.examples(task, 100, split=split):
      a, b = (int(x[::-1]) for x in ex.question.split('*'))
      assert len(str(a)) == digits and multiplication.solve(ex.question) == ex.answer
      assert int(ex.answer[::-1]) == a * b and ex.steps[-1] == ex.answer + '.'
      for i, s in enumerate(ex.steps):
        assert int(s[:-1][::-1]) == a * (b % 10 ** (i + 1))


def test_parity_steps_and_answer():
  task = reasoning.get('parity')
  for ex in reasoning.examples(task, 100, split='ood'):
    bits = [int(c) for c in ex.question]
    assert 20 <= len(bits) <= 24 and ex.answer == str(sum(bits) % 2)
    for i, s in enumerate(ex.steps):
      assert s == f'{sum(bits[:4 * (i + 1)]) % 2}.'


def test_modsum_steps_are_running_values_and_ood_chains_are_longer():
  """Recomputed here from the question's characters: the k-th step is the first k + 1
  digits combined with their signs mod 10 (not a replay of the generator's loop)."""
  task = reasoning.get('modsum')
  for split, n in (('train', 6), ('ood', 8)):
    exs = reasoning.examples(task, 200, split=split)
    for ex in exs:
      q = ex.question
      assert len(q) == 2 * n - 1 and q[::2].isdigit() and set(q[1::2]) <= {'+', '-'}
      signed = [int(q[0])] + [int(q[i + 1]) * (1 if q[i] == '+' else -1)
                              for i in range(1, len(q), 2)]
      assert len(ex.steps) == n - 1
      for k, step in enumerate(ex.steps, start=1):
        assert step == f'{sum(signed[:k + 1]) % 10}.', (ex, k)
      assert ex.answer == str(sum(signed) % 10) == ex.steps[-1][0]
    # both operators and every answer digit occur (no degenerate chains)
    assert {c for e in exs for c in e.question[1::2]} == {'+', '-'}
    assert {e.answer for e in exs} == set('0123456789')


def test_token_layout_and_answer_parsing():
  tok = tokenizers.make_tokenizer('byte')
  ex = reasoning.Example('321*654', ('837.', '8373.', '88065.'), '88065')
  prompt = reasoning.prompt_ids(tok, ex)
  assert prompt[0] == tok.bos_id and prompt[-2:] == [tok.special_id('<sep>'),
                                                     tok.special_id('<think>')]
  tail = reasoning.answer_ids(tok, ex)
  generated = sum(reasoning.step_ids(tok, ex), []) + tail + [tok.eos_id]
  assert reasoning.parse_answer(tok, generated) == '88065'
  assert reasoning.parse_answer(tok, sum(reasoning.step_ids(tok, ex), [])) is None
  assert reasoning.accuracy(reasoning.get('multiplication'), [ex, ex], ['88065', None]) == 0.5
  with pytest.raises(ValueError, match='Unknown reasoning task'):
    reasoning.get('chess')
  with pytest.raises(ValueError, match='Unknown split'):
    reasoning.get('parity').example(np.random.default_rng(0), 'test')
