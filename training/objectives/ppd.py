"""PPD prompt tokens on a frozen target, by self-distillation (`ppd_prompts`).

The run starts from the target in `spec.target_workdir` and trains only params['ppd'] =
{'prompts': [K, D]} (models/ppd.py); the base is frozen (`frozen=('model',)`). Each training
row of T tokens gets K prompt tokens attached to every token (`models.ppd.layout`: one
forward over T(1+K) tokens with an explicit mask, the base's own outputs unchanged). Prompt i
attached to token t predicts token t + 2 + i; its target is the base model's own
distribution there (its logits at token t + 1 + i, given the true prefix):

  loss = sum_i decay^i KL(p_base(. | x_<=t+1+i) || q_i(. | x_<=t)) / K      (decay = 0.8)

Metrics: kl{i+1} and top1_{i+1}, the share of positions where prompt i's argmax equals the
base's (its greedy acceptance at depth i + 1, before the tree).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from models import ppd as ppd_lib
from models import transformer as transformer_lib
from training.objectives import spec_heads
from training.objectives.registry import Objective, register


def prompt_kl(model: transformer_lib.Transformer, model_params, prompts_KxD, inputs_BxT,
              decay: float) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The PPD distillation loss of prompt tokens `prompts_KxD` on rows `inputs_BxT` (the
  base's params under stop_gradient) and its metrics."""
  B, T = inputs_BxT.shape
  K = prompts_KxD.shape[0]
  base_logits, prompt_logits = ppd_lib.forward_with_prompts(
      model, jax.lax.stop_gradient(model_params), prompts_KxD, inputs_BxT)
  logp = jax.lax.stop_gradient(jax.nn.log_softmax(base_logits.astype(jnp.float32), -1))
  logq = jax.nn.log_softmax(prompt_logits.astype(jnp.float32), -1)  # [B, T, K, V]
  total, metrics = 0.0, {}
  for i in range(K):
    n = T - 1 - i  # anchors t = 0 .. T - 2 - i have a target at t + 1 + i <= T - 1
    if n <= 0:
      raise ValueError(f'Rows of {T} tokens are too short for {K} prompt tokens.')
    lp = logp[:, 1 + i:]
    lq = logq[:, :n, i]
    kl = jnp.mean(jnp.sum(jnp.exp(lp) * (lp - lq), -1))
    top1 = jnp.mean(jnp.argmax(lq, -1) == jnp.argmax(lp, -1))
    total = total + decay ** i * kl
    metrics[f'kl{i + 1}'] = kl
    metrics[f'top1_{i + 1}'] = top1
  return total / K, metrics


@register('ppd_prompts')
def ppd_prompts(model: transformer_lib.Transformer,
                config: ml_collections.ConfigDict) -> Objective:
  """PPD prompt tokens by self-distillation on a frozen target (see module docstring)."""
  s = spec_heads.spec_settings(config)
  if s.heads < 1:
    raise ValueError(f'spec.heads (the number of prompt tokens) must be >= 1, got {s.heads}.')
  if s.joint:
    raise ValueError('PPD trains only the prompt tokens: spec.joint must be False.')

  def init_model_params():
    return spec_heads.load_target(s.target_workdir, model).params

  def init_extras(rng):
    return {ppd_lib.PPD: ppd_lib.init_params(model.cfg.d_model, s.heads, rng,
                                             model.cfg.init_std)}

  def loss_fn(params, batch, rng):
    del rng
    loss, metrics = prompt_kl(model, params['model'], params[ppd_lib.PPD]['prompts'],
                              batch['tokens'][:, :-1], s.decay)
    return loss, dict(metrics, loss=loss)

  return Objective(loss_fn=loss_fn, init_extras=init_extras, frozen=('model',),
                   init_model_params=init_model_params)
