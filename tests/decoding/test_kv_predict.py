"""KV Prediction: the base decodes unchanged from an exact cache, the predictor's starting point
is exact where its inputs are, training lowers the gap, and misuse fails clearly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import testlib
from testlib import small_config
from decoding import Models, registry, run_decoder
from models import Cache, Transformer, init_params
from models import kv_predict as kvp_lib
from training.objectives import make_objective

PAD = 0
PROMPTS = [[1, 5, 9, 3], [2, 7], [4, 4, 8, 1, 6, 2, 9, 11, 3, 5], [3]]


@pytest.fixture(scope='module')
def lm():
  cfg = small_config(vocab_size=48, num_layers=3, init_std=0.3)
  model = Transformer(cfg)
  return model, init_params(model, jax.random.key(7))


def _run(model, params, spec, prompts=PROMPTS, n=10):
  name, settings = registry.parse_spec(spec)
  return run_decoder(registry.build(name, settings), Models(model), params, prompts,
                     max_new_tokens=n, cache_size=32, eos_id=-1, pad_id=PAD)


def _positions(tokens):
  return jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)


def test_decoding_from_an_exact_predicted_cache_equals_ar(lm):
  """With every layer in the auxiliary model and the base's own maps, the predicted cache is
  the base's: kv_predict then emits ar's tokens, ragged batch included."""
  model, params = lm
  kvp = kvp_lib.init_params(model.cfg, params, aux_layers=model.cfg.num_layers)
  ar_rows, _ = _run(model, {'target': params}, 'ar')
  kv_rows, stats = _run(model, {'target': params, 'kv_predict': kvp}, 'kv_predict')
  assert [r.tokens for r in kv_rows] == [r.tokens for r in ar_rows]
  assert not stats.lossless


def test_exact_kv_is_what_the_base_writes_into_its_cache(lm):
  model, params = lm
  tokens = jnp.asarray([[3, 9, 4, 1, 7, 2]])
  cache = model.apply({'params': params}, tokens, cache=Cache.init(model.cfg, 1, 8)).cache
  for layer, (k, v) in zip(cache.layers, kvp_lib.exact_kv(model, params, tokens,
                                                          _positions(tokens))):
    np.testing.assert_allclose(layer.k[:, :, :6], k.transpose(0, 2, 1, 3), atol=1e-5)
    np.testing.assert_allclose(layer.v[:, :, :, :6], v.transpose(0, 2, 3, 1), atol=1e-5)


def test_untrained_predictor_is_exact_up_to_the_auxiliary_depth(lm):
  """Layers 0 .. A read the same residual streams as the base; layers above A do not."""
  model, params = lm
  tokens = jnp.asarray([[3, 9, 4, 1, 7, 2, 5, 8]])
  pos = _positions(tokens)
  kvp = kvp_lib.init_params(model.cfg, params, aux_layers=1)
  pred = kvp_lib.predict_kv(model.cfg, params, kvp, tokens, pos)
  exact = kvp_lib.exact_kv(model, params, tokens, pos)
  for l in (0, 1):
    np.testing.assert_allclose(pred[l][0], exact[l][0], atol=1e-5)
    np.testing.assert_allclose(pred[l][1], exact[l][1], atol=1e-5)
  assert float(jnp.max(jnp.abs(pred[2][0] - exact[2][0]))) > 1e-2
  none = kvp_lib.predict_kv(model.cfg, params, kvp_lib.init_params(model.cfg, params, 0),
                            tokens, pos)  # the embeddings alone: layer 0 only is exact
  np.testing.assert_allclose(none[0][0], exact[0][0], atol=1e-5)
  assert float(jnp.max(jnp.abs(none[1][0] - exact[1][0]))) > 1e-2


def test_predictor_training_lowers_the_gap_to_the_exact_cache(trained_workdir):
  import configs.kv_predict  # pylint: disable=g-import-not-at-top
  from workdir import loading  # pylint: disable=g-import-not-at-top
  cfg = configs.kv_predict.get_config('test')
  cfg.kvp.target_workdir = trained_workdir
  base = loading.load_model(trained_workdir)
  objective = make_objective('kv_predict', base.model, cfg)
  extras = objective.extras(jax.random.key(0))
  # The test preset has 2 layers, so one auxiliary layer starts exact: perturb the start.
  leaves, tree = jax.tree.flatten(extras)
  keys = jax.random.split(jax.random.key(3), len(leaves))
  extras = jax.tree.unflatten(tree, [x * (1 + 0.5 * jax.random.normal(k, x.shape))
                                     for x, k in zip(leaves, keys)])
  extras, losses, metrics = testlib.train_extras(
      objective, base.params, extras, testlib.code_batch(base.tokenizer, 7), steps=10,
      learning_rate=3e-3)
  assert np.isfinite(losses).all()
  assert losses[-1] < 0.7 * losses[0], losses
  assert set(extras) == {'kv_predict'} and kvp_lib.num_aux_layers(extras['kv_predict']) == 1
  assert float(metrics['ce_pred']) >= float(metrics['ce_exact']) - 0.05


def test_clear_errors(lm):
  model, params = lm
  with pytest.raises(ValueError, match='needs a KV predictor'):
    _run(model, {'target': params}, 'kv_predict')
  from models.kind import ModelKind  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match='configs/kv_predict.py'):
    registry.build('kv_predict').for_model({'target': ModelKind()})
  kvp = kvp_lib.init_params(model.cfg, params, aux_layers=1)
  with pytest.raises(ValueError, match='does not combine with h2o'):
    _run(model, {'target': params, 'kv_predict': kvp}, 'kv_predict:h2o=8')
  with pytest.raises(ValueError, match='0 .. 3 layers'):
    kvp_lib.init_params(model.cfg, params, aux_layers=4)
  recurrent = small_config(vocab_size=48, num_layers=2,
                           layer_types=('attention', 'deltaproduct'))
  with pytest.raises(ValueError, match='recurrent'):
    kvp_lib.check_model(recurrent, 1)
  import configs.kv_predict  # pylint: disable=g-import-not-at-top
  cfg = configs.kv_predict.get_config('test')
  with pytest.raises(ValueError, match='target_workdir'):
    make_objective('kv_predict', model, cfg)
