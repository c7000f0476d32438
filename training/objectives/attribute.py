"""The attribute classifier of classifier-guided diffusion decoding (decoding/diffusion/
guidance.py), fitted on noised rows of a generated task.

The trained tree: `models/attribute.AttributeClassifier` (params['attribute']), p(y | x_t)
for the classes of `attribute.name` (data/tasks/attributes.py) of the task's answers. The run
also holds, frozen, the diffusion model of `attribute.base_workdir` (so `sample.py
--workdir=RUN --decoder=ctrldiff --decoder_config.guidance_scale=2` finds everything in one
run) and the trees of that run named in `attribute.carry` (e.g. CtrlDiff's 'ctrldiff'
block-size predictor).

Rows are the task's rows (<bos> prompt <sep> answer <eos>...), labelled from the generator's
answer. Noise: per row t ~ U(0, 1), and either (half the rows) every answer position masked
with probability t, as a masked diffusion decoder's canvas looks, or (the other half) what a
block diffusion decoder's canvas looks like: the answer clean up to a random cut c, masked
with probability t over the next w ~ U{1..16} positions (the current block), and masked
after them. Loss: cross-entropy of the label; metrics: accuracy overall and on rows whose
answer is at most / more than half masked.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from data.tasks import attributes as attributes_lib
from data.tasks import exact_match
from data.tasks import iterator as task_iterator
from models import attribute as attr_lib
from models import kind as kind_lib
from models import transformer as transformer_lib
from training.objectives import diffusion_lib as lib
from training.objectives.registry import Objective, register
from workdir import loading

MAX_BLOCK = 16  # the widest "current block" of the block-causal noise


def labelled_batch_fn(attribute: attributes_lib.Attribute, tokenizer, seq_len: int):
  """make_batch(rng, batch_size) -> {'tokens' [B, seq_len + 1], 'weights' [B, seq_len],
  'label' [B] int32} for the attribute's task."""
  task = exact_match.get(attribute.task)

  def make_batch(rng: np.random.Generator, batch_size: int):
    rows, labels = [], []
    for _ in range(batch_size):
      prompt, answer = task.generate(rng)
      rows.append(exact_match.encode_example(tokenizer, prompt, answer, seq_len))
      labels.append(attribute.label(prompt, answer))
    if min(labels) < 0:
      raise ValueError(f'Attribute {attribute.name!r} cannot label a generated answer of '
                       f'task {attribute.task!r}.')
    return {'tokens': np.stack([r[0] for r in rows]), 'weights': np.stack([r[1] for r in rows]),
            'label': np.asarray(labels, np.int32)}
  return make_batch


def noised(rng: jax.Array, tokens_BxT: jax.Array, maskable_BxT: jax.Array, mask_id: int
           ) -> jax.Array:
  """The rows with answer positions masked as in the module docstring. Shapes [B, T]."""
  B, T = tokens_BxT.shape
  k_t, k_u, k_mode, k_cut, k_w = jax.random.split(rng, 5)
  t_Bx1 = jax.random.uniform(k_t, (B, 1))
  u_BxT = jax.random.uniform(k_u, (B, T))
  pos = jnp.arange(T)[None, :]
  start = jnp.argmax(maskable_BxT, axis=1)
  length = jnp.sum(maskable_BxT, axis=1)
  cut = start + jnp.floor(jax.random.uniform(k_cut, (B,)) * (length + 1)).astype(jnp.int32)
  w = jax.random.randint(k_w, (B,), 1, MAX_BLOCK + 1)
  uniform = u_BxT < t_Bx1
  block = (pos >= (cut + w)[:, None]) | ((pos >= cut[:, None]) & uniform)
  by_block = jax.random.bernoulli(k_mode, 0.5, (B, 1))
  masked = maskable_BxT & jnp.where(by_block, block, uniform)
  return jnp.where(masked, mask_id, tokens_BxT)


def classifier_loss(head_params, batch, rng: jax.Array, mask_id: int):
  """(loss, metrics): cross-entropy of batch['label'] from the noised rows."""
  tokens, maskable = batch['tokens'], lib.maskable(batch)
  z = noised(rng, tokens, maskable, mask_id)
  valid = jnp.ones(z.shape, bool)
  logp = attr_lib.log_probs(head_params, z, valid)
  label = batch['label']
  nll = -jnp.take_along_axis(logp, label[:, None], axis=1)[:, 0]
  right = (jnp.argmax(logp, axis=1) == label).astype(jnp.float32)
  frac = jnp.sum((z == mask_id) & maskable, axis=1) / jnp.maximum(jnp.sum(maskable, axis=1), 1)
  low = frac <= 0.5
  mean_where = lambda x, m: jnp.sum(jnp.where(m, x, 0.0)) / jnp.maximum(jnp.sum(m), 1)
  loss = jnp.mean(nll)
  return loss, dict(loss=loss, accuracy=jnp.mean(right),
                    accuracy_mostly_clean=mean_where(right, low),
                    accuracy_mostly_masked=mean_where(right, ~low))


def attribute_settings(config: ml_collections.ConfigDict | None) -> ml_collections.ConfigDict:
  if config is None or 'attribute' not in config:
    raise ValueError("Objective 'attribute_classifier' reads an `attribute` config section "
                     '(name, base_workdir, carry, width, layers): use configs/ctrlguide.py.')
  c = config.attribute
  attr = attributes_lib.get(c.name)  # raises on an unknown attribute
  if lib.task_name(config) != attr.task:
    raise ValueError(f'Attribute {c.name!r} labels task {attr.task!r}, but task.name is '
                     f'{lib.task_name(config)!r}.')
  return c


@register('attribute_classifier')
def attribute_objective(model: transformer_lib.Transformer,
                        config: ml_collections.ConfigDict) -> Objective:
  c = attribute_settings(config)
  s = lib.settings(config)
  attr = attributes_lib.get(c.name)
  carry = tuple(x for x in str(c.carry).split(',') if x.strip())
  if attr_lib.HEAD in carry:
    raise ValueError(f'attribute.carry cannot name {attr_lib.HEAD!r} (the tree trained here).')

  @functools.cache
  def carried() -> dict:
    with jax.ensure_compile_time_eval():  # init_extras also runs under eval_shape
      return {k: jax.tree.map(np.asarray, load_base().extras[k]) for k in carry}

  @functools.cache
  def load_base():
    if not c.base_workdir:
      raise ValueError('attribute.base_workdir must name the trained diffusion run to guide.')
    loaded = loading.load_model(c.base_workdir)
    if loaded.kind.attention != 'block_causal' or loaded.kind.mask_id < 0:
      raise ValueError(f'attribute.base_workdir={c.base_workdir} holds a '
                       f'{loaded.kind.describe()} model; guidance decodes block diffusion '
                       "('ctrldiff'): configs/diffusion_tasks.py:TASK,ctrldiff.")
    loading.require_same_model(model.cfg, loaded, f'attribute.base_workdir={c.base_workdir}')
    missing = [k for k in carry if k not in loaded.extras]
    if missing:
      raise ValueError(f'attribute.carry names {missing}, which attribute.base_workdir='
                       f'{c.base_workdir} does not hold (it has {sorted(loaded.extras)}).')
    return loaded

  def loss_fn(params, batch, rng):
    return classifier_loss(params[attr_lib.HEAD], batch, rng, s.mask_id)

  def init_extras(rng):
    head = attr_lib.init_params(rng, model.cfg.vocab_size, len(attr.classes), width=c.width,
                                layers=c.layers, max_len=model.cfg.max_seq_len)
    return {attr_lib.HEAD: head, **jax.tree.map(jnp.asarray, carried())}

  def check(tokenizer):
    if tokenizer.mask_id != s.mask_id:
      raise ValueError(f'diffusion.mask_id={s.mask_id} but the tokenizer\'s <mask> is '
                       f'{tokenizer.mask_id}.')

  def train_iter(dc, tokenizer, *, process_index=0, process_count=1):
    check(tokenizer)
    return task_iterator.SyntheticIterator(
        labelled_batch_fn(attr, tokenizer, dc.seq_len), seed=config.seed,
        batch_size=dc.batch_size, process_index=process_index, process_count=process_count,
        name=f'{attr.task}/{attr.name}')

  def eval_batches(dc, tokenizer, *, max_batches, batch_size=None):
    return task_iterator.eval_batches(labelled_batch_fn(attr, tokenizer, dc.seq_len),
                                      seed=config.seed, batch_size=batch_size or dc.batch_size,
                                      num_batches=max_batches)

  multi = len(s.block_size_set) > 1
  return Objective(loss_fn=loss_fn, eval_fn=loss_fn, init_extras=init_extras,
                   frozen=('model',) + carry, init_model_params=lambda: load_base().params,
                   make_train_iterator=train_iter, make_eval_batches=eval_batches,
                   kind=kind_lib.ModelKind(attention='block_causal', mask_id=s.mask_id,
                                           shift=s.shift,
                                           block_size=0 if multi else s.block_size))
