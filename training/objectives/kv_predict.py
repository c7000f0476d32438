"""KV Prediction (models/kv_predict.py): `kv_predict` trains an auxiliary model and a KV
predictor beside a frozen base.

Starts from the base run in `kvp.target_workdir` (the new run's model params are the base's,
frozen) and trains params['kv_predict'] only: the auxiliary layers (copies of the base's first
`kvp.aux_layers`) and the per-layer key/value predictor (initialised from the base's own maps).

Training row: inputs x_0 .. x_{T-1}, split at s = round(`kvp.prefix_frac` x T). The auxiliary
model reads the prefix x_0 .. x_{s-1} and the predictor writes the base's cache for it; the
base then runs the suffix x_s .. x_{T-1} over that cache, as decoding does after a predicted
prompt. Loss (per token of the suffix, then averaged):

  KL(base over the exact prefix || base over the predicted prefix)
    + `kvp.consistency_weight` x relative squared error of the predicted keys and values
      (|pred - exact|^2 / |exact|^2 over the prefix, averaged over layers, keys and values)

The paper trains with the base's next-token loss on the suffix plus a consistency loss on the
cache; distilling the exact-cache output instead leaves the base's own (fixed) errors out of the
signal. Metrics: `kl`, `rel_err`, the suffix next-token loss with the predicted (`ce_pred`) and
the exact (`ce_exact`) prefix, and `agree`, the top-1 agreement of the two.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from models import cache as cache_lib
from models import kv_predict as kvp_lib
from models import transformer as transformer_lib
from training.objectives import spec_heads
from training.objectives.registry import Objective, register


def settings(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  if config is None or 'kvp' not in config:
    raise ValueError('The kv_predict objective reads a `kvp` config section (target_workdir, '
                     'aux_layers, ...): use configs/kv_predict.py.')
  return config.kvp


def split_point(T: int, prefix_frac: float) -> int:
  """The prefix length s of a training row of T inputs (1 <= s <= T - 1)."""
  if not 0.0 < prefix_frac < 1.0:
    raise ValueError(f'kvp.prefix_frac must be in (0, 1), got {prefix_frac}.')
  if T < 2:
    raise ValueError(f'kv_predict needs rows of at least 3 tokens, got {T + 1}.')
  return min(max(int(round(prefix_frac * T)), 1), T - 1)


def suffix_logits(model: transformer_lib.Transformer, base_params, kv, inputs_BxT, s: int):
  """The base's logits [B, T - s, V] over inputs[:, s:] attending to the prefix cache `kv`
  (per layer (keys, values) [B, s, K, Dh] of positions 0 .. s-1) and to the suffix itself."""
  B, T = inputs_BxT.shape
  cfg = model.cfg
  prefix_pos = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (B, s))
  cache = kvp_lib.write_cache(cache_lib.Cache.init(cfg, B, T), kv, prefix_pos,
                              jnp.full((B,), s, jnp.int32))
  suffix_pos = jnp.broadcast_to(jnp.arange(s, T, dtype=jnp.int32), (B, T - s))
  return model.apply({'params': base_params}, inputs_BxT[:, s:], suffix_pos,
                     cache=cache).logits_BxTxV


@register('kv_predict')
def kv_predict(model: transformer_lib.Transformer,
               config: ml_collections.ConfigDict) -> Objective:
  """Auxiliary model + KV predictor on a frozen base (see the module docstring)."""
  s_cfg = settings(config)
  cfg = model.cfg
  kvp_lib.check_model(cfg, s_cfg.aux_layers)
  if s_cfg.consistency_weight < 0:
    raise ValueError(f'kvp.consistency_weight must be >= 0, got {s_cfg.consistency_weight}.')
  if not s_cfg.target_workdir:
    raise ValueError('kvp.target_workdir must name the trained base run (e.g. runs/tiny).')
  # Loaded now: init_extras also runs under jax.eval_shape (sharding), where it cannot read.
  base_params = spec_heads.load_target(s_cfg.target_workdir, model).params

  def init_extras(rng):
    del rng
    return {kvp_lib.KV_PREDICT: kvp_lib.init_params(cfg, base_params, s_cfg.aux_layers)}

  def loss_fn(params, batch, rng):
    del rng
    inputs = batch['tokens'][:, :-1]
    B, T = inputs.shape
    s = split_point(T, s_cfg.prefix_frac)
    p = jax.lax.stop_gradient(params['model'])
    kvp = params[kvp_lib.KV_PREDICT]
    pos = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (B, s))
    pred = kvp_lib.predict_kv(cfg, p, kvp, inputs[:, :s], pos)
    exact = jax.lax.stop_gradient(kvp_lib.exact_kv(model, p, inputs[:, :s], pos))
    rel_err = sum(jnp.sum((a - b) ** 2) / jnp.maximum(jnp.sum(b ** 2), 1e-12)
                  for pa, pb in zip(pred, exact) for a, b in zip(pa, pb)) / (2 * len(pred))
    logits = suffix_logits(model, p, pred, inputs, s).astype(jnp.float32)
    full = jax.lax.stop_gradient(model.apply({'params': p}, inputs).logits_BxTxV)
    logp_exact = jax.nn.log_softmax(full[:, s:].astype(jnp.float32), -1)
    logq = jax.nn.log_softmax(logits, -1)
    kl = jnp.mean(jnp.sum(jnp.exp(logp_exact) * (logp_exact - logq), -1))
    targets = batch['tokens'][:, s + 1:]
    nll = lambda lp: -jnp.mean(jnp.take_along_axis(lp, targets[..., None], -1))
    agree = jnp.mean(jnp.argmax(logq, -1) == jnp.argmax(logp_exact, -1))
    loss = kl + s_cfg.consistency_weight * rel_err
    return loss, {'loss': loss, 'kl': kl, 'rel_err': rel_err, 'ce_pred': nll(logq),
                  'ce_exact': nll(logp_exact), 'agree': agree}

  return Objective(loss_fn=loss_fn, init_extras=init_extras, frozen=('model',),
                   init_model_params=lambda: base_params)
