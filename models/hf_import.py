"""Import a Hugging Face checkpoint into a workdir that `sample.py` and every decoder read.

  python -m models.hf_import --hf_dir=path/to/Llama-3.2-1B --workdir=runs/llama1b \
      [--param_dtype=float32|bfloat16] [--dtype=float32|bfloat16] [--overwrite]
  python sample.py --workdir=runs/llama1b --prompt='def fib(n):' --decoder=ar

Reads config.json, the safetensors (single file or sharded index) tensor by tensor and
tokenizer.json (through `data.HFTokenizer`), and writes config.json, tokenizer/ and a step-0
checkpoint (params only; no optimizer state). Supported: Llama 2/3, Mistral, Qwen2/2.5,
Qwen3 (see models/hf/config_map.py).

The conversion library (`models.hf`) imports nothing outside `models`; writing a workdir
needs `training` and `data`, which `main` imports (DESIGN.md import rules).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import types

import numpy as np
from absl import app, flags, logging

from models import hf
from models.hf import config_map
from models.hf import tokenizer_files

_HF_DIR = flags.DEFINE_string('hf_dir', None, 'Hugging Face model directory (config.json, '
                              'safetensors, tokenizer.json).')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Workdir to create.')
_PARAM_DTYPE = flags.DEFINE_enum('param_dtype', 'float32', ['float32', 'bfloat16'],
                                 'dtype of the stored parameters.')
_DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'],
                           'Compute dtype recorded in the model config.')
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Replace an existing workdir.')


def run_config(base: dict, cfg, hf_dir: str, info: config_map.HFInfo,
               hf_vocab_size: int) -> dict:
  """The workdir's config.json: `base` (a training config) with this model and tokenizer."""
  config = dict(base)
  config['model'] = cfg.to_dict()
  config['tokenizer'] = {'kind': 'hf', 'vocab_size': 0, 'path': os.path.abspath(hf_dir)}
  config['hf'] = {'source': os.path.abspath(hf_dir), 'architecture': info.architecture,
                  'vocab_size': hf_vocab_size}
  return json.loads(json.dumps(config, default=str))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not _HF_DIR.value or not _WORKDIR.value:
    raise app.UsageError('--hf_dir and --workdir are required.')
  logging.set_verbosity(logging.ERROR)  # Orbax is chatty
  import data  # pylint: disable=g-import-not-at-top
  from configs import lm  # pylint: disable=g-import-not-at-top
  from training import checkpoint  # pylint: disable=g-import-not-at-top
  hf_dir, workdir = _HF_DIR.value, os.path.abspath(_WORKDIR.value)
  try:
    cfg0, info = config_map.to_model_config(hf.read_config(hf_dir))
    if os.path.exists(os.path.join(workdir, checkpoint.CHECKPOINT_DIR)):
      if not _OVERWRITE.value:
        raise ValueError(f'{workdir} already holds checkpoints; pass --overwrite to replace '
                         'them.')
      shutil.rmtree(workdir)
    t0 = time.perf_counter()
    tok_dir = os.path.join(workdir, checkpoint.TOKENIZER_DIR)
    tokenizer_files.fill_roles(hf_dir, tok_dir, info.token_ids)
    tokenizer = data.HFTokenizer(tok_dir)
    tokenizer.save(tok_dir)
    vocab_size = max(cfg0.vocab_size, tokenizer.vocab_size)
    cfg, params, info = hf.load_checkpoint(hf_dir, param_dtype=_PARAM_DTYPE.value,
                                           dtype=_DTYPE.value, vocab_size=vocab_size)
  except (hf.UnsupportedModelError, hf.MissingTensorsError, hf.CheckpointFormatError,
          FileNotFoundError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  config = run_config(lm.get_config('tiny').to_dict(), cfg, hf_dir, info, cfg0.vocab_size)
  checkpoint.write_config(workdir, config)
  meta = {'model': config['model'], 'objective': 'ar', 'extras': [],
          'tokenizer': type(tokenizer).__name__, 'config': config, 'hf': config['hf']}
  ckpt = checkpoint.Checkpointer(workdir, async_save=False)
  # No optimizer state exists for an imported model; orbax refuses an empty item.
  state = types.SimpleNamespace(params={'model': params},
                                opt_state={'none': np.zeros((), np.int32)})
  ckpt.save(0, state, {}, meta, force=True)
  ckpt.close()
  added = vocab_size - cfg0.vocab_size
  print(f'Imported {info.architecture} ({cfg.num_params() / 1e6:.1f}M parameters, '
        f'{hf.num_bytes(params) / 2**20:.0f} MiB as {cfg.param_dtype}) from {hf_dir} into '
        f'{workdir} in {time.perf_counter() - t0:.1f}s.'
        + (f' The vocabulary grew by {added} special tokens (zero rows).' if added else ''))
  print(f'Next: python sample.py --workdir={_WORKDIR.value} --prompt="..." --decoder=ar')


if __name__ == '__main__':
  app.run(main)
