"""Hugging Face checkpoint interop: Llama 2/3, Mistral, Qwen2/2.5, Qwen3 <-> our Transformer.

  cfg, params, info = hf.load_checkpoint('path/to/hf_dir')        # streaming import
  hf.save_checkpoint(params, cfg, 'out_dir', token_ids={...})     # streaming export

`params` is the Transformer's tree (what a workdir stores under 'model'). This package only
converts tensors and config files; writing or reading a workdir happens in the entry points
`python -m workdir.hf_import` and `python -m workdir.hf_export`. Conversion is tensor by tensor:
the import holds our converted tree plus one source tensor, the export our tree plus one
output tensor, never two copies of the model.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

import jax

from models import config as config_lib
from models.hf import config_map
from models.hf import convert
from models.hf import safetensors_io
from models.hf import tokenizer_files
from models.hf.config_map import ARCHITECTURES, HFInfo, UnsupportedModelError
from models.hf.convert import MissingTensorsError
from models.hf.safetensors_io import CheckpointFormatError

CONFIG_FILE = 'config.json'


def read_config(hf_dir: str) -> dict[str, Any]:
  path = os.path.join(hf_dir, CONFIG_FILE)
  if not os.path.isfile(path):
    raise CheckpointFormatError(f'{hf_dir} is not a Hugging Face model directory: {path} is '
                                'missing.')
  with open(path) as f:
    return json.load(f)


def load_checkpoint(hf_dir: str, *, param_dtype: str = 'float32', dtype: str = 'float32',
                    vocab_size: int | None = None
                    ) -> tuple[config_lib.ModelConfig, dict[str, Any], HFInfo]:
  """Reads config.json + safetensors (single file or sharded) into our parameter tree.

  Args:
    hf_dir: a directory written by `save_pretrained` (safetensors).
    param_dtype: dtype of the returned parameters ('float32' default; 'bfloat16' halves
      the memory of large models).
    dtype: the compute dtype recorded in the config.
    vocab_size: pad the vocabulary to this many ids (zero rows; see `convert.iter_import`).

  Returns:
    (ModelConfig with vocab_size = the padded size and, when padded, valid_vocab_size = the
    checkpoint's (the model never produces the padded ids), nested dict of jax arrays,
    HFInfo).
    Each tensor is handed to jax as soon as it is converted and its host copy dropped: peak
    host memory is the model plus one tensor (orbax then saves jax arrays without copying
    the tree, which it does for numpy arrays).

  Raises:
    UnsupportedModelError, MissingTensorsError, CheckpointFormatError with the names of
    what is wrong.
  """
  cfg, info = config_map.to_model_config(read_config(hf_dir), param_dtype=param_dtype,
                                         dtype=dtype)
  reader = safetensors_io.SafetensorsReader(hf_dir)
  params: dict[str, Any] = {}
  for path, array in convert.iter_import(reader, cfg, info, vocab_size=vocab_size):
    convert.set_path(params, path, jax.device_put(array))
    del array
  if vocab_size and vocab_size > cfg.vocab_size:
    # The padded ids are no tokens of the model: its head masks them (never sampled).
    cfg = config_lib.ModelConfig.from_dict(cfg.to_dict(), vocab_size=vocab_size,
                                           valid_vocab_size=cfg.vocab_size)
  return cfg, params, info


def save_checkpoint(params: Any, cfg: config_lib.ModelConfig, out_dir: str, *,
                    architecture: str | None = None, vocab_size: int | None = None,
                    token_ids: Mapping[str, Any] | None = None, dtype: str = 'float32',
                    max_shard_bytes: int = 5 * 2**30) -> list[str]:
  """Writes config.json, generation_config.json and safetensors (sharded past
  `max_shard_bytes`) that `AutoModelForCausalLM.from_pretrained(out_dir)` loads.

  Args:
    params: our Transformer tree (arrays; jax or numpy).
    architecture: default: the one `config_map.choose_architecture` picks.
    vocab_size: rows to export; default cfg.vocab_size (smaller drops import padding).
    token_ids: {'bos': id, 'eos': id, 'pad': id} for the configs.
    dtype: tensor dtype: 'float32' | 'bfloat16' | 'float16'.

  Returns:
    The files written.
  """
  hf_cfg, info = config_map.from_model_config(cfg, architecture=architecture,
                                              vocab_size=vocab_size, token_ids=token_ids,
                                              dtype=dtype)
  plans = convert.export_plans(params, cfg, info, vocab_size=vocab_size, dtype=dtype)
  os.makedirs(out_dir, exist_ok=True)
  files = safetensors_io.write_checkpoint(out_dir, plans, max_shard_bytes=max_shard_bytes)
  with open(os.path.join(out_dir, CONFIG_FILE), 'w') as f:
    json.dump(hf_cfg, f, indent=2)
  generation = {k + '_token_id': hf_cfg[k + '_token_id'] for k in ('bos', 'eos', 'pad')
                if hf_cfg[k + '_token_id'] is not None}
  with open(os.path.join(out_dir, 'generation_config.json'), 'w') as f:
    json.dump(generation, f, indent=2)
  return files + [CONFIG_FILE, 'generation_config.json']


def export_model(params: Any, cfg: config_lib.ModelConfig, out_dir: str, *,
                 tokenizer_dir: str, special_ids: Mapping[str, int],
                 special_tokens: Sequence[str], vocab_size: int | None = None,
                 architecture: str | None = None, dtype: str = 'float32',
                 max_shard_bytes: int = 5 * 2**30) -> list[str]:
  """`save_checkpoint` plus the tokenizer files, from what `load_model(workdir)` returns.

  Args:
    tokenizer_dir: the workdir's tokenizer/ directory.
    special_ids: the tokenizer's special name -> id (`tokenizer.special_ids`).
    special_tokens: `data.SPECIAL_TOKENS` (the byte tokenizer's specials in id order).
    vocab_size: see `save_checkpoint` (an imported workdir records the original one);
      default: the model's valid ids (`cfg.valid_vocab_size`), else all.
  """
  token_ids = {k: special_ids.get(f'<{k}>') for k in ('bos', 'eos', 'pad')}
  V = vocab_size or cfg.valid_vocab_size or cfg.vocab_size
  token_ids = {k: v if v is not None and v < V else None for k, v in token_ids.items()}
  files = save_checkpoint(params, cfg, out_dir, architecture=architecture, vocab_size=V,
                          token_ids=token_ids, dtype=dtype, max_shard_bytes=max_shard_bytes)
  return files + tokenizer_files.export_tokenizer(
      tokenizer_dir, out_dir, special_ids=dict(special_ids), special_tokens=special_tokens,
      vocab_size=V, model_max_length=cfg.max_seq_len)


def num_bytes(params: Any) -> int:
  """Bytes of a tree of arrays."""
  return sum(int(x.nbytes) for x in jax.tree.leaves(params))


__all__ = ['ARCHITECTURES', 'HFInfo', 'UnsupportedModelError', 'MissingTensorsError',
           'CheckpointFormatError', 'read_config', 'load_checkpoint', 'save_checkpoint',
           'export_model', 'num_bytes', 'config_map', 'convert', 'safetensors_io',
           'tokenizer_files']
