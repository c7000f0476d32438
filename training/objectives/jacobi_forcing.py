"""Jacobi Forcing (the `jacobi_forcing` objective): train a causal LM on its own Jacobi
trajectories so that Jacobi decoding converges in fewer iterations.

Jacobi Forcing (Hu et al. 2025, arXiv 2512.14681, hao-ai-lab/JacobiForcing) extends CLLM
(Kou et al. 2024): progressive consistency distillation under a causal mask. Per train step:

  1. trajectories  the first `jf.prompt_len` tokens of each corpus row are a prompt; the
                   current model (or the frozen base, jf.trajectories='base'; no gradient)
                   writes the greedy continuation of
                   `jf.blocks` x `jf.block` tokens (the fixed points), then Jacobi-decodes
                   every block from a guess of random prompt tokens after its converged
                   context, recording all `block` + 1 states (jacobi_lib.collect).
  2. noise         progressive schedule: block j of a row takes the state whose noise
                   (n - first divergence from the fixed point) / n is nearest to
                   linspace(0, 1, jf.noise_window)[(j + random offset) mod window].
  3. one forward   over the packed row [prompt | noisy_1 | clean_1 | ...] with the Jacobi
                   Forcing mask (jacobi_lib.Layout; `jf.context`: noisy blocks read earlier
                   noisy blocks, as in the paper, or earlier clean ones).
  4. loss          jf.ar_weight * AR CE (prompt, bridges into and inside the clean blocks)
                 + jf.consistency_weight * consistency: at every noisy offset from the
                   block's first divergence on, soft CE of the noisy logits against the
                   detached clean logits at the same offset (`jf.consistency='soft'`, the
                   paper's) or CE against the clean argmax, i.e. the fixed-point token
                   ('hard', CLLM's global consistency with hard targets)
                 + jf.corpus_weight * next-token CE on the whole corpus row (not in the
                   paper, whose AR term covers the prompt and the greedy blocks: a tiny
                   model's greedy text is repetitive, and AR on it alone lets quality drift).

The run starts from the trained AR run in `jf.base_workdir` (same model section). Metrics:
`iters_per_block` (Jacobi iterations the current model needs to converge on a block of n,
from the collected trajectories: n = no better than AR, 1 = the whole block at once),
`noisy_top1` (noisy predictions already equal to the fixed point), the two losses, and in
evaluation the plain next-token loss / bits per byte on the held-out rows (quality).

`jf.trajectories`: 'current' collects them from the model being trained (on-policy), 'base'
from the frozen base (kept as the run's extra `jf_base`), as the paper does with its offline
data set; `iters_per_block` then measures the base. On the tiny runs both left the greedy text
far more repetitive than the base's (docs/speculative.md#jacobi-forcing).

Simplified from the paper: trajectories are computed inside the train step instead of read
from a stored data set (a progressive n16 -> n32 stage is not done, `jf.block` is fixed per
run); the losses are means over their own positions with
weights (paper: 10 * AR + soft CE / number of blocks); the initial guess is random prompt
tokens (CLLM) for every block.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from models import transformer as transformer_lib
from training.objectives import jacobi_lib
from training.objectives.registry import Objective, register, token_cross_entropy
from training.objectives.spec_draft import generate_rows
from training.objectives.spec_heads import load_target

CONSISTENCY = ('soft', 'hard')
SOURCES = ('current', 'base')  # whose Jacobi trajectories (and greedy fixed points) train
BASE = 'jf_base'  # the frozen base params (an extra of the run) for jf.trajectories='base'


def jf_settings(config: ml_collections.ConfigDict | None) -> ml_collections.ConfigDict:
  """The `jf` section, checked (ValueError naming the first bad setting)."""
  if config is None or 'jf' not in config:
    raise ValueError('The jacobi_forcing objective reads a `jf` config section '
                     '(base_workdir, prompt_len, block, blocks, ...): use '
                     'configs/jacobi_forcing.py.')
  s = config.jf
  for key in ('prompt_len', 'block', 'blocks', 'noise_window'):
    if not isinstance(s[key], int) or s[key] < 1:
      raise ValueError(f'jf.{key} must be an integer >= 1, got {s[key]!r}.')
  if s.context not in jacobi_lib.CONTEXTS:
    raise ValueError(f'jf.context must be one of {jacobi_lib.CONTEXTS}, got {s.context!r}.')
  if s.trajectories not in SOURCES:
    raise ValueError(f'jf.trajectories must be one of {SOURCES}, got {s.trajectories!r}.')
  if s.consistency not in CONSISTENCY:
    raise ValueError(f'jf.consistency must be one of {CONSISTENCY}, got {s.consistency!r}.')
  for key in ('ar_weight', 'consistency_weight', 'corpus_weight'):
    if not s[key] >= 0:
      raise ValueError(f'jf.{key} must be >= 0, got {s[key]!r}.')
  if config.data.seq_len + 1 < s.prompt_len:
    raise ValueError(f'jf.prompt_len={s.prompt_len} is longer than a data row '
                     f'(data.seq_len + 1 = {config.data.seq_len + 1}).')
  return s


def ar_pairs(layout: jacobi_lib.Layout) -> tuple[np.ndarray, np.ndarray]:
  """Packed indices (source, target) of the AR loss: inside the prompt, and into (bridge)
  and inside every clean block."""
  P, n = layout.prompt, layout.block
  src, tgt = list(range(P - 1)), list(range(1, P))
  prev = P - 1
  for j in range(layout.blocks):
    c = layout.clean_start(j)
    src += [prev] + list(range(c, c + n - 1))
    tgt += list(range(c, c + n))
    prev = c + n - 1
  return np.asarray(src, np.int32), np.asarray(tgt, np.int32)


def trajectories(model: transformer_lib.Transformer, params, layout: jacobi_lib.Layout,
                 prompt_BxP: jax.Array, rng: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(states [n + 1, B, M, n], fixed points [B, M, n]) of the model's greedy Jacobi
  decoding of M consecutive blocks after each row's prompt (no gradient)."""
  params = jax.lax.stop_gradient(params)
  B, P = prompt_BxP.shape
  M, n = layout.blocks, layout.block
  rows = jnp.concatenate([prompt_BxP, jnp.zeros((B, M * n), jnp.int32)], axis=1)
  clean_BxMxN = generate_rows(model, params, rows, P, 0.0, rng)[:, P:].reshape(B, M, n)
  pick = jax.random.randint(rng, (B, M, n), 0, P)
  init_BxMxN = jnp.take_along_axis(prompt_BxP, pick.reshape(B, -1), axis=1).reshape(B, M, n)
  states = jacobi_lib.collect(model, params, layout, prompt_BxP, clean_BxMxN, init_BxMxN)
  return states, clean_BxMxN


@register('jacobi_forcing')
def jacobi_forcing(model: transformer_lib.Transformer,
                   config: ml_collections.ConfigDict) -> Objective:
  """Progressive consistency distillation on the model's own Jacobi trajectories."""
  s = jf_settings(config)
  layout = jacobi_lib.Layout(prompt=s.prompt_len, block=s.block, blocks=s.blocks)
  positions = jnp.asarray(layout.positions())
  mask = jnp.asarray(layout.mask(s.context))
  src, tgt = (jnp.asarray(a) for a in ar_pairs(layout))
  M, n = layout.blocks, layout.block
  student = jnp.asarray([layout.noisy_start(j) + o for j in range(M) for o in range(n)])
  teacher = jnp.asarray([layout.clean_start(j) + o for j in range(M) for o in range(n)])

  def init_model_params():
    if not s.base_workdir:
      raise ValueError('jf.base_workdir must name the trained AR run to start from '
                       '(e.g. runs/tiny).')
    return load_target(s.base_workdir, model).params

  # Loaded here, not inside init_extras (which runs under tracing to build the state).
  base_params = init_model_params() if s.trajectories == 'base' else None

  def init_extras(rng):
    del rng
    return {BASE: base_params} if s.trajectories == 'base' else {}

  def extra_logical_axes():
    return {BASE: transformer_lib.logical_axes(model)} if s.trajectories == 'base' else {}

  def loss_fn(params, batch, rng):
    p = params['model']
    prompt = batch['tokens'][:, :s.prompt_len]
    B = prompt.shape[0]
    rng_traj, rng_pick = jax.random.split(rng)
    source = params[BASE] if s.trajectories == 'base' else p
    states, clean = trajectories(model, source, layout, prompt, rng_traj)
    noisy, noise = jacobi_lib.progressive_pick(states, clean, s.noise_window, rng_pick)
    packed = layout.pack(prompt, noisy, clean)
    logits = model.apply({'params': p}, packed, jnp.broadcast_to(positions, packed.shape),
                         attn_mask=mask).logits_BxTxV
    ar_loss, ar_metrics = token_cross_entropy(logits[:, src], packed[:, tgt],
                                              jnp.ones((B, src.shape[0]), jnp.float32))
    first = jacobi_lib.first_divergence(noisy, clean)  # [B, M]
    keep = (jnp.arange(n)[None, None] >= first[..., None]).reshape(B, M * n)
    keep = keep.astype(jnp.float32)
    count = jnp.maximum(keep.sum(), 1.0)
    t_logits = jax.lax.stop_gradient(logits[:, teacher].astype(jnp.float32))
    logq = jax.nn.log_softmax(logits[:, student].astype(jnp.float32), axis=-1)
    t_top = jnp.argmax(t_logits, -1)
    if s.consistency == 'soft':
      ce = -jnp.sum(jax.nn.softmax(t_logits, -1) * logq, -1)
    else:
      ce = -jnp.take_along_axis(logq, t_top[..., None], -1)[..., 0]
    consistency = (ce * keep).sum() / count
    loss = s.ar_weight * ar_loss + s.consistency_weight * consistency
    extra = {}
    if s.corpus_weight:
      tokens = batch['tokens']
      out = model.apply({'params': p}, tokens[:, :-1])
      corpus_loss, _ = token_cross_entropy(out.logits_BxTxV, tokens[:, 1:],
                                           jnp.ones(tokens[:, 1:].shape, jnp.float32))
      loss = loss + s.corpus_weight * corpus_loss
      extra['corpus_loss'] = corpus_loss
    iters = jacobi_lib.iterations_to_converge(
        states.reshape(n + 1, B * M, n), clean.reshape(B * M, n))
    return loss, {
        'loss': loss, 'ar_loss': ar_loss, 'ar_accuracy': ar_metrics['accuracy'],
        'consistency': consistency,
        'noisy_top1': ((jnp.argmax(logq, -1) == t_top) * keep).sum() / count,
        'noise': jnp.mean(noise), 'iters_per_block': jnp.mean(iters.astype(jnp.float32)),
        **extra}

  def eval_fn(params, batch, rng):
    _, metrics = loss_fn(params, batch, rng)
    tokens = batch['tokens']
    out = model.apply({'params': params['model']}, tokens[:, :-1])
    _, ar = token_cross_entropy(out.logits_BxTxV, tokens[:, 1:],
                                jnp.ones(tokens[:, 1:].shape, jnp.float32))
    metrics = dict(metrics, jf_loss=metrics['loss'], next_token_accuracy=ar['accuracy'],
                   nll_sum=ar['nll_sum'], tokens_sum=ar['tokens_sum'])
    return metrics['loss'], metrics

  return Objective(loss_fn=loss_fn, eval_fn=eval_fn, init_model_params=init_model_params,
                   init_extras=init_extras, extra_logical_axes=extra_logical_axes,
                   frozen=(BASE,) if s.trajectories == 'base' else ())
