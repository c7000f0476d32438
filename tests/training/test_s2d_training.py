"""S2D's Sorted Fine-Tuning: the deepest exit's loss is the plain AR loss, the mean over exits
decreases, and every exit learns (test preset)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from testlib import small_config
from configs import s2d as s2d_config
from models import Transformer, init_params
from training.objectives import make_objective


def test_soft_loss_decreases_and_its_deepest_exit_is_the_ar_loss():
  cfg = s2d_config.get_config('test')
  model = Transformer(small_config(vocab_size=64, num_layers=2))
  soft = make_objective('s2d_soft', model, cfg)
  ar = make_objective('ar', model, None)
  params = {'model': init_params(model, jax.random.key(0))}
  tokens = jnp.asarray(np.random.default_rng(0).integers(3, 60, (8, 33)), jnp.int32)
  tokens = tokens.at[:, 16:].set(tokens[:, :17])
  _, m = soft.loss_fn(params, {'tokens': tokens}, None)
  ar_loss, _ = ar.loss_fn(params, {'tokens': tokens}, None)
  np.testing.assert_allclose(m['ce2'], ar_loss, rtol=1e-6)
  np.testing.assert_allclose(m['loss'], (m['ce1'] + m['ce2']) / 2, rtol=1e-6)
  tx = optax.adam(1e-2)

  @jax.jit
  def train_step(p, opt):
    (loss, metrics), g = jax.value_and_grad(
        lambda q: soft.loss_fn({'model': q}, {'tokens': tokens}, None), has_aux=True)(p)
    upd, opt = tx.update(g, opt, p)
    return optax.apply_updates(p, upd), opt, metrics

  p, opt = params['model'], tx.init(params['model'])
  first = None
  for _ in range(15):
    p, opt, metrics = train_step(p, opt)
    first = first or {k: float(v) for k, v in metrics.items()}
  for k in ('loss', 'ce1', 'ce2'):
    assert float(metrics[k]) < 0.8 * first[k], (k, first[k], float(metrics[k]))


def test_soft_errors():
  model = Transformer(small_config(num_layers=2))
  with pytest.raises(ValueError, match='`s2d` config section'):
    make_objective('s2d_soft', model, None)
  cfg = s2d_config.get_config('test')
  cfg.s2d.exits = '1,3'
  with pytest.raises(ValueError, match=r'S2D exit 3 must be in \[1, 2\]'):
    make_objective('s2d_soft', model, cfg)
  with pytest.raises(ValueError, match="takes '' or 'test'"):
    s2d_config.get_config('huge')
