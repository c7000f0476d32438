"""Writing a workdir from a Hugging Face checkpoint (what `python -m workdir.hf_import` runs).

  summary = hf_workdir.import_checkpoint('path/to/hf_dir', 'runs/x', base_config=...)

The conversion itself is `models.hf` (which imports nothing outside `models`); this module
adds the workdir around it: config.json, tokenizer/ and a step-0 checkpoint, built in a
temporary folder beside the workdir and swapped in only when complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import types

import numpy as np

import data as data_lib
from models import hf
from models import kind as kind_lib
from models.hf import config_map
from models.hf import tokenizer_files
from workdir import checkpoint as checkpoint_lib
from workdir import lock as workdir_lib


def run_config(base: dict, cfg, hf_dir: str, info: config_map.HFInfo,
               hf_vocab_size: int) -> dict:
  """The workdir's config.json: `base` (a training config) with this model and tokenizer."""
  config = dict(base)
  config['model'] = cfg.to_dict()
  config['tokenizer'] = {'kind': 'hf', 'vocab_size': 0, 'path': os.path.abspath(hf_dir)}
  config['hf'] = {'source': os.path.abspath(hf_dir), 'architecture': info.architecture,
                  'vocab_size': hf_vocab_size}
  return json.loads(json.dumps(config, default=str))


def import_checkpoint(hf_dir: str, workdir: str, *, base_config: dict, overwrite: bool = False,
                      param_dtype: str = 'float32', dtype: str = 'float32') -> str:
  """Imports `hf_dir` into `workdir`; returns the summary line.

  `base_config`: the training config (a dict) the workdir's config.json starts from
  (`python -m workdir.hf_import` passes configs/lm.py:tiny); its model and tokenizer sections
  are replaced by the checkpoint's.

  Everything is written into a temporary folder beside `workdir` and swapped in only once
  the checkpoint is complete, so a failed import leaves an existing workdir as it was. A
  workdir that is not empty needs `overwrite`, and is replaced only if it looks like one
  (config.json, checkpoints/ or tokenizer/) and no run holds it (`workdir.lock.lock`).

  Raises:
    ValueError (and its subclasses from `models.hf`), FileNotFoundError,
    `workdir.lock.WorkdirInUseError`.
  """
  workdir = os.path.abspath(workdir)
  cfg0, info = config_map.to_model_config(hf.read_config(hf_dir))
  existed = os.path.isdir(workdir) and bool(os.listdir(workdir))
  if existed:
    if not overwrite:
      raise ValueError(f'{workdir} is not empty; pass --overwrite to replace it.')
    marks = (checkpoint_lib.CONFIG_FILE, checkpoint_lib.CHECKPOINT_DIR,
             checkpoint_lib.TOKENIZER_DIR)
    if not any(os.path.exists(os.path.join(workdir, name)) for name in marks):
      raise ValueError(f'{workdir} does not look like a workdir (no config.json, '
                       'checkpoints/ or tokenizer/); not replacing it.')
  created = not os.path.exists(workdir)
  workdir = workdir_lib.prepare(workdir)
  parent, name = os.path.split(workdir)
  staging = tempfile.mkdtemp(prefix=f'.{name}.import-', dir=parent)
  try:
    with workdir_lib.lock(workdir, purpose='hf_import'):
      t0 = time.perf_counter()
      tok_dir = os.path.join(staging, checkpoint_lib.TOKENIZER_DIR)
      tokenizer_files.fill_roles(hf_dir, tok_dir, info.token_ids)
      # Prompts follow the checkpoint's own convention (its post-processor), not ours.
      tokenizer = data_lib.HFTokenizer(tok_dir, prompt_convention='checkpoint')
      tokenizer.save(tok_dir)
      vocab_size = max(cfg0.vocab_size, tokenizer.vocab_size)
      cfg, params, info = hf.load_checkpoint(hf_dir, param_dtype=param_dtype, dtype=dtype,
                                             vocab_size=vocab_size)
      config = run_config(base_config, cfg, hf_dir, info, cfg0.vocab_size)
      checkpoint_lib.write_config(staging, config)
      meta = {'model': config['model'], 'objective': 'ar', 'extras': [],
              'kind': kind_lib.ModelKind().to_dict(),  # a causal LM, no heads
              'tokenizer': type(tokenizer).__name__, 'config': config, 'hf': config['hf']}
      ckpt = checkpoint_lib.Checkpointer(staging, async_save=False)
      # No optimizer state exists for an imported model; orbax refuses an empty item.
      state = types.SimpleNamespace(params={'model': params},
                                    opt_state={'none': np.zeros((), np.int32)})
      ckpt.save(0, state, {}, meta, force=True)
      ckpt.close()
      # Complete: swap it in (the old workdir is removed only after the new one is there).
      retired = staging + '.old'
      os.rename(workdir, retired)
      os.rename(staging, workdir)
      shutil.rmtree(retired, ignore_errors=True)
  except BaseException:
    if os.path.isdir(staging + '.old') and not os.path.exists(workdir):
      os.rename(staging + '.old', workdir)  # failed between the two renames: put it back
    shutil.rmtree(staging, ignore_errors=True)
    if created and set(os.listdir(workdir)) <= {workdir_lib.LOCK_FILE}:
      shutil.rmtree(workdir, ignore_errors=True)  # only what this call made
    raise
  added = vocab_size - cfg0.vocab_size
  return (f'Imported {info.architecture} ({cfg.num_params() / 1e6:.1f}M parameters, '
          f'{hf.num_bytes(params) / 2**20:.0f} MiB as {cfg.param_dtype}) from {hf_dir} into '
          f'{workdir} in {time.perf_counter() - t0:.1f}s.'
          + (f' The vocabulary grew by {added} special tokens (zero rows, never sampled).'
             if added else ''))
