"""PIPO's objective: rows are cut into the chunks the decoder reads, the loss is the
hand-computed sum of its three terms, and bad settings fail clearly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import pipo as pipo_config
from data import tokenizers
from models import Transformer, init_params
from models import heads as heads_lib
from models import pipo as pipo_lib
from testlib import small_config
from training.objectives import make_objective
from training.objectives import pipo as objective_lib


def test_chunk_row_by_hand():
  """Prompt [1 2 3] in pairs ((1 2), (3)), completion [4 5 6 7] in chunks of 1, 2, 1; the
  targets of a chunk are the two stream tokens after it, weighted on the completion only."""
  out = objective_lib.chunk_row([1, 2, 3, 4, 5, 6, 7], 3, [1, 2, 1], C=6, pad=0)
  assert out['first'].tolist() == [1, 3, 4, 5, 7, 0]
  assert out['second'].tolist() == [2, 0, 0, 6, 0, 0]
  assert out['has_second'].tolist() == [True, False, False, True, False, False]
  assert out['positions'].tolist() == [0, 1, 2, 3, 4, -1]  # the last chunk has no targets
  assert out['y1'].tolist() == [0, 4, 5, 7, 0, 0]
  assert out['w1'].tolist() == [0, 1, 1, 1, 0, 0]
  assert out['y2'].tolist() == [4, 5, 6, 0, 0, 0]
  assert out['w2'].tolist() == [1, 1, 1, 0, 0, 0]
  # The last chunk of a stream is cut to what is left; chunk sizes other than 1 / 2 fail.
  assert objective_lib.chunk_row([1, 2, 3], 1, [2, 2], C=4, pad=0)['has_second'].tolist() == \
      [False, True, False, False]
  with pytest.raises(ValueError, match='chunk sizes must be 1 or 2'):
    objective_lib.chunk_row([1, 2, 3, 4], 1, [3], C=4, pad=0)
  with pytest.raises(ValueError, match='do not fit'):
    objective_lib.chunk_row([1, 2, 3, 4], 1, [1, 1, 1], C=3, pad=0)


def test_loss_equals_the_hand_computed_sum_of_its_terms():
  cfg = small_config(vocab_size=16, num_layers=1, init_std=0.3)
  model = Transformer(cfg)
  params = init_params(model, jax.random.key(0))
  pp = pipo_lib.init_params(cfg, jax.random.key(1))
  D = cfg.d_model
  pp['compress']['w_second'] = 0.3 * jax.random.normal(jax.random.key(2), (D, D))
  pp['compress']['hole'] = jax.random.normal(jax.random.key(3), (D,))
  pp['conf'] = {'w': jax.random.normal(jax.random.key(4), (2 * D,)),
                'u': jnp.asarray([0.5, -0.2]), 'b': jnp.asarray(0.1)}
  rows = [objective_lib.chunk_row([1, 2, 3, 4, 5, 6, 7], 3, [1, 2, 1], C=6, pad=0),
          objective_lib.chunk_row([9, 8, 7, 6, 5], 2, [2, 1], C=6, pad=0)]
  batch = {k: jnp.asarray(np.stack([r[k] for r in rows])) for k in rows[0]}
  s = objective_lib.PIPOSettings(mtp_weight=0.7, conf_weight=0.3)
  loss, metrics = objective_lib.losses(model, params, pp, batch, s)

  # By hand: the chunk inputs, one plain forward, the MTP module, the logistic loss.
  E = np.asarray(params['embed']['embedding'])
  c = {k: np.asarray(v) for k, v in pp['compress'].items()}
  f, sec, has = (np.asarray(batch[k]) for k in ('first', 'second', 'has_second'))
  x = E[f] @ c['w_first'] + np.where(has[..., None], E[sec] @ c['w_second'], c['hole']) + c['bias']
  out = model.apply({'params': params}, None, batch['positions'], inputs_embeds_BxTxD=x)
  logp1 = np.asarray(jax.nn.log_softmax(out.logits_BxTxV))
  _, logits2 = heads_lib.MTPModules(cfg, 1).apply(
      {'params': pp['mtp']}, 0, out.last_hidden_BxTxD, batch['y1'], E, E,
      method=heads_lib.MTPModules.step)
  logp2 = np.asarray(jax.nn.log_softmax(logits2))
  w1, w2 = np.asarray(batch['w1']), np.asarray(batch['w2'])
  y1, y2 = np.asarray(batch['y1']), np.asarray(batch['y2'])
  pick = lambda lp, y: np.take_along_axis(lp, y[..., None], -1)[..., 0]
  ce1 = -(pick(logp1, y1) * w1).sum() / w1.sum()
  ce2 = -(pick(logp2, y2) * w2).sum() / w2.sum()
  _, conf = pipo_lib.extra_token(cfg, params, pp, out.last_hidden_BxTxD, batch['y1'])
  p = 1 / (1 + np.exp(-np.asarray(conf, np.float64)))
  right = (logp2.argmax(-1) == y2).astype(np.float64)
  bce = -((right * np.log(p) + (1 - right) * np.log(1 - p)) * w2).sum() / w2.sum()
  np.testing.assert_allclose(float(metrics['ce1']), ce1, rtol=1e-5)
  np.testing.assert_allclose(float(metrics['ce2']), ce2, rtol=1e-5)
  np.testing.assert_allclose(float(metrics['conf_bce']), bce, rtol=1e-4)
  np.testing.assert_allclose(float(loss), ce1 + 0.7 * ce2 + 0.3 * bce, rtol=1e-5)
  # The confidence head's inputs are stop-gradient: its loss reaches no other parameter.
  g = jax.grad(lambda pp_: objective_lib.losses(
      model, params, pp_, batch, objective_lib.PIPOSettings(mtp_weight=0.0, conf_weight=1.0,
                                                            ))[1]['conf_bce'])(pp)
  assert float(jnp.abs(g['conf']['w']).sum()) > 0
  assert float(jnp.abs(g['mtp']['module_0']['proj']).sum()) == 0


def test_batches_and_settings():
  cfg = pipo_config.get_config('size=test')
  tok = tokenizers.make_tokenizer('byte')
  make = objective_lib.make_batch_fn(tok, objective_lib.PIPOSettings.from_config(cfg))
  b = make(np.random.default_rng(0), 4)
  assert set(b) == set(objective_lib.BATCH_KEYS)
  assert b['first'].shape == (4, objective_lib.max_chunks(objective_lib.reasoning.get('prontoqa')))
  for r in range(4):  # the targets of a chunk are the tokens that follow it in the row
    valid = b['positions'][r] >= 0
    stream = [t for f, s, h in zip(b['first'][r][valid], b['second'][r][valid],
                                   b['has_second'][r][valid]) for t in ([f, s] if h else [f])]
    assert stream[-1] == tok.eos_id and b['w1'][r].sum() > 0
    for j in np.flatnonzero(b['w1'][r]):
      assert b['y1'][r, j] == b['first'][r, j + 1]
      if b['has_second'][r, j + 1]:
        assert b['w2'][r, j] and b['y2'][r, j] == b['second'][r, j + 1]
  with pytest.raises(ValueError, match='single_prob must be in'):
    objective_lib.PIPOSettings(single_prob=1.5)
  with pytest.raises(ValueError, match='Unknown config arguments'):
    pipo_config.get_config('size=test,colour=red')
  with pytest.raises(ValueError, match='is not key=value'):
    pipo_config.get_config('test')
  with pytest.raises(ValueError, match='reads a `pipo` config section'):
    make_objective('pipo', Transformer(small_config()), None)
