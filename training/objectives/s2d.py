"""S2D's Sorted Fine-Tuning (SoFT) of a nested draft: `s2d_soft`.

The draft is an ordinary Transformer trained from scratch on the corpus; its exits
(`s2d.exits`, e.g. layers 1, 2 and 4 of 4) share the final norm and the output head
(models/s2d.py). Loss = mean over exits of the next-token cross-entropy of
head(final_norm(residual stream after layer e)); the deepest exit is the model's own output.
Metrics: `ce{e}`, `acc{e}` per exit. The run is a plain AR model (any exit is a draft model
for any target with the same tokenizer).
"""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections

from models import s2d as s2d_lib
from models import transformer as transformer_lib
from training.objectives.registry import Objective, register, token_cross_entropy


@register('s2d_soft')
def s2d_soft(model: transformer_lib.Transformer,
             config: ml_collections.ConfigDict) -> Objective:
  """Mean CE over the nested exits (see module docstring)."""
  if config is None or 's2d' not in config:
    raise ValueError('s2d_soft reads an `s2d` config section (exits): use configs/s2d.py.')
  exits = s2d_lib.parse_exits(config.s2d.exits, model.cfg.num_layers)

  def loss_fn(params, batch, rng):
    del rng
    tokens = batch['tokens']
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    weights = jnp.ones(targets.shape)
    p = params['model']
    out = model.apply({'params': p}, inputs, return_hidden=True)
    total, metrics = 0.0, {}
    for e in exits:
      logits = s2d_lib.exit_logits(model, p, out.hidden[e])
      ce, m = token_cross_entropy(logits, targets, weights)
      total = total + ce
      metrics[f'ce{e}'], metrics[f'acc{e}'] = ce, m['accuracy']
      if e == exits[-1]:  # the deepest exit's statistics (bits per byte in eval)
        metrics.update(nll_sum=m['nll_sum'], tokens_sum=m['tokens_sum'])
    loss = total / len(exits)
    return loss, dict(metrics, loss=loss)

  return Objective(loss_fn=loss_fn)
