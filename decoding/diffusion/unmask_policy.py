"""A learned unmasking policy: which masked positions a diffusion decoder unmasks each step.

The policy is one small Transformer layer over the current block's positions. Its inputs are
the diffusion model's statistics at each position (`features`): the confidence of the chosen
token, the top-1 minus top-2 margin, the entropy (divided by log V), whether the position is
still masked, the fraction of the block still masked and the position within the block. It
outputs one logit per position: the probability that unmasking it now pays off. It is
trained by policy gradient (`training/objectives/unmask_policy.py`, group-relative REINFORCE)
with a reward that pays for solving and, among solved rollouts, for fewer forwards, so it learns how far it can trust the model's
confidences on a task instead of relying on one hand-set threshold (Fast-dLLM) or rule
(LocalLeap).

  python train.py --config=configs/unmask_policy.py:sudoku4 --workdir=runs/diffusion/sudoku4_policy
  python sample.py --workdir=runs/diffusion/sudoku4_policy --decoder=learned_unmask,fast_dllm

Decoding (`LearnedUnmaskDecoder`, name 'learned_unmask'): unmask every masked position whose
policy probability exceeds `threshold`, and always the most probable one, in the canvas loop
of `engine.py` (lossy, like every parallel unmasking rule). The trained params live beside the
diffusion model as the run's extra tree 'unmask_policy' (`model_heads`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from decoding import registry
from decoding.diffusion import canvas
from decoding.diffusion import engine
from models import kind as kind_lib

HEAD = 'unmask_policy'  # the run's extra tree (`models.kind.HEADS`)
NUM_FEATURES = 6


def features(stats: canvas.TokenStats, eligible_BxR: jax.Array, in_range_BxR: jax.Array,
             vocab_size: int) -> jax.Array:
  """[B, R, NUM_FEATURES] float32 policy inputs for the block's R positions.

  Per position: confidence, margin, entropy / log(V) (0 where not eligible), eligible (still
  masked and decodable), the fraction of in-range positions still eligible (the same for the
  whole row) and the relative position r / R.
  """
  B, R = eligible_BxR.shape
  el = eligible_BxR.astype(jnp.float32)
  per_pos = [stats.conf, stats.margin, stats.entropy / math.log(max(vocab_size, 2))]
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


def policy_logits(params, stats: canvas.TokenStats, eligible_BxR: jax.Array,
                  in_range_BxR: jax.Array, vocab_size: int, module: UnmaskPolicy | None = None
                  ) -> jax.Array:
  """Logits [B, R] of the policy `params` (the 'unmask_policy' tree) for one step."""
  module = module or UnmaskPolicy()
  feats = features(stats, eligible_BxR, in_range_BxR, vocab_size)
  return module.apply({'params': params}, feats, in_range_BxR)


def init_params(rng: jax.Array, module: UnmaskPolicy | None = None, R: int = 8):
  module = module or UnmaskPolicy()
  return module.init(rng, jnp.zeros((1, R, NUM_FEATURES)), jnp.ones((1, R), bool))['params']


def commit_from_probs(probs_BxR: jax.Array, eligible_BxR: jax.Array,
                      threshold: float) -> jax.Array:
  """Every eligible position with probability > threshold, and always the most probable."""
  return canvas.threshold_mask(probs_BxR, eligible_BxR, threshold)


@registry.register
@dataclasses.dataclass(frozen=True)
class LearnedUnmaskDecoder(engine.CanvasDecoder):
  """Learned unmasking: a trained policy picks the positions to unmask each step (lossy).

  threshold: unmask positions whose policy probability exceeds it (and always the most
  probable one); 0.5 is what the policy was trained to decide, higher is more careful.
  Needs a run trained with configs/unmask_policy.py (its 'unmask_policy' tree).
  """
  name: ClassVar[str] = 'learned_unmask'
  model_heads: ClassVar[tuple[str, ...]] = (HEAD,)
  threshold: float = 0.5

  def validate(self, vocab_size: int) -> None:
    super().validate(vocab_size)
    if not 0.0 <= self.threshold < 1.0:
      raise ValueError(f'threshold must be in [0, 1), got {self.threshold}.')

  def for_model(self, kinds: Mapping[str, kind_lib.ModelKind]) -> 'LearnedUnmaskDecoder':
    kind_lib.require_heads(kinds['target'], self.model_heads, f'Decoder {self.name!r}')
    return super().for_model(kinds)

  def commit_mask(self, stats, eligible_BxR, ctx):
    if HEAD not in ctx.params:
      raise ValueError(f"Decoder {self.name!r} needs the run's {HEAD!r} params: "
                       f'{kind_lib.train_heads_hint((HEAD,))}.')
    in_range = ctx.n_BxR < ctx.layout.N
    vocab = ctx.models.target.cfg.vocab_size
    logits = policy_logits(ctx.params[HEAD], stats, eligible_BxR, in_range, vocab)
    return commit_from_probs(jax.nn.sigmoid(logits), eligible_BxR, self.threshold)
