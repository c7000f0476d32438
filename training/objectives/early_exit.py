"""LayerSkip's early-exit loss: the model's own final norm and head read after every layer.

LayerSkip (Elhoushi et al. 2024) trains a model so that its shallow layers already predict
the next token through the shared head; self-speculation (`layerskip` decoder) then drafts
with the first E layers and verifies with the rest. Without such training a model's exit
after E layers is a poor draft (on our `mem` target, exit 2 of 8: 0.47 of first drafts
accepted, benchmarks/results/speculative_raw_mem_cpu.md). The loss here is

  L = CE(final) + scale * sum_l w_l CE(head(final_norm(h_l))),   w_l = l / sum_k k,

over the exits l in `exit.layers` (() = every layer 1 .. L-1; h_l the residual stream after
l layers, exactly what the decoder's early exit reads), with deeper exits weighted more as
in the paper's per-layer scale. The paper also drops layers at random during training
(layer dropout) and rotates the exits through a curriculum to save compute; neither is done
here (every exit every step costs one [V, D] head per exit, small next to the layers).

Config section `exit`: layers, scale, init_from (an AR workdir with the same model to start
from; '' = from scratch). Metrics: the final head's loss and accuracy (`full_loss`,
`full_accuracy`), each exit's (`exit{l}_loss`, `exit{l}_accuracy`, the latter about the
acceptance rate of that exit's first draft) and, in training, the total above as `loss`
(evaluation reports the final head's loss as `loss`, from its summed log-likelihood, with
bits per byte).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import ml_collections

from models import heads as heads_lib
from models import transformer as transformer_lib
from training.objectives.registry import (Objective, params_from_run, read_section, register,
                                          token_cross_entropy)


@dataclasses.dataclass(frozen=True)
class ExitSettings:
  layers: tuple[int, ...] = ()
  scale: float = 1.0
  init_from: str = ''


def settings(config: ml_collections.ConfigDict | None, num_layers: int) -> ExitSettings:
  s = read_section(config, 'exit', ExitSettings)
  s = dataclasses.replace(s, layers=tuple(int(l) for l in s.layers))
  if not s.layers:
    s = dataclasses.replace(s, layers=tuple(range(1, num_layers)))
  bad = [l for l in s.layers if not 1 <= l <= num_layers - 1]
  if bad or len(set(s.layers)) != len(s.layers):
    raise ValueError(f'exit.layers must be distinct layers in [1, {num_layers - 1}] (the exit '
                     f'after l layers), got {s.layers}.')
  if s.scale < 0:
    raise ValueError(f'exit.scale must be >= 0, got {s.scale}.')
  return s


def exit_weights(layers: tuple[int, ...]) -> tuple[float, ...]:
  """w_l = l / sum of the exits: deeper exits weigh more; they sum to 1."""
  total = float(sum(layers))
  return tuple(l / total for l in layers)


@register('early_exit')
def early_exit_objective(model: transformer_lib.Transformer,
                         config: ml_collections.ConfigDict) -> Objective:
  """Next-token cross-entropy at the final head plus at every exit (module docstring)."""
  s = settings(config, model.cfg.num_layers)
  weights = exit_weights(s.layers)
  cfg = model.cfg

  def loss_fn(params, batch, rng):
    del rng
    tokens_BxT1 = batch['tokens']
    inputs_BxT, targets_BxT = tokens_BxT1[:, :-1], tokens_BxT1[:, 1:]
    weights_BxT = batch.get('weights', jnp.ones(targets_BxT.shape, jnp.float32))
    p = params['model']
    out = model.apply({'params': p}, inputs_BxT, return_hidden=True)
    final, metrics = token_cross_entropy(out.logits_BxTxV, targets_BxT, weights_BxT)
    total = final
    for l, w in zip(s.layers, weights):
      logits = heads_lib.exit_logits(p, cfg, out.hidden[l])
      loss_l, m = token_cross_entropy(logits, targets_BxT, weights_BxT)
      total = total + s.scale * w * loss_l
      metrics[f'exit{l}_loss'] = loss_l
      metrics[f'exit{l}_accuracy'] = m['accuracy']
    metrics.update(full_loss=final, full_accuracy=metrics.pop('accuracy'), loss=total)
    return total, metrics

  return Objective(loss_fn=loss_fn, init_model_params=params_from_run(
      model, s.init_from, 'exit.init_from') if s.init_from else None)
