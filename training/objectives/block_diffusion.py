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

Several block sizes (`diffusion.block_sizes`, CtrlDiff): each row draws its own partition of
the positions into blocks (`random_block_ids`): half the rows aligned blocks of one size of the
set (blk = position // n, what a fixed-size decoder reads), the other half consecutive blocks of
sizes drawn independently from the set after a first block cut at a random point (block
boundaries anywhere, as a decoder that picks each block's size meets them). The masks, noise
levels and shift then follow the row's blocks; `ModelKind.block_size` is 0 (any size).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from models import kind as kind_lib
from models import transformer as transformer_lib
from training.objectives import diffusion_lib as lib
from training.objectives.registry import Objective, register


def two_stream_mask_from_blocks(blk_BxL: jax.Array) -> jax.Array:
  """The BD3-LM mask [B, 2L, 2L] for per-row block ids blk_BxL (non-decreasing in position)."""
  q, k = blk_BxL[:, :, None], blk_BxL[:, None, :]
  noised_noised = q == k
  noised_clean = k < q
  clean_clean = k <= q
  top = jnp.concatenate([noised_noised, noised_clean], axis=2)
  bottom = jnp.concatenate([jnp.zeros_like(clean_clean), clean_clean], axis=2)
  return jnp.concatenate([top, bottom], axis=1)


def two_stream_mask(length: int, block_size: int) -> jax.Array:
  """The BD3-LM mask [2L, 2L] over (noised copy, clean copy), positions 0..L-1 each."""
  return two_stream_mask_from_blocks((jnp.arange(length) // block_size)[None])[0]


def random_block_ids(rng: jax.Array, batch: int, length: int, sizes: tuple[int, ...]
                     ) -> jax.Array:
  """[B, L] int32 block ids of a random partition per row (see the module docstring): rows
  alternate between aligned blocks of one size drawn from `sizes` and consecutive blocks of
  independently drawn sizes whose first block is cut at a uniform point."""
  k_kind, k_fixed, k_sizes, k_cut = jax.random.split(rng, 4)
  sizes_arr = jnp.asarray(sizes, jnp.int32)
  pos_L = jnp.arange(length)
  fixed_B = sizes_arr[jax.random.randint(k_fixed, (batch,), 0, len(sizes))]
  aligned = pos_L[None, :] // fixed_B[:, None]
  n_BxK = sizes_arr[jax.random.randint(k_sizes, (batch, length), 0, len(sizes))]
  cut_B = jax.random.randint(k_cut, (batch,), 0, n_BxK[:, 0])  # first block loses `cut`
  ends_BxK = jnp.cumsum(n_BxK, axis=1) - cut_B[:, None]  # exclusive block ends
  mixed = jnp.sum(ends_BxK[:, :, None] <= pos_L[None, None, :], axis=1)
  use_fixed = jax.random.bernoulli(k_kind, 0.5, (batch,))
  return jnp.where(use_fixed[:, None], aligned, mixed).astype(jnp.int32)


def shifted_two_stream_logits(logits_Bx2TxV: jax.Array, block_size: int | jax.Array
                              ) -> jax.Array:
  """Predictions for positions 1..T-1 (of T) under the shift: position i is read at i-1 in
  the noised copy when i-1 is in i's block, else in the clean copy. `block_size` is an int
  or per-row block ids [B, T]."""
  T = logits_Bx2TxV.shape[1] // 2
  noised, clean = logits_Bx2TxV[:, :T], logits_Bx2TxV[:, T:]
  if isinstance(block_size, int):
    blk = (jnp.arange(T) // block_size)[None]
  else:
    blk = block_size
  same_block = (blk[:, :-1] == blk[:, 1:])[:, :, None]
  return jnp.where(same_block, noised[:, :-1], clean[:, :-1])


def block_diffusion_loss(model: transformer_lib.Transformer, s: lib.DiffusionSettings,
                         params, batch, rng, t_BxK: jax.Array | None = None,
                         blk_BxT: jax.Array | None = None):
  """(loss, metrics); `t_BxK` fixes the per-block noise levels and `blk_BxT` the per-row
  block ids (tests; default: blocks of block_size, or a random partition per row when
  diffusion.block_sizes is set)."""
  tokens_BxT = batch['tokens']
  B, T = tokens_BxT.shape
  n = s.block_size
  t_rng, m_rng = jax.random.split(rng)
  if blk_BxT is None:
    if s.block_size_set:
      blk_BxT = random_block_ids(jax.random.fold_in(rng, 2), B, T, s.block_size_set)
    else:
      blk_BxT = jnp.broadcast_to(jnp.arange(T) // n, (B, T))
  if t_BxK is not None:
    num_blocks = t_BxK.shape[1]
  else:  # block ids are < T (any partition), < ceil(T / n) with blocks of n
    num_blocks = T if s.block_size_set else -(-T // n)
    t_BxK = lib.antithetic_times(t_rng, (B, num_blocks), s.sampling_eps)
  t_BxT = jnp.take_along_axis(t_BxK, blk_BxT, axis=1)
  maskable_BxT = lib.maskable(batch)
  z_BxT, masked_BxT = lib.noise(m_rng, tokens_BxT, maskable_BxT, s.schedule.move_chance(t_BxT),
                                s.mask_id)
  positions = jnp.broadcast_to(jnp.concatenate([jnp.arange(T), jnp.arange(T)]), (B, 2 * T))
  out = model.apply({'params': params['model']}, jnp.concatenate([z_BxT, tokens_BxT], axis=1),
                    positions, attn_mask=two_stream_mask_from_blocks(blk_BxT))
  if s.shift:
    logits = shifted_two_stream_logits(out.logits_BxTxV, blk_BxT)
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
                                           shift=s.shift,
                                           block_size=0 if s.block_size_set else s.block_size),
                   **lib.data_hooks(config, s.mask_id))
