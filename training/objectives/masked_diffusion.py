"""Masked diffusion (MDLM / LLaDA): a bidirectional denoiser trained on the continuous-time ELBO.

For each row draw t ~ U[sampling_eps, 1] (antithetic across the batch), mask every maskable
token with probability p_mask = (1 - eps) t (the log-linear schedule), run the Transformer with
bidirectional attention over all T+1 tokens and score the masked tokens:

  loss = sum_{masked i} w(t) * -log p(x_i | z_t) / (maskable tokens)

with w(t) = sigma'(t) / expm1(sigma(t)) = 1/t ('mdlm') or 1/p_mask ('llada'; identical for
eps = 0). SUBS: the mask token's logit is -inf. Prompts (weight 0) are never noised.
With `diffusion.shift` the prediction for position i is read at i-1 (Dream-style, for adapting
an AR checkpoint given by `diffusion.init_from`); without it, at i (SDAR-style / MDLM).

Evaluation reports the ELBO: loss = nll_sum / tokens_sum in nats per token (the trainer also
reports bits per byte on LM data), averaged over `eval_samples` noise draws.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from models import kind as kind_lib
from models import transformer as transformer_lib
from training.objectives import diffusion_lib as lib
from training.objectives.registry import Objective, register, token_cross_entropy


def masked_diffusion_loss(model: transformer_lib.Transformer, s: lib.DiffusionSettings,
                          params, batch, rng, t_B: jax.Array | None = None):
  """(loss, metrics) for one batch; `t_B` fixes the noise levels (tests), else antithetic."""
  tokens_BxT = batch['tokens']
  B = tokens_BxT.shape[0]
  t_rng, m_rng = jax.random.split(rng)
  if t_B is None:
    t_B = lib.antithetic_times(t_rng, (B,), s.sampling_eps)
  maskable_BxT = lib.maskable(batch)
  p_mask_BxT = jnp.broadcast_to(s.schedule.move_chance(t_B)[:, None], tokens_BxT.shape)
  z_BxT, masked_BxT = lib.noise(m_rng, tokens_BxT, maskable_BxT, p_mask_BxT, s.mask_id)
  out = model.apply({'params': params['model']}, z_BxT, attn_mask='bidirectional')
  logp = lib.subs_log_probs(lib.predictions_at(out.logits_BxTxV, s.shift), s.mask_id)
  weight_BxT = jnp.broadcast_to(lib.token_weights(s, t_B)[:, None], tokens_BxT[:, 1:].shape)
  return lib.weighted_masked_ce(logp, tokens_BxT[:, 1:], masked_BxT[:, 1:], weight_BxT,
                                maskable_BxT[:, 1:])


@register('masked_diffusion')
def masked_diffusion_objective(model: transformer_lib.Transformer,
                               config: ml_collections.ConfigDict) -> Objective:
  s = lib.settings(config)

  def loss_fn(params, batch, rng):
    return masked_diffusion_loss(model, s, params, batch, rng)

  return Objective(loss_fn=loss_fn, eval_fn=lib.averaged_eval(loss_fn, s.eval_samples),
                   init_model_params=(lib.init_from(s.init_from, model, s.reinit_ids)
                                      if s.init_from else None),
                   kind=kind_lib.ModelKind(attention='bidirectional', mask_id=s.mask_id,
                                           shift=s.shift),
                   **lib.data_hooks(config, s.mask_id))


@register('ar_task')
def ar_task_objective(model: transformer_lib.Transformer,
                      config: ml_collections.ConfigDict) -> Objective:
  """Next-token cross-entropy on the answer tokens of `config.task` rows (the AR baseline
  trained on exactly the data the diffusion objectives see)."""

  def loss_fn(params, batch, rng):
    del rng
    tokens = batch['tokens']
    out = model.apply({'params': params['model']}, tokens[:, :-1])
    weights = batch.get('weights', jnp.ones(tokens[:, 1:].shape, jnp.float32))
    return token_cross_entropy(out.logits_BxTxV, tokens[:, 1:], weights)

  if not lib.task_name(config):
    raise ValueError("Objective 'ar_task' needs config.task.name (use 'ar' for LM data).")
  return Objective(loss_fn=loss_fn, **lib.data_hooks(config))
