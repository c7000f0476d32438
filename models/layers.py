"""Building blocks: parameters with logical axis names, RMSNorm, RoPE, SwiGLU, embedding."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from models import config as config_lib

# The logit of ids that are not tokens of the model (`ModelConfig.valid_vocab_size`): finite,
# so that p * log p stays 0 rather than NaN, and far below any real logit, so that its
# probability is exactly 0 in float32 at every temperature `SamplingConfig` admits.
NEVER_LOGIT = -1e30


def logical_param(module: nn.Module, name: str, init: Callable, shape: Sequence[int],
                  axes: Sequence[str | None], dtype) -> jax.Array:
  """A parameter that carries logical axis names (mapped to mesh axes by the rules)."""
  assert len(axes) == len(shape), (name, shape, axes)
  return module.param(name, nn.with_logical_partitioning(init, tuple(axes)), tuple(shape), dtype)


class RMSNorm(nn.Module):
  """y = x / rms(x) * scale, computed in float32 (Llama convention: scale starts at 1)."""
  eps: float = 1e-6
  axis_name: str = 'embed'
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = logical_param(self, 'scale', nn.initializers.ones, (x.shape[-1],),
                          (self.axis_name,), self.param_dtype)
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (y * scale.astype(jnp.float32)).astype(x.dtype)


def rope_frequencies(Dh: int, theta: float, scaling: Sequence[float] = ()) -> jax.Array:
  """float32 [Dh/2] inverse frequencies theta^(-2i/Dh), with Llama-3 scaling if given.

  `scaling` = (factor, low_freq_factor, high_freq_factor, original_max_position_embeddings):
  wavelengths above original/low_freq_factor are divided by `factor`, those below
  original/high_freq_factor kept, and the band between interpolated (transformers'
  `_compute_llama3_parameters`).
  """
  inv_freq = theta ** (-jnp.arange(0, Dh, 2, dtype=jnp.float32) / Dh)
  if not scaling:
    return inv_freq
  factor, low, high, original = scaling
  wavelen = 2 * jnp.pi / inv_freq
  scaled = jnp.where(wavelen > original / low, inv_freq / factor, inv_freq)
  smooth = (original / wavelen - low) / (high - low)
  smoothed = (1 - smooth) * scaled / factor + smooth * scaled
  medium = (wavelen >= original / high) & (wavelen <= original / low)
  return jnp.where(medium, smoothed, scaled)


def rope(x_BxTxNxDh: jax.Array, positions_BxT: jax.Array, theta: float,
         scaling: Sequence[float] = ()) -> jax.Array:
  """Rotary embedding, rotate-half convention (as Llama/Qwen in transformers).

  Frequencies from `rope_frequencies` (theta^(-2i/Dh), i < Dh/2, optionally Llama-3
  scaled); the first and second halves of Dh form the pairs.
  Negative (padding) positions are clamped to 0; their outputs are never attended to.
  """
  Dh = x_BxTxNxDh.shape[-1]
  inv_freq = rope_frequencies(Dh, theta, scaling)
  pos_BxT = jnp.maximum(positions_BxT, 0).astype(jnp.float32)
  angles_BxTx1xDh2 = (pos_BxT[..., None] * inv_freq)[:, :, None, :]
  cos, sin = jnp.cos(angles_BxTx1xDh2), jnp.sin(angles_BxTx1xDh2)
  x = x_BxTxNxDh.astype(jnp.float32)
  x1, x2 = x[..., :Dh // 2], x[..., Dh // 2:]
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BxTxNxDh.dtype)


class MLP(nn.Module):
  """SwiGLU: down(silu(gate(x)) * up(x))."""
  cfg: config_lib.ModelConfig

  @nn.compact
  def __call__(self, x_BxTxD: jax.Array, lora: Any = None,
               gate_BxT: jax.Array | None = None) -> jax.Array:
    """`lora` / `gate_BxT`: a gated LoRA on gate, up and down (see `gated_lora`)."""
    cfg = self.cfg
    D, F, dt = cfg.d_model, cfg.mlp_dim, cfg.compute_dtype
    proj = lambda eq, a, w: project(eq, a, w.astype(dt), matmul_rows(cfg))
    init = nn.initializers.normal(cfg.init_std)
    out_init = nn.initializers.normal(cfg.init_std / (2 * cfg.num_layers) ** 0.5)
    x = x_BxTxD.astype(dt)
    if self.has_variable('params', 'gate_up'):  # fused weights (`transformer.fuse_projections`)
      gu = proj('BTD,DJF->BTJF', x, self.get_variable('params', 'gate_up'))
      g_raw, u_raw = gu[:, :, 0], gu[:, :, 1]
    else:
      w_gate = logical_param(self, 'gate', init, (D, F), ('embed', 'mlp'), cfg.weight_dtype)
      w_up = logical_param(self, 'up', init, (D, F), ('embed', 'mlp'), cfg.weight_dtype)
      g_raw, u_raw = proj('BTD,DF->BTF', x, w_gate), proj('BTD,DF->BTF', x, w_up)
    w_down = logical_param(self, 'down', out_init, (F, D), ('mlp', 'embed'), cfg.weight_dtype)
    lo = (lambda name: None) if lora is None else lora.get
    g_BxTxF = gated_lora(g_raw, x, lo('gate'), gate_BxT, 1)
    u_BxTxF = gated_lora(u_raw, x, lo('up'), gate_BxT, 1)
    h_BxTxF = nn.silu(g_BxTxF) * u_BxTxF
    return gated_lora(proj('BTF,FD->BTD', h_BxTxF, w_down), h_BxTxF,
                      lo('down'), gate_BxT, 1)


def matmul_rows(cfg: config_lib.ModelConfig) -> int:
  """`cfg.min_matmul_rows`, with 0 (auto) resolved: 2 for 16-bit compute on a GPU, else 1."""
  if cfg.min_matmul_rows:
    return cfg.min_matmul_rows
  sixteen_bit = jnp.dtype(cfg.compute_dtype).itemsize == 2
  return 2 if sixteen_bit and jax.default_backend() == 'gpu' else 1


def project(eq: str, x_BxTx: jax.Array, w: jax.Array, min_rows: int = 1) -> jax.Array:
  """jnp.einsum(eq, x, w) for a projection whose first two axes are [B, T] on both sides.

  With fewer than `min_rows` token rows (B * T), x's T axis is zero-padded so that B * T' >=
  min_rows, the product runs on the padded rows and the result drops them: the same values
  through a larger matrix-product shape (`ModelConfig.min_matmul_rows`: XLA's one-row product
  can read the weights far slower than a two-row one). The optimisation barriers keep the
  compiler from folding the padding back into a one-row product.
  """
  B, T = x_BxTx.shape[:2]
  if B * T >= min_rows:
    return jnp.einsum(eq, x_BxTx, w)
  pad = -(-min_rows // B) - T
  x_pad = jnp.pad(x_BxTx, [(0, 0), (0, pad)] + [(0, 0)] * (x_BxTx.ndim - 2))
  y_pad = jnp.einsum(eq, jax.lax.optimization_barrier(x_pad), w)
  return jax.lax.optimization_barrier(y_pad)[:, :T]


def stacked_project(x_BxTxE: jax.Array, w_KxExN: jax.Array) -> jax.Array:
  """einsum('BTE,KEN->BTKN'): K projections stacked in one weight, as a product batched
  over K, which reads w as stored. Written as that einsum, XLA copies w into [E, K, N] order
  on every call (a copy of the weight per decode step: `benchmarks/step_ops.py` lists it)."""
  K = w_KxExN.shape[0]
  y_KxBxTxN = jnp.einsum('KBTE,KEN->KBTN', jnp.broadcast_to(x_BxTxE, (K,) + x_BxTxE.shape),
                         w_KxExN)
  return jnp.moveaxis(y_KxBxTxN, 0, 2)


def gated_lora(y_BxTx: jax.Array, x_BxTx: jax.Array, ab: Any, gate_BxT: jax.Array | None,
               n_in: int) -> jax.Array:
  """y + gate * (x A) B: a LoRA that acts only where `gate_BxT` is True ("Your LLM Knows the
  Future": m = 1 at <mask> positions only, models/mask_mtp.py).

  y_BxTx: the frozen projection's output [B, T, *out]; x_BxTx: its input [B, T, *in] (n_in
  trailing axes); ab: {'a': [*in, r], 'b': [r, *out]} or None (no LoRA: y unchanged).
  Ungated positions get y itself (a select, not an addition): their values do not depend on
  the LoRA at all. (Two different compiled programs, with and without this argument, may still
  differ in the last bits where the compiler fuses the same ops differently.)
  """
  if ab is None:
    return y_BxTx
  if gate_BxT is None:
    raise ValueError('A gated LoRA needs gate_BxT (True where it acts).')
  dt = y_BxTx.dtype
  h = jnp.tensordot(x_BxTx.astype(dt), ab['a'].astype(dt), axes=n_in)
  delta = jnp.tensordot(h, ab['b'].astype(dt), axes=1)
  g = gate_BxT.reshape(gate_BxT.shape + (1,) * (y_BxTx.ndim - 2))
  return jnp.where(g, y_BxTx + delta, y_BxTx)


class Embedder(nn.Module):
  """Token embedding [V, D]; `attend` is the tied output head."""
  cfg: config_lib.ModelConfig

  def setup(self):
    cfg = self.cfg
    self.embedding = logical_param(self, 'embedding', nn.initializers.normal(cfg.init_std),
                                   (cfg.vocab_size, cfg.d_model), ('vocab', 'embed'),
                                   cfg.weight_dtype)

  def __call__(self, tokens_BxT: jax.Array) -> jax.Array:
    return jnp.take(self.embedding, tokens_BxT, axis=0).astype(self.cfg.compute_dtype)

  def attend(self, x_BxTxD: jax.Array) -> jax.Array:
    dt = self.cfg.compute_dtype
    return jnp.einsum('BTD,VD->BTV', x_BxTxD.astype(dt), self.embedding.astype(dt))


def mask_invalid_ids(logits_xV: jax.Array, cfg: config_lib.ModelConfig) -> jax.Array:
  """float32 logits [..., V] with ids >= cfg.valid_vocab_size set to NEVER_LOGIT (the ids a
  model's table holds but its vocabulary does not); unchanged when every id is valid."""
  logits_xV = logits_xV.astype(jnp.float32)
  if not 0 < cfg.valid_vocab_size < logits_xV.shape[-1]:
    return logits_xV
  valid_V = jnp.arange(logits_xV.shape[-1]) < cfg.valid_vocab_size
  return jnp.where(valid_V, logits_xV, NEVER_LOGIT)
