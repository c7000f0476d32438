"""Guided diffusion: a small AR model decides which of the diffusion model's proposals to
unmask.

Each step: the diffusion model (the target) proposes a token for every masked position of the
current block (greedy or sampled, as the other decoders); the proposals are written into a
copy of the sequence and the AR guide (extra model 'guide', causal, no cache) scores each one
given everything to its left: g_q = p_AR(proposal_q | sequence < q). Proposals with
g_q > `guide_threshold` are unmasked, and always the one the guide likes best. The guide
vetoes proposals that do not fit their left context (repetitions, broken syntax) that a
confidence rule would commit. Lossy. other_forwards counts guide forwards (one per step).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from decoding import registry
from decoding.diffusion import canvas
from decoding.diffusion import engine


@registry.register
@dataclasses.dataclass(frozen=True)
class GuidedDiffusionDecoder(engine.CanvasDecoder):
  """Guided diffusion: an AR guide picks which proposals to unmask (lossy)."""
  name: ClassVar[str] = 'guided_diffusion'
  guide: str = ''
  guide_threshold: float = 0.5

  def extra_models(self) -> dict[str, str]:
    if not self.guide:
      raise ValueError('guided_diffusion needs --decoder_config.guide=WORKDIR of an AR run.')
    return {'guide': self.guide}

  def validate(self, vocab_size: int) -> None:
    super().validate(vocab_size)
    if self.cache != 'none':
      raise ValueError("guided_diffusion runs without a cache (cache='none').")

  def other_forwards_per_step(self) -> int:
    return 1

  def commit_mask(self, stats: canvas.TokenStats, eligible_BxR: jax.Array,
                  ctx: engine.StepContext) -> jax.Array:
    layout = ctx.layout
    B, N = layout.prompt_len_B.shape[0], layout.N
    b_Bx1 = jnp.arange(B)[:, None]
    idx = jnp.where(eligible_BxR, ctx.n_BxR, N)
    proposal = canvas.write_canvas(
        ctx.seq_BxL, layout,
        jnp.zeros((B, N), jnp.int32).at[b_Bx1, idx].set(stats.token, mode='drop'),
        jnp.zeros((B, N), bool).at[b_Bx1, idx].set(True, mode='drop'))
    positions = layout.positions(jnp.broadcast_to(jnp.arange(layout.L), (B, layout.L)))
    out = ctx.models['guide'].apply({'params': ctx.params['guide']}, proposal, positions)
    logp = jax.nn.log_softmax(out.logits_BxTxV.astype(jnp.float32), axis=-1)
    e = jnp.clip(layout.prompt_len_B[:, None] + ctx.n_BxR - 1, 0, layout.L - 1)
    g = jnp.exp(jnp.take_along_axis(jnp.take_along_axis(logp, e[..., None], axis=1),
                                    stats.token[..., None], axis=2)[..., 0])
    return (eligible_BxR & (g > self.guide_threshold)) | canvas.top_k_mask(g, eligible_BxR, 1)
