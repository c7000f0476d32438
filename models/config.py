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
DELTAPRODUCT = 'deltaproduct'  # Gated DeltaProduct / DeltaNet: models/deltaproduct.py
LAYER_TYPES = (ATTENTION, DELTAPRODUCT)
PAD_ROWS = ('projections', 'model')
REMAT_POLICIES = ('none', 'block', 'dots')


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
    layer_types: one entry per layer, 'attention' or 'deltaproduct' (hybrids by pattern,
      e.g. 3 deltaproduct + 1 attention repeated). Empty means all attention.
    delta_*: the 'deltaproduct' layers (models/deltaproduct.py); ignored by attention.
    delta_num_heads: heads of the delta rule; 0 = num_heads.
    delta_head_dim: Dk, key/query width per head; 0 = head_dim.
    delta_expand_v: Dv = Dk * expand_v (fla's default is 2; 1 keeps parameters near
      attention's).
    delta_num_householder: n_h Householder steps per token; 1 = (Gated) DeltaNet.
    delta_allow_neg_eigval: beta = 2 sigmoid(.) in [0, 2] (negative eigenvalues; needed for
      parity / group state tracking) instead of sigmoid(.) in [0, 1].
    delta_use_gate: the forget gate g = -exp(A_log) softplus(x W_a + dt_bias) (Gated
      DeltaNet / DeltaProduct); False = plain delta rule.
    delta_use_output_gate: output RMSNorm times swish(x W_g); False = the norm alone.
    delta_conv_size: causal depthwise short convolution (+ SiLU) on q, k, v; 0 = none.
    delta_chunk_size: steps per chunk of the chunked form (on the n_h * T sub-steps).
    delta_impl: 'auto' | 'xla' | 'pallas' for the chunked form (pallas_kernels.delta_rule).
    attention_impl: 'auto' | 'xla' | 'cudnn' | 'pallas' | 'mosaic'; see
      `pallas_kernels.attention`.
    rope_scaling: () for plain RoPE, or Llama-3 frequency scaling as (factor,
      low_freq_factor, high_freq_factor, original_max_position_embeddings).
    sliding_window: 0 for full attention; W > 0 hides keys more than W - 1 positions before
      the query (Mistral).
    remat: rematerialisation of each block in calls without a cache (training, scoring):
      'none' keeps every activation for the backward pass; 'block' keeps only each block's
      input and recomputes the rest (least memory, about a third more compute); 'dots' also
      keeps the outputs of matrix products without batch dimensions (XLA's
      `dots_with_no_batch_dims_saveable`: less recomputation, more memory). Same parameters
      and numbers either way; decoding with a cache never rematerialises.
    valid_vocab_size: 0 = every id is a token of the model. N > 0 (at most vocab_size): only
      ids below N are; the head gives ids N..V-1 the logit `layers.NEVER_LOGIT` (-1e30), so no
      decoder can produce them (a Hugging Face import whose tokenizer needed special tokens
      beyond the checkpoint's vocabulary pads the table with such ids).
    min_matmul_rows: the attention and MLP projections of a call with fewer than this many
      token rows (B * T) run on zero rows padded up to it, then drop them: the same numbers
      through a different matrix-product shape. 1 = off; 0 (default) = 2 for 16-bit compute
      on a GPU, else 1. On an H200, XLA's one-row bf16 product at K = 2048, N = 8192 read its
      weights at 1381 GB/s and the two-row one at 2045 (benchmarks/results/
      matvec_probe_gpu_h200.md); padding to 2 rows took a batch-1 one-token bf16 forward of
      `base` from 1.821 to 1.094 ms, and in fp32 the one-row product was the faster one
      (forward_cost_rows_bf16.md, forward_cost_rows_fp32.md).
    pad_rows: where the rows `min_matmul_rows` asks for are added. 'projections' (default):
      each attention and MLP projection pads its input and drops the extra rows (two more
      operations per projection, kept apart by optimisation barriers). 'model': a cached
      call pads itself once, with dummy tokens at position -1 (never attended to, never
      written to the cache), runs every layer on them and drops them from its outputs, so
      the layers add no operations; calls it cannot pad that way (no cache, an explicit
      mask, LoRA, layer skips, token trees, step states, attention mass) fall back to
      'projections'. On the H200, `base`'s unpadded two-token bf16 forward took 0.993 ms
      against 1.094 ms for the one-token forward padded per projection
      (forward_cost_rows_bf16.md); 'model' has not been timed there yet.
    fused_projections: decode from weights in a fused layout: each attention layer's q, k
      and v as one matrix [D, K, G + 2, Dh] (each kv head's G query heads, then its key and
      value) and each MLP's gate and up as one [D, 2, F], so a layer runs 4 matrix products
      instead of 7 (the GPU's decode step at small batch is bound by its kernels, not their
      arithmetic). Same parameters: `transformer.fuse_projections` builds the fused
      weights, once per `generate` call before the decode loop for every model whose config
      sets this (the target, draft models, EAGLE layers; `decoding.runner.fused_layouts`),
      and `decoding.forward_timing` before timing; a module given fused weights uses them.
      Off by default until a GPU run measures it.
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
  delta_num_heads: int = 0
  delta_head_dim: int = 0
  delta_expand_v: float = 1.0
  delta_num_householder: int = 1
  delta_allow_neg_eigval: bool = True
  delta_use_gate: bool = True
  delta_use_output_gate: bool = True
  delta_conv_size: int = 4
  delta_chunk_size: int = 64
  delta_impl: str = 'auto'
  attention_impl: str = 'auto'
  rope_scaling: tuple[float, ...] = ()
  sliding_window: int = 0
  remat: str = 'none'
  valid_vocab_size: int = 0
  min_matmul_rows: int = 0
  pad_rows: str = 'projections'
  fused_projections: bool = False

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
    if not isinstance(self.min_matmul_rows, int) or self.min_matmul_rows < 0:
      raise ValueError(f'model.min_matmul_rows must be an integer >= 0 (0 = auto), got '
                       f'{self.min_matmul_rows!r}.')
    if self.pad_rows not in PAD_ROWS:
      raise ValueError(f'model.pad_rows must be one of {PAD_ROWS}, got {self.pad_rows!r}.')
    if self.remat not in REMAT_POLICIES:
      raise ValueError(f'model.remat must be one of {REMAT_POLICIES}, got {self.remat!r}.')
    types = tuple(self.layer_types) or (ATTENTION,) * self.num_layers
    if len(types) != self.num_layers:
      raise ValueError(f'model.layer_types has {len(types)} entries but model.num_layers is '
                       f'{self.num_layers}.')
    unknown = sorted(set(types) - set(LAYER_TYPES))
    if unknown:
      raise ValueError(f'Unknown layer types {unknown}; known: {LAYER_TYPES}.')
    object.__setattr__(self, 'layer_types', types)
    if DELTAPRODUCT in types:
      for name in ('delta_num_householder', 'delta_chunk_size'):
        if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
          raise ValueError(f'model.{name} must be a positive integer, got '
                           f'{getattr(self, name)!r}.')
      for name in ('delta_num_heads', 'delta_head_dim', 'delta_conv_size'):
        if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
          raise ValueError(f'model.{name} must be an integer >= 0, got '
                           f'{getattr(self, name)!r}.')
      dv = self.delta_key_dim * self.delta_expand_v
      if dv != int(dv) or dv <= 0:
        raise ValueError(f'model.delta_expand_v={self.delta_expand_v} times the key width '
                         f'{self.delta_key_dim} must be a positive integer.')
    object.__setattr__(self, 'rope_scaling', tuple(float(x) for x in self.rope_scaling))
    if self.rope_scaling and len(self.rope_scaling) != 4:
      raise ValueError('model.rope_scaling must be () or (factor, low_freq_factor, '
                       f'high_freq_factor, original_max_position_embeddings), got '
                       f'{self.rope_scaling}.')
    if (not isinstance(self.valid_vocab_size, int)
        or not 0 <= self.valid_vocab_size <= self.vocab_size):
      raise ValueError(f'model.valid_vocab_size must be 0 (all ids) or in [1, vocab_size='
                       f'{self.vocab_size}], got {self.valid_vocab_size!r}.')
    if not isinstance(self.sliding_window, int) or self.sliding_window < 0:
      raise ValueError(f'model.sliding_window must be an integer >= 0, got '
                       f'{self.sliding_window!r}.')

  @property
  def compute_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)

  @property
  def weight_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.param_dtype)

  @property
  def delta_heads(self) -> int:
    return self.delta_num_heads or self.num_heads

  @property
  def delta_key_dim(self) -> int:
    return self.delta_head_dim or self.head_dim

  @property
  def delta_value_dim(self) -> int:
    return int(self.delta_key_dim * self.delta_expand_v)

  def delta_layer_params(self) -> int:
    """Parameters of one 'deltaproduct' mixer (models/deltaproduct.py)."""
    D, H, J = self.d_model, self.delta_heads, self.delta_num_householder
    Dk, Dv = self.delta_key_dim, self.delta_value_dim
    n = D * H * (Dk + J * Dk + J * Dv + J) + H * Dv * D + Dv  # q, k, v, beta, out, norm
    n += self.delta_conv_size * H * (Dk + J * Dk + J * Dv)
    n += (D * H + 2 * H) if self.delta_use_gate else 0
    n += D * H * Dv if self.delta_use_output_gate else 0
    return n

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
    n_delta = sum(kind == DELTAPRODUCT for kind in self.layer_types)
    return (self.num_layers * per_layer + embed + self.d_model
            + n_delta * (self.delta_layer_params() - attn))
