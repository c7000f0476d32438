"""Objectives registered by name: `make_objective(name, model, config) -> loss_fn`.

A loss function maps (params, batch, rng) -> (scalar loss, metrics dict of scalars). Batches
are dicts of arrays; the AR batch is {'tokens': int32 [B, T + 1]}. Metrics named `*_sum`
are summed over evaluation batches, the rest averaged.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections

from models import transformer as transformer_lib

LossFn = Callable[[Any, dict[str, jax.Array], jax.Array], tuple[jax.Array, dict[str, jax.Array]]]
ObjectiveFactory = Callable[[transformer_lib.Transformer, ml_collections.ConfigDict], LossFn]

_OBJECTIVES: dict[str, ObjectiveFactory] = {}


def register(name: str) -> Callable[[ObjectiveFactory], ObjectiveFactory]:
  """Decorator: registers an objective factory under `name`."""
  def wrap(factory: ObjectiveFactory) -> ObjectiveFactory:
    if name in _OBJECTIVES:
      raise ValueError(f'Objective {name!r} is registered twice.')
    _OBJECTIVES[name] = factory
    return factory
  return wrap


def names() -> list[str]:
  return sorted(_OBJECTIVES)


def make_objective(name: str, model: transformer_lib.Transformer,
                   config: ml_collections.ConfigDict) -> LossFn:
  if name not in _OBJECTIVES:
    raise ValueError(f'Unknown objective {name!r}; registered: {names()}.')
  return _OBJECTIVES[name](model, config)


def token_cross_entropy(logits_BxTxV: jax.Array, targets_BxT: jax.Array,
                        weights_BxT: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Weighted mean next-token cross-entropy (float32) plus summed statistics."""
  logp_BxTxV = jax.nn.log_softmax(logits_BxTxV.astype(jnp.float32), axis=-1)
  nll_BxT = -jnp.take_along_axis(logp_BxTxV, targets_BxT[..., None], axis=-1)[..., 0]
  weights_BxT = weights_BxT.astype(jnp.float32)
  count = jnp.maximum(weights_BxT.sum(), 1.0)
  loss = (nll_BxT * weights_BxT).sum() / count
  correct = (jnp.argmax(logits_BxTxV, -1) == targets_BxT) * weights_BxT
  return loss, {'loss': loss, 'accuracy': correct.sum() / count,
                'nll_sum': (nll_BxT * weights_BxT).sum(), 'tokens_sum': weights_BxT.sum()}


@register('ar')
def ar_objective(model: transformer_lib.Transformer, config: ml_collections.ConfigDict) -> LossFn:
  """Next-token cross-entropy over packed sequences (every target counts)."""
  del config

  def loss_fn(params, batch, rng):
    del rng
    tokens_BxT1 = batch['tokens']
    inputs_BxT, targets_BxT = tokens_BxT1[:, :-1], tokens_BxT1[:, 1:]
    out = model.apply({'params': params}, inputs_BxT)
    weights_BxT = batch.get('weights', jnp.ones(targets_BxT.shape, jnp.float32))
    return token_cross_entropy(out.logits_BxTxV, targets_BxT, weights_BxT)

  return loss_fn
