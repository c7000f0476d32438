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

Step score and labels (`step_spans`, `advantage_labels`, `label_steps`; the paper scores steps
with a process reward model): on our generated tasks the answer is known, so a step is scored
exactly by a rollout. Along the small model's own greedy trajectory, with boundaries k = 0..K
(prefix_k = prompt + its first k steps), the value

  v_k = score(the large model's greedy completion of prefix_k)   (1 if the answer is right)
  v_K = score(the small model's own full row)

makes v_k the value when the large model writes step k (and the rest) and v_{k+1} the value
when the small model writes step k and the large model the rest, so

  advantage_k = v_k - v_{k+1},    label_k = advantage_k > margin.

Scoring both versions of the step with the same (large) completer is Math-Shepherd's
completion-based step value; it is exact, needs no reward model, and one large rollout per
boundary gives both versions' values (v_{k+1} is the next boundary's v). With v in {0, 1} any
margin in [0, 1) labels the steps where only the large model's version reaches the answer.
The router is fitted by benchmarks/latent_arbitrage.py (params['router'] or `router_path`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, ClassVar, Sequence

import jax
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


def advantage_labels(values_K1: np.ndarray, margin: float = 0.0
                     ) -> tuple[np.ndarray, np.ndarray]:
  """values [K + 1] (v_k above) -> (advantage [K] = v_k - v_{k+1}, label [K] = adv > margin)."""
  v = np.asarray(values_K1, np.float64)
  if v.ndim != 1 or v.size < 1:
    raise ValueError(f'values must be a vector [K + 1] with K >= 0, got shape {v.shape}.')
  if not math.isfinite(margin):
    raise ValueError(f'margin must be finite, got {margin}.')
  adv = v[:-1] - v[1:]
  return adv, adv > margin


@dataclasses.dataclass(frozen=True)
class StepLabels:
  """Per step of the small model's rows (M steps in all): row index, position of the step's
  first token in prompt + row (the router reads the small model's output at position - 1),
  advantage and label."""
  row_M: np.ndarray
  pos_M: np.ndarray
  advantage_M: np.ndarray
  label_M: np.ndarray
  values: list[np.ndarray]  # per row: v_0 .. v_K


def label_steps(prompts: Sequence[Sequence[int]], small_rows: Sequence[Sequence[int]],
                small_scores: Sequence[float],
                value_fn: Callable[[list[int], list[list[int]]], Sequence[float]], *,
                step_end_ids: Sequence[int] = routing.STEP_END_IDS, eos_id: int,
                margin: float = 0.0) -> StepLabels:
  """Advantage labels of every step of the small model's (greedy) rows.

  prompts / small_rows: token ids per problem (small_rows[i] continues prompts[i]);
  small_scores[i]: the score of small_rows[i] itself (v_K); value_fn(problems, prefixes) ->
  the score of the large model's completion of each prefix, prefixes[j] being one of problem
  problems[j] (v_k, k < K; called once, with every prefix, so that the caller can batch the
  rollouts).
  """
  if not len(prompts) == len(small_rows) == len(small_scores):
    raise ValueError(f'prompts, small_rows and small_scores differ in length: {len(prompts)}, '
                     f'{len(small_rows)}, {len(small_scores)}.')
  spans = [step_spans(r, step_end_ids, eos_id) for r in small_rows]
  problems = [b for b, sp in enumerate(spans) for _ in sp]
  prefixes = [list(p) + list(r[:a]) for p, r, sp in zip(prompts, small_rows, spans)
              for a, _ in sp]
  values_flat = [float(v) for v in value_fn(problems, prefixes)] if prefixes else []
  if len(values_flat) != len(prefixes):
    raise ValueError(f'value_fn gave {len(values_flat)} values for {len(prefixes)} prefixes.')
  rows, pos, adv, lab, values, i = [], [], [], [], [], 0
  for b, (p, sp) in enumerate(zip(prompts, spans)):
    v = np.asarray(values_flat[i:i + len(sp)] + [small_scores[b]], np.float64)
    i += len(sp)
    a, l = advantage_labels(v, margin)
    rows += [b] * len(sp)
    pos += [len(p) + s for s, _ in sp]
    adv.append(a)
    lab.append(l)
    values.append(v)
  cat = lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.zeros((0,), dt)
  return StepLabels(np.asarray(rows, np.int32), np.asarray(pos, np.int32),
                    cat(adv, np.float32), cat(lab, bool), values)


# ------------------------------------------------------------------------------ decoder
@registry.register
@dataclasses.dataclass(frozen=True)
class ArbitrageDecoder(routing.RoutingDecoder):
  """Arbitrage (lossy): a router's P(large model's step is better) picks who writes a step.

  p >= threshold at a step's first token: the large model writes the step."""
  name: ClassVar[str] = 'arbitrage'
  threshold: float = 0.5
  router_path: str = ''
  random_fraction: float = 0.0

  def __post_init__(self):
    if not math.isfinite(self.threshold):
      raise ValueError(f'arbitrage threshold must be finite (> 1: small model only, < 0: '
                       f'large model only), got {self.threshold}.')
    if not 0.0 <= self.random_fraction <= 1.0:
      raise ValueError(f'arbitrage random_fraction must be in [0, 1], got '
                       f'{self.random_fraction}.')

  def router(self, params: dict[str, Any]) -> dict[str, jax.Array]:
    if params.get('router') is not None:
      return params['router']
    if not self.router_path:
      raise ValueError('arbitrage needs a router: params["router"] or '
                       '--decoder_config.router_path (train one with '
                       'benchmarks/latent_arbitrage.py), or random_fraction > 0.')
    return jax.tree.map(jnp.asarray, routing.load_router(self.router_path))

  def route(self, s, params, embed_VxD, keys_B, step_start_B):
    if self.random_fraction > 0:
      coin = jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, ARBITRAGE_SALT)))(
          keys_B)
      decide_B = coin < self.random_fraction
    else:
      feats_BxF = routing.router_features(s.logits_s, s.hidden_s, embed_VxD)
      decide_B = jax.nn.sigmoid(routing.router_logit(self.router(params), feats_BxF)
                                ) >= self.threshold
    return jnp.where(step_start_B, decide_B, s.writer_B)
