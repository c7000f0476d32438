"""benchmarks.layerskip_recipe's exit statistics against what they must be: with the layers
after the first made identities every exit is the final head (agreement 1, the same loss),
and the final loss is the model's own next-token loss."""

import types

import jax
import jax.numpy as jnp
import numpy as np

from testlib import small_config
from benchmarks import layerskip_recipe
from models import Transformer, init_params
from training.objectives import token_cross_entropy

DOCS = [[1, 5, 9, 3, 7, 2, 8, 8, 4], [3, 3, 6, 1, 2], [9, 1]]


def _bench(identity_after_first: bool):
  model = Transformer(small_config(num_layers=3))
  params = init_params(model, jax.random.key(0))
  if identity_after_first:  # layers 1 and 2 add nothing to the residual stream
    for i in (1, 2):
      layer = params[f'layer_{i}']
      layer['attn']['o'] = jnp.zeros_like(layer['attn']['o'])
      layer['mlp']['down'] = jnp.zeros_like(layer['mlp']['down'])
  return types.SimpleNamespace(model=model, params=params)


def test_identity_layers_make_every_exit_the_final_head():
  stats = layerskip_recipe.exit_stats(_bench(True), DOCS)
  assert stats['tokens'] == sum(len(d) - 1 for d in DOCS)
  for e in stats['exits']:
    assert e['agree'] == 1.0
    np.testing.assert_allclose(e['loss'], stats['loss'], rtol=1e-5)


def test_final_loss_is_the_models_token_weighted_loss():
  bench = _bench(False)
  stats = layerskip_recipe.exit_stats(bench, DOCS)
  nll = count = 0.0
  for d in DOCS:
    logits = bench.model.apply({'params': bench.params}, jnp.asarray([d[:-1]])).logits_BxTxV
    loss, _ = token_cross_entropy(logits, jnp.asarray([d[1:]]), jnp.ones((1, len(d) - 1)))
    nll += float(loss) * (len(d) - 1)
    count += len(d) - 1
  np.testing.assert_allclose(stats['loss'], nll / count, rtol=1e-5)
  assert all(0.0 <= e['agree'] <= 1.0 for e in stats['exits'])
  assert [e['layer'] for e in stats['exits']] == [1, 2]
