"""SIM-CoT: Coconut plus step-level supervision of the continuous thoughts.

An auxiliary decoder, used only in training, is teacher-forced to produce the text of step k
from the k-th group of c thoughts (InternLM/SIM-CoT):

  aux input   [thought_{kc}, ..., thought_{kc+c-1}, E[step_k tokens[:-1]]]
  aux target  step_k tokens + <eos>
  loss        answer CE (Coconut's suffix loss) + sim_cot_weight * mean step CE

The auxiliary decoder is a Transformer of `latent.aux_layers` layers with the model's width;
it shares the model's token embedding (and tied head): its parameter tree
params['aux_decoder'] holds everything but 'embed', and the model's embedding is plugged in
at every call, so step supervision also trains the shared embedding. Only replaced steps
(k < skipped steps) are supervised. Dropped at inference: decode with the `coconut` decoder.
With one run per stage (benchmarks/latent_train.py) the auxiliary decoder starts afresh at
every stage, like the optimizer.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from models import transformer as transformer_lib
from training.objectives import coconut
from training.objectives.registry import Objective, register, token_cross_entropy


def aux_model(model: transformer_lib.Transformer, layers: int) -> transformer_lib.Transformer:
  if layers < 1:
    raise ValueError(f'latent.aux_layers must be >= 1, got {layers}.')
  return transformer_lib.Transformer(dataclasses.replace(model.cfg, num_layers=layers,
                                                         layer_types=()))


def step_loss(aux: transformer_lib.Transformer, aux_params: Any, embed_params: Any,
              thoughts_BxLxD: jax.Array, steps_BxGxLs: jax.Array, weights_BxGxLs: jax.Array,
              c: int) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Mean CE of the auxiliary decoder on each supervised step [B, G, Ls]."""
  B, G, Ls = steps_BxGxLs.shape
  D = thoughts_BxLxD.shape[-1]
  groups_BxGxcxD = thoughts_BxLxD[:, :G * c].reshape(B, G, c, D)
  tok_BxGxLsxD = jnp.take(embed_params['embedding'], steps_BxGxLs[..., :-1], axis=0)
  x = jnp.concatenate([groups_BxGxcxD, tok_BxGxLsxD.astype(groups_BxGxcxD.dtype)], axis=2)
  out = aux.apply({'params': {**aux_params, 'embed': embed_params}}, None,
                  jnp.broadcast_to(jnp.arange(c + Ls - 1), (B * G, c + Ls - 1)),
                  inputs_embeds_BxTxD=x.reshape(B * G, c + Ls - 1, D))
  logits = out.logits_BxTxV[:, c - 1:].reshape(B, G, Ls, -1)
  loss, m = token_cross_entropy(logits, steps_BxGxLs, weights_BxGxLs)
  return loss, {'step_loss': loss, 'step_accuracy': m['accuracy']}


@register('sim_cot')
def sim_cot_objective(model: transformer_lib.Transformer, config: ml_collections.ConfigDict
                      ) -> Objective:
  s = coconut.LatentSettings.from_config(config, 'coconut')
  if s.max_thoughts < 1:
    raise ValueError('sim_cot needs latent.max_stage >= 1 (thought groups to supervise).')
  aux = aux_model(model, s.aux_layers)
  forward = coconut.make_forward(model, s, coconut.pause_token_id(config))

  def init_extras(rng):
    p = transformer_lib.init_params(aux, rng)
    return {'aux_decoder': {k: v for k, v in p.items() if k != 'embed'}}

  def loss_fn(params, batch, rng):
    del rng
    logits, thoughts_BxLxD = forward(params['model'], batch)
    loss, metrics = coconut.answer_metrics(logits, batch)
    aux_loss, aux_metrics = step_loss(aux, params['aux_decoder'], params['model']['embed'],
                                      thoughts_BxLxD, batch['steps'], batch['steps_weights'],
                                      s.c)
    total = loss + s.sim_cot_weight * aux_loss
    return total, dict(metrics, **aux_metrics, answer_loss=loss, loss=total)

  def eval_fn(params, batch, rng):  # report the answer loss like the other objectives
    _, m = loss_fn(params, batch, rng)
    return m['answer_loss'], dict(m, loss=m['answer_loss'])

  train_it, eval_b, init = coconut.data_hooks(s, config, with_steps=True)
  return Objective(loss_fn=loss_fn, init_extras=init_extras, make_train_iterator=train_it,
                   make_eval_batches=eval_b, eval_fn=eval_fn, init_model_params=init)
