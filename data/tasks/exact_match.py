"""Generated prompt -> answer tasks scored by exact match, as token batches for any objective.

A `TextTask` generates (prompt, answer) strings from a numpy Generator and scores a model's
answer (`score(prompt, answer) -> bool`: solved or not; e.g. a valid sudoku consistent with the
clues, a countdown expression that reaches the target). Tasks are registered by name:

  task = exact_match.get('sudoku4')
  make_batch = exact_match.batch_fn(task, tokenizer, seq_len=64)
  it = SyntheticIterator(make_batch, seed=0, batch_size=32)   # data.tasks.iterator

A row is  <bos> prompt <sep> answer <eos> <eos> ...  cut or padded to seq_len + 1 tokens:
{'tokens': int32 [B, seq_len + 1], 'weights': float32 [B, seq_len]} where weights[b, t] = 1
iff tokens[b, t + 1] belongs to the answer or the <eos> run after it (the prompt is never a
target, so a diffusion objective never noises it). The same rows train AR models
(next-token targets) and masked-diffusion models (targets = the noised answer positions), so
both see identical data. Padding with <eos> (LLaDA's SFT recipe) teaches a diffusion model
where the answer ends.

For decoding, `examples(task, n, seed)` gives held-out (prompt, answer) pairs from a stream
disjoint from training, and `prompt_ids(tokenizer, prompt)` their token ids (<bos> prompt <sep>).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np

import registry as registry_lib
from data.tasks import iterator

Generate = Callable[[np.random.Generator], tuple[str, str]]
Score = Callable[[str, str], bool]


@dataclasses.dataclass(frozen=True)
class TextTask:
  """A generated task: `generate(rng) -> (prompt, answer)`, `score(prompt, answer) -> bool`.

  max_prompt_chars / max_answer_chars bound the strings (byte tokenizer: tokens), so a
  sequence length can be checked up front.
  """
  name: str
  generate: Generate
  score: Score
  max_prompt_chars: int
  max_answer_chars: int
  description: str = ''

  @property
  def min_seq_len(self) -> int:
    """Tokens a row needs with the byte tokenizer: bos + prompt + sep + answer + eos."""
    return self.max_prompt_chars + self.max_answer_chars + 3


# Zero-argument task factories by name; the task modules register themselves and are
# imported by `data/tasks/__init__.py`, which runs before any module of the package.
TASKS: registry_lib.Registry[Callable[[], TextTask]] = registry_lib.Registry('task')
register = TASKS.register


def names() -> list[str]:
  return TASKS.names()


def get(name: str) -> TextTask:
  return TASKS.get(name)()


def prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
  """<bos> prompt <sep>: what a model is given at decoding time."""
  return [tokenizer.bos_id] + list(tokenizer.encode(prompt)) + [tokenizer.special_id('<sep>')]


def encode_example(tokenizer: Any, prompt: str, answer: str, seq_len: int
                   ) -> tuple[np.ndarray, np.ndarray]:
  """One row: (tokens [seq_len + 1], weights [seq_len]). Raises if the example does not fit."""
  head = prompt_ids(tokenizer, prompt)
  body = list(tokenizer.encode(answer)) + [tokenizer.eos_id]
  n = len(head) + len(body)
  if n > seq_len + 1:
    raise ValueError(f'An example needs {n} tokens but rows hold seq_len + 1 = {seq_len + 1}; '
                     'raise data.seq_len.')
  tokens = np.full(seq_len + 1, tokenizer.eos_id, np.int32)
  tokens[:n] = head + body
  weights = np.zeros(seq_len, np.float32)
  weights[len(head) - 1:] = 1.0  # targets tokens[len(head):], the answer and the <eos> run.
  return tokens, weights


def batch_fn(task: TextTask, tokenizer: Any, seq_len: int
             ) -> Callable[[np.random.Generator, int], dict[str, np.ndarray]]:
  """make_batch(rng, batch_size) for `iterator.SyntheticIterator` / `iterator.eval_batches`."""
  def make_batch(rng: np.random.Generator, batch_size: int) -> dict[str, np.ndarray]:
    rows = [encode_example(tokenizer, *task.generate(rng), seq_len) for _ in range(batch_size)]
    return {'tokens': np.stack([r[0] for r in rows]), 'weights': np.stack([r[1] for r in rows])}
  return make_batch


def examples(task: TextTask, n: int, seed: int = 0) -> list[tuple[str, str]]:
  """n held-out (prompt, answer) pairs (a stream disjoint from training batches)."""
  rng = np.random.default_rng([seed, iterator.EVAL_STREAM - 1])  # neither train nor eval
  return [task.generate(rng) for _ in range(n)]


def accuracy(task: TextTask, prompts: Sequence[str], answers: Sequence[str]) -> float:
  """Fraction of answers the task scores as solved."""
  if not prompts:
    raise ValueError('No answers to score.')
  return float(np.mean([task.score(p, a) for p, a in zip(prompts, answers)]))
