"""The training loop: `train_and_evaluate(config, workdir)`.

Resumes exactly from the newest readable checkpoint in `workdir` (params, optimizer state,
step and data-iterator position), evaluates loss and bits per byte on the validation split,
logs to stdout / JSONL / TensorBoard and plots the loss curve at the end.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

import data as data_lib
from models import config as config_lib
from models import sharding as sharding_lib
from models import transformer as transformer_lib
from training import metrics as metrics_lib
from training import objectives
from training import optimizer as optimizer_lib
from training import step as step_lib
from training import train_state as state_lib
from workdir import checkpoint as checkpoint_lib
from workdir import lock as workdir_lib


class NonFiniteLossError(FloatingPointError):
  """The loss or gradient became NaN/inf; training stopped with the last checkpoint intact."""


def data_config(config: ml_collections.ConfigDict) -> data_lib.DataConfig:
  return data_lib.DataConfig(**config.data.to_dict())


def get_tokenizer(config: ml_collections.ConfigDict, workdir: str) -> data_lib.Tokenizer:
  """The run's tokenizer: loaded from workdir/tokenizer if present, else built and saved."""
  directory = os.path.join(workdir, checkpoint_lib.TOKENIZER_DIR)
  exists = os.path.isdir(directory)
  if jax.process_count() > 1:  # no process looks while process 0 writes it
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices('leapfrog: tokenizer directory checked')
  if exists:
    return data_lib.load_tokenizer(directory)
  tc = config.tokenizer
  dc = data_config(config)
  tokenizer = data_lib.make_tokenizer(
      tc.kind, vocab_size=tc.vocab_size, path=tc.path,
      texts=lambda: data_lib.load_texts(dc, dc.train_split))
  if jax.process_index() == 0:
    tokenizer.save(directory)
  return tokenizer


def model_config(config: ml_collections.ConfigDict, vocab_size: int) -> config_lib.ModelConfig:
  """The frozen model config; vocab_size 0 means the tokenizer's."""
  d = config.model.to_dict()
  if d['vocab_size'] == 0:
    d['vocab_size'] = vocab_size
  elif d['vocab_size'] < vocab_size:
    raise ValueError(f'model.vocab_size={d["vocab_size"]} is smaller than the tokenizer '
                     f'vocabulary ({vocab_size}).')
  return config_lib.ModelConfig.from_dict(d)


def _global_batch(batch: dict[str, np.ndarray], mesh, rules, batch_size: int
                  ) -> dict[str, jax.Array]:
  """Assembles the global batch (`batch_size` rows; every leaf split over 'batch') from this
  process's block of rows, or from all of them when it holds the whole batch."""
  return {k: jax.make_array_from_process_local_data(
      sharding_lib.batch_sharding(mesh, np.ndim(v), rules), np.asarray(v),
      (batch_size, *np.shape(v)[1:])) for k, v in batch.items()}


def _process_rows(mesh, rules, batch_size: int) -> tuple[int, int]:
  """The rows [start, stop) of a global batch that this process's devices hold; the data
  pipelines give process p of P the block [p·B/P, (p+1)·B/P), so the mesh must agree."""
  sharding = sharding_lib.batch_sharding(mesh, 2, rules)
  index = sharding.addressable_devices_indices_map((batch_size, 1))
  rows = sorted({(s[0].start or 0, batch_size if s[0].stop is None else s[0].stop)
                 for s in index.values()})
  start, stop = rows[0][0], rows[-1][1]
  if any(a[1] != b[0] for a, b in zip(rows, rows[1:])):
    raise ValueError(f'Process {jax.process_index()} holds rows {rows} of the batch: not one '
                     'block. Order the mesh so that each process holds consecutive rows.')
  expected = data_lib.process_rows(batch_size, jax.process_index(), jax.process_count())
  if (start, stop) != expected:
    raise ValueError(
        f'Process {jax.process_index()} of {jax.process_count()} holds rows [{start}, {stop}) '
        f'of the batch, but reads rows [{expected[0]}, {expected[1]}): split the batch over '
        'the processes (the mesh axes data/fsdp must span the hosts).')
  return start, stop


def _allgather_json(obj: Any) -> list[Any]:
  """Every process's JSON-serialisable `obj`, in process order (a collective call)."""
  if jax.process_count() == 1:
    return [obj]
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  raw = np.frombuffer(json.dumps(obj, sort_keys=True).encode(), np.uint8)
  sizes = np.asarray(multihost_utils.process_allgather(np.int32(raw.size))).reshape(-1)
  padded = np.zeros([int(sizes.max())], np.uint8)
  padded[:raw.size] = raw
  every = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(sizes), -1)
  return [json.loads(bytes(row[:n]).decode()) for row, n in zip(every, sizes)]


def data_state(train_iter: Any) -> dict[str, Any]:
  """The data position of the whole job: every process's iterator state, merged (the same
  on every process, so a checkpoint restores on any number of processes)."""
  states = _allgather_json(train_iter.get_state())
  merge = getattr(train_iter, 'merge_states', None)
  if merge is not None:
    return merge(states)
  if any(s != states[0] for s in states):
    raise ValueError(f'{type(train_iter).__name__} has a different state on each process and '
                     'no merge_states(): its position cannot be checkpointed.')
  return states[0]


def _normalise(d: dict[str, Any]) -> dict[str, Any]:
  return json.loads(json.dumps(d))


class _Evaluator:
  """Eval metrics over a fixed set of batches: `*_sum` metrics summed, the rest averaged;
  loss = nll_sum / tokens_sum and bits per byte when those exist (LM data)."""

  def __init__(self, eval_step, batches, token_bytes: np.ndarray, mesh, rules):
    self.eval_step, self.batches, self.mesh, self.rules = eval_step, batches, mesh, rules
    self.token_bytes = token_bytes

  def __call__(self, params) -> dict[str, float]:
    sums: dict[str, float] = {}
    means: dict[str, list[float]] = {}
    nbytes = 0.0
    for batch in self.batches:
      # Every process holds the whole eval batch: the global array is this batch.
      size = len(next(iter(batch.values())))
      m = jax.device_get(self.eval_step(params, _global_batch(batch, self.mesh, self.rules,
                                                              size)))
      for k, v in m.items():
        if k.endswith('_sum'):
          sums[k] = sums.get(k, 0.0) + float(v)
        else:
          means.setdefault(k, []).append(float(v))
      if 'tokens' in batch:
        nbytes += float(self.token_bytes[np.asarray(batch['tokens'])[:, 1:]].sum())
    out = {k: float(np.mean(v)) for k, v in means.items()}
    if 'nll_sum' in sums and 'tokens_sum' in sums:
      out['loss'] = sums['nll_sum'] / max(sums['tokens_sum'], 1.0)
      if nbytes:
        out['bits_per_byte'] = metrics_lib.bits_per_byte(sums['nll_sum'], nbytes)
    return out


_POSITIVE_TRAIN_KEYS = ('steps', 'log_every', 'eval_every', 'checkpoint_every',
                        'keep_checkpoints', 'grad_accum')
_NON_NEGATIVE_TRAIN_KEYS = ('stop_after_steps', 'warmup_steps', 'eval_batches')


def check_train_config(tc: ml_collections.ConfigDict) -> None:
  """ValueError naming the first train.* setting that cannot describe a run."""
  for key in _POSITIVE_TRAIN_KEYS + _NON_NEGATIVE_TRAIN_KEYS:
    value = tc.get(key)
    low = 1 if key in _POSITIVE_TRAIN_KEYS else 0
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
      raise ValueError(f'train.{key} must be an integer >= {low}, got {value!r}.')
  for key in ('learning_rate', 'weight_decay', 'grad_clip'):
    value = tc.get(key)
    if not isinstance(value, (int, float)) or not np.isfinite(value) or value < 0:
      raise ValueError(f'train.{key} must be a finite number >= 0, got {value!r}.')


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains per `config` in `workdir`; returns the final train and eval metrics.

  Raises ValueError for settings that describe no run and a workdir that cannot be one, and
  `workdir.WorkdirInUseError` while another live process trains in the same workdir.
  """
  check_train_config(config.train)
  workdir = workdir_lib.prepare(workdir)
  with workdir_lib.lock(workdir):
    return _train_and_evaluate(config, workdir)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  tc = config.train
  tokenizer = get_tokenizer(config, workdir)
  mcfg = model_config(config, tokenizer.vocab_size)
  model = transformer_lib.Transformer(mcfg)
  mesh = sharding_lib.make_mesh(config.mesh.to_dict())
  rules = sharding_lib.DEFAULT_RULES
  dc = data_config(config)
  sharding_lib.check_batch(dc.batch_size, mesh, rules)
  if dc.batch_size % jax.process_count():
    raise ValueError(f'data.batch_size={dc.batch_size} must be divisible by the number of '
                     f'processes ({jax.process_count()}).')
  if dc.batch_size % tc.grad_accum:
    raise ValueError(f'data.batch_size={dc.batch_size} must be divisible by '
                     f'train.grad_accum={tc.grad_accum}.')

  objective = objectives.make_objective(config.objective, model, config)
  tx = optimizer_lib.make_optimizer(tc, objective.frozen)
  shardings = state_lib.state_shardings(model, objective, tx, mesh, rules)
  ckpt = checkpoint_lib.Checkpointer(workdir, keep=tc.keep_checkpoints,
                                     async_save=tc.async_checkpointing)
  extras = sorted(k for k in shardings.params if k != 'model')
  meta = {'model': mcfg.to_dict(), 'objective': config.objective, 'extras': extras,
          'kind': dataclasses.replace(objective.kind, heads=tuple(extras)).to_dict(),
          'tokenizer': type(tokenizer).__name__, 'config': _normalise(config.to_dict())}

  make_iter = objective.make_train_iterator or data_lib.make_train_iterator
  rows = _process_rows(mesh, rules, dc.batch_size)
  train_iter = make_iter(dc, tokenizer, process_index=jax.process_index(),
                         process_count=jax.process_count())
  if jax.process_count() > 1:
    print(f'Process {jax.process_index()} of {jax.process_count()}: rows {rows[0]}-{rows[1] - 1} '
          f'of every batch of {dc.batch_size}.', flush=True)
  if ckpt.latest_step() is not None:
    abstract = state_lib.abstract_state(model, objective, tx, shardings)
    step0, params, opt_state, saved_data, saved = ckpt.restore(
        lambda meta, step: (abstract.params, abstract.opt_state),
        model_config=_normalise(mcfg.to_dict()), move_unreadable=True)
    if saved.get('objective', config.objective) != config.objective:
      raise checkpoint_lib.CheckpointError(
          f'The checkpoint in {workdir} was trained with objective {saved["objective"]!r}, '
          f'the config asks for {config.objective!r}. Use a new workdir.')
    state = state_lib.TrainState(step=jax.device_put(jnp.int32(step0), shardings.step),
                                 params=params, opt_state=opt_state)
    if saved_data and step0 < tc.steps:  # a finished run needs no data position
      train_iter.set_state(saved_data)
    print(f'Resumed from step {step0} in {workdir}.', flush=True)
  else:
    state = state_lib.create_train_state(model, objective, tx, jax.random.key(config.seed),
                                         shardings)
    if objective.init_model_params is not None:  # e.g. adapt an AR checkpoint
      start = jax.device_put(objective.init_model_params(), shardings.params['model'])
      state = state.replace(params={**state.params, 'model': start})
    step0 = 0
  checkpoint_lib.write_config(workdir, _normalise(config.to_dict()))

  print(f'Model: {mcfg.num_params() / 1e6:.2f}M parameters, {mcfg.num_layers} layers, '
        f'vocab {mcfg.vocab_size}; mesh {dict(mesh.shape)} on {jax.device_count()} '
        f'{jax.devices()[0].platform} device(s).', flush=True)
  train_step = step_lib.jit_train_step(objective.loss_fn, tx, grad_accum=tc.grad_accum,
                                       seed=config.seed, state_shardings=shardings)
  eval_step = step_lib.jit_eval_step(objective.eval_fn or objective.loss_fn,
                                     param_shardings=shardings.params, seed=config.seed)
  make_eval = objective.make_eval_batches or data_lib.make_eval_batches
  evaluator = _Evaluator(eval_step, make_eval(dc, tokenizer, max_batches=tc.eval_batches),
                         tokenizer.token_byte_lengths(), mesh, rules)
  bar = tqdm.tqdm(total=tc.steps, initial=step0, disable=not tc.progress_bar,
                  dynamic_ncols=True, desc='train')
  writer = metrics_lib.MetricWriter(workdir, echo=bar.write if tc.progress_bar else print)
  schedule = optimizer_lib.learning_rate_schedule(tc)
  tokens_per_step = dc.batch_size * dc.seq_len  # for packed LM data
  last_train: dict[str, float] = {}
  last_eval: dict[str, float] = {}
  window: list[dict[str, float]] = []
  t_window = time.perf_counter()
  pending = None  # (step, metrics) dispatched but not yet checked: keeps the device busy.

  def check(pending):
    step, m = pending
    m = {k: float(v) for k, v in jax.device_get(m).items()}
    if not m['finite']:
      raise NonFiniteLossError(
          f'Non-finite loss or gradient at step {step} (loss={m["loss"]}, grad_norm='
          f'{m["grad_norm"]}). Training stopped; the parameters were not updated and the last '
          f'checkpoint (step {ckpt.latest_step()}) in {workdir} is intact. Lower '
          'train.learning_rate or check the data.')
    window.append(m)

  def save(step: int, force: bool = False):
    ckpt.save(step, state, data_state(train_iter), meta, force=force)

  end = tc.steps if not tc.stop_after_steps else min(tc.steps, step0 + tc.stop_after_steps)
  if step0 >= tc.steps:
    print(f'Nothing to train: the checkpoint is at step {step0} and train.steps={tc.steps}.',
          flush=True)
  try:
    for step in range(step0, end):
      batch = _global_batch(next(train_iter), mesh, rules, dc.batch_size)
      state, metrics = train_step(state, batch)
      if pending is not None:
        check(pending)
      pending = (step + 1, metrics)
      done = step + 1
      if done % tc.log_every == 0 or done in (tc.steps, end) or done % tc.checkpoint_every == 0:
        check(pending)
        pending = None
      if window and (done % tc.log_every == 0 or done == tc.steps):
        elapsed = time.perf_counter() - t_window
        last_train = {k: float(np.mean([m[k] for m in window]))
                      for k in window[0] if not k.endswith('_sum') and k != 'finite'}
        last_train.update(learning_rate=float(schedule(done - 1)),
                          tokens_per_s=tokens_per_step * len(window) / max(elapsed, 1e-9))
        writer.write(done, 'train', last_train)
        window.clear()
        t_window = time.perf_counter()
      if done % tc.eval_every == 0 or done == tc.steps:
        last_eval = evaluator(state.params)
        writer.write(done, 'eval', last_eval)
        t_window = time.perf_counter()
      if done % tc.checkpoint_every == 0 or done in (tc.steps, end):
        save(done, force=done in (tc.steps, end))
      bar.update(1)
    if pending is not None:
      check(pending)
  finally:
    bar.close()
    ckpt.close()
    writer.close()
  plot = metrics_lib.plot_loss_curve(workdir)
  if plot:
    print(f'Loss curve: {plot}', flush=True)
  if end < tc.steps:
    print(f'Stopped after step {end} (train.stop_after_steps); run again to continue.')
  return {'train': last_train, 'eval': last_eval, 'step': end}
