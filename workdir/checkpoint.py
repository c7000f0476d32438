"""Orbax checkpoints of a run: params, optimizer state, step, data-iterator state, config.

Layout of a workdir:
  config.json          the full config of the run (written at start)
  tokenizer/           the tokenizer (written once)
  checkpoints/<step>/  params, opt_state, data (iterator state, JSON), meta (step, configs)

Every checkpoint records a digest of each array of params and opt_state in its meta
(`workdir.integrity`); `restore` recomputes them and also refuses non-finite or absurd
parameters. A checkpoint that cannot be read or fails these checks is skipped for the
previous step, with one warning line on stderr; training (`move_unreadable=True`) also moves
it to `checkpoints_unreadable/` so that the run can write that step again. A checkpoint whose
model config differs from the requested one is refused with the differences.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import sys
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp

from models import config as config_lib
from workdir import integrity

CHECKPOINT_DIR = 'checkpoints'
UNREADABLE_DIR = 'checkpoints_unreadable'
CONFIG_FILE = 'config.json'
TOKENIZER_DIR = 'tokenizer'
_MODEL_DEFAULTS = {f.name: f.default for f in dataclasses.fields(config_lib.ModelConfig)
                   if f.default is not dataclasses.MISSING}


class CheckpointError(RuntimeError):
  """No usable checkpoint (missing, corrupt or incompatible)."""


# How a model is computed, not what it computes: a run may resume with other values (and
# checkpoints written before a key existed have none).
IMPLEMENTATION_KEYS = frozenset({'remat', 'attention_impl', 'delta_impl'})


def model_config_diff(saved: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
  """Human-readable differences between two model-config dicts (implementation keys aside).

  A key absent on one side (a checkpoint older than the key) counts as its default."""
  diffs = []
  for key in sorted((set(saved) | set(wanted)) - IMPLEMENTATION_KEYS):
    default = _MODEL_DEFAULTS.get(key, '<absent>')
    a, b = saved.get(key, default), wanted.get(key, default)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
      a, b = list(a), list(b)
    if a != b:
      diffs.append(f'model.{key}: checkpoint has {a!r}, config asks for {b!r}')
  return diffs


class Checkpointer:
  """Saves and restores the checkpoints of one workdir."""

  def __init__(self, workdir: str, *, keep: int = 3, async_save: bool = True,
               read_only: bool = False):
    self.workdir = os.path.abspath(workdir)
    self.directory = os.path.join(self.workdir, CHECKPOINT_DIR)
    if read_only and not os.path.isdir(self.directory):
      raise CheckpointError(f'No checkpoints in {self.workdir}: {self.directory} does not '
                            'exist. Train first with `python train.py --workdir=...`.')
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None if read_only else keep, create=not read_only, read_only=read_only,
        save_interval_steps=0 if read_only else 1, enable_async_checkpointing=async_save)
    with _library_noise_muted():  # a corrupt step's metadata is reported at restore
      self.manager = ocp.CheckpointManager(
          self.directory, options=options,
          item_handlers={'params': ocp.StandardCheckpointHandler(),
                         'opt_state': ocp.StandardCheckpointHandler(),
                         'data': ocp.JsonCheckpointHandler(),
                         'meta': ocp.JsonCheckpointHandler()})

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def latest_step(self) -> int | None:
    steps = self.all_steps()
    return steps[-1] if steps else None

  def save(self, step: int, state: Any, data_state: dict[str, Any] | None,
           meta: dict[str, Any], force: bool = False) -> bool:
    """Saves TrainState-like `state` (params, opt_state) at `step` (async unless disabled),
    with the digests of both trees in the meta."""
    digests = {'params': integrity.digests(state.params),
               'opt_state': integrity.digests(state.opt_state)}
    args = ocp.args.Composite(
        params=ocp.args.StandardSave(state.params),
        opt_state=ocp.args.StandardSave(state.opt_state),
        data=ocp.args.JsonSave(data_state or {}),
        meta=ocp.args.JsonSave(dict(meta, step=int(step), digests=digests)))
    return self.manager.save(step, args=args, force=force)

  def _candidate_steps(self, step: int | None) -> list[int]:
    steps = self.all_steps()
    if not steps:
      raise CheckpointError(f'No checkpoint found in {self.directory}.')
    if step is not None:
      if step not in steps:
        raise CheckpointError(f'No checkpoint at step {step} in {self.directory}; '
                              f'available steps: {steps}.')
      return [step]
    return steps[::-1]

  def read_meta(self, step: int) -> dict[str, Any]:
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']

  def params_metadata(self, step: int) -> Any:
    """The saved params tree with array metadata (.shape, .dtype) as leaves."""
    return self.manager.item_metadata(step)['params']

  def restore(self, abstract_fn: Callable[[dict[str, Any], int], tuple[Any, Any]], *,
              step: int | None = None, model_config: dict[str, Any] | None = None,
              move_unreadable: bool = False
              ) -> tuple[int, Any, Any, dict[str, Any], dict[str, Any]]:
    """Restores the newest usable checkpoint (or exactly `step`).

    A checkpoint is usable when it reads, its arrays match the digests written at save, and
    its parameters are finite and below `integrity.ABSURD_PARAM` in magnitude. Skipping one
    prints one warning line on stderr.

    Args:
      abstract_fn: (meta, step) -> (abstract params, abstract optimizer state or None to skip
        it), ShapeDtypeStructs with shardings; `meta['model']` is the checkpoint's model
        config.
      step: a specific step; no fallback then.
      model_config: if given, the checkpoint's model config must equal it.
      move_unreadable: move the skipped (newer) checkpoints to `checkpoints_unreadable/`
        (training: otherwise the run could not save those steps again).

    Returns:
      (step, params, opt_state or None, data-iterator state, meta).
    """
    errors: list[tuple[int, str]] = []
    _mute_leftover_noise()
    for candidate in self._candidate_steps(step):
      try:
        with _library_noise_muted():
          meta = self.read_meta(candidate)
          if model_config is not None:
            diffs = model_config_diff(meta.get('model', {}), model_config)
            if diffs:
              raise CheckpointError(
                  f'The checkpoint at step {candidate} in {self.directory} does not match '
                  'the model config:\n  ' + '\n  '.join(diffs))
          abstract_params, abstract_opt_state = abstract_fn(meta, candidate)
          items = dict(params=ocp.args.StandardRestore(abstract_params),
                       data=ocp.args.JsonRestore())
          if abstract_opt_state is not None:
            items['opt_state'] = ocp.args.StandardRestore(abstract_opt_state)
          restored = self.manager.restore(candidate, args=ocp.args.Composite(**items))
        digests = meta.get('digests') or {}
        integrity.check('params', restored['params'], digests.get('params'),
                        bound=integrity.ABSURD_PARAM)
        if abstract_opt_state is not None:
          integrity.check('opt_state', restored['opt_state'], digests.get('opt_state'))
      except CheckpointError:
        raise
      except Exception as e:  # pylint: disable=broad-except
        errors.append((candidate, _one_line(e)))
        continue
      if errors:
        self._report_skipped(errors, candidate, move_unreadable)
      return (candidate, restored['params'], restored.get('opt_state'),
              dict(restored['data'] or {}), meta)
    raise CheckpointError(f'No readable checkpoint in {self.directory}: ' +
                          '; '.join(f'step {s}: {why.rstrip(".")}' for s, why in errors) + '.')

  def _report_skipped(self, errors: list[tuple[int, str]], restored: int,
                      move: bool) -> None:
    """One warning line on stderr; with `move`, the skipped steps go to UNREADABLE_DIR."""
    steps = [s for s, _ in errors]
    moved = ''
    if move:
      target = self.move_aside(steps)
      moved = f' Moved {"it" if len(steps) == 1 else "them"} to {target} for inspection.'
    reasons = '; '.join(f'step {s}: {why.rstrip(".")}' for s, why in errors)
    print(f'warning: restored step {restored} of {self.workdir}: the newer checkpoint'
          f'{"s" if len(steps) > 1 else ""} could not be used ({reasons}).{moved}',
          file=sys.stderr, flush=True)

  def move_aside(self, steps: list[int]) -> str:
    """Moves checkpoints/<step> to checkpoints_unreadable/<step>[.n]; returns that folder."""
    target = os.path.join(self.workdir, UNREADABLE_DIR)
    if jax.process_index() == 0:
      os.makedirs(target, exist_ok=True)
      for s in steps:
        dest, n = os.path.join(target, str(s)), 1
        while os.path.exists(dest):
          dest, n = os.path.join(target, f'{s}.{n}'), n + 1
        os.rename(os.path.join(self.directory, str(s)), dest)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices('leapfrog_move_unreadable_checkpoints')
    with _library_noise_muted():
      self.manager.reload()
    return target

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def _one_line(e: BaseException, limit: int = 200) -> str:
  """'Type: first line of the message', at most `limit` characters."""
  text = f'{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ""}'
  return text if len(text) <= limit else text[:limit - 3] + '...'


class _DropLibraryNoise(logging.Filter):
  """Drops Orbax's own error logs while a checkpoint is being tried (its failure is reported
  in our one warning line) and asyncio's 'Task exception was never retrieved' for reads that
  a failed restore left behind."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.getMessage().startswith('Task exception was never retrieved'):
      return False
    return not (_muting and f'{os.sep}orbax{os.sep}' in (record.pathname or ''))


_muting = False
_NOISE_FILTER = _DropLibraryNoise()


@contextlib.contextmanager
def _library_noise_muted():
  global _muting
  logger = logging.getLogger('absl')
  logger.addFilter(_NOISE_FILTER)
  _muting = True
  try:
    yield
  finally:
    _muting = False
    logger.removeFilter(_NOISE_FILTER)


def _mute_leftover_noise() -> None:
  """When a restore fails, tensorstore completes the reads still in flight on an event loop
  Orbax has closed; each callback raises 'Event loop is closed' into sys.unraisablehook (a
  page of traceback each) and asyncio logs the orphaned tasks. Both are dropped (installed
  before the first restore, since the callbacks can fire while it is failing); every other
  unraisable exception is still printed."""
  if getattr(sys.unraisablehook, '_leapfrog', False):
    return
  previous = sys.unraisablehook

  def hook(unraisable):
    if isinstance(unraisable.exc_value, RuntimeError) and str(
        unraisable.exc_value) == 'Event loop is closed':
      return
    previous(unraisable)

  hook._leapfrog = True  # pylint: disable=protected-access
  sys.unraisablehook = hook
  logging.getLogger('asyncio').addFilter(_NOISE_FILTER)


def write_config(workdir: str, config_dict: dict[str, Any]) -> None:
  """Writes config.json (process 0 only)."""
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, CONFIG_FILE), 'w') as f:
      json.dump(config_dict, f, indent=2, sort_keys=True, default=str)


def read_config(workdir: str) -> dict[str, Any]:
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise CheckpointError(f'{workdir} is not a training workdir: {path} is missing. Train '
                          'first with `python train.py --config=... --workdir=...`.')
  with open(path) as f:
    return json.load(f)
