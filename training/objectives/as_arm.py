"""Any-subset autoregressive models (AS-ARM; Guo & Ermon 2025, after XLNet and MAC).

One model gives p(x_i | x_S) for any position i and any revealed set S, and the exact joint
of any order: p(x) = prod_r p(x_{s(r)} | x_{s(<r)}) for an order s. That is what ASSD
(`decoding.diffusion.assd`) needs: drafts from the marginals given S, verified by the
order's conditionals, both read from the same model.

Training: each row draws a uniformly random order over its targets (the positions the
diffusion objectives may noise: the answer of a task row, every token after <bos> of an LM
row); the rest (prompt) is revealed at rank 0. The model reads 2(T+1) tokens under
`models.masks.two_stream_mask`: the clean row (content; token i sees the tokens revealed no
later than itself) and T+1 <mask> queries at the same positions (query i sees the tokens
revealed before i and itself). The loss is the mean CE of the queries at the targets: an
unbiased estimate, over orders, of the exact NLL per token under a random order, so eval
`nll_sum / tokens_sum` is that NLL (not a bound). Config: the `diffusion` section (mask_id,
eval_samples, init_from) and `task`, as for masked diffusion.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from models import any_order
from models import kind as kind_lib
from models import transformer as transformer_lib
from training.objectives import diffusion_lib as lib
from training.objectives.registry import Objective, register


def random_ranks(rng: jax.Array, maskable_BxT: jax.Array) -> jax.Array:
  """[B, T] reveal ranks: 0 where not maskable, a uniform permutation of 1..m over a row's
  m maskable positions."""
  u = jnp.where(maskable_BxT, jax.random.uniform(rng, maskable_BxT.shape), 2.0)
  order_rank = jnp.argsort(jnp.argsort(u, axis=1), axis=1).astype(jnp.int32)
  return jnp.where(maskable_BxT, order_rank + 1, 0)


def as_arm_loss(model: transformer_lib.Transformer, s: lib.DiffusionSettings, params, batch,
                rng, rank_BxT: jax.Array | None = None):
  """(loss, metrics); `rank_BxT` fixes the order (tests)."""
  tokens_BxT = batch['tokens']
  B, T = tokens_BxT.shape
  maskable_BxT = lib.maskable(batch)
  if rank_BxT is None:
    rank_BxT = random_ranks(rng, maskable_BxT)
  pos_BxT = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
  logits = any_order.two_stream_logits(model, params['model'], tokens_BxT, pos_BxT, rank_BxT,
                                       pos_BxT, rank_BxT - 1, s.mask_id)
  logp = lib.subs_log_probs(logits, s.mask_id)
  weights = batch.get('weights', jnp.ones(tokens_BxT[:, 1:].shape, jnp.float32))
  loss, metrics = lib.weighted_masked_ce(logp[:, 1:], tokens_BxT[:, 1:], maskable_BxT[:, 1:],
                                         weights, maskable_BxT[:, 1:])
  metrics = dict(metrics, accuracy=metrics.pop('masked_accuracy'))
  metrics.pop('masked_fraction')  # always 1: every target is predicted
  return loss, metrics


@register('as_arm')
def as_arm_objective(model: transformer_lib.Transformer,
                     config: ml_collections.ConfigDict) -> Objective:
  s = lib.settings(config)
  if s.shift:
    raise ValueError('as_arm reads each position\'s prediction at its own query token; set '
                     'diffusion.shift=False.')

  def loss_fn(params, batch, rng):
    return as_arm_loss(model, s, params, batch, rng)

  return Objective(loss_fn=loss_fn, eval_fn=lib.averaged_eval(loss_fn, s.eval_samples),
                   init_model_params=(lib.init_from(s.init_from, model, s.reinit_ids)
                                      if s.init_from else None),
                   kind=kind_lib.ModelKind(attention='bidirectional', mask_id=s.mask_id,
                                           any_order=True),
                   **lib.data_hooks(config, s.mask_id))
