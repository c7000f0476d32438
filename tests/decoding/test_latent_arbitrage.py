"""Arbitrage: the extremes of its threshold are the small / large model's AR output token for
token (both judges), the writer changes only at step starts and the step counts add up, the
drafted judge with a router that rejects chosen steps gives the output computed by hand from
AR runs, advantage labels match a hand-computed case, and bad input fails clearly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from decoding import Models, registry, run_decoder
from decoding.latent import arbitrage, routing
from test_latent_loop import AR_EOS, PAD, PROMPTS, SAMPLING, ar_rows, shared_lm
from test_latent_routing import _run

STEP_ENDS = (3, 6, 9, 12)


@pytest.fixture(scope='module')
def pair():
  """test_latent_routing's pair: the same two cached LMs (and their AR compiles)."""
  (small, ps), (large, pl) = shared_lm(7), shared_lm(8)
  return small, large, ps, pl


def _router():
  """An untrained router: its probabilities lie strictly inside (0, 1)."""
  return routing.init_router(jax.random.key(3), routing.ROUTER_TOPK + 1 + 2 * 32)


def test_threshold_extremes_are_the_small_and_large_models(pair):
  small_rows, large_rows = ar_rows('sampled', 7), ar_rows('sampled', 8)
  for threshold, ref, large in ((1.5, small_rows, False), (-0.5, large_rows, True)):
    rows, stats = _run(pair, 'arbitrage', router=_router(), threshold=threshold,
                       step_end_ids=STEP_ENDS)
    assert [r.tokens for r in rows] == [r.tokens for r in ref]
    assert stats.extra['large_tokens'] == (stats.generated if large else 0)
    assert stats.extra['large_steps'] == (stats.extra['steps'] if large else 0)
    # Steps begun = first token + tokens after a step end (the last token's end starts none).
    assert stats.extra['steps'] == sum(
        1 + sum(t in STEP_ENDS for t in r.tokens[:-1]) for r in rows)


def _spans(tokens, bound):
  """Steps of a drafted-mode row: cut after a step end, eos or `bound` tokens."""
  spans, start = [], 0
  for t, tok in enumerate(tokens):
    if tok in STEP_ENDS or t == len(tokens) - 1 or t + 1 - start == bound:
      spans.append((start, t + 1))
      start = t + 1
  return spans


def test_drafted_threshold_extremes_are_the_small_and_large_models(pair):
  small_rows, large_rows = ar_rows('sampled', 7), ar_rows('sampled', 8)
  router = routing.init_router(jax.random.key(3), arbitrage.num_drafted_features(32))
  for threshold, ref, large in ((1.5, small_rows, False), (-0.5, large_rows, True)):
    rows, stats = _run(pair, 'arbitrage', router=router, threshold=threshold,
                       step_end_ids=STEP_ENDS, judge='drafted', max_step_tokens=4)
    assert [r.tokens for r in rows] == [r.tokens for r in ref]
    x = stats.extra
    assert x['large_tokens'] == (stats.generated if large else 0)
    assert x['ingested_tokens'] == (0 if large else stats.generated)
    assert x['steps'] == sum(len(_spans(r.tokens, 4)) for r in rows)
    assert x['large_steps'] == (x['steps'] if large else 0)
    assert (x['discarded_tokens'] > 0) == large
    assert [r.extra['large_mask'][:len(r.tokens)] for r in rows] == [
        [int(large)] * len(r.tokens) for r in rows]


def _length_router(k: int):
  """A stub drafted-mode router: p = sigmoid(gelu(4 (len - k + 1/2)) - 1) of the step's length
  (the last feature), >= 0.5 exactly for the drafted steps of at least k tokens."""
  F = arbitrage.num_drafted_features(32)
  r = routing.init_router(jax.random.key(0), F)
  return dict(r, w1=jnp.zeros_like(r['w1']).at[F - 1, 0].set(4.0),
              b1=jnp.zeros_like(r['b1']).at[0].set(-4.0 * (k - 0.5)),
              w2=jnp.zeros_like(r['w2']).at[0, 0].set(1.0), b2=jnp.full((1,), -1.0))


def _greedy_ar(seed, prefixes):
  model, params = shared_lm(seed)
  rows, _ = run_decoder(registry.build('ar', sampling=SAMPLING['greedy']), Models(model),
                        {'target': params}, prefixes, max_new_tokens=10, cache_size=32,
                        eos_id=AR_EOS['greedy'], pad_id=PAD, seed=1)
  return [r.tokens for r in rows]


def _by_hand(k, bound, n=10):
  """The drafted judge step by step from plain AR runs on each prefix: the small model's
  greedy step (cut at a step end, eos, `bound` or the budget) is kept when shorter than k
  tokens, else replaced by the large model's greedy step from the same prefix."""
  eos = AR_EOS['greedy']
  out = [[] for _ in PROMPTS]
  mask = [[] for _ in PROMPTS]
  kinds = [[] for _ in PROMPTS]  # per step: 'small' or 'large'
  discarded = 0

  def cut(tokens, room):
    step = []
    for tok in tokens[:room]:
      step.append(tok)
      if tok in STEP_ENDS or tok == eos:
        break
    return step

  while True:
    todo = [b for b, o in enumerate(out) if len(o) < n and (not o or o[-1] != eos)]
    if not todo:
      return out, mask, kinds, discarded
    prefixes = [list(p) + o for p, o in zip(PROMPTS, out)]
    small, large = _greedy_ar(7, prefixes), None
    for b in todo:
      room = min(bound, n - len(out[b]))
      step = cut(small[b], room)
      rejected = len(step) >= k
      if rejected:
        discarded += len(step)
        large = large or _greedy_ar(8, prefixes)
        step = cut(large[b], room)
      kinds[b].append('large' if rejected else 'small')
      out[b] += step
      mask[b] += [int(rejected)] * len(step)


def test_drafted_judge_rejects_chosen_steps_as_computed_by_hand(pair):
  """Accepted steps are the small model's greedy step, rejected ones the large model's, and
  the small model continues after a rejected step from the large model's tokens (one not fed
  them, or a large model that skipped reading accepted drafts, fails this). Not caught here:
  a missing rollback of the small cache, whose stale draft slots the causal mask hides until
  they are overwritten (slots are positions), so outputs do not depend on it."""
  k, bound = 3, 4
  out, mask, kinds, discarded = _by_hand(k, bound)
  flat = [x for ks in kinds for x in ks]
  assert 'small' in flat and 'large' in flat
  assert any(ks[i] == 'large' and ks[i + 1] == 'small'
             for ks in kinds for i in range(len(ks) - 1)), 'no step after a rejected one'
  small, large, ps, pl = pair
  rows, stats = run_decoder(
      registry.build('arbitrage', {'judge': 'drafted', 'threshold': 0.5, 'max_step_tokens': bound,
                                   'step_end_ids': STEP_ENDS, 'large_workdir': 'unused'},
                     sampling=SAMPLING['greedy']),
      Models(small, extras=(('large', large),)),
      {'target': ps, 'large': pl, 'router': _length_router(k)}, PROMPTS, max_new_tokens=10,
      cache_size=32, eos_id=AR_EOS['greedy'], pad_id=PAD, seed=1)
  assert [r.tokens for r in rows] == out
  assert [r.extra['large_mask'][:len(r.tokens)] for r in rows] == mask
  x = stats.extra
  assert x['steps'] == len(flat) and x['large_steps'] == flat.count('large')
  assert x['large_tokens'] == int(np.sum([sum(m) for m in mask]))
  assert x['large_tokens'] + x['ingested_tokens'] == stats.generated
  assert x['discarded_tokens'] == discarded


def test_random_arbitrage_routes_whole_steps(pair):
  rows, stats = _run(pair, 'arbitrage', random_fraction=0.5, step_end_ids=STEP_ENDS)
  assert 0 < stats.extra['large_steps'] < stats.extra['steps']
  for r in rows:
    mask = r.extra['large_mask'][:len(r.tokens)]
    starts = [0] + [t for t in range(1, len(r.tokens)) if r.tokens[t - 1] in STEP_ENDS]
    assert r.extra['large_steps'] == sum(mask[t] for t in starts)
    for t in range(1, len(r.tokens)):
      if t not in starts:
        assert mask[t] == mask[t - 1], 'the writer changed inside a step'


def test_labels_match_a_hand_computed_case():
  """Row [5, 9, 7, 9, 8, 47] (after prompt [1, 2]) with step end 9 and eos 47: boundaries at
  prompt + 0, 2, 4 tokens; the small model's drafts are cut after their first 9 or 47; the
  large version of step k is worth value(prefix_k), the small one value(prefix_k + draft)."""
  value = {(1, 2): 1, (1, 2, 5, 9): 1, (1, 2, 5, 9, 6, 6, 9): 0, (1, 2, 5, 9, 7, 9): 0,
           (1, 2, 5, 9, 7, 9, 47): 1}
  calls = []

  def draft_fn(problems, prefixes):
    calls.append(('draft', problems, prefixes))
    return [[5, 9, 3, 3], [6, 6, 9, 1], [47, 5]]

  def value_fn(problems, prefixes):
    calls.append(('value', problems, prefixes))
    return [value[tuple(p)] for p in prefixes]

  out = arbitrage.label_steps([[1, 2]], [[5, 9, 7, 9, 8, 47, 0, 0]], value_fn, draft_fn,
                              step_end_ids=(9,), eos_id=47, margin=0.5)
  prefixes = [[1, 2], [1, 2, 5, 9], [1, 2, 5, 9, 7, 9]]
  assert calls[0] == ('draft', [0, 0, 0], prefixes)
  assert calls[1] == ('value', [0] * 6, prefixes + [[1, 2, 5, 9], [1, 2, 5, 9, 6, 6, 9],
                                                    [1, 2, 5, 9, 7, 9, 47]])
  assert out.pos_M.tolist() == [2, 4, 6] and out.row_M.tolist() == [0, 0, 0]
  assert out.v_large_M.tolist() == [1, 1, 0] and out.v_small_M.tolist() == [1, 0, 1]
  assert out.advantage_M.tolist() == [0, 1, -1]
  assert out.label_M.tolist() == [False, True, False]
  assert arbitrage.step_spans([4, 9, 9, 5], (9,), 47) == [(0, 2), (2, 3), (3, 4)]


def test_errors_are_clear(pair):
  with pytest.raises(ValueError, match='judge'):
    registry.build('arbitrage', {'judge': 'drafted_step'})
  with pytest.raises(ValueError, match='max_step_tokens'):
    registry.build('arbitrage', {'judge': 'drafted', 'max_step_tokens': 0})
  with pytest.raises(ValueError, match='drafted-step features'):
    _run(pair, 'arbitrage', router=_router(), judge='drafted')
  with pytest.raises(ValueError, match='large_workdir'):
    registry.build('arbitrage').extra_models()
  with pytest.raises(ValueError, match='random_fraction'):
    registry.build('arbitrage', {'random_fraction': 1.5})
  with pytest.raises(ValueError, match='threshold'):
    registry.build('arbitrage', {'threshold': float('nan')})
  with pytest.raises(ValueError, match='needs a router'):
    registry.build('arbitrage').router({})
  with pytest.raises(ValueError, match='differ in length'):
    arbitrage.label_steps([[1]], [], lambda b, p: [], lambda b, p: [], eos_id=0)
  with pytest.raises(ValueError, match='1 prefixes'):
    arbitrage.label_steps([[1]], [[2]], lambda b, p: [1.0], lambda b, p: [[3]], eos_id=0)
  with pytest.raises(ValueError, match='margin'):
    arbitrage.label_steps([[1]], [[2]], lambda b, p: [], lambda b, p: [], eos_id=0,
                          margin=float('inf'))
