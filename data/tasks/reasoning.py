"""Generated reasoning tasks with chain-of-thought traces and out-of-distribution splits.

A `ReasoningTask` generates `Example(question, steps, answer)` from a numpy Generator and a
split ('train' or 'ood': harder instances the model never sees in training, e.g. longer
chains). Registered tasks (one module each):

  prosqa          ProsQA-style graph reachability (prosqa.py)
  prontoqa        ProntoQA-style multi-hop logic with distractor chains (prontoqa.py)
  modsum          additions / subtractions mod 10, running value per step (modsum.py)
  multiplication  multi-digit multiplication with running-sum steps (multiplication.py)
  parity          parity of a bit string with running-parity steps (parity_cot.py)

Token layout (byte tokenizer: one token per character), shared by every objective and decoder:

  prompt   <bos> question <sep> <think>
  CoT      prompt  step_1 ... step_k  </think> answer <eos>
  latent   prompt  [n thoughts]  step_{s+1} ... step_k  </think> answer <eos>
  no-CoT   prompt  </think> answer <eos>

The answer is read back as the text after the first `</think>` up to `<eos>`
(`parse_answer`); `score` compares it with the example's answer (exact match).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np

import registry as registry_lib
from data.tasks import iterator

SPLITS = ('train', 'ood')


@dataclasses.dataclass(frozen=True)
class Example:
  """A question, its reasoning steps (each a short string) and the answer."""
  question: str
  steps: tuple[str, ...]
  answer: str

  @property
  def cot(self) -> str:
    return ''.join(self.steps)


@dataclasses.dataclass(frozen=True)
class ReasoningTask:
  """A generated task. `generate(rng, split) -> Example`; the max_* bound every split (with
  the byte tokenizer they are token counts), so sequence lengths are fixed up front."""
  name: str
  generate: Callable[[np.random.Generator, str], Example]
  max_question_chars: int
  max_steps: int
  max_step_chars: int
  max_answer_chars: int
  description: str = ''
  ood_description: str = ''

  def example(self, rng: np.random.Generator, split: str = 'train') -> Example:
    if split not in SPLITS:
      raise ValueError(f'Unknown split {split!r}; use one of {SPLITS}.')
    return self.generate(rng, split)

  def score(self, example: Example, answer: str) -> bool:
    return answer.strip() == example.answer

  @property
  def max_cot_chars(self) -> int:
    return self.max_steps * self.max_step_chars


# Zero-argument task factories by name; the task modules register themselves and are
# imported by `data/tasks/__init__.py`, which runs before any module of the package.
TASKS: registry_lib.Registry[Callable[[], ReasoningTask]] = registry_lib.Registry(
    'reasoning task')
register = TASKS.register


def names() -> list[str]:
  return TASKS.names()


def get(name: str) -> ReasoningTask:
  return TASKS.get(name)()


# ----------------------------------------------------------------------------- tokens
def prompt_ids(tokenizer: Any, example: Example) -> list[int]:
  """<bos> question <sep> <think>: what a model is given at decoding time."""
  return ([tokenizer.bos_id] + list(tokenizer.encode(example.question))
          + [tokenizer.special_id('<sep>'), tokenizer.special_id('<think>')])


def step_ids(tokenizer: Any, example: Example) -> list[list[int]]:
  return [list(tokenizer.encode(s)) for s in example.steps]


def answer_ids(tokenizer: Any, example: Example) -> list[int]:
  """</think> answer <eos>."""
  return ([tokenizer.special_id('</think>')] + list(tokenizer.encode(example.answer))
          + [tokenizer.eos_id])


def parse_answer(tokenizer: Any, generated: Sequence[int]) -> str | None:
  """The text between the first `</think>` and `<eos>` (None if thinking never closed)."""
  end = tokenizer.special_id('</think>')
  ids = list(generated)
  if end not in ids:
    return None
  ids = ids[ids.index(end) + 1:]
  if tokenizer.eos_id in ids:
    ids = ids[:ids.index(tokenizer.eos_id)]
  return tokenizer.decode(ids)


def examples(task: ReasoningTask, n: int, seed: int = 0, split: str = 'train'
             ) -> list[Example]:
  """n held-out examples of `split` (a stream disjoint from training and eval batches)."""
  rng = np.random.default_rng([seed, iterator.EVAL_STREAM - 2, SPLITS.index(split)])
  return [task.example(rng, split) for _ in range(n)]


def accuracy(task: ReasoningTask, exs: Sequence[Example], answers: Sequence[str | None]
             ) -> float:
  """Fraction of answers (None = no answer) that match."""
  if not exs:
    raise ValueError('No examples to score.')
  return float(np.mean([a is not None and task.score(e, a) for e, a in zip(exs, answers)]))


def letters(rng: np.random.Generator, n: int) -> list[str]:
  """n distinct lowercase letters in random order (node / concept names)."""
  if n > 26:
    raise ValueError(f'At most 26 distinct letters, asked for {n}.')
  return [chr(ord('a') + int(i)) for i in rng.permutation(26)[:n]]
