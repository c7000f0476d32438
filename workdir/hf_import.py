"""Import a Hugging Face checkpoint into a workdir that `sample.py` and every decoder read.

  python -m workdir.hf_import --hf_dir=path/to/Llama-3.2-1B --workdir=runs/llama1b \
      [--param_dtype=float32|bfloat16] [--dtype=float32|bfloat16] [--overwrite]
  python sample.py --workdir=runs/llama1b --prompt='def fib(n):' --decoder=ar

Reads config.json, the safetensors (single file or sharded index) tensor by tensor and
tokenizer.json (through `data.HFTokenizer`), and writes config.json, tokenizer/ and a step-0
checkpoint (params only; no optimizer state). Supported: Llama 2/3, Mistral, Qwen2/2.5,
Qwen3 (see models/hf/config_map.py). The import is built in a temporary folder beside the
workdir and swapped in when complete: a failed import (or `--overwrite` of a good workdir
with a broken checkpoint) leaves the existing workdir intact. Special tokens the tokenizer
lacks are appended as new ids that the model never produces (`valid_vocab_size`), and
prompts start as the checkpoint's tokenizer starts them (BOS for Llama, none for Qwen).

The conversion library (`models.hf`) imports nothing outside `models`; this entry point and
`workdir.hf_workdir` add the workdir around it (config.json, tokenizer/, checkpoint).
"""

from __future__ import annotations

import sys

from absl import app, flags, logging

from configs import lm
from models import hf
from workdir import hf_workdir
from workdir import lock as workdir_lib

_HF_DIR = flags.DEFINE_string('hf_dir', None, 'Hugging Face model directory (config.json, '
                              'safetensors, tokenizer.json).')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Workdir to create.')
_PARAM_DTYPE = flags.DEFINE_enum('param_dtype', 'float32', ['float32', 'bfloat16'],
                                 'dtype of the stored parameters.')
_DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'],
                           'Compute dtype recorded in the model config.')
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Replace an existing workdir.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not _HF_DIR.value or not _WORKDIR.value:
    raise app.UsageError('--hf_dir and --workdir are required.')
  logging.set_verbosity(logging.ERROR)  # Orbax is chatty
  try:
    summary = hf_workdir.import_checkpoint(
        _HF_DIR.value, _WORKDIR.value, base_config=lm.get_config('tiny').to_dict(),
        overwrite=_OVERWRITE.value, param_dtype=_PARAM_DTYPE.value, dtype=_DTYPE.value)
  except (hf.UnsupportedModelError, hf.MissingTensorsError, hf.CheckpointFormatError,
          FileNotFoundError, ValueError, workdir_lib.WorkdirInUseError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  print(summary)
  print(f'Next: python sample.py --workdir={_WORKDIR.value} --prompt="..." --decoder=ar')


if __name__ == '__main__':
  app.run(main)
