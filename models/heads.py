"""Draft heads that read a Transformer's hidden states (separate modules; the Transformer is
unchanged). Their parameters live beside the model's as training extras
(params = {'model': ..., 'medusa' | 'mtp' | 'kangaroo': ...}).

  MedusaHeads       K heads on the last hidden state; head k predicts the token k + 1 places
                    after the next one (Cai et al. 2024): z = h + silu(h W_k + b_k), logits
                    through the model's own output head.
  MTPModules        DeepSeek-V3 style sequential multi-token prediction: module k combines
                    the previous depth's representation with the embedding of the next token,
                    h_k = Block(W_k [norm(h_{k-1}); norm(emb(t))]), and predicts one more
                    token through the shared output head. Ours uses an MLP block without
                    attention, so drafting needs no extra cache.
  KangarooAdapter   Kangaroo's early-exit adapter (Liu et al. 2024): one attention layer and
                    two norms on the residual stream after layer E, then the shared output
                    head; it has its own one-layer KV cache.

Axis letters as everywhere: B batch, T tokens, S cache slots, D model width, V vocabulary,
K heads / depth.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from models import attention as attention_lib
from models import cache as cache_lib
from models import config as config_lib
from models import layers
from models import masks

MEDUSA, MTP, KANGAROO = 'medusa', 'mtp', 'kangaroo'


def output_embedding(model_params: Any, cfg: config_lib.ModelConfig) -> jax.Array:
  """[V, D] matrix of the model's output head (the tied embedding or lm_head transposed)."""
  if cfg.tie_embeddings:
    return model_params['embed']['embedding']
  return model_params['lm_head'].T


def input_embedding(model_params: Any) -> jax.Array:
  """[V, D] token embedding of the model."""
  return model_params['embed']['embedding']


def final_norm(model_params: Any, cfg: config_lib.ModelConfig, x_BxTxD: jax.Array) -> jax.Array:
  """The model's final RMSNorm applied outside the model (early-exit heads)."""
  return layers.RMSNorm(cfg.norm_eps, 'embed', cfg.weight_dtype).apply(
      {'params': model_params['final_norm']}, x_BxTxD)


def exit_logits(model_params: Any, cfg: config_lib.ModelConfig, h_BxTxD: jax.Array
                ) -> jax.Array:
  """Logits of an early exit: the model's final norm and output head applied to the residual
  stream `h` after some of its layers (what the early-exit draft reads)."""
  return head_logits(final_norm(model_params, cfg, h_BxTxD),
                     output_embedding(model_params, cfg), cfg)


def head_logits(x_BxTxD: jax.Array, out_emb_VxD: jax.Array, cfg: config_lib.ModelConfig):
  """float32 logits through the model's output embedding (invalid ids masked as its head), or
  through rows of it (a reduced draft vocabulary, `models.draft_vocab`: valid ids only)."""
  dt = cfg.compute_dtype
  logits = jnp.einsum('...D,VD->...V', x_BxTxD.astype(dt), out_emb_VxD.astype(dt))
  if out_emb_VxD.shape[0] != cfg.vocab_size:
    return logits.astype(jnp.float32)
  return layers.mask_invalid_ids(logits, cfg)


class MedusaHeads(nn.Module):
  """K Medusa heads; `__call__(h_BxTxD, out_emb_VxD) -> logits [B, T, K, V]`.

  h is the model's final-normed hidden state (`ModelOutput.last_hidden_BxTxD`). The residual
  projections start at zero, so every head starts as a copy of the next-token head.
  """
  cfg: config_lib.ModelConfig
  num_heads: int

  @nn.compact
  def __call__(self, h_BxTxD: jax.Array, out_emb_VxD: jax.Array) -> jax.Array:
    cfg = self.cfg
    D, K, dt = cfg.d_model, self.num_heads, cfg.compute_dtype
    w = layers.logical_param(self, 'w', nn.initializers.zeros, (K, D, D),
                             (None, 'embed', 'mlp'), cfg.weight_dtype)
    b = layers.logical_param(self, 'b', nn.initializers.zeros, (K, D), (None, 'mlp'),
                             cfg.weight_dtype)
    h = h_BxTxD.astype(dt)
    z_BxTxKxD = h[:, :, None, :] + nn.silu(layers.stacked_project(h, w.astype(dt))
                                           + b.astype(dt))
    return head_logits(z_BxTxKxD, out_emb_VxD, cfg)


class _MTPBlock(nn.Module):
  """One MTP depth: project [norm(h); norm(e)] to D, add a SwiGLU MLP block."""
  cfg: config_lib.ModelConfig

  @nn.compact
  def __call__(self, h_BxTxD, e_BxTxD):
    cfg = self.cfg
    norm = lambda name: layers.RMSNorm(cfg.norm_eps, 'embed', cfg.weight_dtype, name=name)
    dt = cfg.compute_dtype
    w = layers.logical_param(self, 'proj', nn.initializers.normal(cfg.init_std),
                             (2 * cfg.d_model, cfg.d_model), (None, 'embed'), cfg.weight_dtype)
    x = jnp.concatenate([norm('h_norm')(h_BxTxD), norm('e_norm')(e_BxTxD)], -1).astype(dt)
    x = jnp.einsum('BTE,ED->BTD', x, w.astype(dt))
    x = x + layers.MLP(cfg, name='mlp')(norm('mlp_norm')(x))
    return x, norm('out_norm')(x)


class MTPModules(nn.Module):
  """`depth` sequential MTP modules.

  `step(k, h_BxTxD, tok_BxT, in_emb_VxD, out_emb_VxD) -> (h_k, logits_k)`: module k (0-based)
  reads the representation h from depth k - 1 (the model's final hidden state for k = 0) at
  position i and the token at i + k + 1, and predicts the token at i + k + 2.
  `__call__` runs all depths over a training sequence (see training/objectives/spec_heads.py).
  """
  cfg: config_lib.ModelConfig
  depth: int

  def setup(self):
    self.blocks = [_MTPBlock(self.cfg, name=f'module_{k}') for k in range(self.depth)]

  def step(self, k: int, h_BxTxD, tok_BxT, in_emb_VxD, out_emb_VxD):
    e_BxTxD = jnp.take(in_emb_VxD, tok_BxT, axis=0).astype(self.cfg.compute_dtype)
    h, normed = self.blocks[k](h_BxTxD, e_BxTxD)
    return h, head_logits(normed, out_emb_VxD, self.cfg)

  def __call__(self, h_BxTxD, tokens_BxT1, in_emb_VxD, out_emb_VxD):
    """Logits [B, T, depth, V] over a training row: h_BxTxD is the model's hidden state at
    inputs tokens[:T]; entry (i, k) reads h_i and tokens[i + 1 .. i + k + 1] and predicts
    tokens[i + k + 2]. Entries whose tokens run past the row see padding: mask them."""
    out = []
    h = h_BxTxD
    T = h_BxTxD.shape[1]
    for k in range(self.depth):
      nxt = jnp.pad(tokens_BxT1[:, k + 1:], ((0, 0), (0, T)))[:, :T]
      h, logits = self.step(k, h, nxt, in_emb_VxD, out_emb_VxD)
      out.append(logits)
    return jnp.stack(out, axis=2)


class KangarooAdapter(nn.Module):
  """Early-exit adapter with its own one-layer KV cache.

  `__call__(x_BxTxD, positions_BxT, out_emb_VxD, cache=None, write_slots_BxT=None,
  attn_mask=None) -> (logits_BxTxV, cache)`: x is the residual stream after the exit layer;
  x + attn(norm1(x)), then norm2 and the shared output head. The cache is a `models.Cache`
  of `adapter_config(cfg)` (one attention layer) with the model's slot layout.
  """
  cfg: config_lib.ModelConfig

  @nn.compact
  def __call__(self, x_BxTxD, positions_BxT, out_emb_VxD, cache: cache_lib.Cache | None = None,
               write_slots_BxT=None, attn_mask: masks.MaskSpec = None):
    cfg = self.cfg
    norm = lambda name: layers.RMSNorm(cfg.norm_eps, 'embed', cfg.weight_dtype, name=name)
    positions_BxT = positions_BxT.astype(jnp.int32)
    if cache is None:
      slots_BxT, key_pos, key_valid = None, positions_BxT, positions_BxT >= 0
      kv = None
    else:
      if write_slots_BxT is None:
        write_slots_BxT = positions_BxT
      slots_BxT, key_pos, key_valid = cache.begin_write(positions_BxT, write_slots_BxT)
      kv = cache.layer(0)
    mask = masks.build_mask(positions_BxT, key_pos, key_valid, attn_mask)
    h, kv = attention_lib.Attention(adapter_config(cfg), name='attn')(
        norm('norm1')(x_BxTxD), positions_BxT, mask, kv, slots_BxT)
    x = x_BxTxD + h
    logits = head_logits(norm('norm2')(x), out_emb_VxD, cfg)
    new_cache = None if cache is None else cache.end_write((kv,), key_pos, slots_BxT)
    return logits, new_cache


def adapter_config(cfg: config_lib.ModelConfig) -> config_lib.ModelConfig:
  """The one-attention-layer config of a Kangaroo adapter (and of its cache)."""
  return dataclasses.replace(cfg, num_layers=1, layer_types=(config_lib.ATTENTION,))
