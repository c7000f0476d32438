"""S2D: sub-model k of the nested draft is exactly the draft truncated after layer k (the
shared head on the residual stream, the k-layer Transformer, `layer_range`); every exit
drafts losslessly (greedy == AR on a ragged batch); calibration measures each exit; clear
errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from testlib import small_config
from decoding import Models, registry, run_decoder
from decoding.speculative import s2d as s2d_decoding
from models import Transformer, init_params, s2d

V = 48
PAD = 0
PROMPTS = [[1, 5, 9, 3, 1, 5, 9], [2, 7], [4, 4, 8, 1, 6, 2, 9, 4, 4], [3]]
N_NEW = 20
CACHE = 128


def test_nested_exits_equal_the_truncated_model():
  model = Transformer(small_config(vocab_size=V, num_layers=4))
  p = init_params(model, jax.random.key(0))
  tokens = jnp.asarray([[3, 9, 1, 4, 4, 7, 2, 8]])
  out = model.apply({'params': p}, tokens, return_hidden=True)
  for k in range(1, 5):
    sub, sp = s2d.sub_model(model, p, k)
    assert sub.cfg.num_layers == k and set(sp) == set(p) - {f'layer_{i}' for i in range(k, 4)}
    want = sub.apply({'params': sp}, tokens).logits_BxTxV
    np.testing.assert_allclose(s2d.exit_logits(model, p, out.hidden[k]), want, rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(
        model.apply({'params': p}, tokens, layer_range=(0, k)).logits_BxTxV, want, rtol=1e-5,
        atol=1e-5)
  np.testing.assert_array_equal(s2d.exit_logits(model, p, out.hidden[4]), out.logits_BxTxV)


@pytest.fixture(scope='module')
def setup():
  """A 3-layer target with spread logits; a 3-layer nested draft: the target's first layer
  then two random layers (so exit 1 agrees with the target more often than chance)."""
  cfg = small_config(vocab_size=V, num_layers=3)
  target = Transformer(cfg)
  tp = init_params(Transformer(small_config(vocab_size=V, num_layers=3, init_std=0.3)),
                   jax.random.key(7))
  other = init_params(Transformer(small_config(vocab_size=V, num_layers=3, init_std=0.3)),
                      jax.random.key(8))
  dp = {**tp, 'layer_1': other['layer_1'], 'layer_2': other['layer_2']}
  models = Models(target, extras=(('draft', Transformer(cfg)),))
  params = {'target': tp, 'draft': dp}
  ar = registry.build('ar')
  ref, _ = run_decoder(ar, models, params, PROMPTS, max_new_tokens=N_NEW, cache_size=CACHE,
                       eos_id=-1, pad_id=PAD)
  return models, params, [r.tokens for r in ref]


@pytest.mark.parametrize('settings', [
    dict(exit_layer=1, gamma=3),
    dict(exit_layer=2, tree='static', branching='2,2,1'),
    dict(exit_layer=1, gamma=3, draft_vocab=24),  # the sub-model over a decode-time set
], ids=['exit1-chain', 'exit2-static-tree', 'exit1-chain-draft-vocab'])
def test_s2d_greedy_equals_ar_on_a_ragged_batch(setup, settings):
  models, params, ref = setup
  if settings.get('draft_vocab'):
    from models import draft_vocab  # pylint: disable=g-import-not-at-top
    ids = jnp.asarray(np.sort(np.random.default_rng(1).choice(V, 24, replace=False)), jnp.int32)
    params = dict(params, **{draft_vocab.RUN_KEY: {'24': ids}})
  dec = registry.build('s2d', dict(settings, draft_workdir='x'))
  assert dec.lossless
  rows, stats = run_decoder(dec, models, params, PROMPTS, max_new_tokens=N_NEW,
                            cache_size=CACHE, eos_id=-1, pad_id=PAD)
  assert [r.tokens for r in rows] == ref
  assert stats.target_forwards == stats.extra['spec_steps'] + len(PROMPTS)


def test_s2d_calibration_measures_every_exit(setup):
  """The full exit is the target itself here (draft = target): every draft is accepted, so
  its tau is the chain's ceiling and beats exit 1's; the score divides by the cost."""
  models, params, _ = setup
  params = {**params, 'draft': params['target']}
  dec = registry.build('s2d', dict(draft_workdir='x', gamma=3))
  best, table = s2d_decoding.calibrate(dec, models, params, PROMPTS[:2], exits=(1, 3),
                                       max_new_tokens=12, cache_size=CACHE, pad_id=PAD)
  assert sorted(table) == [1, 3] and best in table
  full = table[3]
  assert full['cost_ratio'] == pytest.approx(1.0) and full['tau'] > table[1]['tau']
  # 12 tokens per row: prefill + 3 steps of 4 (the last one capped): 12 / 4 forwards.
  assert full['tau'] == pytest.approx(3.0)
  for k, r in table.items():
    assert r['score'] == pytest.approx(r['tau'] / (1 + r['drafts_per_step'] * r['cost_ratio']))
  assert best == max(table, key=lambda k: table[k]['score'])


def test_s2d_errors(setup):
  models, params, _ = setup
  with pytest.raises(ValueError, match=r'exit_layer=4 must be in \[1, 3\]'):
    run_decoder(registry.build('s2d', dict(draft_workdir='x', exit_layer=4)), models, params,
                PROMPTS, max_new_tokens=4, cache_size=CACHE, eos_id=-1, pad_id=PAD)
  with pytest.raises(ValueError, match=r'S2D exit 5 must be in \[1, 4\]'):
    s2d.parse_exits('1,2,5', 4)
  assert s2d.parse_exits('', 3) == (1, 2, 3) and s2d.parse_exits('4/1/2', 4) == (1, 2, 4)
  with pytest.raises(ValueError, match='draft_workdir'):
    registry.build('s2d').extra_models()
