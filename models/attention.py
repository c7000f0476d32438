"""Grouped-query self-attention with RoPE, optional qk-norm and qkv bias, and an explicit cache."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

import pallas_kernels.attention as attention_ops
from models import cache as cache_lib
from models import config as config_lib
from models import layers


class Attention(nn.Module):
  """Self-attention over this call's tokens, or over the cache after writing them into it.

  index_mask: (causal, window) when the caller built `mask_BxTxS` as that rule by index
  over this call's tokens (default positions, no cache: training; causal with the sliding
  window, or bidirectional without one): the attention then runs the dispatch's causal case
  without the mask array (`pallas_kernels.attention.attention`'s `index_mask`). Ignored
  with a cache."""
  cfg: config_lib.ModelConfig
  index_mask: tuple[bool, int] | None = None

  @nn.compact
  def __call__(self, x_BxTxD: jax.Array, positions_BxT: jax.Array, mask_BxTxS: jax.Array,
               kv: cache_lib.KVCache | None = None, slots_BxT: jax.Array | None = None,
               return_attention: bool = False, lora=None, gate_BxT: jax.Array | None = None):
    """Args:
      x_BxTxD: normalised input.
      positions_BxT: RoPE positions.
      mask_BxTxS: which keys each query sees; S = T without a cache, the cache size with one.
      kv: this layer's cache, or None (training / no cache).
      slots_BxT: sanitised write slots (required with `kv`).
      return_attention: also return the attention probabilities summed over heads,
        [B, T, S] float32 (KV-cache eviction policies, `decoding/h2o.py`).
      lora, gate_BxT: a gated LoRA on q, k, v and o ({'q': {'a', 'b'}, ...}), acting where
        gate_BxT is True (`layers.gated_lora`, models/mask_mtp.py); None: none.

    Returns:
      ([B, T, D] output, the updated KVCache or None), plus the attention mass when asked.
    """
    cfg = self.cfg
    D, H, K, Dh, dt = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.compute_dtype
    init = nn.initializers.normal(cfg.init_std)
    out_init = nn.initializers.normal(cfg.init_std / (2 * cfg.num_layers) ** 0.5)
    x = x_BxTxD.astype(dt)
    proj = lambda eq, a, w: layers.project(eq, a, w.astype(dt), layers.matmul_rows(cfg))
    if self.has_variable('params', 'qkv'):  # fused weights (`transformer.fuse_projections`)
      qkv = proj('BTD,DKJd->BTKJd', x, self.get_variable('params', 'qkv'))
      G = H // K
      q_raw, k_raw, v_raw = (qkv[:, :, :, :G].reshape(qkv.shape[:2] + (H, Dh)),
                             qkv[:, :, :, G], qkv[:, :, :, G + 1])
    else:
      wq = layers.logical_param(self, 'q', init, (D, H, Dh), ('embed', 'heads', 'head_dim'),
                                cfg.weight_dtype)
      wk = layers.logical_param(self, 'k', init, (D, K, Dh), ('embed', 'kv_heads', 'head_dim'),
                                cfg.weight_dtype)
      wv = layers.logical_param(self, 'v', init, (D, K, Dh), ('embed', 'kv_heads', 'head_dim'),
                                cfg.weight_dtype)
      q_raw, k_raw, v_raw = (proj('BTD,DHd->BTHd', x, wq), proj('BTD,DKd->BTKd', x, wk),
                             proj('BTD,DKd->BTKd', x, wv))
    wo = layers.logical_param(self, 'o', out_init, (H, Dh, D), ('heads', 'head_dim', 'embed'),
                              cfg.weight_dtype)
    lo = (lambda name: None) if lora is None else lora.get
    q_BxTxHxDh = layers.gated_lora(q_raw, x, lo('q'), gate_BxT, 1)
    k_BxTxKxDh = layers.gated_lora(k_raw, x, lo('k'), gate_BxT, 1)
    v_BxTxKxDh = layers.gated_lora(v_raw, x, lo('v'), gate_BxT, 1)
    if cfg.qkv_bias:
      zeros = nn.initializers.zeros
      q_BxTxHxDh += layers.logical_param(self, 'q_bias', zeros, (H, Dh), ('heads', 'head_dim'),
                                         cfg.weight_dtype).astype(dt)
      k_BxTxKxDh += layers.logical_param(self, 'k_bias', zeros, (K, Dh),
                                         ('kv_heads', 'head_dim'), cfg.weight_dtype).astype(dt)
      v_BxTxKxDh += layers.logical_param(self, 'v_bias', zeros, (K, Dh),
                                         ('kv_heads', 'head_dim'), cfg.weight_dtype).astype(dt)
    if cfg.qk_norm:
      q_BxTxHxDh = layers.RMSNorm(cfg.norm_eps, 'head_dim', cfg.weight_dtype,
                                  name='q_norm')(q_BxTxHxDh)
      k_BxTxKxDh = layers.RMSNorm(cfg.norm_eps, 'head_dim', cfg.weight_dtype,
                                  name='k_norm')(k_BxTxKxDh)
    q_BxTxHxDh = layers.rope(q_BxTxHxDh, positions_BxT, cfg.rope_theta, cfg.rope_scaling)
    k_BxTxKxDh = layers.rope(k_BxTxKxDh, positions_BxT, cfg.rope_theta, cfg.rope_scaling)

    if kv is not None:  # the cache's layout: k [B, K, S, Dh], v [B, K, Dh, S]
      kv = kv.write(k_BxTxKxDh, v_BxTxKxDh, slots_BxT)
      keys, values, layout = kv.k.astype(dt), kv.v.astype(dt), 'cache'
    else:
      keys, values, layout = k_BxTxKxDh, v_BxTxKxDh, 'BSKD'
    out_BxTxHxDh = attention_ops.attention(
        q_BxTxHxDh, keys, values, mask_BxTxS, scale=Dh ** -0.5, impl=cfg.attention_impl,
        kv_layout=layout, index_mask=self.index_mask if kv is None else None)
    out_BxTxD = layers.gated_lora(proj('BTHd,HdD->BTD', out_BxTxHxDh, wo),
                                  out_BxTxHxDh, lo('o'), gate_BxT, 2)
    if return_attention:
      return out_BxTxD, kv, attention_mass(q_BxTxHxDh, keys, mask_BxTxS, Dh ** -0.5, layout)
    return out_BxTxD, kv


def attention_mass(q_BxTxHxDh: jax.Array, keys: jax.Array, mask_BxTxS: jax.Array, scale: float,
                   layout: str) -> jax.Array:
  """[B, T, S] float32: softmax attention probabilities summed over the query heads (keys
  [B, K, S, Dh] in the cache layout, else [B, S, K, Dh]); a query that sees no key gets 0."""
  B, T, H, Dh = q_BxTxHxDh.shape
  K = keys.shape[1] if layout == 'cache' else keys.shape[2]
  q_BxTxKxGxDh = q_BxTxHxDh.astype(jnp.float32).reshape(B, T, K, H // K, Dh)
  eq = 'BTKGd,BKSd->BKGTS' if layout == 'cache' else 'BTKGd,BSKd->BKGTS'
  logits = jnp.einsum(eq, q_BxTxKxGxDh, keys.astype(jnp.float32)) * scale
  mask = jnp.broadcast_to(mask_BxTxS, (B, T, logits.shape[-1]))[:, None, None]
  logits = jnp.where(mask, logits, -jnp.inf)
  top = jnp.max(logits, axis=-1, keepdims=True)
  e = jnp.where(mask, jnp.exp(logits - jnp.where(jnp.isfinite(top), top, 0.0)), 0.0)
  p = e / jnp.maximum(jnp.sum(e, axis=-1, keepdims=True), 1e-30)
  return jnp.sum(p, axis=(1, 2))
