"""PIPO (models/pipo.py): `pipo` fine-tunes a base trained on a reasoning task to read two-token
chunks and write two tokens per position, and trains its confidence head.

Starts from the CoT run in `pipo.init_from` (configs/latent_reasoning.py, method=cot); the base
is fine-tuned (not frozen) together with params['pipo'] (compressor, MTP head, confidence).

Training row (data/tasks/reasoning.py layout): the stream x = prompt + CoT + answer + <eos>,
cut into chunks (`chunk_row`): the prompt in pairs as the decoder reads it (an odd prompt's
last token alone), then the completion in chunks of 2 tokens, or 1 with probability
`pipo.single_prob` (the paper's random padding at draft positions: the states a rejected
draft leaves). Chunk k at position k ends before stream index e_k; its targets are
y1 = x[e_k] and y2 = x[e_k + 1], weighted where they are completion tokens (not prompt). Loss:

  CE(head 1, y1) + `mtp_weight` x CE(MTP head given y1, y2)
    + `conf_weight` x BCE(confidence, stop_gradient(argmax MTP == y2))

averaged over the weighted targets of each term (the MTP head is teacher-forced on y1, as
the decoder feeds it the token it committed). The confidence head's inputs are
stop-gradient (models/pipo.py), so its loss trains the head alone. Metrics: `ce1`, `ce2`,
`acc1`, `acc2` (teacher-forced top-1), `conf_bce`, `accept` (share with confidence >= 0.5)
and `accept_precision` (share of those whose MTP token is right).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from data.tasks import iterator as task_iterator
from data.tasks import reasoning
from models import pipo as pipo_lib
from models import transformer as transformer_lib
from training.objectives import coconut
from training.objectives.registry import Objective, register, token_cross_entropy
from workdir import loading

BATCH_KEYS = ('first', 'second', 'has_second', 'positions', 'y1', 'y2', 'w1', 'w2')


@dataclasses.dataclass(frozen=True)
class PIPOSettings:
  """The `pipo` config section (see the module docstring)."""
  task: str = 'prontoqa'
  init_from: str = ''
  single_prob: float = 0.25
  mtp_weight: float = 1.0
  conf_weight: float = 1.0

  def __post_init__(self):
    if not 0.0 <= self.single_prob <= 1.0:
      raise ValueError(f'pipo.single_prob must be in [0, 1], got {self.single_prob}.')
    if self.mtp_weight < 0 or self.conf_weight < 0:
      raise ValueError('pipo.mtp_weight and pipo.conf_weight must be >= 0.')
    reasoning.get(self.task)  # ValueError naming the known tasks

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict | None) -> 'PIPOSettings':
    if config is None or 'pipo' not in config:
      raise ValueError('The pipo objective reads a `pipo` config section (task, init_from, '
                       '...): use configs/pipo.py.')
    return cls(**config.pipo.to_dict())


def max_chunks(task: reasoning.ReasoningTask) -> int:
  """Chunk slots C of every row: the longest prompt in pairs plus the longest completion
  one token per chunk."""
  P, _, S, _ = coconut.shapes(task, coconut.LatentSettings(task=task.name, method='cot'))
  return (P + 1) // 2 + S


def chunk_row(stream: list[int], prompt_len: int, sizes: list[int], C: int, pad: int
              ) -> dict[str, np.ndarray]:
  """One row's chunks [C] (keys `BATCH_KEYS`) of the token `stream` whose first `prompt_len`
  tokens are the prompt: the prompt in pairs, then the completion in chunks of `sizes`
  (1 or 2 tokens each; a chunk that would run past the stream is cut to 1; sizes beyond the
  stream are ignored, and missing sizes count as 2)."""
  bounds, t = [], 0
  while t < prompt_len:
    n = min(2, prompt_len - t)
    bounds.append((t, n))
    t += n
  k = 0
  while t < len(stream):
    n = min(sizes[k] if k < len(sizes) else 2, len(stream) - t)
    if n not in (1, 2):
      raise ValueError(f'chunk sizes must be 1 or 2, got {n}.')
    bounds.append((t, n))
    t, k = t + n, k + 1
  if len(bounds) > C:
    raise ValueError(f'{len(bounds)} chunks do not fit in {C} slots.')
  out = {key: np.full((C,), pad, np.int32) for key in ('first', 'second', 'y1', 'y2')}
  out['has_second'] = np.zeros((C,), bool)
  out['positions'] = np.full((C,), -1, np.int32)
  out['w1'], out['w2'] = np.zeros((C,), np.float32), np.zeros((C,), np.float32)
  L = len(stream)
  for j, (s, n) in enumerate(bounds):
    out['first'][j], out['positions'][j] = stream[s], j
    if n == 2:
      out['second'][j], out['has_second'][j] = stream[s + 1], True
    for key, w, idx in (('y1', 'w1', s + n), ('y2', 'w2', s + n + 1)):
      if prompt_len <= idx < L:
        out[key][j], out[w][j] = stream[idx], 1.0
  return out


def make_batch_fn(tokenizer, s: PIPOSettings, split: str = 'train'):
  """make_batch(rng, B) -> numpy batch (keys `BATCH_KEYS`, each [B, C]) for
  `SyntheticIterator`."""
  task = reasoning.get(s.task)
  rows = coconut.make_batch_fn(tokenizer, coconut.LatentSettings(task=s.task, method='cot'),
                               split)
  C = max_chunks(task)

  def make_batch(rng: np.random.Generator, batch_size: int) -> dict[str, np.ndarray]:
    b = rows(rng, batch_size)
    out = {key: [] for key in BATCH_KEYS}
    for r in range(batch_size):
      plen, n = int(b['prefix_len'][r]), int(b['suffix_weights'][r].sum())
      stream = list(b['prefix'][r, :plen]) + list(b['suffix'][r, :n])
      sizes = list(np.where(rng.random(n) < s.single_prob, 1, 2))
      for key, v in chunk_row(stream, plen, sizes, C, tokenizer.pad_id).items():
        out[key].append(v)
    return {key: np.stack(v) for key, v in out.items()}
  return make_batch


def losses(model: transformer_lib.Transformer, model_params, pipo, batch, s: PIPOSettings
           ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """(loss, metrics) of one batch (see the module docstring)."""
  cfg = model.cfg
  out = pipo_lib.forward(model, model_params, pipo, batch['first'], batch['second'],
                         batch['has_second'], batch['positions'])
  ce1, m1 = token_cross_entropy(out.logits_BxTxV, batch['y1'], batch['w1'])
  logits2, conf = pipo_lib.extra_token(cfg, model_params, pipo, out.last_hidden_BxTxD,
                                       batch['y1'])
  ce2, m2 = token_cross_entropy(logits2, batch['y2'], batch['w2'])
  w2 = batch['w2'].astype(jnp.float32)
  n2 = jnp.maximum(w2.sum(), 1.0)
  right = jax.lax.stop_gradient(jnp.argmax(logits2, -1) == batch['y2']).astype(jnp.float32)
  bce_BxT = jnp.maximum(conf, 0) - conf * right + jnp.log1p(jnp.exp(-jnp.abs(conf)))
  bce = (bce_BxT * w2).sum() / n2
  loss = ce1 + s.mtp_weight * ce2 + s.conf_weight * bce
  accept = (conf >= 0).astype(jnp.float32) * w2
  return loss, {'loss': loss, 'ce1': ce1, 'ce2': ce2, 'acc1': m1['accuracy'],
                'acc2': m2['accuracy'], 'conf_bce': bce, 'accept': accept.sum() / n2,
                'accept_precision': (accept * right).sum() / jnp.maximum(accept.sum(), 1.0)}


@register('pipo')
def pipo(model: transformer_lib.Transformer, config: ml_collections.ConfigDict) -> Objective:
  """PIPO fine-tuning of a task's CoT run (see the module docstring)."""
  s = PIPOSettings.from_config(config)
  pipo_lib.check_model(model.cfg)

  def init_extras(rng):
    return {pipo_lib.PIPO: pipo_lib.init_params(model.cfg, rng)}

  def loss_fn(params, batch, rng):
    del rng
    return losses(model, params['model'], params[pipo_lib.PIPO], batch, s)

  def make_train_iterator(dc, tokenizer, *, process_index=0, process_count=1):
    return task_iterator.SyntheticIterator(
        make_batch_fn(tokenizer, s), seed=config.seed, batch_size=dc.batch_size,
        process_index=process_index, process_count=process_count, name=f'{s.task}/pipo')

  def make_eval_batches(dc, tokenizer, *, max_batches):
    return task_iterator.eval_batches(make_batch_fn(tokenizer, s), seed=config.seed,
                                      batch_size=dc.batch_size, num_batches=max_batches)

  init = (lambda: loading.load_model(s.init_from).params) if s.init_from else None
  return Objective(loss_fn=loss_fn, init_extras=init_extras,
                   make_train_iterator=make_train_iterator,
                   make_eval_batches=make_eval_batches, init_model_params=init)
