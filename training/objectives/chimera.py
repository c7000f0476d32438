"""Chimera's draft (models/chimera.py) on a frozen target: `chimera_draft`.

Starts from the target checkpoint in `spec.target_workdir` and trains only params['chimera']
(the target, its embedding and head frozen); the heads start as [W_lm; W_lm] of the target.

Training row: tokens x_0 .. x_T; the target runs on x_0 .. x_{T-1} (final-normed hidden
states h_q, next-token logits l_q). Pair q = 1 .. T - 1 reads (h_{q-1}, trigram ending at x_q);
head k (1 .. K = `spec.heads`) at pair q predicts x_{q+k}, whose target distribution is
softmax(l_{q+k-1}). Pairs whose x_{q+k} lies past the row are masked. Loss per head
(`spec.loss`):

  'kl'   KL(softmax(l_{q+k-1}) || q_k)           distillation on the distributions (default)
  'mse'  mean squared error between the head's logits and l_{q+k-1}  (Chimera's code
         distils with MSE on logits)
  'ce'   cross-entropy against the data token x_{q+k}

combined as sum_k decay^k loss_k / sum_k decay^k (`spec.decay`). Metrics: `agree{k}`, head
k's top-1 agreement with the target (the greedy acceptance of the k-th draft when the ones
before it were right), `acc{k}` its top-1 accuracy on the data.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from models import chimera as chimera_lib
from models import heads as heads_lib
from models import transformer as transformer_lib
from training.objectives import spec_heads
from training.objectives.registry import Objective, register

LOSSES = ('kl', 'mse', 'ce')


def chimera_logits(module: chimera_lib.ChimeraDraft, params, out, inputs_BxT, in_emb_VxD):
  """[B, T - 1, K, V] head logits at pairs 1 .. T - 1 of a training row (`out` the target's
  forward over inputs_BxT)."""
  B, T = inputs_BxT.shape
  pos = jnp.broadcast_to(jnp.arange(T), (B, T))
  tri = chimera_lib.trigram_tokens(inputs_BxT, pos, jnp.full((B, 2), -1, jnp.int32))
  logits, _ = module.apply({'params': params}, out.last_hidden_BxTxD[:, :-1], tri[:, 1:],
                           pos[:, 1:], in_emb_VxD)
  return logits


@register('chimera_draft')
def chimera_draft(model: transformer_lib.Transformer,
                  config: ml_collections.ConfigDict) -> Objective:
  """Chimera's trigram encoder + full-context layer + residual heads (see module docstring)."""
  s = spec_heads.spec_settings(config)
  spec_heads.refuse_draft_vocab(config, 'chimera_draft')
  cfg = model.cfg
  K = s.heads
  if K < 1:
    raise ValueError(f'spec.heads must be >= 1 for chimera_draft, got {K}.')
  if s.loss not in LOSSES:
    raise ValueError(f'spec.loss must be one of {LOSSES} for chimera_draft, got {s.loss!r}.')
  module = chimera_lib.ChimeraDraft(cfg, K)
  init_model = spec_heads._init_from(s, model)  # pylint: disable=protected-access

  @functools.cache
  def lm_head() -> np.ndarray:
    with jax.ensure_compile_time_eval():  # init_extras also runs under eval_shape
      return np.asarray(heads_lib.output_embedding(init_model(), cfg))

  def init_extras(rng):
    p = chimera_lib.init_params(cfg, K, rng)
    return {chimera_lib.CHIMERA: chimera_lib.init_heads_from(p, jnp.asarray(lm_head()))}

  def loss_fn(params, batch, rng):
    del rng
    tokens = batch['tokens']
    inputs = tokens[:, :-1]
    B, T = inputs.shape
    N = T - 1
    out = jax.tree.map(jax.lax.stop_gradient, model.apply({'params': params['model']}, inputs))
    in_emb = jax.lax.stop_gradient(heads_lib.input_embedding(params['model']))
    logits = chimera_logits(module, params[chimera_lib.CHIMERA], out, inputs, in_emb)
    logits = logits.astype(jnp.float32)
    teacher = jnp.pad(out.logits_BxTxV.astype(jnp.float32), ((0, 0), (0, K), (0, 0)))
    data = jnp.pad(tokens, ((0, 0), (0, K)))
    total, norm, metrics = 0.0, 0.0, {}
    for k in range(1, K + 1):
      lq = logits[:, :, k - 1]                        # pair i = position i + 1
      lt = teacher[:, k:k + N]                        # l_{q+k-1} = l_{i+k}
      x = data[:, 1 + k:1 + k + N]                    # x_{q+k} = x_{i+1+k}
      valid = (jnp.arange(N)[None] + 1 + k <= T) * jnp.ones((B, 1))
      denom = jnp.maximum(valid.sum(), 1.0)
      logq = jax.nn.log_softmax(lq, -1)
      logp = jax.nn.log_softmax(lt, -1)
      if s.loss == 'kl':
        per = jnp.sum(jnp.exp(logp) * (logp - logq), -1)
      elif s.loss == 'mse':
        per = jnp.mean(jnp.square(lq - lt), -1)
      else:
        per = -jnp.take_along_axis(logq, x[..., None], -1)[..., 0]
      head_loss = (per * valid).sum() / denom
      w = s.decay ** (k - 1)
      total, norm = total + w * head_loss, norm + w
      metrics[f'loss{k}'] = head_loss
      metrics[f'agree{k}'] = ((jnp.argmax(lq, -1) == jnp.argmax(lt, -1)) * valid).sum() / denom
      metrics[f'acc{k}'] = ((jnp.argmax(lq, -1) == x) * valid).sum() / denom
    loss = total / norm
    return loss, dict(metrics, loss=loss)

  return Objective(loss_fn=loss_fn, init_extras=init_extras, frozen=('model',),
                   init_model_params=init_model)
