"""The learned unmasking policy's network: which masked positions to unmask each step.

One pre-norm Transformer layer over the positions of a diffusion decoder's current block. Its
inputs (`features`) are the diffusion model's statistics at each position; it outputs one
logit per position: the probability that unmasking it now pays off. The decoder that uses it
is `decoding/diffusion/unmask_policy.py` ('learned_unmask'); the objective that trains it by
policy gradient is `training/objectives/unmask_policy.py`. Its params are a run's extra tree
`HEAD` (`models.kind.HEADS`).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

HEAD = 'unmask_policy'  # the run's extra tree (`models.kind.HEADS`)
NUM_FEATURES = 6


def features(conf_BxR: jax.Array, margin_BxR: jax.Array, entropy_BxR: jax.Array,
             eligible_BxR: jax.Array, in_range_BxR: jax.Array, vocab_size: int) -> jax.Array:
  """[B, R, NUM_FEATURES] float32 policy inputs for the block's R positions.

  Per position: confidence, margin, entropy / log(V) (0 where not eligible), eligible (still
  masked and decodable), the fraction of in-range positions still eligible (the same for the
  whole row) and the relative position r / R.
  """
  B, R = eligible_BxR.shape
  el = eligible_BxR.astype(jnp.float32)
  per_pos = [conf_BxR, margin_BxR, entropy_BxR / math.log(max(vocab_size, 2))]
  per_pos = [jnp.where(eligible_BxR, x.astype(jnp.float32), 0.0) for x in per_pos]
  left = jnp.sum(el, 1) / jnp.maximum(jnp.sum(in_range_BxR, 1), 1)
  rel = jnp.broadcast_to(jnp.arange(R, dtype=jnp.float32) / R, (B, R))
  return jnp.stack(per_pos + [el, jnp.broadcast_to(left[:, None], (B, R)), rel], axis=-1)


class UnmaskPolicy(nn.Module):
  """One pre-norm Transformer layer over the block's positions -> a logit per position.

  The logit is scale * (confidence - offset) + the layer's output: at initialisation (output
  layer zero, scale 20, offset 0.9) the policy is a soft Fast-dLLM threshold at 0.9, which
  policy-gradient training then adapts (a start that already solves the task: from a random
  policy, REINFORCE found the local optimum of unmasking everything in one step).

  feats_BxRxF: `features`; in_range_BxR: positions inside the canvas (the others are neither
  attended to nor unmasked). Returns logits [B, R] (float32).
  """
  width: int = 32
  num_heads: int = 2
  max_len: int = 512
  init_threshold: float = 0.9
  init_scale: float = 20.0

  @nn.compact
  def __call__(self, feats_BxRxF: jax.Array, in_range_BxR: jax.Array) -> jax.Array:
    R = feats_BxRxF.shape[1]
    if R > self.max_len:
      raise ValueError(f'The policy reads at most {self.max_len} positions; the block has {R}.')
    pos = self.param('pos_embed', nn.initializers.normal(0.02), (self.max_len, self.width))
    x = nn.Dense(self.width, name='embed')(feats_BxRxF.astype(jnp.float32)) + pos[:R]
    mask = (in_range_BxR[:, None, :, None] & in_range_BxR[:, None, None, :])
    h = nn.LayerNorm(name='norm_attn')(x)
    x = x + nn.MultiHeadDotProductAttention(num_heads=self.num_heads, qkv_features=self.width,
                                            name='attn')(h, h, mask=mask)
    h = nn.LayerNorm(name='norm_mlp')(x)
    x = x + nn.Dense(self.width, name='mlp_out')(nn.gelu(nn.Dense(2 * self.width,
                                                                  name='mlp_in')(h)))
    residual = nn.Dense(1, kernel_init=nn.initializers.zeros, name='out')(
        nn.LayerNorm(name='norm_out')(x))[..., 0]
    # Warm start: a soft confidence threshold (Fast-dLLM's rule at `init_threshold`) that the
    # layer's output (zero at initialisation) corrects from the context.
    scale = self.param('scale', nn.initializers.constant(self.init_scale), ())
    offset = self.param('offset', nn.initializers.constant(self.init_threshold), ())
    return residual + scale * (feats_BxRxF[..., 0].astype(jnp.float32) - offset)


def init_params(rng: jax.Array, module: UnmaskPolicy | None = None, R: int = 8):
  module = module or UnmaskPolicy()
  return module.init(rng, jnp.zeros((1, R, NUM_FEATURES)), jnp.ones((1, R), bool))['params']
