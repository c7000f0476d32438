"""LayerSkip's early-exit loss: each exit's loss equals the decoder's own early exit (a forward
over the first l layers), the total weighs them as documented, a small step along the
gradient lowers it, and a short fine-tune from an AR run decodes with `layerskip` exactly."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import testlib
from testlib import small_config
from configs import layerskip as layerskip_config
from decoding import SamplingConfig
from models import Transformer, init_params
from training.objectives import early_exit
from training.objectives import make_objective
from training.objectives import token_cross_entropy
from workbench import Workbench


def _setup(layers=(), scale=1.0, num_layers=4):
  model = Transformer(small_config(num_layers=num_layers))
  params = {'model': init_params(model, jax.random.key(0))}
  config = ml_collections.ConfigDict(dict(exit=dict(layers=layers, scale=scale)))
  tokens = jax.random.randint(jax.random.key(1), (3, 17), 0, model.cfg.vocab_size)
  weights = (jnp.arange(16)[None] < jnp.asarray([16, 9, 12])[:, None]).astype(jnp.float32)
  return model, params, config, {'tokens': tokens, 'weights': weights}


@pytest.mark.parametrize('layers,scale', [((), 1.0), ((1, 3), 0.5)])
def test_exit_losses_equal_the_decoders_early_exit_and_weigh_as_documented(layers, scale):
  model, params, config, batch = _setup(layers, scale)
  loss, metrics = make_objective('early_exit', model, config).loss_fn(params, batch,
                                                                      jax.random.key(2))
  inputs, targets = batch['tokens'][:, :-1], batch['tokens'][:, 1:]
  want_layers = layers or (1, 2, 3)
  total = 0.0
  for l, w in zip(want_layers, np.asarray(want_layers) / sum(want_layers)):
    # the decoder's early exit: layers [0, l), then the final norm and head
    logits = model.apply({'params': params['model']}, inputs, layer_range=(0, l)).logits_BxTxV
    want, _ = token_cross_entropy(logits, targets, batch['weights'])
    np.testing.assert_allclose(metrics[f'exit{l}_loss'], want, rtol=1e-5)
    total += scale * w * float(want)
  full, _ = token_cross_entropy(model.apply({'params': params['model']}, inputs).logits_BxTxV,
                                targets, batch['weights'])
  np.testing.assert_allclose(metrics['full_loss'], full, rtol=1e-5)
  np.testing.assert_allclose(loss, float(full) + total, rtol=1e-5)
  assert set(k for k in metrics if k.startswith('exit')) == {
      f'exit{l}_{m}' for l in want_layers for m in ('loss', 'accuracy')}


def test_scale_zero_is_the_ar_loss_and_a_gradient_step_lowers_the_exits():
  model, params, config, batch = _setup(scale=0.0)
  loss, _ = make_objective('early_exit', model, config).loss_fn(params, batch, None)
  ar_loss, _ = make_objective('ar', model, None).loss_fn(params, batch, None)
  np.testing.assert_allclose(loss, ar_loss, rtol=1e-6)
  model, params, config, batch = _setup(layers=(1,), scale=10.0)
  fn = make_objective('early_exit', model, config).loss_fn
  (loss, m0), grads = jax.value_and_grad(lambda p: fn(p, batch, None), has_aux=True)(params)
  norm = jnp.sqrt(sum(jnp.sum(g ** 2) for g in jax.tree.leaves(grads)))
  stepped = jax.tree.map(lambda p, g: p - 0.01 * g / norm, params, grads)
  loss2, m1 = fn(stepped, batch, None)
  assert float(loss2) < float(loss)
  assert float(m1['exit1_loss']) < float(m0['exit1_loss'])


def test_bad_settings_give_clear_errors():
  c = layerskip_config.get_config('test')
  for layers, match in (((0,), 'must be distinct layers in'), ((2,), 'in \\[1, 1\\]'),
                        ((1, 1), 'distinct')):
    with c.unlocked():
      c.exit.layers = layers
    with pytest.raises(ValueError, match=match):
      early_exit.settings(c, 2)
  with c.unlocked():
    c.exit.layers, c.exit.scale = (), -1.0
  with pytest.raises(ValueError, match='exit.scale must be >= 0'):
    early_exit.settings(c, 2)
  with c.unlocked():
    c.exit.bogus = 1
  with pytest.raises(ValueError, match='Unknown exit config keys'):
    early_exit.settings(c, 2)


def test_fine_tune_from_an_ar_run_then_self_speculate(tmp_path, data_dir, trained_workdir):
  c = layerskip_config.get_config('test')
  c.exit.init_from = trained_workdir
  workdir = str(tmp_path / 'layerskip')
  rows = testlib.short_fine_tune(c, workdir, data_dir)
  first = [r for r in rows if r['split'] == 'train'][0]
  evals = [r for r in rows if r['split'] == 'eval']
  assert evals and {'full_loss', 'exit1_accuracy'} <= set(evals[-1])
  # Started from the trained run: the final head's first loss is far below a fresh model's.
  assert first['full_loss'] < np.log(c.model.vocab_size or 272) - 1.0
  bench = Workbench.load(workdir)
  _, prompts = bench.heldout_prompts(2, chars=16)
  results = bench.run(bench.decoders(['ar', 'layerskip:exit_layer=1:adaptive=1'],
                                     SamplingConfig()), prompts, max_new_tokens=8)
  (_, (ar_rows, _)), (_, (ls_rows, _)) = results.items()
  assert [r.tokens for r in ls_rows] == [r.tokens for r in ar_rows]
