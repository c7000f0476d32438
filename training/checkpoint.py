"""Orbax checkpoints of a run: params, optimizer state, step, data-iterator state, config.

Layout of a workdir:
  config.json          the full config of the run (written at start)
  tokenizer/           the tokenizer (written once)
  checkpoints/<step>/  params, opt_state, data (iterator state, JSON), meta (step, configs)

`restore` falls back to the previous step when the newest cannot be read, and says so; a
checkpoint whose model config differs from the requested one is refused with the differences.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp

from models import config as config_lib

CHECKPOINT_DIR = 'checkpoints'
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
    """Saves TrainState-like `state` (params, opt_state) at `step` (async unless disabled)."""
    args = ocp.args.Composite(
        params=ocp.args.StandardSave(state.params),
        opt_state=ocp.args.StandardSave(state.opt_state),
        data=ocp.args.JsonSave(data_state or {}),
        meta=ocp.args.JsonSave(dict(meta, step=int(step))))
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
              step: int | None = None, model_config: dict[str, Any] | None = None
              ) -> tuple[int, Any, Any, dict[str, Any], dict[str, Any]]:
    """Restores the newest readable checkpoint (or exactly `step`).

    Args:
      abstract_fn: (meta, step) -> (abstract params, abstract optimizer state or None to skip
        it), ShapeDtypeStructs with shardings; `meta['model']` is the checkpoint's model
        config.
      step: a specific step; no fallback then.
      model_config: if given, the checkpoint's model config must equal it.

    Returns:
      (step, params, opt_state or None, data-iterator state, meta).
    """
    errors = []
    for candidate in self._candidate_steps(step):
      try:
        meta = self.read_meta(candidate)
        if model_config is not None:
          diffs = model_config_diff(meta.get('model', {}), model_config)
          if diffs:
            raise CheckpointError(
                f'The checkpoint at step {candidate} in {self.directory} does not match the '
                'model config:\n  ' + '\n  '.join(diffs))
        abstract_params, abstract_opt_state = abstract_fn(meta, candidate)
        items = dict(params=ocp.args.StandardRestore(abstract_params),
                     data=ocp.args.JsonRestore())
        if abstract_opt_state is not None:
          items['opt_state'] = ocp.args.StandardRestore(abstract_opt_state)
        restored = self.manager.restore(candidate, args=ocp.args.Composite(**items))
      except CheckpointError:
        raise
      except Exception as e:  # pylint: disable=broad-except
        errors.append(f'step {candidate}: {type(e).__name__}: {str(e)[:300]}')
        logging.warning('Checkpoint at step %d in %s could not be read (%s: %s); trying the '
                        'previous one.', candidate, self.directory, type(e).__name__,
                        str(e)[:200])
        continue
      if errors:
        message = (f'Restored step {candidate} instead of a newer checkpoint that could not '
                   f'be read: {errors}')
        logging.warning(message)
        print(f'WARNING: {message}', flush=True)
      return (candidate, restored['params'], restored.get('opt_state'),
              dict(restored['data'] or {}), meta)
    raise CheckpointError(f'No readable checkpoint in {self.directory}:\n  ' +
                          '\n  '.join(errors))

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


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
