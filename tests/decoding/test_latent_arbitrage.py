"""Arbitrage: the extremes of its threshold are the small / large model's AR output token for
token, the writer changes only at step starts and the step counts add up, advantage labels
match a hand-computed case, and bad input fails clearly."""

import jax
import pytest

from decoding import registry
from decoding.latent import arbitrage, routing
from test_latent_loop import ar_rows, shared_lm
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


def test_errors_are_clear():
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
