"""A learned unmasking policy: which masked positions a diffusion decoder unmasks each step.

The policy (`models/unmask_policy.py`) is one small Transformer layer over the current block's
positions. Its inputs are
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
from typing import ClassVar, Mapping

import jax

from decoding import registry
from decoding.diffusion import canvas
from decoding.diffusion import engine
from models import kind as kind_lib
from models import unmask_policy as policy_lib
from models.unmask_policy import HEAD

def policy_logits(params, stats: canvas.TokenStats, eligible_BxR: jax.Array,
                  in_range_BxR: jax.Array, vocab_size: int) -> jax.Array:
  """Logits [B, R] of the policy `params` (the 'unmask_policy' tree) for one step."""
  feats = policy_lib.features(stats.conf, stats.margin, stats.entropy, eligible_BxR,
                              in_range_BxR, vocab_size)
  return policy_lib.UnmaskPolicy().apply({'params': params}, feats, in_range_BxR)


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
    # Every position above the threshold, and always the most probable one.
    return canvas.threshold_mask(jax.nn.sigmoid(logits), eligible_BxR, self.threshold)
