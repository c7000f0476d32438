"""SkipDecode fine-tuning: next-token loss with random non-decreasing per-position layer skips.

SkipDecode (`decoding/skipdecode.py`) feeds a generated token's embedding straight into
layer s, skipping layers 0 .. s-1, with s never decreasing along the generation. The paper
fine-tunes the model under such schedules so that lower layers can be skipped. Here each row
of a batch gets its own random linear profile

  skip_t = min(s, floor((s + 1) * clip((t - t0) / (t1 - t0), 0, 1))),   s ~ U{1..max_skip},
  t0 ~ U[0, T), t1 ~ U(t0, t0 + T]

(no skip before t0, rising to s at t1, then constant), and with probability `full_fraction`
no skip at all, so the full model stays as good as before. One forward with the model's
`skip_layers_BxT` runs each row exactly as the decoder would run it token by token.

Config section `skip`: max_skip (-1 = num_layers - 1), full_fraction, init_from (an AR
workdir with the same model to start from; '' = from scratch). Eval metrics: the loss under
random skips (`loss`) and the full model's (`full_loss`, `full_accuracy`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections

from models import transformer as transformer_lib
from training.objectives.registry import (Objective, params_from_run, read_section, register,
                                          token_cross_entropy)


@dataclasses.dataclass(frozen=True)
class SkipSettings:
  max_skip: int = -1
  full_fraction: float = 0.25
  init_from: str = ''


def settings(config: ml_collections.ConfigDict | None, num_layers: int) -> SkipSettings:
  s = read_section(config, 'skip', SkipSettings)
  if s.max_skip < 0:
    s = dataclasses.replace(s, max_skip=num_layers - 1)
  if not 1 <= s.max_skip <= num_layers - 1:
    raise ValueError(f'skip.max_skip must be in [1, {num_layers - 1}] (at least one layer '
                     f'runs), got {s.max_skip}.')
  if not 0.0 <= s.full_fraction <= 1.0:
    raise ValueError(f'skip.full_fraction must be in [0, 1], got {s.full_fraction}.')
  return s


def random_skips(rng: jax.Array, batch: int, length: int, max_skip: int,
                 full_fraction: float) -> jax.Array:
  """[B, T] int32 skip profiles, non-decreasing along T (see the module docstring)."""
  k_s, k_t0, k_t1, k_full = jax.random.split(rng, 4)
  s_B = jax.random.randint(k_s, (batch,), 1, max_skip + 1)
  t0_B = jax.random.randint(k_t0, (batch,), 0, length)
  t1_B = t0_B + jax.random.randint(k_t1, (batch,), 1, length + 1)
  t_T = jnp.arange(length)
  frac_BxT = jnp.clip((t_T[None] - t0_B[:, None]) / (t1_B - t0_B)[:, None], 0.0, 1.0)
  skip_BxT = jnp.minimum(jnp.floor((s_B[:, None] + 1) * frac_BxT + 1e-6).astype(jnp.int32),
                         s_B[:, None])
  full_B = jax.random.uniform(k_full, (batch,)) < full_fraction
  return jnp.where(full_B[:, None], 0, skip_BxT)


@register('skipdecode')
def skipdecode_objective(model: transformer_lib.Transformer,
                         config: ml_collections.ConfigDict) -> Objective:
  """Next-token cross-entropy under random SkipDecode profiles (see the module docstring)."""
  s = settings(config, model.cfg.num_layers)

  def loss_fn(params, batch, rng):
    tokens_BxT1 = batch['tokens']
    inputs_BxT, targets_BxT = tokens_BxT1[:, :-1], tokens_BxT1[:, 1:]
    B, T = inputs_BxT.shape
    skip_BxT = random_skips(rng, B, T, s.max_skip, s.full_fraction)
    out = model.apply({'params': params['model']}, inputs_BxT, skip_layers_BxT=skip_BxT)
    weights_BxT = batch.get('weights', jnp.ones(targets_BxT.shape, jnp.float32))
    loss, metrics = token_cross_entropy(out.logits_BxTxV, targets_BxT, weights_BxT)
    metrics['mean_skip'] = jnp.mean(skip_BxT.astype(jnp.float32))
    return loss, metrics

  def eval_fn(params, batch, rng):
    loss, metrics = loss_fn(params, batch, rng)
    tokens_BxT1 = batch['tokens']
    out = model.apply({'params': params['model']}, tokens_BxT1[:, :-1])
    weights_BxT = batch.get('weights', jnp.ones(tokens_BxT1[:, 1:].shape, jnp.float32))
    _, full = token_cross_entropy(out.logits_BxTxV, tokens_BxT1[:, 1:], weights_BxT)
    metrics.update(full_loss=full['loss'], full_accuracy=full['accuracy'])
    return loss, metrics

  return Objective(loss_fn=loss_fn, eval_fn=eval_fn, init_model_params=params_from_run(
      model, s.init_from, 'skip.init_from') if s.init_from else None)
