"""HAMburger (models/hamburger.py): `hamburger` fine-tunes a trained AR base with the
compositional embedder and the micro-step decoder.

Starts from the base run in `hamburger.target_workdir` (the new run's model params are the
base's) and trains everything: the base (it must learn to read composed entries), the
embedder's offset maps and the micro decoder.

Segmentation (the rule, stated): a row's tokens x_0 .. x_{N-1} are cut into steps of 1 .. k
tokens left to right; x_t starts a new step when t = 0, when the current step already holds
k tokens, or when the model is not confident of it, p(x_t | x_<t) < `hamburger.tau`, under
the model being trained run as plain AR over the row (stop-gradient; every step of one
token IS plain AR, models/hamburger.py). Confident tokens are thus smashed into the step of
the token before them, as in the paper's confidence-based segmentation (which uses the
frozen base; ours follows the model as it trains).

Step j is one base entry: compose(step j) at position (index of its last token). From the
base's output at entry j (logits and h) the loss scores step j + 1:

  token 1     cross-entropy of the base head (what AR training would score)
  tokens 2..  cross-entropy of the micro decoder at micro positions 1 .. m-1
  stop        binary cross-entropy of the continue logit at micro positions 1 .. min(m, k-1):
              target 1 if the next token is in the step (i < m), 0 at i = m

loss = (token cross-entropies summed) / (tokens scored) + `hamburger.stop_weight` x mean stop
BCE. Metrics: `nll` (per scored token, nats), `nll_first` / `nll_micro`, `stop_acc`,
`tokens_per_step` (mean step length), `entries_per_token` (steps / tokens of the row).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from models import hamburger as ham_lib
from models import transformer as transformer_lib
from training.objectives import spec_heads
from training.objectives.registry import Objective, register


def settings(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  if config is None or 'hamburger' not in config:
    raise ValueError('The hamburger objective reads a `hamburger` config section '
                     '(target_workdir, k, tau, ...): use configs/hamburger.py.')
  return config.hamburger


def segment(conf_BxN: jax.Array, k: int, tau: float) -> jax.Array:
  """Step starts [B, N] bool: x_t starts a step iff t = 0, the open step holds k tokens, or
  conf[t] (the model's probability of x_t given x_<t) < tau."""
  if k < 1:
    raise ValueError(f'hamburger.k must be >= 1, got {k}.')
  if not 0.0 < tau <= 1.0:
    raise ValueError(f'hamburger.tau must be in (0, 1], got {tau}.')
  B, N = conf_BxN.shape

  def body(size_B, xs):
    t, conf_B = xs
    start_B = (t == 0) | (size_B >= k) | (conf_B < tau)
    size_B = jnp.where(start_B, 1, size_B + 1)
    return size_B, start_B

  _, starts_NxB = jax.lax.scan(body, jnp.zeros((B,), jnp.int32),
                               (jnp.arange(N), conf_BxN.T))
  return starts_NxB.T


def steps(tokens_BxN: jax.Array, starts_BxN: jax.Array, k: int):
  """The steps of a segmented row, M = N slots (steps past the row's count are padding).

  Returns (group_BxMxK tokens (0 past a step's size), size_BxM (0 = padding), first_BxM
  (token index of the step's first token), valid_BxM).
  """
  B, N = tokens_BxN.shape
  g_BxN = jnp.cumsum(starts_BxN.astype(jnp.int32), axis=1) - 1
  b = jnp.arange(B)[:, None]
  first = jnp.full((B, N), N, jnp.int32).at[b, jnp.where(starts_BxN, g_BxN, N)].set(
      jnp.broadcast_to(jnp.arange(N, dtype=jnp.int32), (B, N)), mode='drop')
  size = jnp.zeros((B, N), jnp.int32).at[b, g_BxN].add(1)
  valid = size > 0
  idx_BxMxK = first[..., None] + jnp.arange(k)
  in_step = jnp.arange(k) < size[..., None]
  group = jnp.take_along_axis(tokens_BxN[:, None, :], jnp.clip(idx_BxMxK, 0, N - 1), axis=-1)
  return jnp.where(in_step, group, 0), size, jnp.where(valid, first, 0), valid


def step_losses(model: transformer_lib.Transformer, params, hb, tokens_BxN: jax.Array,
                starts_BxN: jax.Array, k: int):
  """Per-token and stop losses of one segmented batch (see the module docstring).

  Returns (ce_first_BxM, w_first_BxM, ce_micro_BxMxK, w_micro_BxMxK, bce_BxMxK, w_stop_BxMxK,
  stop_correct_BxMxK, size_BxM): entry j scores step j + 1 (weights 0 where there is none).
  """
  cfg = model.cfg
  group, size, first, valid = steps(tokens_BxN, starts_BxN, k)
  B, M = size.shape
  x_BxMxD = ham_lib.compose(cfg, params, hb, group, size)
  pos_BxM = jnp.where(valid, first + size - 1, -1)
  out = model.apply({'params': params}, None, pos_BxM, inputs_embeds_BxTxD=x_BxMxD,
                    return_hidden=True)
  nxt_group = jnp.pad(group[:, 1:], ((0, 0), (0, 1), (0, 0)))
  nxt_size = jnp.pad(size[:, 1:], ((0, 0), (0, 1)))
  has_next = (nxt_size > 0) & valid
  logp = jax.nn.log_softmax(out.logits_BxTxV.astype(jnp.float32), -1)
  ce_first = -jnp.take_along_axis(logp, nxt_group[..., :1], -1)[..., 0]
  w_first = has_next.astype(jnp.float32)
  micro_logits, cont = ham_lib.micro_forward(cfg, params, hb, out.hidden[-1],
                                             nxt_group[..., :k - 1])
  # Micro position i (1 .. k-1) scores token i + 1 (column i) and whether it is in the step.
  i = jnp.arange(k)
  mlogp = jax.nn.log_softmax(micro_logits[..., 1:, :].astype(jnp.float32), -1)  # [B,M,k-1,V]
  ce_micro = -jnp.take_along_axis(mlogp, nxt_group[..., 1:, None], -1)[..., 0]
  ce_micro = jnp.pad(ce_micro, ((0, 0), (0, 0), (1, 0)))  # column i = token i + 1
  w_micro = (has_next[..., None] & (i >= 1) & (i < nxt_size[..., None])).astype(jnp.float32)
  target = (i < nxt_size[..., None]).astype(jnp.float32)
  bce = jnp.logaddexp(0.0, cont) - target * cont  # -log sigmoid / -log(1 - sigmoid)
  w_stop = (has_next[..., None] & (i >= 1) & (i <= nxt_size[..., None])).astype(jnp.float32)
  correct = ((cont >= 0) == (target > 0.5)).astype(jnp.float32)
  return ce_first, w_first, ce_micro, w_micro, bce, w_stop, correct, size


@register('hamburger')
def hamburger(model: transformer_lib.Transformer,
              config: ml_collections.ConfigDict) -> Objective:
  """Fine-tunes a base into a HAMburger model (see the module docstring)."""
  s_cfg = settings(config)
  cfg = model.cfg
  k = int(s_cfg.k)
  ham_lib.check_model(cfg, k)
  if s_cfg.stop_weight < 0:
    raise ValueError(f'hamburger.stop_weight must be >= 0, got {s_cfg.stop_weight}.')
  if not 0.0 < s_cfg.tau <= 1.0:
    raise ValueError(f'hamburger.tau must be in (0, 1], got {s_cfg.tau}.')
  embedder = str(s_cfg.get('embedder', 'linear'))
  if embedder not in ham_lib.EMBEDDERS:
    raise ValueError(f'hamburger.embedder must be one of {ham_lib.EMBEDDERS}, got '
                     f'{embedder!r}.')
  if not s_cfg.target_workdir:
    raise ValueError('hamburger.target_workdir must name the trained base run (e.g. '
                     'runs/tiny).')
  # Loaded now: init_extras also runs under jax.eval_shape (sharding), where it cannot read.
  base_params = spec_heads.load_target(s_cfg.target_workdir, model).params

  def init_extras(rng):
    del rng
    return {ham_lib.HAMBURGER: ham_lib.init_params(cfg, base_params, k, embedder)}

  def loss_fn(params, batch, rng):
    del rng
    tokens = batch['tokens']
    p, hb = params['model'], params[ham_lib.HAMBURGER]
    plain = jax.lax.stop_gradient(model.apply({'params': p}, tokens[:, :-1]).logits_BxTxV)
    logp = jax.nn.log_softmax(plain.astype(jnp.float32), -1)
    conf = jnp.exp(jnp.take_along_axis(logp, tokens[:, 1:, None], -1)[..., 0])
    conf = jnp.pad(conf, ((0, 0), (1, 0)))  # x_0 has no prediction: it starts a step
    starts = segment(conf, k, float(s_cfg.tau))
    ce1, w1, cem, wm, bce, ws, correct, size = step_losses(model, p, hb, tokens, starts, k)
    n_tok = jnp.maximum(jnp.sum(w1) + jnp.sum(wm), 1.0)
    nll = (jnp.sum(ce1 * w1) + jnp.sum(cem * wm)) / n_tok
    n_stop = jnp.maximum(jnp.sum(ws), 1.0)
    stop = jnp.sum(bce * ws) / n_stop
    loss = nll + s_cfg.stop_weight * stop
    n_steps = jnp.sum(size > 0)
    return loss, {
        'loss': loss, 'nll': nll, 'stop_bce': stop,
        'nll_first': jnp.sum(ce1 * w1) / jnp.maximum(jnp.sum(w1), 1.0),
        'nll_micro': jnp.sum(cem * wm) / jnp.maximum(jnp.sum(wm), 1.0),
        'stop_acc': jnp.sum(correct * ws) / n_stop,
        'tokens_per_step': tokens.size / n_steps, 'entries_per_token': n_steps / tokens.size}

  return Objective(loss_fn=loss_fn, init_extras=init_extras,
                   init_model_params=lambda: base_params)
