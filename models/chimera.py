"""Chimera's draft model (Zeng et al. 2024, arXiv 2402.15758): a lightweight draft that reads
every previous token through the target's final hidden states and the newest tokens through a
trigram encoder, and predicts the next `K` tokens at once with residual heads.

Per position q (x: tokens, h: the target's final-normed hidden states, the ones its head reads):

  u_q = W_tri ResBlock([e(x_{q-2}); e(x_{q-1}); e(x_q)])      trigram encoder (3D -> D);
                                                               e = the target's embedding,
                                                               zero before the row's start
  z_q = W_in [norm_h(h_{q-1}); norm_u(u_q)]                    (2D -> D)
  a_q = z_q + Attn(norm_a(z))_q                                one causal layer over the pairs
  f_q = a_q + MLP(norm_m(a_q))                                 of positions 1 .. q (full context)
  logits_k(q) = W_k [h_{q-1}; out_norm(f_q)]  (2D -> V)        head k = 1 .. K predicts x_{q+k}

ResBlock(v) = v + silu(v W + b) with W, b starting at zero. The heads start as [W_lm; W_lm]
(`init_heads_from`), so head k starts as the target's head on h plus the same head on f.

The position convention is EAGLE's (models/eagle.py): the pair at position q is (hidden state
of q - 1, trigram ending at x_q); the draft cache holds it at slot q. At decoding, the newest
committed token (the root, at position r) has no target hidden state yet; its pair
(h_{r-1}, trigram ending at the root) gives f_r, and head k proposes x_{r+k}: K drafts from
one draft call per step.

Axis letters: B batch, T tokens, S cache slots, D model width, K heads, V vocabulary.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from models import attention as attention_lib
from models import cache as cache_lib
from models import config as config_lib
from models import heads as heads_lib
from models import layers
from models import masks

CHIMERA = 'chimera'


def trigram_tokens(tokens_BxT: jax.Array, positions_BxT: jax.Array, prev_Bx2: jax.Array
                   ) -> jax.Array:
  """[B, T, 3] token ids (x_{q-2}, x_{q-1}, x_q) of each token; -1 where q - j < 0.

  prev_Bx2: the two tokens before tokens[:, 0] (-1 = none); rows are consecutive tokens.
  """
  seq = jnp.concatenate([prev_Bx2.astype(jnp.int32), tokens_BxT.astype(jnp.int32)], axis=1)
  T = tokens_BxT.shape[1]
  tri = jnp.stack([seq[:, 0:T], seq[:, 1:T + 1], seq[:, 2:T + 2]], axis=-1)
  before = positions_BxT[..., None] - jnp.array([2, 1, 0]) < 0
  return jnp.where(before, -1, tri)


class ChimeraDraft(nn.Module):
  """The Chimera draft (see module docstring).

  `__call__(h_prev_BxTxD, tri_BxTx3, positions_BxT, in_emb_VxD, cache=None,
  write_slots_BxT=None, attn_mask=None) -> (logits_BxTxKxV, cache)`: h_prev is the target's
  final-normed hidden state at q - 1, tri the trigram ids of `trigram_tokens`.
  """
  cfg: config_lib.ModelConfig
  num_heads: int

  @nn.compact
  def __call__(self, h_prev_BxTxD, tri_BxTx3, positions_BxT, in_emb_VxD,
               cache: cache_lib.Cache | None = None, write_slots_BxT=None,
               attn_mask: masks.MaskSpec = None):
    cfg = self.cfg
    D, K, V, dt = cfg.d_model, self.num_heads, cfg.vocab_size, cfg.compute_dtype
    norm = lambda name: layers.RMSNorm(cfg.norm_eps, 'embed', cfg.weight_dtype, name=name)
    param = lambda name, init, shape: layers.logical_param(
        self, name, init, shape, (None,) * (len(shape) - 1) + ('embed',), cfg.weight_dtype)
    positions_BxT = positions_BxT.astype(jnp.int32)
    # Trigram encoder.
    e = jnp.take(in_emb_VxD, jnp.maximum(tri_BxTx3, 0), axis=0).astype(dt)  # [B, T, 3, D]
    e = jnp.where(tri_BxTx3[..., None] >= 0, e, 0).reshape(*tri_BxTx3.shape[:2], 3 * D)
    res_w = param('res_w', nn.initializers.zeros, (3 * D, 3 * D))
    res_b = param('res_b', nn.initializers.zeros, (3 * D,))
    v = e + nn.silu(jnp.einsum('BTE,EF->BTF', e, res_w.astype(dt)) + res_b.astype(dt))
    tri_w = param('tri_proj', nn.initializers.normal(cfg.init_std), (3 * D, D))
    u = jnp.einsum('BTE,ED->BTD', v, tri_w.astype(dt))
    # Full-context layer over the pairs (h_{q-1}, u_q).
    in_w = param('in_proj', nn.initializers.normal(cfg.init_std), (2 * D, D))
    h = h_prev_BxTxD.astype(dt)
    z = jnp.einsum('BTE,ED->BTD', jnp.concatenate([norm('h_norm')(h), norm('u_norm')(u)], -1)
                   .astype(dt), in_w.astype(dt))
    slots_BxT, key_pos, key_valid = cache_lib.begin_call(cache, positions_BxT, write_slots_BxT)
    kv = None if cache is None else cache.layer(0)
    # Position 0 never holds a pair (no hidden state before it).
    mask = masks.build_mask(positions_BxT, key_pos, key_valid & (key_pos >= 1), attn_mask)
    a, kv = attention_lib.Attention(heads_lib.adapter_config(cfg), name='attn')(
        norm('attn_norm')(z), positions_BxT, mask, kv, slots_BxT)
    a = z + a
    f = a + layers.MLP(cfg, name='mlp')(norm('mlp_norm')(a))
    # Residual heads on [h; f].
    w = layers.logical_param(self, 'heads', nn.initializers.normal(cfg.init_std),
                             (K, 2 * D, V), (None, 'embed', 'vocab'), cfg.weight_dtype)
    x = jnp.concatenate([h, norm('out_norm')(f).astype(dt)], -1)
    logits = layers.mask_invalid_ids(layers.stacked_project(x, w.astype(dt)), cfg)
    new_cache = None if cache is None else cache.end_write((kv,), key_pos, slots_BxT)
    return logits, new_cache


@functools.partial(jax.jit, static_argnums=(0, 1))
def init_params(cfg: config_lib.ModelConfig, num_heads: int, rng: jax.Array) -> Any:
  """Fresh draft parameters (plain arrays; heads random: see `init_heads_from`). Jitted: one
  program, not one compile per operation of an eager `init`."""
  if num_heads < 1:
    raise ValueError(f'A Chimera draft needs at least one head, got {num_heads}.')
  emb = jnp.zeros((cfg.vocab_size, cfg.d_model))
  return nn.unbox(ChimeraDraft(cfg, num_heads).init(
      rng, jnp.zeros((1, 2, cfg.d_model)), jnp.zeros((1, 2, 3), jnp.int32),
      jnp.arange(2)[None], emb)['params'])


def init_heads_from(params: Any, out_emb_VxD: jax.Array) -> Any:
  """The params with every head set to [W_lm; W_lm] (W_lm = out_emb^T, [D, V])."""
  K, _, V = params['heads'].shape
  w = jnp.concatenate([out_emb_VxD.T, out_emb_VxD.T], 0).astype(params['heads'].dtype)
  return {**params, 'heads': jnp.broadcast_to(w[None], (K, *w.shape)).astype(w.dtype)}


def num_heads(params: Any) -> int:
  return params['heads'].shape[0]


def draft_config(cfg: config_lib.ModelConfig) -> config_lib.ModelConfig:
  """The one-attention-layer config of the draft's cache."""
  return heads_lib.adapter_config(cfg)
