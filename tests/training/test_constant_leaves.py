"""Integer leaves of the params (e.g. an EAGLE draft's vocabulary ids) are constants of a run:
the train step gives them zero gradients, the optimizer never changes them, and runs without
them keep the optimizer state they had (checkpoints of earlier runs still restore)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import lm
from training import optimizer, step


def _params():
  return {'model': {'w': jnp.ones((4, 3))},
          'head': {'w': jnp.full((3, 2), 0.5), 'b': jnp.zeros((2,)),
                   'ids': jnp.asarray([7, 3, 5], jnp.int32)}}


def _loss(params, batch, rng):
  del rng
  x = batch['x'] @ params['model']['w'] @ params['head']['w'] + params['head']['b']
  picked = jnp.take(x, params['head']['ids'] % 2, axis=-1)  # the ids are read by the loss
  loss = jnp.mean(picked ** 2)
  return loss, {'loss': loss}


@pytest.mark.parametrize('grad_accum,frozen', [(1, ('model',)), (2, ('model',)), (1, ())])
def test_integer_leaves_stay_as_they_are(grad_accum, frozen):
  tc = lm.get_config('test').train
  tx = optimizer.make_optimizer(tc, frozen=frozen)
  params = _params()
  state = step.TrainState(step=jnp.int32(0), params=params, opt_state=tx.init(params))
  batch = {'x': jax.random.normal(jax.random.key(0), (4, 4))}
  fn = jax.jit(lambda s, b: step.train_step(s, b, loss_fn=_loss, tx=tx, grad_accum=grad_accum,
                                            seed=0))
  for _ in range(3):
    state, metrics = fn(state, batch)
  assert float(metrics['finite']) == 1.0
  ids = state.params['head']['ids']
  assert ids.dtype == jnp.int32
  np.testing.assert_array_equal(ids, [7, 3, 5])
  if frozen:
    np.testing.assert_array_equal(state.params['model']['w'], params['model']['w'])
  else:
    assert not np.allclose(state.params['model']['w'], params['model']['w'])
  assert not np.allclose(state.params['head']['w'], params['head']['w'])  # trained
  assert not np.allclose(state.params['head']['b'], 0.0)


def test_trees_without_integer_leaves_keep_their_optimizer_state():
  """The labels stay one per top-level key where no integer sits: the state's structure is
  the one earlier checkpoints hold."""
  tc = lm.get_config('test').train
  params = {'model': {'w': jnp.ones((4, 3))}, 'heads': {'w': jnp.ones((3, 2))}}
  frozen = ('model',)
  inner = optimizer.make_optimizer(tc)
  before = optax.multi_transform({'train': inner, 'frozen': optax.set_to_zero()},
                                 lambda p: {k: 'frozen' if k in frozen else 'train' for k in p})
  now = optimizer.make_optimizer(tc, frozen=frozen)
  assert (jax.tree.structure(now.init(params)) == jax.tree.structure(before.init(params)))
  plain = optimizer.make_optimizer(tc)  # nothing frozen: the plain chain's state, as before
  chain = optax.chain(optax.clip_by_global_norm(tc.grad_clip),  # make_optimizer's own chain
                      optax.adamw(optimizer.learning_rate_schedule(tc),
                                  weight_decay=tc.weight_decay,
                                  mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)))
  assert jax.tree.structure(plain.init(params)) == jax.tree.structure(chain.init(params))
