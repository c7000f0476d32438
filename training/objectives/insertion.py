"""Insertion language models (ILM; Patel et al. 2025, arXiv 2505.05755): the denoising objective.

An insertion model reads a partial sequence (a subsequence of the target, order kept) with
bidirectional attention and scores, jointly, where to insert and what: the logit of token v
at the query of token g is the score of inserting v in the gap right after token g. One
log-softmax over every (gap, token) pair of a row gives p(gap, token | partial sequence). A
stop signal says that nothing is missing: here the <eos> logit read at position 0 (the
<bos>), a binary classifier (sigmoid), as the paper's stopping classifier reads its CLS
token. <eos> is never inserted (its column is left out of the insertion softmax).

Training (per row; `drop_tokens`):
  1. the droppable tokens are the targets (a task row's answer, every token after <bos> of an
     LM row) before the first <eos> of a task row (the <eos> padding run is removed: the
     length is not given, the stop signal learns it); the prompt is always kept;
  2. draw n ~ U{0..m} over the m droppable tokens and drop a uniformly random n of them;
  3. the partial sequence z is the kept tokens, packed left (padding: position -1);
  4. every dropped token x_j belongs to the gap after the last kept token before it:
     counts[g, v] = dropped tokens v in gap g.

  loss = -sum_{g,v} counts[g, v] / n * log p(g, v | z)   (0 when n = 0)
         + stop_weight * BCE(sigmoid(stop logit), n == 0)

averaged over rows: cross-entropy against the normalised counts, i.e. over gaps x vocab, as
in the paper. Gaps inside a task row's prompt are never targets and are left out of the
softmax (the decoder inserts only at or after the last prompt token).

Config section `insertion`: eos_id (-1 = the tokenizer's <eos>), stop_weight, eval_samples.
Config section `task`: as for the diffusion objectives (data hooks of diffusion_lib).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections

from models import kind as kind_lib
from models import transformer as transformer_lib
from training.objectives import diffusion_lib as lib
from training.objectives.registry import Objective, register

_EOS_INDEX = 2  # '<eos>' in data.tokenizer_base.SPECIAL_TOKENS
_DEFAULT_EOS_IDS = {'byte': 256 + _EOS_INDEX, 'bpe': _EOS_INDEX}


@dataclasses.dataclass(frozen=True)
class InsertionSettings:
  """The `insertion` config section (see the module docstring)."""
  eos_id: int
  stop_weight: float = 1.0
  eval_samples: int = 4

  def __post_init__(self):
    if self.eos_id < 0:
      raise ValueError(f'insertion.eos_id must be a token id >= 0, got {self.eos_id}.')
    if self.stop_weight < 0:
      raise ValueError(f'insertion.stop_weight must be >= 0, got {self.stop_weight}.')
    if self.eval_samples <= 0:
      raise ValueError(f'insertion.eval_samples must be positive, got {self.eval_samples}.')


def settings(config: ml_collections.ConfigDict | None) -> InsertionSettings:
  """Reads config.insertion; eos_id -1 becomes the tokenizer kind's <eos> id."""
  if config is None or 'insertion' not in config:
    raise ValueError("Objective 'insertion' needs an `insertion` config section "
                     '(see configs/diffusion_tasks.py, kind ilm).')
  d = dict(config.insertion.to_dict())
  known = {f.name for f in dataclasses.fields(InsertionSettings)}
  unknown = sorted(set(d) - known)
  if unknown:
    raise ValueError(f'Unknown insertion config keys {unknown}; known: {sorted(known)}.')
  if d.get('eos_id', -1) < 0:
    kind = config.tokenizer.kind
    if kind not in _DEFAULT_EOS_IDS:
      raise ValueError(f'Set insertion.eos_id for tokenizer kind {kind!r} (the id of its '
                       '<eos> token).')
    d['eos_id'] = _DEFAULT_EOS_IDS[kind]
  return InsertionSettings(**d)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Dropped:
  """One batch after dropping (`drop_tokens`); T1 = T + 1, the row length.

  z_BxT1: the kept tokens packed left, then `eos_id` (padding).
  positions_BxT1: 0..len-1 for kept tokens, -1 for padding (never attended).
  length_B: kept tokens per row.
  counts_BxT1xV: dropped tokens per (gap, token): gap g = after z[g].
  n_dropped_B: dropped tokens per row.
  gap_ok_BxT1: gaps a model may insert into (kept, at or after the last prompt token).
  """
  z_BxT1: jax.Array
  positions_BxT1: jax.Array
  length_B: jax.Array
  counts_BxT1xV: jax.Array
  n_dropped_B: jax.Array
  gap_ok_BxT1: jax.Array


def droppable(batch: dict[str, jax.Array], eos_id: int) -> jax.Array:
  """[B, T+1] bool: targets (position 0 never) before a task row's first target <eos>."""
  target = lib.maskable(batch)
  if 'weights' not in batch:
    return target
  seen_eos = jnp.cumsum(target & (batch['tokens'] == eos_id), axis=1) > 0
  return target & ~seen_eos


def drop_tokens(tokens_BxT1: jax.Array, prompt_BxT1: jax.Array, droppable_BxT1: jax.Array,
                dropped_BxT1: jax.Array, vocab_size: int, eos_id: int) -> Dropped:
  """The partial sequences and their insertion targets for a given choice of dropped tokens.

  tokens_BxT1: rows; prompt_BxT1: tokens always kept (position 0 and a task row's prompt, a
  prefix of the row); droppable_BxT1: tokens that may be dropped; dropped_BxT1: those dropped
  (only droppable ones count). Tokens neither prompt nor droppable (the <eos> run of a task
  row) are removed.
  """
  arrays = (tokens_BxT1, prompt_BxT1, droppable_BxT1, dropped_BxT1)
  if tokens_BxT1.ndim != 2 or len({x.shape for x in arrays}) != 1:
    raise ValueError('tokens, prompt, droppable and dropped must be [B, T+1] alike; got '
                     f'{[x.shape for x in arrays]}.')
  B, T1 = tokens_BxT1.shape
  prompt = prompt_BxT1.at[:, 0].set(True)
  dropped = dropped_BxT1 & droppable_BxT1 & ~prompt
  kept = prompt | (droppable_BxT1 & ~dropped)
  new_idx = jnp.cumsum(kept, axis=1) - 1  # index in z of each kept token
  length_B = kept.sum(1).astype(jnp.int32)
  b_Bx1 = jnp.arange(B)[:, None]
  z = jnp.full((B, T1), eos_id, jnp.int32).at[b_Bx1, jnp.where(kept, new_idx, T1)].set(
      tokens_BxT1.astype(jnp.int32), mode='drop')
  t_1xT1 = jnp.arange(T1, dtype=jnp.int32)[None, :]
  positions = jnp.where(t_1xT1 < length_B[:, None], t_1xT1, -1)
  # A dropped token at j goes into the gap after the last kept token before j.
  gap = jnp.where(dropped, new_idx, T1)  # new_idx at a dropped j = (kept before j) - 1
  counts = jnp.zeros((B, T1, vocab_size), jnp.float32).at[
      b_Bx1, gap, tokens_BxT1].add(1.0, mode='drop')
  last_prompt_B = prompt.sum(1) - 1
  gap_ok = (t_1xT1 < length_B[:, None]) & (t_1xT1 >= last_prompt_B[:, None])
  return Dropped(z_BxT1=z, positions_BxT1=positions, length_B=length_B, counts_BxT1xV=counts,
                 n_dropped_B=dropped.sum(1).astype(jnp.int32), gap_ok_BxT1=gap_ok)


def sample_drops(rng: jax.Array, droppable_BxT1: jax.Array) -> jax.Array:
  """[B, T+1] bool: per row n ~ U{0..m} of its m droppable tokens, a uniform subset of n."""
  u_rng, n_rng = jax.random.split(rng)
  u = jnp.where(droppable_BxT1, jax.random.uniform(u_rng, droppable_BxT1.shape), 2.0)
  rank = jnp.argsort(jnp.argsort(u, axis=1), axis=1)
  m_B = droppable_BxT1.sum(1)
  n_B = jnp.floor(jax.random.uniform(n_rng, m_B.shape) * (m_B + 1)).astype(jnp.int32)
  n_B = jnp.minimum(n_B, m_B)
  return droppable_BxT1 & (rank < n_B[:, None])


def insertion_log_probs(logits_BxTxV: jax.Array, gap_ok_BxT: jax.Array, eos_id: int
                        ) -> jax.Array:
  """log p(gap, token) [B, T, V] (float32): one log-softmax over the allowed gaps x the
  vocabulary without <eos>; -inf elsewhere."""
  B, T, V = logits_BxTxV.shape
  ok = gap_ok_BxT[:, :, None] & (jnp.arange(V) != eos_id)[None, None, :]
  logits = jnp.where(ok, logits_BxTxV.astype(jnp.float32), -jnp.inf)
  return jax.nn.log_softmax(logits.reshape(B, T * V), axis=-1).reshape(B, T, V)


def stop_logit(logits_BxTxV: jax.Array, eos_id: int) -> jax.Array:
  """[B] the stop signal's logit: the <eos> logit at position 0 (sigmoid = P(nothing missing))."""
  return logits_BxTxV[:, 0, eos_id].astype(jnp.float32)


def insertion_loss(model: transformer_lib.Transformer, s: InsertionSettings, params, batch, rng,
                   dropped_BxT1: jax.Array | None = None):
  """(loss, metrics) for one batch; `dropped_BxT1` fixes the dropped tokens (tests)."""
  tokens = batch['tokens']
  can_drop = droppable(batch, s.eos_id)
  if dropped_BxT1 is None:
    dropped_BxT1 = sample_drops(rng, can_drop)
  d = drop_tokens(tokens, ~lib.maskable(batch), can_drop, dropped_BxT1, model.cfg.vocab_size,
                  s.eos_id)
  out = model.apply({'params': params['model']}, d.z_BxT1, d.positions_BxT1,
                    attn_mask='bidirectional')
  logp = insertion_log_probs(out.logits_BxTxV, d.gap_ok_BxT1, s.eos_id)
  n = d.n_dropped_B.astype(jnp.float32)
  target = d.counts_BxT1xV / jnp.maximum(n, 1.0)[:, None, None]
  ins_B = -jnp.sum(jnp.where(target > 0, target * logp, 0.0), axis=(1, 2))
  stop = stop_logit(out.logits_BxTxV, s.eos_id)
  label = (d.n_dropped_B == 0).astype(jnp.float32)
  stop_B = -(label * jax.nn.log_sigmoid(stop) + (1 - label) * jax.nn.log_sigmoid(-stop))
  loss = jnp.mean(ins_B + s.stop_weight * stop_B)
  has = d.n_dropped_B > 0
  B, T1, V = logp.shape
  best = jnp.argmax(logp.reshape(B, T1 * V), axis=-1)
  hit = d.counts_BxT1xV.reshape(B, T1 * V)[jnp.arange(B), best] > 0
  nrows = jnp.maximum(has.sum(), 1)
  return loss, {'loss': loss,
                'insert_nll': jnp.sum(jnp.where(has, ins_B, 0.0)) / nrows,
                'insert_accuracy': jnp.sum(hit & has) / nrows,
                'stop_nll': jnp.mean(stop_B),
                'stop_accuracy': jnp.mean((stop > 0) == (label > 0)),
                'dropped_fraction': n.sum() / jnp.maximum(can_drop.sum(), 1),
                'tokens_sum': can_drop.sum().astype(jnp.float32)}


@register('insertion')
def insertion_objective(model: transformer_lib.Transformer,
                        config: ml_collections.ConfigDict) -> Objective:
  s = settings(config)
  if s.eos_id >= model.cfg.vocab_size:
    raise ValueError(f'insertion.eos_id={s.eos_id} is outside the vocabulary '
                     f'({model.cfg.vocab_size}).')

  def loss_fn(params, batch, rng):
    return insertion_loss(model, s, params, batch, rng)

  hooks = lib.data_hooks(config)
  train_iter = hooks['make_train_iterator']

  def checked_train_iter(dc, tokenizer, **kwargs):
    if tokenizer.eos_id != s.eos_id:
      raise ValueError(f"insertion.eos_id={s.eos_id} but the tokenizer's <eos> is "
                       f'{tokenizer.eos_id}; leave insertion.eos_id at -1 or fix it.')
    return train_iter(dc, tokenizer, **kwargs)

  return Objective(loss_fn=loss_fn, eval_fn=lib.averaged_eval(loss_fn, s.eval_samples),
                   kind=kind_lib.ModelKind(attention='bidirectional', insertion=True),
                   **{**hooks, 'make_train_iterator': checked_train_iter})
