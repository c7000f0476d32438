"""Coconut's curriculum and its controls on the generated reasoning tasks.

Objectives (config section `latent`, see configs/latent_reasoning.py):

  coconut  stage s replaces the first s chain-of-thought steps by s * c continuous thoughts
           (the last hidden state fed back as the next input); loss on what follows
  pause    the same curriculum with <pause> tokens in place of the thoughts (Coconut's
           "pause as thought" control)
  cot      stage 0: the whole chain of thought in language (the CoT baseline)
  nocot    no chain of thought: <think></think> answer

Row layout (data/tasks/reasoning.py), per row b with n_b thoughts and s_b skipped steps:

  prefix   <bos> question <sep> <think>                      positions 0 .. P_b - 1
  thoughts n_b inputs (hidden states / E[<pause>])           positions P_b .. P_b + n_b - 1
  suffix   steps[s_b:] </think> answer <eos>                 positions P_b + n_b ...

The suffix is the target (the first suffix token is predicted from the last thought). Stage
s > max_stage removes every step and (pad_to_max) uses max_stage * c thoughts, as Coconut
does for ProsQA; with probability uniform_prob a row gets a random stage in
[0, number of its steps] (stage mixing against forgetting).

Latent positions are filled by repeated one-position forwards with the KV cache (`fill =
'cache'`: prefix, then one call per thought, then the suffix; gradients flow through the
cache). `fill = 'recompute'` runs the whole row n + 1 times without a cache instead; the two
give the same logits (tested), the cache costs (P + n + S) token-forwards instead of
(n + 1)(P + n + S). Rows whose thoughts do not depend on the model (pause tokens, no thoughts)
take one flat pass.

The optimizer is reset per stage by running one training run per stage, each started from the
previous stage's parameters (`latent.init_from` = that run's workdir, through
`Objective.init_model_params`); benchmarks/latent_train.py drives the stages.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from data import tokenizers
from data.tasks import iterator as task_iterator
from data.tasks import reasoning
from models import cache as cache_lib
from models import transformer as transformer_lib
from training.objectives.registry import Objective, register, token_cross_entropy
from workdir import loading

METHODS = ('coconut', 'pause', 'cot', 'nocot')


@dataclasses.dataclass(frozen=True)
class LatentSettings:
  """The `latent` config section (see the module docstring)."""
  task: str = 'prosqa'
  method: str = 'coconut'
  stage: int = 0
  c: int = 1
  max_stage: int = 4
  pad_to_max: bool = True
  uniform_prob: float = 0.0
  init_from: str = ''
  fill: str = 'cache'
  sim_cot_weight: float = 1.0
  aux_layers: int = 1

  def __post_init__(self):
    if self.method not in METHODS:
      raise ValueError(f'latent.method={self.method!r}; use one of {METHODS}.')
    if self.fill not in ('cache', 'recompute'):
      raise ValueError(f"latent.fill={self.fill!r}; use 'cache' or 'recompute'.")
    if self.c < 1 or self.max_stage < 0 or self.stage < 0:
      raise ValueError('latent.c must be >= 1 and latent.stage, latent.max_stage >= 0.')
    if not 0.0 <= self.uniform_prob <= 1.0:
      raise ValueError(f'latent.uniform_prob must be in [0, 1], got {self.uniform_prob}.')

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict | None,
                  method: str) -> 'LatentSettings':
    """The section `config.latent`; the method is the objective's name."""
    if config is None or 'latent' not in config:
      raise ValueError('This objective needs a `latent` config section '
                       '(see configs/latent_reasoning.py).')
    return cls(method=method, **config.latent.to_dict())

  @property
  def latent(self) -> bool:
    return self.method in ('coconut', 'pause')

  @property
  def max_thoughts(self) -> int:
    """Thought slots per row (Lmax)."""
    return self.max_stage * self.c if self.latent else 0

  def thoughts_at_inference(self, stage: int | None = None) -> int:
    """Thoughts a decoder feeds for a model trained up to `stage` (default: this stage)."""
    stage = self.stage if stage is None else stage
    return min(stage, self.max_stage) * self.c if self.latent else 0

  def row_plan(self, n_steps: int, stage: int) -> tuple[int, int]:
    """(skipped steps, thoughts) of a row at `stage` (Coconut's dataset.py rules)."""
    if self.method == 'cot':
      return 0, 0
    if self.method == 'nocot':
      return n_steps, 0
    if stage > self.max_stage:
      return n_steps, (self.max_stage if self.pad_to_max else
                       min(n_steps, self.max_stage)) * self.c
    return min(stage, n_steps), stage * self.c


def shapes(task: reasoning.ReasoningTask, s: LatentSettings) -> tuple[int, int, int, int]:
  """(P prefix, Lmax thoughts, S suffix, Ls step tokens) of every batch."""
  P = task.max_question_chars + 3
  S = task.max_cot_chars + task.max_answer_chars + 2
  return P, s.max_thoughts, S, task.max_step_chars + 1


def make_batch_fn(tokenizer: Any, s: LatentSettings, split: str = 'train', *,
                  stage: int | None = None, with_steps: bool = False):
  """make_batch(rng, B) -> numpy batch for `SyntheticIterator` (keys in the docstring)."""
  task = reasoning.get(s.task)
  P, _, S, Ls = shapes(task, s)
  G = max(s.max_stage, 1)
  base_stage = s.stage if stage is None else stage
  pad, eos = tokenizer.pad_id, tokenizer.eos_id

  def make_batch(rng: np.random.Generator, batch_size: int) -> dict[str, np.ndarray]:
    b = {'prefix': np.full((batch_size, P), pad, np.int32),
         'prefix_len': np.zeros((batch_size,), np.int32),
         'n_latent': np.zeros((batch_size,), np.int32),
         'suffix': np.full((batch_size, S), eos, np.int32),
         'suffix_weights': np.zeros((batch_size, S), np.float32)}
    if with_steps:
      b['steps'] = np.full((batch_size, G, Ls), eos, np.int32)
      b['steps_weights'] = np.zeros((batch_size, G, Ls), np.float32)
    for r in range(batch_size):
      ex = task.example(rng, split)
      stage_r = base_stage
      if s.uniform_prob and rng.random() < s.uniform_prob:
        stage_r = int(rng.integers(0, len(ex.steps) + 1))
      skip, n = s.row_plan(len(ex.steps), stage_r)
      prefix = reasoning.prompt_ids(tokenizer, ex)
      steps = reasoning.step_ids(tokenizer, ex)
      suffix = sum(steps[skip:], []) + reasoning.answer_ids(tokenizer, ex)
      b['prefix'][r, :len(prefix)] = prefix
      b['prefix_len'][r] = len(prefix)
      b['n_latent'][r] = n
      b['suffix'][r, :len(suffix)] = suffix
      b['suffix_weights'][r, :len(suffix)] = 1.0
      if with_steps:  # step k is decoded from thought group k (only replaced steps)
        for k in range(min(skip, G, n // s.c)):
          ids = steps[k] + [eos]
          b['steps'][r, k, :len(ids)] = ids
          b['steps_weights'][r, k, :len(ids)] = 1.0
    return b
  return make_batch


# ------------------------------------------------------------------------ forward passes
def _thought_input(h_BxD: jax.Array, embed_VxD: jax.Array, pause_id: int | None) -> jax.Array:
  if pause_id is None:
    return h_BxD
  return jnp.broadcast_to(embed_VxD[pause_id].astype(jnp.float32), h_BxD.shape)


def forward_cached(model: transformer_lib.Transformer, params: Any, batch: dict[str, jax.Array],
                   max_thoughts: int, pause_id: int | None = None
                   ) -> tuple[jax.Array, jax.Array]:
  """Target logits [B, S, V] (logit t predicts suffix[t]) and the thought inputs
  [B, Lmax, D], filling thoughts one position at a time through the cache."""
  prefix_BxP, plen_B, n_B = batch['prefix'], batch['prefix_len'], batch['n_latent']
  suffix_BxS = batch['suffix']
  B, P = prefix_BxP.shape
  S = suffix_BxS.shape[1]
  embed_VxD = params['embed']['embedding']
  cache = cache_lib.Cache.init(model.cfg, B, P + max_thoughts + S)
  t_1xP = jnp.arange(P)[None, :]
  out = model.apply({'params': params}, prefix_BxP, jnp.where(t_1xP < plen_B[:, None], t_1xP, -1),
                    cache=cache)
  last_Bx1x1 = (plen_B - 1)[:, None, None]
  h_BxD = jnp.take_along_axis(out.last_hidden_BxTxD, last_Bx1x1, 1)[:, 0].astype(jnp.float32)
  logit_BxV = jnp.take_along_axis(out.logits_BxTxV, last_Bx1x1, 1)[:, 0]
  cache = out.cache

  def think(carry, k):
    cache, h_BxD, logit_BxV = carry
    active_B = k < n_B
    x_BxD = _thought_input(h_BxD, embed_VxD, pause_id)
    o = model.apply({'params': params}, None, jnp.where(active_B, plen_B + k, -1)[:, None],
                    cache=cache, inputs_embeds_BxTxD=x_BxD[:, None])
    h_BxD = jnp.where(active_B[:, None], o.last_hidden_BxTxD[:, 0].astype(jnp.float32), h_BxD)
    logit_BxV = jnp.where(active_B[:, None], o.logits_BxTxV[:, 0], logit_BxV)
    return (o.cache, h_BxD, logit_BxV), x_BxD

  thoughts_LxBxD = jnp.zeros((0, B, h_BxD.shape[-1]), jnp.float32)
  if max_thoughts:
    (cache, h_BxD, logit_BxV), thoughts_LxBxD = jax.lax.scan(
        think, (cache, h_BxD, logit_BxV), jnp.arange(max_thoughts))
  pos_BxS = (plen_B + n_B)[:, None] + jnp.arange(S)[None, :]
  out = model.apply({'params': params}, suffix_BxS, pos_BxS, cache=cache)
  logits_BxSxV = jnp.concatenate([logit_BxV[:, None], out.logits_BxTxV[:, :-1]], axis=1)
  return logits_BxSxV, jnp.swapaxes(thoughts_LxBxD, 0, 1)


def forward_recompute(model: transformer_lib.Transformer, params: Any,
                      batch: dict[str, jax.Array], max_thoughts: int,
                      pause_id: int | None = None) -> tuple[jax.Array, jax.Array]:
  """Same outputs as `forward_cached`, by n + 1 full forwards over the flat row
  [prefix | thought slots | suffix] without a cache (masks follow positions)."""
  prefix_BxP, plen_B, n_B = batch['prefix'], batch['prefix_len'], batch['n_latent']
  suffix_BxS = batch['suffix']
  B, P = prefix_BxP.shape
  S, L = suffix_BxS.shape[1], max_thoughts
  embed_VxD = params['embed']['embedding']
  t_1xP, k_1xL = jnp.arange(P)[None, :], jnp.arange(L)[None, :]
  pos_BxT = jnp.concatenate([
      jnp.where(t_1xP < plen_B[:, None], t_1xP, -1),
      jnp.where(k_1xL < n_B[:, None], plen_B[:, None] + k_1xL, -1),
      (plen_B + n_B)[:, None] + jnp.arange(S)[None, :]], axis=1)
  tokens_BxT = jnp.concatenate([prefix_BxP, jnp.zeros((B, L), jnp.int32), suffix_BxS], 1)
  x_BxTxD = jnp.take(embed_VxD, tokens_BxT, axis=0).astype(jnp.float32)
  b = jnp.arange(B)
  # Flat index of the position before thought k: the last prefix token, then thought k - 1.
  before_BxL = jnp.where(k_1xL == 0, (plen_B - 1)[:, None], P + k_1xL - 1)
  if pause_id is not None:  # constant thoughts: nothing to fill sequentially, one pass
    x_BxTxD = x_BxTxD.at[:, P:P + L].set(_thought_input(
        jnp.zeros((B, L, x_BxTxD.shape[-1])), embed_VxD, pause_id))
  for k in range(L if pause_id is None else 0):
    out = model.apply({'params': params}, None, pos_BxT, inputs_embeds_BxTxD=x_BxTxD)
    h_BxD = out.last_hidden_BxTxD[b, before_BxL[:, k]].astype(jnp.float32)
    x_new = _thought_input(h_BxD, embed_VxD, pause_id)
    x_BxTxD = x_BxTxD.at[:, P + k].set(jnp.where((k < n_B)[:, None], x_new, x_BxTxD[:, P + k]))
  out = model.apply({'params': params}, None, pos_BxT, inputs_embeds_BxTxD=x_BxTxD)
  last_B = jnp.where(n_B > 0, P + n_B - 1, plen_B - 1)
  logits_BxSxV = jnp.concatenate([out.logits_BxTxV[b, last_B][:, None],
                                  out.logits_BxTxV[:, P + L:P + L + S - 1]], axis=1)
  return logits_BxSxV, x_BxTxD[:, P:P + L]


def answer_metrics(logits_BxSxV: jax.Array, batch: dict[str, jax.Array]
                   ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Suffix cross-entropy plus teacher-forced exact match of whole suffixes."""
  loss, metrics = token_cross_entropy(logits_BxSxV, batch['suffix'], batch['suffix_weights'])
  ok_BxS = (jnp.argmax(logits_BxSxV, -1) == batch['suffix']) | (batch['suffix_weights'] == 0)
  return loss, dict(metrics, suffix_exact=jnp.mean(jnp.all(ok_BxS, axis=1)))


def make_forward(model: transformer_lib.Transformer, s: LatentSettings, pause_id: int):
  """The forward of `s.fill`; rows without hidden-state thoughts (cot, nocot, pause) need no
  sequential filling and always take the single flat pass."""
  pid = pause_id if s.method == 'pause' else None
  hidden = s.method == 'coconut' and s.max_thoughts > 0
  fwd = forward_cached if (s.fill == 'cache' and hidden) else forward_recompute
  return lambda params, batch: fwd(model, params, batch, s.max_thoughts, pid)


def data_hooks(s: LatentSettings, config: ml_collections.ConfigDict, with_steps: bool = False):
  """(make_train_iterator, make_eval_batches, init_model_params) for an Objective."""
  def make_train_iterator(dc, tokenizer, *, process_index=0, process_count=1):
    return task_iterator.SyntheticIterator(
        make_batch_fn(tokenizer, s, with_steps=with_steps), seed=config.seed,
        batch_size=dc.batch_size, process_index=process_index, process_count=process_count,
        name=f'{s.task}/{s.method}/stage{s.stage}')

  def make_eval_batches(dc, tokenizer, *, max_batches):
    # Evaluate at the inference layout: this stage without stage mixing.
    plain = dataclasses.replace(s, uniform_prob=0.0)
    return task_iterator.eval_batches(make_batch_fn(tokenizer, plain, with_steps=with_steps),
                                      seed=config.seed, batch_size=dc.batch_size,
                                      num_batches=max_batches)

  def init_model_params():
    return loading.load_model(s.init_from).params

  return make_train_iterator, make_eval_batches, (init_model_params if s.init_from else None)


def pause_token_id(config: ml_collections.ConfigDict) -> int:
  if config.tokenizer.kind != 'byte':
    raise ValueError('The latent objectives use the byte tokenizer (tokenizer.kind=byte).')
  return tokenizers.make_tokenizer('byte').special_id('<pause>')


def _factory(method: str):
  def factory(model: transformer_lib.Transformer, config: ml_collections.ConfigDict
              ) -> Objective:
    s = LatentSettings.from_config(config, method)
    forward = make_forward(model, s, pause_token_id(config))

    def loss_fn(params, batch, rng):
      del rng
      logits, _ = forward(params['model'], batch)
      return answer_metrics(logits, batch)

    train_it, eval_b, init = data_hooks(s, config)
    return Objective(loss_fn=loss_fn, make_train_iterator=train_it, make_eval_batches=eval_b,
                     init_model_params=init)
  return factory


register('coconut')(_factory('coconut'))
register('pause')(_factory('pause'))
register('cot')(_factory('cot'))
register('nocot')(_factory('nocot'))
