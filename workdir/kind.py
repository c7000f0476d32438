"""The `models.kind.ModelKind` of a run on disk.

Every checkpoint's meta holds the kind its training objective wrote (`meta['kind']`; an HF
import writes a causal one). Checkpoints written before kinds existed have none: their kind is
derived once, here, from the run's config (`from_config`: the only place that maps objective
names to kinds).

  kind = kind_lib.read(workdir)                          # without restoring parameters
  kinds = kind_lib.for_decoder(target.kind, decoder.extra_models())   # for Decoder.for_model
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import data as data_lib
from models import kind as kind_lib
from workdir import checkpoint as checkpoint_lib

ModelKind = kind_lib.ModelKind


def from_config(config: Mapping[str, Any], *, tokenizer_mask_id: int,
                heads: tuple[str, ...] = ()) -> ModelKind:
  """The kind of a checkpoint without a recorded one, from its run config (config.json).

  `tokenizer_mask_id`: the run tokenizer's <mask> id (what `diffusion.mask_id` -1 meant);
  `heads`: the extras saved beside the model (`meta['extras']`).
  """
  objective = config.get('objective', 'ar')
  d = config.get('diffusion') or {}
  mask_id = int(d.get('mask_id', -1))
  mask_id = mask_id if mask_id >= 0 else int(tokenizer_mask_id)
  shift = bool(d.get('shift', False))
  block_size = int(d.get('block_size', 0))
  if objective == 'masked_diffusion':
    return ModelKind(attention='bidirectional', mask_id=mask_id, shift=shift, heads=heads)
  if objective == 'block_diffusion':
    return ModelKind(attention='block_causal', mask_id=mask_id, shift=shift,
                     block_size=block_size, heads=heads)
  if objective == 'wedlm':
    return ModelKind(attention='causal', mask_id=mask_id, shift=shift, block_size=block_size,
                     heads=heads)
  if objective == 'insertion':
    return ModelKind(attention='bidirectional', insertion=True, heads=heads)
  if objective == 'as_arm':
    return ModelKind(attention='bidirectional', mask_id=mask_id, any_order=True, heads=heads)
  return ModelKind(heads=heads)


def from_meta(meta: Mapping[str, Any], config: Mapping[str, Any],
              tokenizer: data_lib.Tokenizer) -> ModelKind:
  """The kind in a checkpoint's meta, or derived from `config` when it has none."""
  if meta.get('kind') is not None:
    return ModelKind.from_dict(meta['kind'])
  return from_config(config, tokenizer_mask_id=tokenizer.mask_id,
                     heads=tuple(meta.get('extras') or ()))


def read(workdir: str, step: int | None = None) -> ModelKind:
  """The kind of `workdir`'s newest checkpoint with a readable meta (or of `step`), read
  from its meta only.

  Raises CheckpointError when the workdir has no config or readable checkpoint meta."""
  workdir = os.path.abspath(workdir)
  config = checkpoint_lib.read_config(workdir)
  ckpt = checkpoint_lib.Checkpointer(workdir, read_only=True, async_save=False)
  meta = None
  try:
    for candidate in ([step] if step is not None else ckpt.all_steps()[::-1]):
      try:
        meta = ckpt.read_meta(candidate)
        break
      except Exception:  # pylint: disable=broad-except  (load_model reports what is wrong)
        continue
  finally:
    ckpt.close()
  if meta is None:
    raise checkpoint_lib.CheckpointError(f'No readable checkpoint in {workdir}.')
  if meta.get('kind') is not None:
    return ModelKind.from_dict(meta['kind'])
  tokenizer = data_lib.load_tokenizer(os.path.join(workdir, checkpoint_lib.TOKENIZER_DIR))
  return from_meta(meta, config, tokenizer)


def for_decoder(target: ModelKind, extra_workdirs: Mapping[str, str]
                ) -> dict[str, ModelKind]:
  """{'target': target, name: kind of each extra workdir}, the argument of
  `Decoder.for_model`; an extra that is not (yet) a workdir with checkpoints is left out (the
  decoder's loader reports it)."""
  kinds = {'target': target}
  for name, path in extra_workdirs.items():
    if path and os.path.isdir(os.path.join(path, checkpoint_lib.CHECKPOINT_DIR)):
      kinds[name] = read(path)
  return kinds
