"""WeDLM: masked prediction under *causal* attention by topological reordering.

Inside each block of `diffusion.block_size` positions, the observed tokens are moved before
the masked ones (each group in position order) while every token keeps its logical position
(RoPE). Attention is causal in that physical order, so every masked token sees every observed
token of its block, and the clean prefix flows into an exact causal KV cache at decoding time
(`decoding.diffusion.wedlm`).

The model reads the clean row and the noised row side by side, 2(T+1) tokens (positions 0..T
twice), under one mask (WeDLM's `build_2d_attention_mask`):

  clean query,  clean key    key position <= query position (ordinary causal LM)
  noised query, clean key    key block < query block
  noised query, noised key   same block and key rank <= query rank (rank: the reordered order)
  clean query,  noised key   never

Physically moving tokens is unnecessary: the Transformer is permutation-equivariant given the
mask and positions, so the reordering lives in the ranks. Loss: each masked token's CE
weighted 1/gamma (gamma = its block's mask ratio, drawn per block) plus `ar_weight` times the
next-token loss on the clean copy; total = (mlm + w ar) / (1 + w), as WeDLM.
With `diffusion.shift` the prediction for a masked position i is read at position i-1 (in the
noised copy inside the block, the clean copy at a block start): then decoding one token per
step is exactly AR decoding of the clean stream. WeDLM itself reads it at i (shift=False).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from models import kind as kind_lib
from models import transformer as transformer_lib
from training.objectives import diffusion_lib as lib
from training.objectives import registry
from training.objectives.block_diffusion import shifted_two_stream_logits
from training.objectives.registry import Objective, register


def reorder_ranks(masked_BxT: jax.Array, block_size: int) -> jax.Array:
  """Physical index of each token after moving observed tokens before masked ones inside
  each block (stable by position) [B, T]."""
  B, T = masked_BxT.shape
  pos = jnp.arange(T)
  key_BxT = (pos // block_size) * (2 * T) + masked_BxT.astype(jnp.int32) * T + pos
  order_BxT = jnp.argsort(key_BxT, axis=1)
  return jnp.zeros((B, T), jnp.int32).at[jnp.arange(B)[:, None], order_BxT].set(
      jnp.broadcast_to(pos, (B, T)).astype(jnp.int32))


def wedlm_mask(rank_BxT: jax.Array, block_size: int) -> jax.Array:
  """The [B, 2T, 2T] mask over (clean copy, noised copy) for the given reorder ranks."""
  B, T = rank_BxT.shape
  pos = jnp.arange(T)
  blk = pos // block_size
  clean_clean = jnp.broadcast_to(pos[None, :] <= pos[:, None], (B, T, T))
  noised_clean = jnp.broadcast_to(blk[None, :] < blk[:, None], (B, T, T))
  noised_noised = (blk[None, :] == blk[:, None])[None] & (
      rank_BxT[:, None, :] <= rank_BxT[:, :, None])
  top = jnp.concatenate([clean_clean, jnp.zeros((B, T, T), jnp.bool_)], axis=2)
  bottom = jnp.concatenate([noised_clean, noised_noised], axis=2)
  return jnp.concatenate([top, bottom], axis=1)


def wedlm_loss(model: transformer_lib.Transformer, s: lib.DiffusionSettings, params, batch, rng,
               gamma_BxK: jax.Array | None = None):
  """(loss, metrics); `gamma_BxK` fixes the per-block mask ratios (tests)."""
  tokens_BxT = batch['tokens']
  B, T = tokens_BxT.shape
  n = s.block_size
  g_rng, m_rng = jax.random.split(rng)
  if gamma_BxK is None:
    gamma_BxK = lib.antithetic_times(g_rng, (B, -(-T // n)), s.sampling_eps)
  gamma_BxT = gamma_BxK[:, jnp.arange(T) // n]
  maskable_BxT = lib.maskable(batch)
  z_BxT, masked_BxT = lib.noise(m_rng, tokens_BxT, maskable_BxT, gamma_BxT, s.mask_id)
  rank_BxT = reorder_ranks(masked_BxT, n)
  positions = jnp.broadcast_to(jnp.concatenate([jnp.arange(T), jnp.arange(T)]), (B, 2 * T))
  out = model.apply({'params': params['model']}, jnp.concatenate([tokens_BxT, z_BxT], axis=1),
                    positions, attn_mask=wedlm_mask(rank_BxT, n))
  clean_logits, noised_logits = out.logits_BxTxV[:, :T], out.logits_BxTxV[:, T:]
  if s.shift:  # shifted_two_stream_logits expects (noised, clean) order.
    logits = shifted_two_stream_logits(jnp.concatenate([noised_logits, clean_logits], 1), n)
  else:
    logits = noised_logits[:, 1:]
  logp = lib.subs_log_probs(logits, s.mask_id)
  mlm, metrics = lib.weighted_masked_ce(logp, tokens_BxT[:, 1:], masked_BxT[:, 1:],
                                        1.0 / gamma_BxT[:, 1:], maskable_BxT[:, 1:])
  weights = batch.get('weights', jnp.ones(tokens_BxT[:, 1:].shape, jnp.float32))
  ar, ar_metrics = registry.token_cross_entropy(clean_logits[:, :-1], tokens_BxT[:, 1:], weights)
  loss = (mlm + s.ar_weight * ar) / (1.0 + s.ar_weight)
  metrics = dict(metrics, loss=loss, mlm_loss=mlm, ar_loss=ar,
                 ar_accuracy=ar_metrics['accuracy'])
  return loss, metrics


@register('wedlm')
def wedlm_objective(model: transformer_lib.Transformer,
                    config: ml_collections.ConfigDict) -> Objective:
  s = lib.settings(config)

  def loss_fn(params, batch, rng):
    return wedlm_loss(model, s, params, batch, rng)

  def eval_fn(params, batch, rng):
    # The ELBO part (nll_sum / tokens_sum) is the masked-prediction loss; 'loss' stays the
    # training objective.
    return lib.averaged_eval(loss_fn, s.eval_samples)(params, batch, rng)

  return Objective(loss_fn=loss_fn, eval_fn=eval_fn,
                   init_model_params=(lib.init_from(s.init_from, model, s.reinit_ids)
                                      if s.init_from else None),
                   kind=kind_lib.ModelKind(attention='causal', mask_id=s.mask_id,
                                           shift=s.shift, block_size=s.block_size),
                   **lib.data_hooks(config, s.mask_id))
