"""Draft-model distillation from a trained target (the `draft_distill` objective).

The run's model is the (small) draft; the target run in `spec.target_workdir` is loaded as a
frozen extra ('teacher', saved with the run so it resumes alone). Two data sources:

  spec.source='corpus'     the packed corpus rows; loss = kl_weight * KL(p_T || q) +
                           ce_weight * CE(q, next token), averaged over positions.
  spec.source='generated'  the first `spec.gen_prompt` tokens of each row are a prompt; the
                           teacher samples the rest at `spec.gen_temperature` (a scan over a
                           KV cache inside the train step), and the draft learns the teacher's
                           distributions on that text (KL, plus CE on the sampled tokens) —
                           training on what the target actually generates.

Forward KL to the full teacher distribution raises acceptance most (DistillSpec); metrics
report `top1_agreement` (argmax q == argmax p), the greedy acceptance rate of one draft token.
The teacher's vocabulary must equal the draft's (same tokenizer).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from models import cache as cache_lib
from models import transformer as transformer_lib
from training.objectives.registry import Objective, register
from training.objectives.spec_heads import load_target, spec_settings

TEACHER = 'teacher'


def _kl_and_agreement(teacher_logits, draft_logits, weights_BxT):
  logp = jax.nn.log_softmax(teacher_logits.astype(jnp.float32), -1)
  logq = jax.nn.log_softmax(draft_logits.astype(jnp.float32), -1)
  w = weights_BxT.astype(jnp.float32)
  n = jnp.maximum(w.sum(), 1.0)
  kl = (jnp.sum(jnp.exp(logp) * (logp - logq), -1) * w).sum() / n
  agree = ((jnp.argmax(logp, -1) == jnp.argmax(logq, -1)) * w).sum() / n
  return kl, agree, logq


def generate_rows(teacher: transformer_lib.Transformer, params, tokens_BxT1: jax.Array,
                  prompt_len: int, temperature: float, rng: jax.Array) -> jax.Array:
  """Keeps tokens[:, :prompt_len] and samples the rest of each row from the teacher
  (temperature 0: the teacher's greedy continuation)."""
  B, T1 = tokens_BxT1.shape
  cache = cache_lib.Cache.init(teacher.cfg, B, T1)
  out = teacher.apply({'params': params}, tokens_BxT1[:, :prompt_len], cache=cache)
  logits = out.logits_BxTxV[:, -1]

  def body(carry, t):
    cache, logits, rows = carry
    key = jax.random.fold_in(rng, t)
    # Not decoding.sampling: DESIGN.md's import rules keep training/ independent of decoding/.
    if temperature == 0:
      nxt = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    else:
      nxt = jax.random.categorical(key, logits / temperature).astype(jnp.int32)
    rows = jax.lax.dynamic_update_index_in_dim(rows, nxt, t, 1)
    o = teacher.apply({'params': params}, nxt[:, None], jnp.full((B, 1), t), cache=cache)
    return (o.cache, o.logits_BxTxV[:, 0], rows), None

  (_, _, rows), _ = jax.lax.scan(body, (out.cache, logits, tokens_BxT1),
                                 jnp.arange(prompt_len, T1))
  return jax.lax.stop_gradient(rows)


@register('draft_distill')
def draft_distill(model: transformer_lib.Transformer,
                  config: ml_collections.ConfigDict) -> Objective:
  """Distils the target in spec.target_workdir into this run's (draft) model."""
  s = spec_settings(config)
  if s.source not in ('corpus', 'generated'):
    raise ValueError(f"spec.source must be 'corpus' or 'generated', got {s.source!r}.")
  target = load_target(s.target_workdir)
  teacher = target.model
  if teacher.cfg.vocab_size != model.cfg.vocab_size:
    raise ValueError(f'The target has a vocabulary of {teacher.cfg.vocab_size} tokens but the '
                     f'draft config gives {model.cfg.vocab_size}: use the same tokenizer.')
  teacher_params = target.params

  def init_extras(rng):
    del rng
    return {TEACHER: teacher_params}

  def extra_logical_axes():
    return {TEACHER: transformer_lib.logical_axes(teacher)}

  def loss_fn(params, batch, rng):
    tokens = batch['tokens']
    weights = jnp.ones(tokens[:, 1:].shape, jnp.float32)
    if s.source == 'generated':
      if s.gen_temperature < 0:
        raise ValueError(f'spec.gen_temperature must be >= 0 (0 = greedy), got '
                         f'{s.gen_temperature}.')
      if not 0 < s.gen_prompt < tokens.shape[1] - 1:
        raise ValueError(f'spec.gen_prompt={s.gen_prompt} must be in [1, seq_len).')
      tokens = generate_rows(teacher, params[TEACHER], tokens, s.gen_prompt,
                             s.gen_temperature, rng)
      weights = (jnp.arange(tokens.shape[1] - 1)[None] >= s.gen_prompt - 1) * weights
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    teacher_logits = jax.lax.stop_gradient(
        teacher.apply({'params': params[TEACHER]}, inputs).logits_BxTxV)
    draft_logits = model.apply({'params': params['model']}, inputs).logits_BxTxV
    kl, agree, logq = _kl_and_agreement(teacher_logits, draft_logits, weights)
    nll = -jnp.take_along_axis(logq, targets[..., None], -1)[..., 0]
    ce = (nll * weights).sum() / jnp.maximum(weights.sum(), 1.0)
    loss = s.kl_weight * kl + s.ce_weight * ce
    return loss, {'loss': loss, 'kl': kl, 'ce': ce, 'top1_agreement': agree,
                  'nll_sum': (nll * weights).sum(), 'tokens_sum': weights.sum()}

  return Objective(loss_fn=loss_fn, init_extras=init_extras,
                   extra_logical_axes=extra_logical_axes, frozen=(TEACHER,))
