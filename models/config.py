"""The model configuration: a frozen dataclass built from the `model` ConfigDict of a config.

Axis alphabet used in every suffix and einsum string of `models/` (see README):
  B batch, T tokens of this call, S cache slots, H query heads, K kv heads, G = H // K,
  D model width, F MLP width, Dh head width, V vocabulary, L layers.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax.numpy as jnp

ATTENTION = 'attention'
LAYER_TYPES = (ATTENTION,)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Hyper-parameters of a `Transformer`.

  Attributes:
    vocab_size: V, including special tokens.
    d_model: D, the residual-stream width.
    num_layers: L.
    num_heads: H query heads.
    num_kv_heads: K key/value heads (GQA); must divide `num_heads`.
    head_dim: Dh.
    mlp_dim: F, the SwiGLU hidden width.
    rope_theta: RoPE base frequency.
    qk_norm: RMS-normalise queries and keys over Dh before RoPE (Qwen3/Gemma style).
    qkv_bias: add biases to the q/k/v projections (Qwen2 style).
    tie_embeddings: the output head is the transposed embedding matrix.
    norm_eps: RMSNorm epsilon.
    max_seq_len: the context length the model is trained for; the default cache size.
    dtype: compute dtype ('float32' or 'bfloat16'); parameters are always `param_dtype`.
    param_dtype: parameter dtype (float32).
    init_std: standard deviation of the normal initialiser.
    layer_types: one entry per layer ('attention'; other issues add more). Empty means
      all attention.
    attention_impl: 'auto' | 'xla' | 'cudnn' | 'pallas'; see `pallas_kernels.attention`.
    rope_scaling: () for plain RoPE, or Llama-3 frequency scaling as (factor,
      low_freq_factor, high_freq_factor, original_max_position_embeddings).
    sliding_window: 0 for full attention; W > 0 hides keys more than W - 1 positions before
      the query (Mistral).
  """

  vocab_size: int
  d_model: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  mlp_dim: int
  rope_theta: float = 10_000.0
  qk_norm: bool = False
  qkv_bias: bool = False
  tie_embeddings: bool = True
  norm_eps: float = 1e-6
  max_seq_len: int = 2048
  dtype: str = 'float32'
  param_dtype: str = 'float32'
  init_std: float = 0.02
  layer_types: tuple[str, ...] = ()
  attention_impl: str = 'auto'
  rope_scaling: tuple[float, ...] = ()
  sliding_window: int = 0

  def __post_init__(self):
    positive = ('vocab_size', 'd_model', 'num_layers', 'num_heads', 'num_kv_heads',
                'head_dim', 'mlp_dim', 'max_seq_len')
    for name in positive:
      value = getattr(self, name)
      if not isinstance(value, int) or value <= 0:
        raise ValueError(f'model.{name} must be a positive integer, got {value!r}.')
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f'model.num_heads ({self.num_heads}) must be divisible by model.num_kv_heads '
          f'({self.num_kv_heads}) for grouped-query attention.')
    if self.head_dim % 2:
      raise ValueError(f'model.head_dim must be even for RoPE, got {self.head_dim}.')
    for name in ('dtype', 'param_dtype'):
      if getattr(self, name) not in ('float32', 'bfloat16', 'float16'):
        raise ValueError(f"model.{name} must be 'float32', 'bfloat16' or 'float16', "
                         f'got {getattr(self, name)!r}.')
    types = tuple(self.layer_types) or (ATTENTION,) * self.num_layers
    if len(types) != self.num_layers:
      raise ValueError(f'model.layer_types has {len(types)} entries but model.num_layers is '
                       f'{self.num_layers}.')
    unknown = sorted(set(types) - set(LAYER_TYPES))
    if unknown:
      raise ValueError(f'Unknown layer types {unknown}; known: {LAYER_TYPES}.')
    object.__setattr__(self, 'layer_types', types)
    object.__setattr__(self, 'rope_scaling', tuple(float(x) for x in self.rope_scaling))
    if self.rope_scaling and len(self.rope_scaling) != 4:
      raise ValueError('model.rope_scaling must be () or (factor, low_freq_factor, '
                       f'high_freq_factor, original_max_position_embeddings), got '
                       f'{self.rope_scaling}.')
    if not isinstance(self.sliding_window, int) or self.sliding_window < 0:
      raise ValueError(f'model.sliding_window must be an integer >= 0, got '
                       f'{self.sliding_window!r}.')

  @property
  def compute_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)

  @property
  def weight_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.param_dtype)

  @classmethod
  def from_dict(cls, d: Mapping[str, Any], **overrides) -> 'ModelConfig':
    """Builds a config from a (ConfigDict-like) mapping; unknown keys are an error."""
    d = dict(d, **overrides)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ValueError(f'Unknown model config keys {unknown}; known: {sorted(names)}.')
    if 'layer_types' in d:
      d['layer_types'] = tuple(d['layer_types'])
    return cls(**d)

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d['layer_types'] = list(d['layer_types'])
    d['rope_scaling'] = list(d['rope_scaling'])
    return d

  def num_params(self) -> int:
    """Parameter count (embedding included once when tied)."""
    attn = self.d_model * self.head_dim * (2 * self.num_heads + 2 * self.num_kv_heads)
    if self.qkv_bias:
      attn += self.head_dim * (self.num_heads + 2 * self.num_kv_heads)
    if self.qk_norm:
      attn += 2 * self.head_dim
    mlp = 3 * self.d_model * self.mlp_dim
    per_layer = attn + mlp + 2 * self.d_model
    embed = self.vocab_size * self.d_model * (1 if self.tie_embeddings else 2)
    return self.num_layers * per_layer + embed + self.d_model
