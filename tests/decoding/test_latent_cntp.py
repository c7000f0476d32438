"""CNTP: n_max = 1 is AR; a span keeps its lowest-perplexity trial (checked by recomputing
every trial without a cache); the trial count follows the entropy rule."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from decoding import Models, registry, run_decoder
from decoding.latent import cntp
from models import Cache
from test_latent_loop import AR_EOS, PROMPTS, SAMPLING as SAMPLINGS, ar_rows, shared_lm

PAD, EOS = 0, AR_EOS['sampled']
SAMPLING = SAMPLINGS['sampled']


@pytest.fixture(scope='module')
def lm():
  return shared_lm()


def _run(lm, name, **settings):
  model, params = lm
  return run_decoder(registry.build(name, settings, sampling=SAMPLING), Models(model),
                     {'target': params}, PROMPTS, max_new_tokens=10, cache_size=32, eos_id=EOS,
                     pad_id=PAD, seed=1)


def test_one_trial_is_ar_and_trials_are_accounted(lm):
  ar = ar_rows('sampled')
  one, _ = _run(lm, 'cntp', n_max=1)
  assert [r.tokens for r in one] == [r.tokens for r in ar]
  assert [r.target_forwards for r in one] == [r.target_forwards for r in ar]
  many, stats = _run(lm, 'cntp', n_max=3, h_low=0.0, h_high=0.5, stop_ids=(5, 7, 9, 11, 13))
  assert stats.extra['trial_spans'] > 0 and stats.other_forwards > 0
  assert 0 < stats.other_forwards < stats.extra['trial_tokens']
  for r in many:
    assert len(r.tokens) <= 10 and (EOS not in r.tokens[:-1])


def test_span_keeps_the_lowest_perplexity_trial(lm):
  model, params = lm
  B, M, L, P = 2, 4, 6, 8
  prompt = np.zeros((B, P), np.int32)
  prompt[0, :5], prompt[1, :3] = PROMPTS[0], PROMPTS[1]
  plen = jnp.asarray([5, 3], jnp.int32)
  keys = jax.random.split(jax.random.key(2), B)

  @jax.jit
  def span(params):
    cache = Cache.init(model.cfg, B, 32)
    pos = jnp.where(jnp.arange(P)[None] < plen[:, None], jnp.arange(P)[None], -1)
    out = model.apply({'params': params}, jnp.asarray(prompt), pos, cache=cache)
    logits = out.logits_BxTxV[jnp.arange(B), plen - 1]

    def forward(tok_R, pos_R, cache):
      o = model.apply({'params': params}, tok_R[:, None], pos_R[:, None], cache=cache)
      return o.logits_BxTxV[:, 0], o.cache
    return cntp.trial_span(forward, out.cache, logits, plen, keys, jnp.asarray([4, 2]),
                           jnp.asarray([10, 10]), n_max=M, max_span=L, sampling=SAMPLING,
                           stop_ids=(5, 7, 9), eos_id=EOS)

  s = jax.device_get(span(params))
  full = jax.jit(lambda p, t: model.apply({'params': p}, t).logits_BxTxV)
  assert s.valid_R.tolist() == [True] * 4 + [True, True, False, False]
  ppl = {}
  for r in np.flatnonzero(s.valid_R):
    b, n = r // M, int(s.length_R[r])
    seq = np.zeros((1, 16), np.int32)
    seq[0, :plen[b] + n] = list(prompt[b, :plen[b]]) + s.tokens_RxL[r, :n].tolist()
    logp = jax.nn.log_softmax(full(params, jnp.asarray(seq))[0], -1)
    nll = -sum(float(logp[plen[b] - 1 + t, s.tokens_RxL[r, t]]) for t in range(n))
    np.testing.assert_allclose(s.nll_R[r], nll, rtol=1e-4, atol=1e-4)
    ppl[r] = nll / n
    if r % M == s.chosen_B[b]:  # the committed logits are those after the chosen trial
      np.testing.assert_allclose(s.logits_BxV[b], full(params, jnp.asarray(seq))[0, plen[b] + n - 1],
                                 atol=1e-4)
  for b in range(B):
    rows = [r for r in ppl if r // M == b]
    assert b * M + s.chosen_B[b] == min(rows, key=ppl.get)
  assert len({tuple(s.tokens_RxL[r]) for r in range(4)}) > 1, 'trials should differ'


def test_trial_count_grows_with_entropy():
  H = jnp.asarray([-1.0, 0.01, 0.5, 1.0, 1.6, 9.0])
  assert cntp.num_trials(H, 5, 0.01, 1.5).tolist() == [1, 1, 2, 3, 5, 5]
  with pytest.raises(ValueError, match='h_high'):
    registry.build('cntp', {'h_low': 2.0, 'h_high': 1.0})
