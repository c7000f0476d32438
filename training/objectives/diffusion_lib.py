"""What the diffusion objectives share: the noise schedule, time sampling, SUBS, the masked
cross-entropy, the logit shift, task data, and starting from an AR checkpoint.

Conventions (all three objectives: masked_diffusion, block_diffusion, wedlm):

* A batch row is `tokens` [B, T+1] (packed LM rows, or task rows with `weights` [B, T] on the
  answer; see data.tasks.exact_match). The targets are tokens[:, 1:]; tokens[:, 0] is never
  noised. A position is *maskable* iff it is a target with weight > 0, so prompts are never
  noised (LLaDA's SFT rule).
* z = tokens with the mask token at the noised positions. The model reads all T+1 tokens.
* Logit shift (Dream, AR adaptation): the prediction for position i is read at position i-1.
  Without it (MDLM, LLaDA, SDAR) it is read at position i. Decoders must be told which
  (`shift`), since reading the wrong one silently wrecks quality.
* SUBS: the mask token is never predicted (logit -inf); unmasked positions carry no loss
  (they copy their input).

Config section `diffusion` (see configs/diffusion_lm.py):
  mask_id        -1 = the tokenizer's <mask> (byte: 259, BPE: 3); set it for HF tokenizers.
  shift          bool, read predictions one position to the left (Dream-style adaptation).
  noise_eps      the log-linear schedule's epsilon: move chance (1 - eps) t.
  sampling_eps   t ~ U[sampling_eps, 1] (antithetic across the batch).
  loss_form      'mdlm' (weight sigma'(t)/expm1(sigma(t)), = 1/t) or 'llada' (1/p_mask).
  block_size     block diffusion / WeDLM block length.
  eval_samples   noise draws averaged per evaluation batch (a lower-variance ELBO).
  init_from      workdir of a checkpoint to start from (AR -> diffusion adaptation).
  reinit_tokens  with init_from: comma-separated token ids whose embedding rows are re-drawn
                 (N(0, model init_std)) before training, e.g. to break a collapsed pair of
                 tied embeddings (two exchangeable tokens, such as sudoku digits, that a run
                 merged into one; gradient descent does not leave that symmetric saddle).
  ar_weight      WeDLM: weight of the AR loss on the clean stream.
  block_sizes    block diffusion: comma-separated block lengths (e.g. '2,4,8,16'); '' = only
                 block_size. With a set, every row draws its own block partition (CtrlDiff:
                 one model that decodes with any of these sizes; block_diffusion.py).
Config section `task`: name '' = packed LM data, else a data.tasks.exact_match task name.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import data as data_lib
from data.tasks import exact_match
from data.tasks import iterator as task_iterator
from models import transformer as transformer_lib
from workdir import loading

_SPECIAL_MASK_INDEX = 3  # '<mask>' in data.tokenizer_base.SPECIAL_TOKENS
_DEFAULT_MASK_IDS = {'byte': 256 + _SPECIAL_MASK_INDEX, 'bpe': _SPECIAL_MASK_INDEX}


@dataclasses.dataclass(frozen=True)
class LogLinearSchedule:
  """MDLM's log-linear schedule: sigma(t) = -log(1 - (1 - eps) t), move chance (1 - eps) t.

  The continuous-time ELBO weight sigma'(t) / expm1(sigma(t)) equals 1/t exactly.
  """
  eps: float = 1e-3

  def sigma(self, t: jax.Array) -> jax.Array:
    return -jnp.log1p(-(1.0 - self.eps) * t)

  def move_chance(self, t: jax.Array) -> jax.Array:
    return -jnp.expm1(-self.sigma(t))

  def elbo_weight(self, t: jax.Array) -> jax.Array:
    """sigma'(t) / expm1(sigma(t)), sigma' by autodiff (the general MDLM formula)."""
    dsigma = jax.vmap(jax.grad(lambda s: self.sigma(s)))(jnp.ravel(t)).reshape(jnp.shape(t))
    return dsigma / jnp.expm1(self.sigma(t))


@dataclasses.dataclass(frozen=True)
class DiffusionSettings:
  """The `diffusion` config section as a frozen dataclass (see the module docstring)."""
  mask_id: int
  shift: bool = False
  noise_eps: float = 1e-3
  sampling_eps: float = 1e-3
  loss_form: str = 'mdlm'
  block_size: int = 16
  eval_samples: int = 4
  init_from: str = ''
  ar_weight: float = 1.0
  reinit_tokens: str = ''
  block_sizes: str = ''

  def __post_init__(self):
    if self.loss_form not in ('mdlm', 'llada'):
      raise ValueError(f"diffusion.loss_form must be 'mdlm' or 'llada', got {self.loss_form!r}.")
    if self.block_size <= 0 or self.eval_samples <= 0:
      raise ValueError('diffusion.block_size and diffusion.eval_samples must be positive.')
    if not 0.0 <= self.sampling_eps < 1.0 or not 0.0 <= self.noise_eps < 1.0:
      raise ValueError('diffusion.sampling_eps and diffusion.noise_eps must be in [0, 1).')
    if self.reinit_tokens and not self.init_from:
      raise ValueError('diffusion.reinit_tokens re-draws rows of the diffusion.init_from '
                       'checkpoint; set init_from too.')
    _ = self.reinit_ids  # parses or raises
    _ = self.block_size_set  # parses or raises

  @property
  def reinit_ids(self) -> tuple[int, ...]:
    try:
      return tuple(int(x) for x in str(self.reinit_tokens).split(',') if x.strip())
    except ValueError:
      raise ValueError(f'diffusion.reinit_tokens must be comma-separated token ids, got '
                       f'{self.reinit_tokens!r}.') from None

  @property
  def block_size_set(self) -> tuple[int, ...]:
    """The sorted block lengths of `block_sizes` (empty when unset)."""
    try:
      sizes = tuple(sorted({int(x) for x in str(self.block_sizes).split(',') if x.strip()}))
    except ValueError:
      raise ValueError(f'diffusion.block_sizes must be comma-separated positive ints, got '
                       f'{self.block_sizes!r}.') from None
    if any(n <= 0 for n in sizes):
      raise ValueError(f'diffusion.block_sizes must be positive, got {self.block_sizes!r}.')
    return sizes

  @property
  def schedule(self) -> LogLinearSchedule:
    return LogLinearSchedule(self.noise_eps)


def settings(config: ml_collections.ConfigDict | None) -> DiffusionSettings:
  """Reads config.diffusion; mask_id -1 becomes the tokenizer kind's <mask> id."""
  if config is None or 'diffusion' not in config:
    raise ValueError('A diffusion objective needs a `diffusion` config section '
                     '(see configs/diffusion_lm.py).')
  d = dict(config.diffusion.to_dict())
  if d.get('mask_id', -1) < 0:
    kind = config.tokenizer.kind
    if kind not in _DEFAULT_MASK_IDS:
      raise ValueError(f'Set diffusion.mask_id for tokenizer kind {kind!r} (the id of its '
                       '<mask> token).')
    d['mask_id'] = _DEFAULT_MASK_IDS[kind]
  known = {f.name for f in dataclasses.fields(DiffusionSettings)}
  unknown = sorted(set(d) - known)
  if unknown:
    raise ValueError(f'Unknown diffusion config keys {unknown}; known: {sorted(known)}.')
  return DiffusionSettings(**d)


def antithetic_times(rng: jax.Array, shape: tuple[int, ...], sampling_eps: float) -> jax.Array:
  """t in [eps, 1), stratified: (u + k / n) mod 1 over the n = prod(shape) draws."""
  n = int(np.prod(shape))
  u = jax.random.uniform(rng, ())
  t = jnp.mod(u + jnp.arange(n, dtype=jnp.float32) / n, 1.0).reshape(shape)
  return sampling_eps + (1.0 - sampling_eps) * t


def maskable(batch: dict[str, jax.Array]) -> jax.Array:
  """[B, T+1] bool: targets with weight > 0 (position 0 never)."""
  tokens = batch['tokens']
  w = batch.get('weights')
  target = jnp.ones(tokens[:, 1:].shape, jnp.bool_) if w is None else (w > 0)
  return jnp.concatenate([jnp.zeros_like(target[:, :1]), target], axis=1)


def noise(rng: jax.Array, tokens_BxT: jax.Array, maskable_BxT: jax.Array,
          p_mask_BxT: jax.Array, mask_id: int) -> tuple[jax.Array, jax.Array]:
  """Masks each maskable token independently with probability p_mask. Returns (z, masked)."""
  masked = maskable_BxT & (jax.random.uniform(rng, tokens_BxT.shape) < p_mask_BxT)
  return jnp.where(masked, mask_id, tokens_BxT), masked


def subs_log_probs(logits: jax.Array, mask_id: int) -> jax.Array:
  """SUBS: log-softmax with the mask token's logit at -inf (float32)."""
  logits = logits.astype(jnp.float32).at[..., mask_id].set(-jnp.inf)
  return jax.nn.log_softmax(logits, axis=-1)


def predictions_at(logits_BxTxV: jax.Array, shift: bool) -> jax.Array:
  """Logits predicting positions 1..T of a length-(T+1) input: read at i-1 (shift) or i."""
  return logits_BxTxV[:, :-1] if shift else logits_BxTxV[:, 1:]


def weighted_masked_ce(logp_BxTxV: jax.Array, targets_BxT: jax.Array, masked_BxT: jax.Array,
                       weight_BxT: jax.Array, maskable_BxT: jax.Array
                       ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """sum(masked * weight * CE) / (maskable tokens): the ELBO per token (nats), plus sums.

  nll_sum / tokens_sum over an evaluation set is the ELBO bound on NLL per token.
  """
  nll_BxT = -jnp.take_along_axis(logp_BxTxV, targets_BxT[..., None], axis=-1)[..., 0]
  m = masked_BxT.astype(jnp.float32)
  terms = jnp.where(masked_BxT, nll_BxT * weight_BxT, 0.0)
  count = maskable_BxT.astype(jnp.float32).sum()
  loss = terms.sum() / jnp.maximum(count, 1.0)
  correct = (jnp.argmax(logp_BxTxV, -1) == targets_BxT) * m
  return loss, {'loss': loss, 'nll_sum': terms.sum(), 'tokens_sum': count,
                'masked_accuracy': correct.sum() / jnp.maximum(m.sum(), 1.0),
                'masked_fraction': m.sum() / jnp.maximum(count, 1.0),
                'bits_per_token': loss / jnp.log(2.0)}


def token_weights(s: DiffusionSettings, t: jax.Array) -> jax.Array:
  """Per-token loss weight for noise level t: MDLM's sigma'/expm1(sigma) or LLaDA's 1/p_mask."""
  if s.loss_form == 'mdlm':
    return s.schedule.elbo_weight(t)
  return 1.0 / s.schedule.move_chance(t)


def averaged_eval(loss_fn: Callable, samples: int) -> Callable:
  """eval_fn: loss_fn's metrics averaged over `samples` independent noise draws."""
  def eval_fn(params, batch, rng):
    metrics = [loss_fn(params, batch, jax.random.fold_in(rng, i))[1] for i in range(samples)]
    out = jax.tree.map(lambda *xs: sum(xs) / samples, *metrics)
    out['tokens_sum'] = metrics[0]['tokens_sum']
    return out['loss'], out
  return eval_fn


# ---------------------------------------------------------------------------- data

def task_name(config: ml_collections.ConfigDict | None) -> str:
  if config is None or 'task' not in config:
    return ''
  return config.task.name


def data_hooks(config: ml_collections.ConfigDict | None, mask_id: int | None = None
               ) -> dict[str, Any]:
  """make_train_iterator / make_eval_batches for config.task (packed LM data when unset).

  With `mask_id`, the iterator checks that the run's tokenizer has that <mask> id.
  """
  name = task_name(config)

  def check(tokenizer):
    if mask_id is not None and tokenizer.mask_id != mask_id:
      raise ValueError(f'diffusion.mask_id={mask_id} but the tokenizer\'s <mask> is '
                       f'{tokenizer.mask_id}; leave diffusion.mask_id at -1 or fix it.')

  if not name:

    def lm_train(dc, tokenizer, **kwargs):
      check(tokenizer)
      return data_lib.make_train_iterator(dc, tokenizer, **kwargs)
    return {'make_train_iterator': lm_train}
  task = exact_match.get(name)
  seed = config.seed

  def train_iter(dc, tokenizer, *, process_index=0, process_count=1):
    check(tokenizer)
    return task_iterator.SyntheticIterator(
        exact_match.batch_fn(task, tokenizer, dc.seq_len), seed=seed,
        batch_size=dc.batch_size, process_index=process_index, process_count=process_count,
        name=name)

  def eval_batches(dc, tokenizer, *, max_batches, batch_size=None):
    return task_iterator.eval_batches(exact_match.batch_fn(task, tokenizer, dc.seq_len),
                                      seed=seed, batch_size=batch_size or dc.batch_size,
                                      num_batches=max_batches)
  return {'make_train_iterator': train_iter, 'make_eval_batches': eval_batches}


# ---------------------------------------------------------------------------- init

def init_from(workdir: str, model: transformer_lib.Transformer,
              reinit_ids: tuple[int, ...] = ()) -> Callable[[], Any]:
  """init_model_params: the model params of the checkpoint in `workdir` (same architecture),
  with the embedding rows of `reinit_ids` re-drawn from N(0, init_std) (key 0)."""
  def load():
    loaded = loading.load_model(workdir)
    loading.require_same_model(model.cfg, loaded, f'diffusion.init_from={workdir}')
    params = loaded.params
    if reinit_ids:
      emb = params['embed']['embedding']
      bad = [t for t in reinit_ids if not 0 <= t < emb.shape[0]]
      if bad:
        raise ValueError(f'diffusion.reinit_tokens {bad} are outside the vocabulary '
                         f'({emb.shape[0]}).')
      ids = jnp.asarray(reinit_ids)
      rows = model.cfg.init_std * jax.random.normal(jax.random.key(0),
                                                    (len(reinit_ids), emb.shape[1]))
      params = {**params, 'embed': {**params['embed'],
                                    'embedding': emb.at[ids].set(rows.astype(emb.dtype))}}
    return params
  return load
