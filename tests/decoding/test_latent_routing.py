"""Small-large routing: the extremes of the budget knob are the small / large model's AR
output token for token, a random router spends its budget, and router features are sane."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from decoding import Models, registry, run_decoder
from decoding.latent import routing
from test_latent_loop import AR_EOS, PROMPTS, SAMPLING as SAMPLINGS, V, ar_rows, shared_lm

PAD, EOS = 0, AR_EOS['sampled']
SAMPLING = SAMPLINGS['sampled']


@pytest.fixture(scope='module')
def pair():
  """Same architecture, different weights (shares the AR compiles of test_latent_loop)."""
  (small, ps), (large, pl) = shared_lm(7), shared_lm(8)
  return small, large, ps, pl


def _run(pair, name, router=None, **settings):
  small, large, ps, pl = pair
  params = {'target': ps, 'large': pl}
  if router is not None:
    params['router'] = router
  settings['large_workdir'] = 'unused'
  return run_decoder(registry.build(name, settings, sampling=SAMPLING),
                     Models(small, extras=(('large', large),)), params, PROMPTS,
                     max_new_tokens=10, cache_size=32, eos_id=EOS, pad_id=PAD, seed=1)


def _constant_router(logit):
  r = routing.init_router(jax.random.key(0), routing.ROUTER_TOPK + 1 + 2 * 32)
  return dict(r, w2=jnp.zeros_like(r['w2']), b2=jnp.full((1,), float(logit)))


def test_budget_extremes_are_the_small_and_large_models(pair):
  small_rows, large_rows = ar_rows('sampled', 7), ar_rows('sampled', 8)
  assert [r.tokens for r in small_rows] != [r.tokens for r in large_rows]
  for logit, ref in ((-20.0, small_rows), (20.0, large_rows)):
    rows, stats = _run(pair, 'r2r', router=_constant_router(logit))
    assert [r.tokens for r in rows] == [r.tokens for r in ref]
    assert stats.extra['large_tokens'] == (0 if logit < 0 else stats.generated)


def test_glimprouter_routes_whole_steps(pair):
  """With '.'-like step ends at every 3rd token id, a random step router spends about its
  budget and never switches writer inside a step."""
  rows, stats = _run(pair, 'glimprouter', random_fraction=0.5, step_end_ids=(3, 6, 9, 12))
  frac = stats.extra['large_tokens'] / stats.generated
  assert 0.15 < frac < 0.85
  for r in rows:
    mask = r.extra['large_mask'][:len(r.tokens)]
    for t in range(1, len(r.tokens)):
      if r.tokens[t - 1] not in (3, 6, 9, 12):
        assert mask[t] == mask[t - 1], 'the writer changed inside a step'


def test_router_features_and_errors():
  logits = jax.random.normal(jax.random.key(1), (3, V))
  feats = routing.router_features(logits, jnp.ones((3, 32)), jnp.eye(V, 32))
  assert feats.shape == (3, routing.ROUTER_TOPK + 1 + 64)
  assert (np.diff(np.asarray(feats[:, :routing.ROUTER_TOPK]), axis=1) <= 0).all()
  with pytest.raises(ValueError, match='large_workdir'):
    registry.build('glimprouter').extra_models()
  with pytest.raises(ValueError, match='router'):
    routing.load_router('')
