"""Arbitrage: step-level routing by the large model's predicted advantage (lossy).

Arbitrage ("Efficient Reasoning via Advantage-Aware Speculation", 2025) routes each
reasoning step to the large model only when a small router predicts that the large model's
version of the step would be meaningfully better than the small model's (its advantage under
a step score exceeds a margin), approximating the "arbitrage oracle" that always takes the
better step. Here, in the loop of routing.py (small model = the run's target, large model =
`large_workdir`; both caches see every committed token):

  arbitrage  at the first token of each step (the first generated token, and after a token
             in `step_end_ids`) the router reads the small model's state and gives
             p = P(advantage > margin); p >= `threshold` -> the large model writes the step.
             threshold > 1: the small model alone; threshold < 0: the large model alone
             (both token for token). `random_fraction` > 0 replaces the router by a coin per
             step with that probability (the random baseline at equal budget).

The router is routing.py's MLP over `router_features` (the small model's top-k log-probs,
entropy, last hidden state and the embedding of its top token) at the step start. The paper's
router reads the small model's drafted step and the target regenerates rejected steps; ours
decides before the step is drafted, so no draft is thrown away and the loop keeps one token
per iteration, at the price of not seeing the step it judges.

Step score and labels (`step_spans`, `label_steps`; the paper scores steps with a process
reward model): on our generated tasks the answer is known, so a step is scored exactly by a
rollout. At each step boundary k of a trajectory (prefix_k = prompt + its first k steps):

  v_large = score(the large model's greedy completion of prefix_k)       (1: right answer)
  v_small = score(the large model's greedy completion of prefix_k + s_k)  s_k = the small
            model's greedy step from prefix_k (a row it ends is scored as it stands)

  advantage_k = v_large - v_small,    label_k = advantage_k > margin,

i.e. the large model's version of step k against the small model's, both completed by the same
(large) model: Math-Shepherd's completion-based step value with the large model as completer;
exact, and no reward model to train. With values in {0, 1} any margin in [0, 1) labels the
steps where only the large model's version reaches the answer. The trajectories can be any
rows: benchmarks/latent_arbitrage.py labels the small model's, the large model's and a random
step router's greedy rows, so that the router sees the states that routing at any budget
visits (labels along the small model's rows alone never show it a step that follows the large
model's reasoning). The router is fitted there (params['router'] or `router_path`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, ClassVar, Sequence

import jax.numpy as jnp
import numpy as np

from decoding import registry
from decoding.latent import routing

ARBITRAGE_SALT = 0xA4B1


# ------------------------------------------------------------------------------ labels
def step_spans(row: Sequence[int], step_end_ids: Sequence[int], eos_id: int
               ) -> list[tuple[int, int]]:
  """[start, end) of each step of a generated row, as the decoder splits it: a step starts at
  the first token and after a token in `step_end_ids`; the row is cut after its first eos."""
  row = list(row)
  if eos_id in row:
    row = row[:row.index(eos_id) + 1]
  spans, start = [], 0
  for t, tok in enumerate(row):
    if tok in step_end_ids or t == len(row) - 1:
      spans.append((start, t + 1))
      start = t + 1
  return spans


def cut_step(tokens: Sequence[int], step_end_ids: Sequence[int], eos_id: int) -> list[int]:
  """A drafted continuation cut after its first step end or eos (the step it starts)."""
  out = []
  for tok in tokens:
    out.append(int(tok))
    if tok in step_end_ids or tok == eos_id:
      break
  return out


@dataclasses.dataclass(frozen=True)
class StepLabels:
  """Per step boundary of the trajectories (M in all): row index, position of the step's
  first token in prompt + row (the router reads the small model's output at position - 1),
  the two values, advantage and label."""
  row_M: np.ndarray
  pos_M: np.ndarray
  v_large_M: np.ndarray
  v_small_M: np.ndarray
  advantage_M: np.ndarray
  label_M: np.ndarray


Fn = Callable[[list[int], list[list[int]]], Sequence[Any]]


def label_steps(prompts: Sequence[Sequence[int]], rows: Sequence[Sequence[int]],
                value_fn: Fn, draft_fn: Fn, *,
                step_end_ids: Sequence[int] = routing.STEP_END_IDS, eos_id: int,
                margin: float = 0.0) -> StepLabels:
  """Advantage labels at every step boundary of `rows` (row i continues prompts[i]).

  Both callables take (problems, prefixes), prefixes[j] being one of problem problems[j], and
  are called once each over every prefix, so that the caller can batch the decoding:
  draft_fn -> the small model's greedy continuation of each prefix (cut here after its first
  step end or eos); value_fn -> the score of each prefix once the large model has completed
  it (the score of the prefix itself when it already ends with eos).
  """
  if len(prompts) != len(rows):
    raise ValueError(f'prompts and rows differ in length: {len(prompts)} vs {len(rows)}.')
  if not math.isfinite(margin):
    raise ValueError(f'margin must be finite, got {margin}.')
  spans = [step_spans(r, step_end_ids, eos_id) for r in rows]
  problems = [b for b, sp in enumerate(spans) for _ in sp]
  prefixes = [list(p) + list(r[:a]) for p, r, sp in zip(prompts, rows, spans) for a, _ in sp]
  if not prefixes:
    z = np.zeros((0,), np.float32)
    return StepLabels(np.zeros((0,), np.int32), np.zeros((0,), np.int32), z, z, z,
                      np.zeros((0,), bool))
  drafts = list(draft_fn(problems, prefixes))
  values = [float(v) for v in value_fn(problems * 2, prefixes + [
      p + cut_step(d, step_end_ids, eos_id) for p, d in zip(prefixes, drafts)])]
  if len(drafts) != len(prefixes) or len(values) != 2 * len(prefixes):
    raise ValueError(f'draft_fn / value_fn gave {len(drafts)} drafts and {len(values)} values '
                     f'for {len(prefixes)} prefixes (want {len(prefixes)} and '
                     f'{2 * len(prefixes)}).')
  v_large = np.asarray(values[:len(prefixes)], np.float32)
  v_small = np.asarray(values[len(prefixes):], np.float32)
  adv = v_large - v_small
  pos = [len(p) + a for p, sp in zip(prompts, spans) for a, _ in sp]
  return StepLabels(np.asarray(problems, np.int32), np.asarray(pos, np.int32), v_large,
                    v_small, adv, adv > margin)


# ------------------------------------------------------------------------------ decoder
@registry.register
@dataclasses.dataclass(frozen=True)
class ArbitrageDecoder(routing.R2RDecoder):
  """Arbitrage (lossy): a router's P(large model's step is better) picks who writes a step.

  p >= threshold at a step's first token: the large model writes the step. The router, its
  loading, the random baseline and the setting checks are R2R's (routing.py); only the
  decision is taken once per step instead of per token."""
  name: ClassVar[str] = 'arbitrage'
  route_salt: ClassVar[int] = ARBITRAGE_SALT
  router_script: ClassVar[str] = 'benchmarks/latent_arbitrage.py'

  def route(self, s, params, embed_VxD, keys_B, step_start_B):
    return jnp.where(step_start_B, self.wants_large(s, params, embed_VxD, keys_B), s.writer_B)
