"""Draft heads on a trained target: Medusa heads, DeepSeek-style MTP modules, Kangaroo adapter.

All three start from the target checkpoint in `spec.target_workdir` (the model params of the
new run are the target's) and train an extra tree of params next to it (models/heads.py):

  medusa_heads      params['medusa']: head k at input i predicts tokens[i + k + 2];
                    loss = sum_k decay^k CE_k / sum_k decay^k. With `spec.draft_vocab` = N
                    the heads score only the N commonest tokens of the training split
                    (`draft_vocabulary`, `models.draft_vocab`), CE over targets among them
                    (MTP modules take the same setting).
  mtp_heads         params['mtp']: module k at input i reads module k-1's representation and
                    tokens[i + k + 1], predicts tokens[i + k + 2]; same weighting.
  kangaroo_adapter  params['kangaroo']: the adapter on the residual stream after layer
                    `spec.exit_layer` imitates the full model: KL(p_target || q_adapter)
                    (`spec.loss='kl'`) or next-token CE ('ce').

`spec.joint=False` (default) freezes the base (`frozen=('model',)`, its forward under
stop_gradient); `spec.joint=True` trains base and heads together, adding the base's own
next-token loss with weight `spec.base_weight` (Medusa-2 / DeepSeek-V3 style). Metrics report
each head's top-1 accuracy against the data and, for the adapter, its top-1 agreement with the
target (the greedy acceptance rate of a one-token draft).
"""

from __future__ import annotations

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import data as data_lib
from models import draft_vocab
from models import heads as heads_lib
from models import transformer as transformer_lib
from training.objectives.registry import Objective, register, token_cross_entropy
from workdir import checkpoint as checkpoint_lib
from workdir import loading


def spec_settings(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  if config is None or 'spec' not in config:
    raise ValueError('This objective reads a `spec` config section (target_workdir, heads, '
                     'joint, ...): use configs/spec_heads.py or configs/spec_draft.py.')
  return config.spec


def draft_vocabulary(config: ml_collections.ConfigDict, vocab_size: int) -> np.ndarray | None:
  """[Vd] int32: the `spec.draft_vocab` most frequent ids of the training split, tokenized by
  the target run's tokenizer (`spec.target_workdir`/tokenizer), ascending (counted over the
  first `spec.draft_vocab_docs` documents, 0 = all); None when `spec.draft_vocab` is 0 (the
  whole vocabulary). `models.draft_vocab` says how drafters use it."""
  s = spec_settings(config)
  count = int(s.get('draft_vocab', 0))
  if not count:
    return None
  directory = os.path.join(s.target_workdir, checkpoint_lib.TOKENIZER_DIR)
  if not os.path.isdir(directory):
    raise ValueError(f'spec.draft_vocab={count} counts tokens with the target\'s tokenizer, '
                     f'but {directory} does not exist: set spec.target_workdir to the trained '
                     'target run.')
  tokenizer = data_lib.load_tokenizer(directory)
  valid = min(tokenizer.vocab_size, vocab_size)
  if not 0 < count < valid:
    raise ValueError(f'spec.draft_vocab must be in [1, {valid - 1}] (0 = the whole vocabulary '
                     f'of {valid} tokens), got {count}.')
  dc = data_lib.DataConfig(**config.data.to_dict())
  docs = int(s.get('draft_vocab_docs', 0)) or None
  return draft_vocab.top_ids(data_lib.token_counts(dc, tokenizer, max_docs=docs)[:valid], count)


def refuse_draft_vocab(config: ml_collections.ConfigDict, objective: str) -> None:
  """ValueError when `spec.draft_vocab` is set for an objective whose drafter has no reduced
  vocabulary (rather than training over the whole one without a word)."""
  count = int(spec_settings(config).get('draft_vocab', 0))
  if count:
    raise ValueError(f'spec.draft_vocab={count}: {objective} has no reduced draft vocabulary '
                     '(eagle3, eagle1, medusa and mtp runs do); leave it at 0.')


def load_target(workdir: str, model: transformer_lib.Transformer | None = None):
  """The trained target run in `workdir` (its model config must equal `model`'s if given)."""
  if not workdir:
    raise ValueError('spec.target_workdir must name the trained target run (e.g. '
                     'runs/spec/target).')
  loaded = loading.load_model(workdir)
  if model is not None:
    loading.require_same_model(model.cfg, loaded, f'spec.target_workdir={workdir}',
                               'Use the same model section as the target run.')
  return loaded


def _init_from(s, model):
  if not s.target_workdir:
    raise ValueError('spec.target_workdir must name the trained target run whose hidden '
                     'states the heads read (e.g. runs/spec/target).')
  return lambda: load_target(s.target_workdir, model).params


def _weighted_ce(logits_BxTxKxV, tokens_BxT1, decay: float, hot_ids=None,
                 vocab_size: int = 0):
  """CE of head k at input i against tokens[i + k + 2] (masked past the row's end). With a
  reduced draft vocabulary (`hot_ids`, logits over its entries) the CE leaves out targets
  outside it, and the accuracy counts them as misses."""
  B, T, K, _ = logits_BxTxKxV.shape
  logp = jax.nn.log_softmax(logits_BxTxKxV.astype(jnp.float32), axis=-1)
  index = None if hot_ids is None else draft_vocab.target_index(hot_ids, vocab_size)
  total, norm, metrics = 0.0, 0.0, {}
  for k in range(K):
    tgt = jnp.pad(tokens_BxT1[:, k + 2:], ((0, 0), (0, T)))[:, :T]
    in_row = (jnp.arange(T)[None] + k + 2 <= T).astype(jnp.float32) * jnp.ones((B, 1))
    valid = in_row
    if index is not None:  # the target's entry in the draft vocabulary (-1: outside it)
      tgt = index[tgt]
      valid = in_row * (tgt >= 0)
    nll = -jnp.take_along_axis(logp[:, :, k], jnp.maximum(tgt, 0)[..., None], -1)[..., 0]
    ce = (nll * valid).sum() / jnp.maximum(valid.sum(), 1.0)
    acc = ((jnp.argmax(logp[:, :, k], -1) == tgt) * in_row).sum() / jnp.maximum(in_row.sum(), 1)
    w = decay ** k
    total, norm = total + w * ce, norm + w
    metrics[f'head{k + 1}_ce'] = ce
    metrics[f'head{k + 1}_acc'] = acc
  return total / norm, metrics


def _base(model, params, inputs_BxT, joint: bool, **kw):
  out = model.apply({'params': params['model']}, inputs_BxT, **kw)
  return out if joint else jax.tree.map(jax.lax.stop_gradient, out)


def _with_base_loss(loss, metrics, out, tokens_BxT1, s):
  if not s.joint:
    return loss, metrics
  base_loss, base_metrics = token_cross_entropy(out.logits_BxTxV, tokens_BxT1[:, 1:],
                                                jnp.ones(tokens_BxT1[:, 1:].shape))
  metrics.update(base_loss=base_loss, base_accuracy=base_metrics['accuracy'])
  return loss + s.base_weight * base_loss, metrics


@register('medusa_heads')
def medusa_heads(model: transformer_lib.Transformer,
                 config: ml_collections.ConfigDict) -> Objective:
  """Medusa heads on the last hidden state (see module docstring)."""
  s = spec_settings(config)
  cfg = model.cfg
  module = heads_lib.MedusaHeads(cfg, s.heads)
  hot = draft_vocabulary(config, cfg.valid_vocab_size or cfg.vocab_size)

  def init_extras(rng):
    h = jnp.zeros((1, 2, cfg.d_model))
    emb = jnp.zeros((cfg.vocab_size, cfg.d_model))
    p = nn.unbox(module.init(rng, h, emb)['params'])
    return {heads_lib.MEDUSA: draft_vocab.with_ids(p, hot, cfg.valid_vocab_size or
                                                   cfg.vocab_size)}

  def loss_fn(params, batch, rng):
    del rng
    tokens = batch['tokens']
    out = _base(model, params, tokens[:, :-1], s.joint)
    out_emb = heads_lib.output_embedding(params['model'], cfg)
    if not s.joint:
      out_emb = jax.lax.stop_gradient(out_emb)
    p = params[heads_lib.MEDUSA]
    logits = module.apply({'params': draft_vocab.without(p)}, out.last_hidden_BxTxD,
                          draft_vocab.head_rows(p, out_emb))
    loss, metrics = _weighted_ce(logits, tokens, s.decay, draft_vocab.ids(p), cfg.vocab_size)
    loss, metrics = _with_base_loss(loss, metrics, out, tokens, s)
    return loss, dict(metrics, loss=loss)

  return Objective(loss_fn=loss_fn, init_extras=init_extras,
                   frozen=() if s.joint else ('model',),
                   init_model_params=_init_from(s, model))


@register('mtp_heads')
def mtp_heads(model: transformer_lib.Transformer,
              config: ml_collections.ConfigDict) -> Objective:
  """Sequential MTP modules (see module docstring)."""
  s = spec_settings(config)
  cfg = model.cfg
  module = heads_lib.MTPModules(cfg, s.heads)
  hot = draft_vocabulary(config, cfg.valid_vocab_size or cfg.vocab_size)

  def init_extras(rng):
    h = jnp.zeros((1, 2, cfg.d_model))
    emb = jnp.zeros((cfg.vocab_size, cfg.d_model))
    p = nn.unbox(module.init(rng, h, jnp.zeros((1, 3), jnp.int32), emb, emb)['params'])
    return {heads_lib.MTP: draft_vocab.with_ids(p, hot, cfg.valid_vocab_size or cfg.vocab_size)}

  def loss_fn(params, batch, rng):
    del rng
    tokens = batch['tokens']
    out = _base(model, params, tokens[:, :-1], s.joint)
    in_emb = heads_lib.input_embedding(params['model'])
    out_emb = heads_lib.output_embedding(params['model'], cfg)
    if not s.joint:
      in_emb, out_emb = jax.lax.stop_gradient(in_emb), jax.lax.stop_gradient(out_emb)
    p = params[heads_lib.MTP]
    logits = module.apply({'params': draft_vocab.without(p)}, out.last_hidden_BxTxD, tokens,
                          in_emb, draft_vocab.head_rows(p, out_emb))
    loss, metrics = _weighted_ce(logits, tokens, s.decay, draft_vocab.ids(p), cfg.vocab_size)
    loss, metrics = _with_base_loss(loss, metrics, out, tokens, s)
    return loss, dict(metrics, loss=loss)

  return Objective(loss_fn=loss_fn, init_extras=init_extras,
                   frozen=() if s.joint else ('model',),
                   init_model_params=_init_from(s, model))


def exit_layer(cfg, s) -> int:
  e = s.exit_layer or max(cfg.num_layers // 2, 1)
  if not 0 < e < cfg.num_layers:
    raise ValueError(f'spec.exit_layer={e} must be in [1, {cfg.num_layers - 1}].')
  return e


@register('kangaroo_adapter')
def kangaroo_adapter(model: transformer_lib.Transformer,
                     config: ml_collections.ConfigDict) -> Objective:
  """Kangaroo's early-exit adapter, distilled from the full model (base frozen)."""
  s = spec_settings(config)
  refuse_draft_vocab(config, 'kangaroo_adapter')
  cfg = model.cfg
  E = exit_layer(cfg, s)
  module = heads_lib.KangarooAdapter(cfg)
  if s.loss not in ('kl', 'ce'):
    raise ValueError(f"spec.loss must be 'kl' or 'ce', got {s.loss!r}.")

  def init_extras(rng):
    h = jnp.zeros((1, 2, cfg.d_model))
    emb = jnp.zeros((cfg.vocab_size, cfg.d_model))
    return {heads_lib.KANGAROO: nn.unbox(module.init(rng, h, jnp.zeros((1, 2), jnp.int32),
                                                     emb)['params'])}

  def loss_fn(params, batch, rng):
    del rng
    tokens = batch['tokens']
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    out = _base(model, params, inputs, False, return_hidden=True)
    out_emb = jax.lax.stop_gradient(heads_lib.output_embedding(params['model'], cfg))
    positions = jnp.broadcast_to(jnp.arange(inputs.shape[1]), inputs.shape)
    logits, _ = module.apply({'params': params[heads_lib.KANGAROO]}, out.hidden[E], positions,
                             out_emb)
    logq = jax.nn.log_softmax(logits, -1)
    logp = jax.nn.log_softmax(out.logits_BxTxV, -1)
    kl = jnp.mean(jnp.sum(jnp.exp(logp) * (logp - logq), -1))
    ce, ce_metrics = token_cross_entropy(logits, targets, jnp.ones(targets.shape))
    agree = jnp.mean(jnp.argmax(logq, -1) == jnp.argmax(logp, -1))
    loss = kl if s.loss == 'kl' else ce
    return loss, {'loss': loss, 'kl': kl, 'ce': ce, 'accuracy': ce_metrics['accuracy'],
                  'top1_agreement': agree}

  return Objective(loss_fn=loss_fn, init_extras=init_extras, frozen=('model',),
                   init_model_params=_init_from(s, model))
