"""CtrlDiff's block-size predictor: how many tokens the next block may hold.

A small MLP over the block diffusion model's final hidden state at the last clean token
before the next block (position s-1, computed with s-1's block ending at s) and a learned
embedding of the absolute position s. It outputs one logit per allowed block size b: the
probability that decoding the next block of size b in a single step (every masked token of
the block at once) gives the right tokens. The decoder ('ctrldiff',
decoding/diffusion/ctrldiff.py) takes the largest size whose probability clears a threshold;
the objective that fits it is training/objectives/ctrldiff.py. Its params are a run's extra
tree `HEAD` (`models.kind.HEADS`).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

HEAD = 'ctrldiff'  # the run's extra tree (`models.kind.HEADS`)


def parse_sizes(sizes: str | Sequence[int]) -> tuple[int, ...]:
  """Sorted block sizes from '2,4,8,16' (or a sequence). Each must be positive and divide the
  next (so aligned blocks of different sizes nest: ValueError otherwise)."""
  if isinstance(sizes, str):
    try:
      out = tuple(int(x) for x in sizes.split(',') if x.strip())
    except ValueError:
      raise ValueError(f'Block sizes must be comma-separated ints, got {sizes!r}.') from None
  else:
    out = tuple(int(x) for x in sizes)
  out = tuple(sorted(set(out)))
  if not out or out[0] <= 0:
    raise ValueError(f'Block sizes must be positive and non-empty, got {sizes!r}.')
  for a, b in zip(out, out[1:]):
    if b % a:
      raise ValueError(f'Each block size must divide the next (aligned blocks nest); got '
                       f'{out}.')
  return out


class BlockSizePredictor(nn.Module):
  """hidden_BxD [B, D] at s-1, s_B [B] absolute positions -> logits [B, len(sizes)] (float32)."""
  num_sizes: int
  width: int = 64
  max_len: int = 512

  @nn.compact
  def __call__(self, hidden_BxD: jax.Array, s_B: jax.Array) -> jax.Array:
    pos = self.param('pos_embed', nn.initializers.normal(0.02), (self.max_len, self.width))
    x = nn.Dense(self.width, name='embed')(nn.LayerNorm(name='norm_in')(
        hidden_BxD.astype(jnp.float32)))
    x = x + pos[jnp.clip(s_B, 0, self.max_len - 1)]
    x = x + nn.Dense(self.width, name='mlp_out')(nn.gelu(nn.Dense(2 * self.width,
                                                                  name='mlp_in')(x)))
    return nn.Dense(self.num_sizes, name='out')(nn.LayerNorm(name='norm_out')(x))


def init_params(rng: jax.Array, hidden_size: int, num_sizes: int):
  module = BlockSizePredictor(num_sizes)
  return module.init(rng, jnp.zeros((1, hidden_size)), jnp.zeros((1,), jnp.int32))['params']


def choose(logits_BxK: jax.Array, sizes: Sequence[int], threshold: float) -> jax.Array:
  """[B] int32: the largest size whose probability exceeds `threshold`, else the smallest."""
  ok = jax.nn.sigmoid(logits_BxK) > threshold
  sizes_arr = jnp.asarray(sizes, jnp.int32)
  return jnp.max(jnp.where(ok, sizes_arr[None, :], sizes_arr[0]), axis=1)
