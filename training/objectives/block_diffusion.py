"""Block diffusion (BD3-LM): diffusion inside blocks, autoregressive across blocks.

The model reads the noised row and the clean row side by side, 2(T+1) tokens with the same
positions (0..T twice), under one explicit mask over blocks of `diffusion.block_size`
positions (blk = position // block_size):

  noised query, noised key   same block           (bidirectional inside the block)
  noised query, clean key    key block < query's  (the clean prefix of earlier blocks)
  clean query,  clean key    key block <= query's (block-causal: what a KV cache holds)
  clean query,  noised key   never

so decoding block k attends over an exact cache of the clean blocks < k (models.BlockCausal
by positions, `decoding.diffusion` with block_causal=1). Every (row, block) gets its own noise
level t (antithetic over all of them) and the MDLM weight. With `diffusion.shift` the
prediction for position i is read at i-1: in the noised copy inside a block, and in the clean
copy at a block's first position (SDAR keeps no shift; Dream-style adaptation keeps it).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from models import kind as kind_lib
from models import transformer as transformer_lib
from training.objectives import diffusion_lib as lib
from training.objectives.registry import Objective, register


def two_stream_mask(length: int, block_size: int) -> jax.Array:
  """The BD3-LM mask [2L, 2L] over (noised copy, clean copy), positions 0..L-1 each."""
  blk = jnp.arange(length) // block_size
  q, k = blk[:, None], blk[None, :]
  noised_noised = q == k
  noised_clean = k < q
  clean_clean = k <= q
  top = jnp.concatenate([noised_noised, noised_clean], axis=1)
  bottom = jnp.concatenate([jnp.zeros_like(clean_clean), clean_clean], axis=1)
  return jnp.concatenate([top, bottom], axis=0)


def shifted_two_stream_logits(logits_Bx2TxV: jax.Array, block_size: int) -> jax.Array:
  """Predictions for positions 1..T-1 (of T) under the shift: position i is read at i-1 in
  the noised copy when i-1 is in i's block, else in the clean copy."""
  T = logits_Bx2TxV.shape[1] // 2
  noised, clean = logits_Bx2TxV[:, :T], logits_Bx2TxV[:, T:]
  i = jnp.arange(1, T)
  same_block = ((i - 1) // block_size == i // block_size)[None, :, None]
  return jnp.where(same_block, noised[:, :-1], clean[:, :-1])


def block_diffusion_loss(model: transformer_lib.Transformer, s: lib.DiffusionSettings,
                         params, batch, rng, t_BxK: jax.Array | None = None):
  """(loss, metrics); `t_BxK` fixes the per-block noise levels (tests)."""
  tokens_BxT = batch['tokens']
  B, T = tokens_BxT.shape
  n = s.block_size
  num_blocks = -(-T // n)
  t_rng, m_rng = jax.random.split(rng)
  if t_BxK is None:
    t_BxK = lib.antithetic_times(t_rng, (B, num_blocks), s.sampling_eps)
  blk_T = jnp.arange(T) // n
  t_BxT = t_BxK[:, blk_T]
  maskable_BxT = lib.maskable(batch)
  z_BxT, masked_BxT = lib.noise(m_rng, tokens_BxT, maskable_BxT, s.schedule.move_chance(t_BxT),
                                s.mask_id)
  positions = jnp.broadcast_to(jnp.concatenate([jnp.arange(T), jnp.arange(T)]), (B, 2 * T))
  out = model.apply({'params': params['model']}, jnp.concatenate([z_BxT, tokens_BxT], axis=1),
                    positions, attn_mask=two_stream_mask(T, n)[None])
  if s.shift:
    logits = shifted_two_stream_logits(out.logits_BxTxV, n)
  else:
    logits = out.logits_BxTxV[:, 1:T]
  logp = lib.subs_log_probs(logits, s.mask_id)
  weight_BxT = lib.token_weights(s, t_BxT)[:, 1:]
  return lib.weighted_masked_ce(logp, tokens_BxT[:, 1:], masked_BxT[:, 1:], weight_BxT,
                                maskable_BxT[:, 1:])


@register('block_diffusion')
def block_diffusion_objective(model: transformer_lib.Transformer,
                              config: ml_collections.ConfigDict) -> Objective:
  s = lib.settings(config)

  def loss_fn(params, batch, rng):
    return block_diffusion_loss(model, s, params, batch, rng)

  return Objective(loss_fn=loss_fn, eval_fn=lib.averaged_eval(loss_fn, s.eval_samples),
                   init_model_params=(lib.init_from(s.init_from, model, s.reinit_ids)
                                      if s.init_from else None),
                   kind=kind_lib.ModelKind(attention='block_causal', mask_id=s.mask_id,
                                           shift=s.shift, block_size=s.block_size),
                   **lib.data_hooks(config, s.mask_id))
