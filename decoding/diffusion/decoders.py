"""The region-step diffusion decoders: LLaDA low-confidence remasking, Fast-dLLM threshold,
LocalLeap and Explore-Then-Exploit. All run `engine.CanvasDecoder`'s loop and differ only in
which masked positions of the current block they unmask each step. All are lossy except
`llada` with tokens_per_step=1 and ordering='confidence', the 'one token per step' reference
the others are measured against (FreeDave reproduces it exactly).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from decoding import registry
from decoding.diffusion import canvas
from decoding.diffusion import engine

ORDERINGS = ('confidence', 'margin', 'entropy', 'random')


@registry.register
@dataclasses.dataclass(frozen=True)
class LLaDADecoder(engine.CanvasDecoder):
  """LLaDA: unmask `tokens_per_step` positions of the current block per step, best first
  (lossy: parallel unmasking ignores dependencies between the tokens of one step).

  ordering: 'confidence' (probability of the chosen token; LLaDA's low-confidence
  remasking), 'margin' (top-1 minus top-2 probability), 'entropy' (lowest first) or
  'random'. Steps per block = ceil(block_size / tokens_per_step).
  """
  name: ClassVar[str] = 'llada'
  tokens_per_step: int = 1
  ordering: str = 'confidence'

  def validate(self, vocab_size: int) -> None:
    super().validate(vocab_size)
    if self.ordering not in ORDERINGS:
      raise ValueError(f'ordering must be one of {ORDERINGS}, got {self.ordering!r}.')
    if self.tokens_per_step < 1:
      raise ValueError(f'tokens_per_step must be >= 1, got {self.tokens_per_step}.')

  def commit_mask(self, stats, eligible_BxR, ctx):
    if self.ordering == 'confidence':
      score = stats.conf
    elif self.ordering == 'margin':
      score = stats.margin
    elif self.ordering == 'entropy':
      score = -stats.entropy
    else:
      score = jax.vmap(jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, 1))))(
          ctx.keys_BxR)
    return canvas.top_k_mask(score, eligible_BxR, self.tokens_per_step)


@registry.register
@dataclasses.dataclass(frozen=True)
class FastDLLMDecoder(engine.CanvasDecoder):
  """Fast-dLLM threshold decoding: unmask every masked position of the current block whose
  confidence exceeds `threshold`, and at least the most confident one (lossy; threshold >= 1
  is one token per step). Pair with cache='prefix' | 'dual' and delay=1 (approximate caches,
  drift reported with measure_drift=1)."""
  name: ClassVar[str] = 'fast_dllm'
  threshold: float = 0.9

  def commit_mask(self, stats, eligible_BxR, ctx):
    del ctx
    return canvas.threshold_mask(stats.conf, eligible_BxR, self.threshold)


@registry.register
@dataclasses.dataclass(frozen=True)
class LocalLeapDecoder(engine.CanvasDecoder):
  """LocalLeap: confident anchors (> anchor_threshold) unmask themselves and make their
  neighbours within `radius` positions reliable enough to unmask under the relaxed threshold
  (lossy)."""
  name: ClassVar[str] = 'localleap'
  anchor_threshold: float = 0.9
  relaxed_threshold: float = 0.6
  radius: int = 2

  def commit_mask(self, stats, eligible_BxR, ctx):
    del ctx
    return canvas.localleap_mask(stats.conf, eligible_BxR, self.anchor_threshold,
                                 self.relaxed_threshold, self.radius)


@registry.register
@dataclasses.dataclass(frozen=True)
class ETEDecoder(engine.CanvasDecoder):
  """Explore-Then-Exploit: exploit every position above `threshold`, then explore: also
  unmask the lowest-entropy remaining positions, uncertain ones included, while the step's
  total entropy stays within `budget` nats. A step resolves at most ~budget nats, so the
  number of steps tracks the text's information content instead of its length. With
  cross_block=1 (default) the region spans the current and the next block (lossy)."""
  name: ClassVar[str] = 'ete'
  threshold: float = 0.9
  budget: float = 1.0
  cross_block: int = 1

  def commit_mask(self, stats, eligible_BxR, ctx):
    del ctx
    exploit = canvas.threshold_mask(stats.conf, eligible_BxR, self.threshold)
    used_B = jnp.sum(jnp.where(exploit, stats.entropy, 0.0), axis=1)
    explore = canvas.budget_mask(stats.entropy, eligible_BxR & ~exploit,
                                 jnp.maximum(self.budget - used_B, 0.0), at_least_one=False)
    return exploit | explore
