"""Sharded training follows the single-device loss curve; parameters shard as the rules say."""

import jax
import numpy as np
from jax.sharding import PartitionSpec as P

from configs import lm
from testlib import small_config
from models import Transformer, sharding
from training import objectives, optimizer, step, train_state


def _train(mesh, cfg, batches, train_cfg, grad_accum=1):
  model = Transformer(cfg)
  objective = objectives.make_objective('ar', model, None)
  tx = optimizer.make_optimizer(train_cfg)
  rules = sharding.DEFAULT_RULES
  shardings = train_state.state_shardings(model, objective, tx, mesh, rules)
  state = train_state.create_train_state(model, objective, tx, jax.random.key(0), shardings)
  batch_sharding = {'tokens': sharding.batch_sharding(mesh, 2, rules)}
  fn = step.jit_train_step(objective.loss_fn, tx, grad_accum=grad_accum, seed=0,
                           state_shardings=shardings)
  losses = []
  for b in batches:
    state, m = fn(state, {'tokens': jax.device_put(b, batch_sharding['tokens'])})
    losses.append(float(m['loss']))
  return state, losses


def test_2x2x2_mesh_follows_single_device_loss_curve():
  cfg = small_config(vocab_size=64)
  train_cfg = lm.get_config('test').train
  rng = np.random.default_rng(0)
  batches = [rng.integers(0, 64, (8, 17), dtype=np.int32) for _ in range(8)]
  one = sharding.make_mesh({'data': 1}, devices=jax.devices()[:1])
  eight = sharding.make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2})
  state1, losses1 = _train(one, cfg, batches, train_cfg)
  state8, losses8 = _train(eight, cfg, batches, train_cfg)
  # Stated tolerance: different reduction orders only, 1e-4 relative over 8 steps.
  np.testing.assert_allclose(losses8, losses1, rtol=1e-4)
  assert losses1[-1] < losses1[0]
  for a, b in zip(jax.tree.leaves(state1.params), jax.tree.leaves(state8.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
  p = state8.params['model']
  assert p['layer_0']['mlp']['gate'].sharding.spec == P('fsdp', 'tensor')
  assert p['layer_0']['mlp']['down'].sharding.spec == P('tensor', 'fsdp')
  assert p['layer_0']['attn']['q'].sharding.spec == P('fsdp', 'tensor', None)
  assert p['layer_0']['attn']['k'].sharding.spec == P('fsdp', 'tensor', None)
  assert p['embed']['embedding'].sharding.spec == P('tensor', 'fsdp')
  # Adam moments follow their parameters.
  mu = state8.opt_state[1][0].mu
  assert mu['model']['layer_0']['mlp']['gate'].sharding.spec == P('fsdp', 'tensor')


def test_rules_replicate_what_does_not_divide():
  mesh = sharding.make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2})
  spec = sharding.logical_to_spec(P('embed', 'kv_heads', 'head_dim'), (32, 3, 8), mesh,
                                  sharding.DEFAULT_RULES)
  assert spec == P('fsdp', None, None)


def test_mesh_errors():
  import pytest  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match='needs 3 devices but 8 are available'):
    sharding.make_mesh({'data': 3})
  with pytest.raises(ValueError, match='not divisible by 3'):
    sharding.make_mesh({'data': -1, 'tensor': 3})
  with pytest.raises(ValueError, match='Unknown mesh axes'):
    sharding.make_mesh({'model': 2})
  with pytest.raises(ValueError, match='Batch size 4 is not divisible'):
    sharding.check_batch(4, sharding.make_mesh({'data': 8}))


def test_gradient_accumulation_equals_one_big_batch():
  """Two microbatches of 4 rows give the update of one batch of 8 (equal token counts)."""
  cfg = small_config(vocab_size=64)
  train_cfg = lm.get_config('test').train
  rng = np.random.default_rng(1)
  batches = [rng.integers(0, 64, (8, 17), dtype=np.int32) for _ in range(3)]
  one = sharding.make_mesh({'data': 1}, devices=jax.devices()[:1])
  full, losses_full = _train(one, cfg, batches, train_cfg)
  accum, losses_accum = _train(one, cfg, batches, train_cfg, grad_accum=2)
  np.testing.assert_allclose(losses_accum, losses_full, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(full.params), jax.tree.leaves(accum.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-6)
