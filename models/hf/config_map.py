"""Hugging Face `config.json` <-> `ModelConfig`, for the architectures we can represent exactly.

Supported (all RMSNorm + RoPE (rotate-half) + GQA + SwiGLU decoders):

| architecture        | what it adds                         | our field                        |
|---------------------|--------------------------------------|----------------------------------|
| LlamaForCausalLM    | Llama 2; Llama 3 'llama3' RoPE scaling | `rope_scaling`                 |
| MistralForCausalLM  | sliding-window attention             | `sliding_window`                 |
| Qwen2ForCausalLM    | q/k/v biases (Qwen2, Qwen2.5)        | `qkv_bias`                       |
| Qwen3ForCausalLM    | RMSNorm of q and k per head          | `qk_norm` (+ `qkv_bias` if set)  |

Anything else (another architecture, a non-SiLU MLP, MLP biases, other RoPE scalings,
partial rotary, Qwen's per-layer sliding window) is refused with an error that names it.
Both config styles are read: transformers 4 (`rope_theta`, `rope_scaling`) and 5
(`rope_parameters`); exports write both.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from models import config as config_lib

ARCHITECTURES = {
    'LlamaForCausalLM': 'llama',
    'MistralForCausalLM': 'mistral',
    'Qwen2ForCausalLM': 'qwen2',
    'Qwen3ForCausalLM': 'qwen3',
}


class UnsupportedModelError(ValueError):
  """A Hugging Face checkpoint uses an architecture or feature this codebase cannot run."""


@dataclasses.dataclass(frozen=True)
class HFInfo:
  """What an import needs beyond the ModelConfig.

  architecture: e.g. 'LlamaForCausalLM'.
  o_bias: the checkpoint declares an o_proj bias (`attention_bias`); it must be all zeros.
  token_ids: bos/eos/pad token ids from config.json (None where absent; eos may be a list).
  """
  architecture: str
  o_bias: bool
  token_ids: dict[str, Any]


def architecture_of(hf: Mapping[str, Any]) -> str:
  """The checkpoint's architecture name, or UnsupportedModelError naming it."""
  archs = hf.get('architectures') or []
  arch = archs[0] if archs else None
  if arch is None:
    by_type = {v: k for k, v in ARCHITECTURES.items()}
    arch = by_type.get(hf.get('model_type', ''))
    if arch is None:
      raise UnsupportedModelError(
          f'config.json names no architecture and model_type {hf.get("model_type")!r} is not '
          f'one of {sorted(by_type)}.')
  if arch not in ARCHITECTURES:
    raise UnsupportedModelError(
        f'Unsupported architecture {arch!r} (model_type {hf.get("model_type")!r}); supported: '
        f'{sorted(ARCHITECTURES)}.')
  return arch


def _rope(hf: Mapping[str, Any]) -> tuple[float, tuple[float, ...]]:
  """(theta, our rope_scaling tuple) from either config style."""
  params = dict(hf.get('rope_parameters') or {})
  scaling = dict(hf.get('rope_scaling') or {})
  theta = params.get('rope_theta', hf.get('rope_theta', scaling.get('rope_theta', 10_000.0)))
  spec = params if params.get('rope_type', 'default') != 'default' else scaling
  kind = spec.get('rope_type', spec.get('type', 'default')) if spec else 'default'
  if kind == 'default':
    return float(theta), ()
  if kind != 'llama3':
    raise UnsupportedModelError(f"RoPE scaling {kind!r} is not supported (only 'llama3').")
  try:
    return float(theta), (float(spec['factor']), float(spec['low_freq_factor']),
                          float(spec['high_freq_factor']),
                          float(spec['original_max_position_embeddings']))
  except KeyError as e:
    raise UnsupportedModelError(f"'llama3' RoPE scaling without {e.args[0]!r}.") from None


def to_model_config(hf: Mapping[str, Any], *, param_dtype: str = 'float32',
                    dtype: str = 'float32') -> tuple[config_lib.ModelConfig, HFInfo]:
  """Maps a config.json dict to (ModelConfig, HFInfo); refuses what we cannot run exactly."""
  arch = architecture_of(hf)
  family = ARCHITECTURES[arch]
  problems = []
  if hf.get('hidden_act', 'silu') not in ('silu', 'swish'):
    problems.append(f'hidden_act={hf["hidden_act"]!r} (only SiLU/SwiGLU)')
  if hf.get('mlp_bias'):
    problems.append('mlp_bias=True')
  if float(hf.get('partial_rotary_factor', 1.0)) != 1.0:
    problems.append(f'partial_rotary_factor={hf["partial_rotary_factor"]}')
  if family in ('qwen2', 'qwen3') and hf.get('use_sliding_window'):
    problems.append('use_sliding_window=True (per-layer sliding windows)')
  if problems:
    raise UnsupportedModelError(f'{arch} checkpoint uses unsupported features: '
                                + '; '.join(problems) + '.')
  theta, scaling = _rope(hf)
  heads = int(hf['num_attention_heads'])
  head_dim = hf.get('head_dim') or int(hf['hidden_size']) // heads
  attention_bias = bool(hf.get('attention_bias', False))
  sliding = hf.get('sliding_window') if family == 'mistral' else None
  cfg = config_lib.ModelConfig(
      vocab_size=int(hf['vocab_size']), d_model=int(hf['hidden_size']),
      num_layers=int(hf['num_hidden_layers']), num_heads=heads,
      num_kv_heads=int(hf.get('num_key_value_heads') or heads), head_dim=int(head_dim),
      mlp_dim=int(hf['intermediate_size']), rope_theta=theta, rope_scaling=scaling,
      qk_norm=family == 'qwen3', qkv_bias=family == 'qwen2' or attention_bias,
      tie_embeddings=bool(hf.get('tie_word_embeddings', False)),
      norm_eps=float(hf.get('rms_norm_eps', 1e-6)),
      max_seq_len=int(hf.get('max_position_embeddings', 2048)), dtype=dtype,
      param_dtype=param_dtype, init_std=float(hf.get('initializer_range', 0.02)),
      sliding_window=int(sliding or 0))
  token_ids = {k: hf.get(f'{k}_token_id') for k in ('bos', 'eos', 'pad')}
  return cfg, HFInfo(architecture=arch, o_bias=attention_bias and family != 'qwen2',
                     token_ids=token_ids)


def choose_architecture(cfg: config_lib.ModelConfig) -> str:
  """The HF architecture that represents `cfg` exactly (see the module table)."""
  if cfg.sliding_window and (cfg.qk_norm or cfg.qkv_bias):
    raise UnsupportedModelError('No supported Hugging Face architecture combines a sliding '
                                'window with qk-norm or q/k/v biases.')
  if cfg.rope_scaling and (cfg.sliding_window or cfg.qk_norm or cfg.qkv_bias):
    raise UnsupportedModelError("Llama-3 RoPE scaling is exported only with the plain Llama "
                                'architecture (no sliding window, qk-norm or biases).')
  if cfg.qk_norm:
    return 'Qwen3ForCausalLM'
  if cfg.sliding_window:
    return 'MistralForCausalLM'
  if cfg.qkv_bias:
    return 'Qwen2ForCausalLM'
  return 'LlamaForCausalLM'


def from_model_config(cfg: config_lib.ModelConfig, *, architecture: str | None = None,
                      vocab_size: int | None = None, token_ids: Mapping[str, Any] | None = None,
                      dtype: str = 'float32') -> tuple[dict[str, Any], HFInfo]:
  """A config.json dict for `cfg` (and the HFInfo the tensor export needs).

  Args:
    architecture: one of ARCHITECTURES; default `choose_architecture(cfg)`.
    vocab_size: rows to export (default cfg.vocab_size; smaller drops padding rows added at
      import).
    token_ids: {'bos': id, 'eos': id, 'pad': id}.
    dtype: the tensors' dtype ('float32' | 'bfloat16' | 'float16').
  """
  arch = architecture or choose_architecture(cfg)
  if arch not in ARCHITECTURES:
    raise UnsupportedModelError(f'Unknown export architecture {arch!r}; supported: '
                                f'{sorted(ARCHITECTURES)}.')
  family = ARCHITECTURES[arch]
  mismatch = []
  if cfg.qk_norm and family != 'qwen3':
    mismatch.append('qk_norm needs Qwen3ForCausalLM')
  if cfg.sliding_window and family != 'mistral':
    mismatch.append('sliding_window needs MistralForCausalLM')
  if cfg.qkv_bias and family == 'mistral':
    mismatch.append('MistralForCausalLM has no q/k/v biases')
  if cfg.rope_scaling and family != 'llama':
    mismatch.append('rope_scaling is exported only as LlamaForCausalLM')
  if mismatch:
    raise UnsupportedModelError(f'Cannot export this model as {arch}: ' + '; '.join(mismatch)
                                + '.')
  rope_scaling = None
  if cfg.rope_scaling:
    factor, low, high, original = cfg.rope_scaling
    rope_scaling = {'rope_type': 'llama3', 'factor': factor, 'low_freq_factor': low,
                    'high_freq_factor': high,
                    'original_max_position_embeddings': int(original)}
  rope_parameters = dict(rope_scaling or {'rope_type': 'default'}, rope_theta=cfg.rope_theta)
  token_ids = dict(token_ids or {})
  hf: dict[str, Any] = {
      'architectures': [arch], 'model_type': family,
      'vocab_size': int(vocab_size or cfg.vocab_size), 'hidden_size': cfg.d_model,
      'intermediate_size': cfg.mlp_dim, 'num_hidden_layers': cfg.num_layers,
      'num_attention_heads': cfg.num_heads, 'num_key_value_heads': cfg.num_kv_heads,
      'head_dim': cfg.head_dim, 'hidden_act': 'silu',
      'max_position_embeddings': cfg.max_seq_len, 'rms_norm_eps': cfg.norm_eps,
      'rope_theta': cfg.rope_theta, 'rope_scaling': rope_scaling,
      'rope_parameters': rope_parameters, 'tie_word_embeddings': cfg.tie_embeddings,
      'initializer_range': cfg.init_std, 'attention_dropout': 0.0, 'use_cache': True,
      'torch_dtype': dtype, 'dtype': dtype,
      'bos_token_id': token_ids.get('bos'), 'eos_token_id': token_ids.get('eos'),
      'pad_token_id': token_ids.get('pad'),
  }
  o_bias = False
  if family == 'llama':
    hf.update(attention_bias=cfg.qkv_bias, mlp_bias=False, pretraining_tp=1)
    o_bias = cfg.qkv_bias
  elif family == 'mistral':
    hf.update(sliding_window=cfg.sliding_window or None)
  elif family == 'qwen2':
    hf.update(use_sliding_window=False, sliding_window=None,
              max_window_layers=cfg.num_layers)
  else:
    hf.update(attention_bias=cfg.qkv_bias, use_sliding_window=False, sliding_window=None,
              max_window_layers=cfg.num_layers)
    o_bias = cfg.qkv_bias
  return hf, HFInfo(architecture=arch, o_bias=o_bias, token_ids=token_ids)
