"""Export a workdir's checkpoint as a Hugging Face model directory.

  python -m workdir.hf_export --workdir=runs/tiny --out_dir=exports/tiny \
      [--dtype=float32|bfloat16|float16] [--architecture=LlamaForCausalLM] \
      [--checkpoint_step=N] [--max_shard_mb=5120]

then `transformers.AutoModelForCausalLM.from_pretrained('exports/tiny')` and
`AutoTokenizer.from_pretrained('exports/tiny')`. The architecture follows the model: qk-norm
-> Qwen3, sliding window -> Mistral, q/k/v biases -> Qwen2, else Llama (see
models/hf/config_map.py). Tensors are converted and written one at a time. An imported
workdir exports its original vocabulary (the special tokens appended at import are
dropped). Objective extras (MTP heads, adapters) are not exported.
"""

from __future__ import annotations

import os
import sys
import time

from absl import app, flags, logging

import data
from models import hf
from workdir import checkpoint, loading

_WORKDIR = flags.DEFINE_string('workdir', None, 'Workdir written by train.py or hf_import.')
_OUT_DIR = flags.DEFINE_string('out_dir', None, 'Hugging Face directory to write.')
_STEP = flags.DEFINE_integer('checkpoint_step', None, 'Checkpoint step (default: newest).')
_DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16', 'float16'],
                           'dtype of the written tensors.')
_ARCH = flags.DEFINE_enum('architecture', None, sorted(hf.ARCHITECTURES),
                          'Force an architecture (default: chosen from the model config).')
_SHARD_MB = flags.DEFINE_integer('max_shard_mb', 5120, 'Largest safetensors shard (MiB).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not _WORKDIR.value or not _OUT_DIR.value:
    raise app.UsageError('--workdir and --out_dir are required.')
  logging.set_verbosity(logging.ERROR)  # Orbax is chatty
  t0 = time.perf_counter()
  try:
    loaded = loading.load_model(_WORKDIR.value, step=_STEP.value)
    files = hf.export_model(
        loaded.params, loaded.model_config, _OUT_DIR.value,
        tokenizer_dir=os.path.join(loaded.workdir, checkpoint.TOKENIZER_DIR),
        special_ids=loaded.tokenizer.special_ids, special_tokens=data.SPECIAL_TOKENS,
        vocab_size=loaded.config.get('hf', {}).get('vocab_size'), architecture=_ARCH.value,
        dtype=_DTYPE.value, max_shard_bytes=_SHARD_MB.value * 2**20)
  except (checkpoint.CheckpointError, hf.UnsupportedModelError, FileNotFoundError,
          ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  if loaded.extras:
    print(f'Note: objective extras {sorted(loaded.extras)} are not exported.')
  print(f'Exported step {loaded.step} of {loaded.workdir} to {_OUT_DIR.value} '
        f'({len(files)} files) in {time.perf_counter() - t0:.1f}s.')


if __name__ == '__main__':
  app.run(main)
