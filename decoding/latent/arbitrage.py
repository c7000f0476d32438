"""Arbitrage: step-level routing by the large model's predicted advantage (lossy).

Arbitrage ("Efficient Reasoning via Advantage-Aware Speculation", 2025) routes each
reasoning step to the large model only when a small router predicts that the large model's
version of the step would be meaningfully better than the small model's (its advantage under
a step score exceeds a margin), approximating the "arbitrage oracle" that always takes the
better step. Here, in the loop of routing.py (small model = the run's target, large model =
`large_workdir`; both caches see every committed token):

  arbitrage  for each step (one begins at the first generated token and after a token in
             `step_end_ids`) the router gives p = P(advantage > margin) from the small
             model's outputs (`judge`, below); p >= `threshold` -> the large model writes
             the step.
             threshold > 1: the small model alone; threshold < 0: the large model alone
             (both token for token). `random_fraction` > 0 replaces the router by a coin per
             step with that probability (the random baseline at equal budget).

`judge` says what the router reads:

  step_start  (default; the committed results use it) the router reads the small model's
              state at the step's first token (routing.py's `router_features`), before the
              step exists: no draft is thrown away and the loop keeps one token per
              iteration, at the price of not judging the step itself.
  drafted     the paper's mode: at a step start the small model drafts the step (one token
              per iteration, only its cache advancing) into a buffer of `max_step_tokens`
              slots; the step ends after a token in `step_end_ids`, at eos, at the bound or at
              the token budget. The router then reads the drafted step
              (`drafted_features`: the small model's `router_features` averaged over the
              outputs that produced the step's tokens, those after its last token, and the
              step's length) and gives p. p < threshold: the step is committed and the large
              model ingests it in one forward over the buffer. p >= threshold: the draft is
              discarded (the small model's cache rolls back to the step start) and the large
              model writes the step token by token (ending as a draft does). Extra counts:
              `discarded_tokens` (drafted tokens of rejected steps) and `ingested_tokens`
              (accepted tokens the large model read in those forwards). Needs an
              attention-only small model (the rollback is `Cache.truncate`) and a router fitted
              on drafted-step features (benchmarks/latent_arbitrage.py fits both kinds).

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
model's reasoning). The routers are fitted there (params['router'] or `router_path`); the
drafted mode's on the features of prefix_k + s_k (teacher-forced through the small model).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, ClassVar, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from decoding import base
from decoding import registry
from decoding import sampling as sampling_lib
from decoding.latent import routing

ARBITRAGE_SALT = 0xA4B1
JUDGES = ('step_start', 'drafted')


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


# ------------------------------------------------------------------------------ drafted steps
def drafted_features(sum_BxF: jax.Array, count_B: jax.Array, last_BxF: jax.Array
                     ) -> jax.Array:
  """[B, 2F + 1]: what the drafted-mode router reads of a step of count_B tokens.

  sum_BxF: routing.router_features summed over the small model's outputs that produced the
  step's tokens (the output before each token); last_BxF: router_features of its output after
  the last token (it has read the whole step); then the step's length."""
  count_B = jnp.asarray(count_B, jnp.float32)
  return jnp.concatenate([sum_BxF / jnp.maximum(count_B, 1.0)[:, None], last_BxF,
                          count_B[:, None]], -1)


def num_drafted_features(d_model: int) -> int:
  return 2 * (routing.ROUTER_TOPK + 1 + 2 * d_model) + 1


@flax.struct.dataclass
class DraftState:
  """The drafted-mode loop (ArbitrageDecoder, judge='drafted'); one token per iteration.

  A row is drafting (writer_B False) or in a step the large model writes (writer_B True).
  Drafting: draft_BxT [B, max_step_tokens] holds the step's in_step_B tokens drafted so far
  (not committed; only cache_s has them), feat_sum_BxF [B, F] their router features summed.
  Writing: in_step_B counts the step's large tokens. cache_l holds the committed tokens only;
  logits_l is its output after the last of them, logits_s / hidden_s the small model's after
  its last cached token. Counters as routing.RouteState plus discarded_B (drafted tokens of
  rejected steps) and ingested_B (accepted tokens the large model read)."""
  cache_s: Any
  cache_l: Any
  logits_s: jax.Array
  hidden_s: jax.Array
  logits_l: jax.Array
  progress: base.Progress
  draft_BxT: jax.Array
  in_step_B: jax.Array
  feat_sum_BxF: jax.Array
  writer_B: jax.Array
  large_BxN: jax.Array
  large_B: jax.Array
  steps_B: jax.Array
  large_steps_B: jax.Array
  discarded_B: jax.Array
  ingested_B: jax.Array


_prefill, _forward = routing._prefill, routing._forward  # pylint: disable=protected-access


def _tokens_forward(model, params, tok_BxT, pos_BxT, cache):
  out = model.apply({'params': params}, tok_BxT, pos_BxT, cache=cache)
  return out.logits_BxTxV, out.cache


def generate_drafted(dec: 'ArbitrageDecoder', models: base.Models, params: dict[str, Any],
                     prompt_BxP: jax.Array, prompt_len_B: jax.Array, row_keys_B: jax.Array, *,
                     max_new_tokens: int, eos_id: int, pad_id: int, cache_size: int
                     ) -> base.DecodeResult:
  """Draft-then-judge (module docstring). Each iteration runs the small model on one token
  per active row (a drafted token, or the large model's token in a rejected step), the large
  model on one token only if some row is in such a step, and one forward of the large model
  over the drafts of the rows whose step was just accepted, only if there are any."""
  small, large = models.target, models['large']
  ps, pl = params['target'], params['large']
  embed_VxD = ps['embed']['embedding']
  B, N, T = prompt_BxP.shape[0], max_new_tokens, dec.max_step_tokens
  logits_s, hidden_s, cache_s = _prefill(small, ps, prompt_BxP, prompt_len_B, cache_size)
  logits_l, _, cache_l = _prefill(large, pl, prompt_BxP, prompt_len_B, cache_size)
  F = routing.ROUTER_TOPK + 1 + 2 * hidden_s.shape[-1]
  zeros = jnp.zeros((B,), jnp.int32)
  state = DraftState(
      cache_s=cache_s, cache_l=cache_l, logits_s=logits_s, hidden_s=hidden_s,
      logits_l=logits_l,
      progress=base.Progress.start(B, N, pad_id=pad_id, hist_size=T + 1, target_forwards=1,
                                   other_forwards=1),
      draft_BxT=jnp.full((B, T), pad_id, jnp.int32), in_step_B=zeros,
      feat_sum_BxF=jnp.zeros((B, F), jnp.float32), writer_B=jnp.zeros((B,), jnp.bool_),
      large_BxN=jnp.zeros((B, N), jnp.int32), large_B=zeros, steps_B=zeros,
      large_steps_B=zeros, discarded_B=zeros, ingested_B=zeros)
  step_end = jnp.asarray(dec.step_end_ids, jnp.int32)
  router = None if dec.random_fraction > 0 else dec.router(params)
  if router is not None and router['w1'].shape[0] != 2 * F + 1:
    raise ValueError(f'arbitrage judge="drafted" needs a router over drafted-step features '
                     f'({2 * F + 1} = drafted_features of width {F}), got one over '
                     f'{router["w1"].shape[0]} (a step-start router?). Fit one with '
                     f'{dec.router_script}.')

  def step_fn(s: DraftState) -> DraftState:
    active_B, num_B = s.progress.active_B, s.progress.num_generated_B
    drafting_B, writing_B = active_B & ~s.writer_B, active_B & s.writer_B
    start_pos_B = prompt_len_B + num_B  # the step's first position (drafts are not committed)
    pos_B = start_pos_B + jnp.where(drafting_B, s.in_step_B, 0)
    keys_B = sampling_lib.token_keys(row_keys_B, pos_B)
    tok_B = sampling_lib.sample(keys_B, jnp.where(writing_B[:, None], s.logits_l, s.logits_s),
                                dec.sampling)
    feat_BxF = routing.router_features(s.logits_s, s.hidden_s, embed_VxD)
    ls, hs, cs = _forward(small, ps, tok_B, jnp.where(active_B, pos_B, -1), s.cache_s)
    # the large model's forward where a row writes: not lax.cond, whose branches each got a
    # copy of the cache (base.switch_in_place)
    ll, cl = base.switch_in_place(jnp.any(writing_B).astype(jnp.int32), [
        None, lambda c: _tokens_forward(large, pl, tok_B[:, None],
                                        jnp.where(writing_B, pos_B, -1)[:, None], c[1])],
        (s.logits_l[:, None], s.cache_l))
    ll = ll[:, 0]
    ended_tok_B = jnp.isin(tok_B, step_end) | (tok_B == eos_id)

    # Drafting rows: the token joins the draft; at the step's end the router judges it.
    count_B = s.in_step_B + 1
    draft_BxT = base.write_tokens(s.draft_BxT, tok_B[:, None], s.in_step_B,
                                  drafting_B.astype(jnp.int32))
    feat_sum_BxF = jnp.where((s.in_step_B == 0)[:, None], 0.0, s.feat_sum_BxF) + feat_BxF
    judged_B = drafting_B & (ended_tok_B | (count_B >= T) | (num_B + count_B >= N))
    if dec.random_fraction > 0:
      coin_B = jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, ARBITRAGE_SALT)))(
          keys_B)
      to_large_B = coin_B < dec.random_fraction
    else:
      feats = drafted_features(feat_sum_BxF, count_B,
                               routing.router_features(ls, hs, embed_VxD))
      to_large_B = jax.nn.sigmoid(routing.router_logit(router, feats)) >= dec.threshold
    reject_B, accept_B = judged_B & to_large_B, judged_B & ~to_large_B

    # Accepted drafts: the large model ingests them in one forward (when any row accepts).
    t_1xT = jnp.arange(T)[None, :]
    ingest_pos_BxT = jnp.where(accept_B[:, None] & (t_1xT < count_B[:, None]),
                               start_pos_B[:, None] + t_1xT, -1)

    def ingest(carry):
      ll, cl = carry
      lg_BxTxV, c = _tokens_forward(large, pl, draft_BxT, ingest_pos_BxT, cl)
      last = jnp.take_along_axis(lg_BxTxV, (count_B - 1)[:, None, None], 1)[:, 0]
      return jnp.where(accept_B[:, None], last, ll), c

    ll, cl = base.switch_in_place(jnp.any(accept_B).astype(jnp.int32),
                                  [None, ingest], (ll, cl))
    # Rejected drafts: the small model forgets them (its next forward is the large model's
    # first token of the step, so its logits need no restoring). With slots = positions the
    # stale slots would also stay hidden by causality until overwritten, so outputs do not
    # hinge on this; it keeps lengths exact and refuses recurrent layers (Cache.truncate).
    cs = cs.truncate(jnp.where(reject_B, start_pos_B, cs.lengths))

    # Commit: one large token per writing row, the whole draft per accepting row.
    new_BxT = jnp.where(writing_B[:, None], tok_B[:, None], draft_BxT)
    commit_B = jnp.where(writing_B, 1, jnp.where(accept_B, count_B, 0))
    large_end_B = writing_B & (ended_tok_B | (s.in_step_B + 1 >= T))
    keep = active_B[:, None]
    return s.replace(
        cache_s=cs, cache_l=cl, logits_s=jnp.where(keep, ls, s.logits_s),
        hidden_s=jnp.where(keep, hs, s.hidden_s),
        logits_l=jnp.where((writing_B | accept_B)[:, None], ll, s.logits_l),
        progress=s.progress.commit(new_BxT, commit_B, (writing_B | accept_B) & (tok_B == eos_id),
                                   N).count(active_B, other_B=(writing_B | accept_B).astype(
                                       jnp.int32), committed_B=commit_B),
        draft_BxT=draft_BxT,
        in_step_B=jnp.where(judged_B | large_end_B, 0,
                            jnp.where(active_B, s.in_step_B + 1, s.in_step_B)),
        feat_sum_BxF=jnp.where(drafting_B[:, None], feat_sum_BxF, s.feat_sum_BxF),
        writer_B=(s.writer_B & ~large_end_B) | reject_B,
        large_BxN=base.write_tokens(s.large_BxN, jnp.ones((B, 1), jnp.int32), num_B,
                                    writing_B.astype(jnp.int32)),
        large_B=s.large_B + writing_B,
        steps_B=s.steps_B + (drafting_B & (s.in_step_B == 0)),
        large_steps_B=s.large_steps_B + reject_B,
        discarded_B=s.discarded_B + jnp.where(reject_B, count_B, 0),
        ingested_B=s.ingested_B + jnp.where(accept_B, count_B, 0))

  state = jax.lax.while_loop(lambda s: ~jnp.all(s.progress.done_B), step_fn, state)
  return state.progress.result({
      'large_tokens': state.large_B, 'large_mask': state.large_BxN, 'steps': state.steps_B,
      'large_steps': state.large_steps_B, 'discarded_tokens': state.discarded_B,
      'ingested_tokens': state.ingested_B})


# ------------------------------------------------------------------------------ decoder
@registry.register
@dataclasses.dataclass(frozen=True)
class ArbitrageDecoder(routing.R2RDecoder):
  """Arbitrage (lossy): a router's P(large model's step is better) picks who writes a step.

  judge='step_start': p >= threshold at a step's first token -> the large model writes the
  step (the loop of routing.py; only the decision is taken once per step instead of per token,
  as R2R's). judge='drafted': the small model drafts the step (at most `max_step_tokens`
  tokens), the router judges the draft, p >= threshold -> the draft is discarded and the large
  model writes the step (`generate_drafted`). The router, its loading, the random baseline and
  the setting checks are R2R's (routing.py)."""
  name: ClassVar[str] = 'arbitrage'
  route_salt: ClassVar[int] = ARBITRAGE_SALT
  router_script: ClassVar[str] = 'benchmarks/latent_arbitrage.py'
  judge: str = 'step_start'
  max_step_tokens: int = 32

  def __post_init__(self):
    super().__post_init__()
    if self.judge not in JUDGES:
      raise ValueError(f'arbitrage judge must be one of {JUDGES}, got {self.judge!r}.')
    if self.max_step_tokens < 1:
      raise ValueError(f'arbitrage max_step_tokens must be >= 1, got {self.max_step_tokens}.')

  def route(self, s, params, embed_VxD, keys_B, step_start_B):
    return jnp.where(step_start_B, self.wants_large(s, params, embed_VxD, keys_B), s.writer_B)

  def generate(self, models, params, prompt_BxP, prompt_len_B, row_keys_B, *, max_new_tokens,
               cache_size, eos_id, pad_id):
    if self.judge == 'step_start':
      return super().generate(models, params, prompt_BxP, prompt_len_B, row_keys_B,
                              max_new_tokens=max_new_tokens, cache_size=cache_size,
                              eos_id=eos_id, pad_id=pad_id)
    return generate_drafted(self, models, params, prompt_BxP, prompt_len_B, row_keys_B,
                            max_new_tokens=max_new_tokens, cache_size=cache_size,
                            eos_id=eos_id, pad_id=pad_id)
