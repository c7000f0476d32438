"""Masked-input multi-token prediction ("Your LLM Knows the Future", Samragh et al. 2025,
arXiv 2507.11851): the target itself drafts k tokens from k <mask> inputs.

Append k masks after the last real token x_t (mask j at position t + j); with the causal mask
each mask sees the prefix and the masks before it, and its output predicts x_{t+j+1} (the
same shift as every position: the output at p predicts p + 1). The trained tree
params['mask_mtp'] (beside the frozen target, a training extra) holds:

  mask_embedding [K, D]    the input of mask j (replaces the token embedding there)
  lora                     a gated LoRA on every attention and MLP projection:
                           y = W x + m * B A x with m = 1 only at mask positions. Ordinary
                           positions compute exactly the base model (`layers.gated_lora`
                           selects W x there), and with the causal mask they never see a
                           mask, so one forward over [tree; masks] verifies the tree
                           losslessly and drafts the next k tokens.
  sampler                  a 2-layer MLP on [mask j's final hidden state; embedding of the
                           token before x_{t+j+1}] whose output goes through the target's LM
                           head: the k drafts are chained (each sees the previous one).

  lora = gated_lora(params['mask_mtp'], gate_BxT, index_BxT)  # -> Transformer(..., lora=lora)
  logits = MaskSampler(cfg).apply({'params': p['sampler']}, h_BxTxD, prev_BxT, in_emb, out_emb)

Training: training/objectives/mask_mtp.py (configs/mask_mtp.py); decoding:
decoding/speculative/mask_mtp.py. Axis letters: B batch, T tokens, D model, V vocabulary,
K masks, R LoRA rank.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from models import config as config_lib
from models import layers

MASK_MTP = 'mask_mtp'


@flax.struct.dataclass
class GatedLoRA:
  """What `Transformer(..., lora=...)` reads.

  layers: {'layer_i': {'attn': {'q'|'k'|'v'|'o': {'a', 'b'}}, 'mlp': {'gate'|'up'|'down':
    {'a', 'b'}}}} for every layer.
  gate_BxT: bool, True at mask positions (where the LoRA and the mask embedding act).
  mask_embed_BxTxD: the input embedding at gated positions (None: the token embedding).
  """
  layers: Any
  gate_BxT: jax.Array
  mask_embed_BxTxD: jax.Array | None = None


def _shapes(cfg: config_lib.ModelConfig) -> dict[str, dict[str, tuple[tuple[int, ...],
                                                                      tuple[int, ...]]]]:
  """(input shape, output shape) of every adapted projection."""
  D, H, K, Dh, F = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.mlp_dim
  return {'attn': {'q': ((D,), (H, Dh)), 'k': ((D,), (K, Dh)), 'v': ((D,), (K, Dh)),
                   'o': ((H, Dh), (D,))},
          'mlp': {'gate': ((D,), (F,)), 'up': ((D,), (F,)), 'down': ((F,), (D,))}}


def num_masks(tree: Any) -> int:
  """K: the masks a trained tree has embeddings for."""
  return tree['mask_embedding'].shape[0]


def lora_rank(tree: Any) -> int:
  return tree['lora']['layer_0']['mlp']['up']['a'].shape[-1]


class MaskSampler(nn.Module):
  """The sampler head: `__call__(h_BxTxD, prev_BxT, in_emb_VxD, out_emb_VxD) -> logits
  [B, T, V]` (float32). h is a mask's final-normed hidden state (what the LM head reads), prev
  the token before the one it predicts. z = h + W2 silu(W1 [h; norm(emb(prev))]); W2 starts
  at zero, so the sampler starts as the mask's own LM-head prediction."""
  cfg: config_lib.ModelConfig

  @nn.compact
  def __call__(self, h_BxTxD, prev_BxT, in_emb_VxD, out_emb_VxD):
    cfg = self.cfg
    D, dt = cfg.d_model, cfg.compute_dtype
    w1 = layers.logical_param(self, 'w1', nn.initializers.normal(cfg.init_std), (2 * D, D),
                              (None, 'embed'), cfg.weight_dtype)
    w2 = layers.logical_param(self, 'w2', nn.initializers.zeros, (D, D), ('embed', None),
                              cfg.weight_dtype)
    e = jnp.take(in_emb_VxD, prev_BxT, axis=0)
    e = layers.RMSNorm(cfg.norm_eps, 'embed', cfg.weight_dtype, name='e_norm')(e)
    h = h_BxTxD.astype(dt)
    x = jnp.concatenate([h, e.astype(dt)], -1)
    z = h + jnp.einsum('BTD,DE->BTE', nn.silu(jnp.einsum('BTE,ED->BTD', x, w1.astype(dt))),
                       w2.astype(dt))
    return layers.mask_invalid_ids(jnp.einsum('BTD,VD->BTV', z, out_emb_VxD.astype(dt)), cfg)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def init_params(cfg: config_lib.ModelConfig, num_masks_: int, rank: int, rng: jax.Array,
                embedding_VxD: jax.Array | None = None) -> dict[str, Any]:
  """A fresh tree: LoRA A ~ N(0, 1/D_in), B = 0 (the masks start as the base model), mask
  embeddings from N(0, init_std) (or the mean token embedding plus that noise, given the
  model's embedding), a sampler that starts as the identity. Jitted: one program, not one
  compile per operation of an eager `init`."""
  if num_masks_ < 1 or rank < 1:
    raise ValueError(f'mask_mtp needs >= 1 masks and LoRA rank >= 1, got {num_masks_} and '
                     f'{rank}.')
  if any(k != config_lib.ATTENTION for k in cfg.layer_types):
    raise ValueError('mask_mtp adapts attention-only models; this one has layers '
                     f'{cfg.layer_types}.')
  k_emb, k_lora, k_samp = jax.random.split(rng, 3)
  emb = cfg.init_std * jax.random.normal(k_emb, (num_masks_, cfg.d_model))
  if embedding_VxD is not None:
    emb = emb + jnp.mean(embedding_VxD, axis=0)[None]
  lora = {}
  keys = iter(jax.random.split(k_lora, cfg.num_layers * 7))
  for i in range(cfg.num_layers):
    lora[f'layer_{i}'] = {
        part: {name: {'a': jax.random.normal(next(keys), din + (rank,))
                           / math.sqrt(math.prod(din)),
                      'b': jnp.zeros((rank,) + dout)}
               for name, (din, dout) in projections.items()}
        for part, projections in _shapes(cfg).items()}
  V = cfg.vocab_size
  sampler = nn.unbox(MaskSampler(cfg).init(
      k_samp, jnp.zeros((1, 1, cfg.d_model)), jnp.zeros((1, 1), jnp.int32),
      jnp.zeros((V, cfg.d_model)), jnp.zeros((V, cfg.d_model)))['params'])
  return {'mask_embedding': emb.astype(cfg.weight_dtype), 'lora': lora, 'sampler': sampler}


def gated_lora(tree: Any, gate_BxT: jax.Array, mask_index_BxT: jax.Array) -> GatedLoRA:
  """The `Transformer(..., lora=...)` argument of a trained tree: the LoRA acts where
  `gate_BxT` is True, and there the input is mask embedding `mask_index_BxT` (0-based: mask
  j has index j - 1; ignored elsewhere)."""
  K = num_masks(tree)
  emb = jnp.take(tree['mask_embedding'], jnp.clip(mask_index_BxT, 0, K - 1), axis=0)
  return GatedLoRA(layers=tree['lora'], gate_BxT=gate_BxT.astype(bool), mask_embed_BxTxD=emb)


def check_tree(tree: Any, cfg: config_lib.ModelConfig, who: str) -> None:
  """ValueError unless `tree` is a mask_mtp tree for a model of `cfg`."""
  if not isinstance(tree, dict) or set(tree) != {'mask_embedding', 'lora', 'sampler'}:
    raise ValueError(f'{who}: params[{MASK_MTP!r}] must hold mask_embedding, lora and '
                     f'sampler, got {sorted(tree) if isinstance(tree, dict) else type(tree)}.')
  if tree['mask_embedding'].shape[-1] != cfg.d_model or len(tree['lora']) != cfg.num_layers:
    raise ValueError(f'{who}: the mask_mtp tree was trained for another model (width '
                     f'{tree["mask_embedding"].shape[-1]}, {len(tree["lora"])} layers; this '
                     f'target has {cfg.d_model} and {cfg.num_layers}).')
