"""The autoregressive objective: next-token cross-entropy."""

import jax.numpy as jnp
import ml_collections

from models import transformer as transformer_lib
from training.objectives.registry import LossFn, register, token_cross_entropy


@register('ar')
def ar_objective(model: transformer_lib.Transformer, config: ml_collections.ConfigDict) -> LossFn:
  """Next-token cross-entropy over packed sequences (every target counts)."""
  del config

  def loss_fn(params, batch, rng):
    del rng
    tokens_BxT1 = batch['tokens']
    inputs_BxT, targets_BxT = tokens_BxT1[:, :-1], tokens_BxT1[:, 1:]
    out = model.apply({'params': params['model']}, inputs_BxT)
    weights_BxT = batch.get('weights', jnp.ones(targets_BxT.shape, jnp.float32))
    return token_cross_entropy(out.logits_BxTxV, targets_BxT, weights_BxT)

  return loss_fn
