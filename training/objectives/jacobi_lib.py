"""Jacobi trajectories and the packed Jacobi Forcing layout (pure functions, jittable).

Jacobi decoding of an n-token block y after a context c iterates, all positions at once,

  y_o <- argmax p(. | c, y_<o)       for o = 0 .. n-1   (one forward, causal mask)

from an initial guess y^0. After k iterations the first k tokens equal the greedy AR
continuation, so the fixed point y* (the greedy continuation) is reached in at most n
iterations; a model that converges in fewer accepts more than one token per forward.

One row holds a prompt of P tokens followed by M consecutive blocks of n tokens, packed as

  [prompt | noisy_1 | clean_1 | noisy_2 | clean_2 | ... | noisy_M | clean_M]   T = P + 2Mn

(Jacobi Forcing, hao-ai-lab/JacobiForcing). clean_j is the fixed point of block j (the greedy
continuation); noisy_j a Jacobi state of block j. Both copies of block j sit at the positions
P + (j-1)n .. P + jn - 1 (positions are not slots). The attention mask (`Layout.mask`):

  prompt    causal within the prompt.
  clean_j   the prompt, clean_<j, and clean_j causally: plain AR over prompt + fixed points.
  noisy_j   the prompt, the earlier blocks, and noisy_j causally. The earlier blocks are the
            clean ones (context='clean': sequential Jacobi of block j after the converged
            blocks, how trajectories are collected) or the noisy ones (context='noisy': what
            the paper trains with, matching multi-block decoding where block j is drafted on
            top of unconverged earlier blocks).

`collect` runs n Jacobi iterations of all M blocks of a batch at once (the clean blocks are
known, so every block iterates after its converged context in the same forward) and returns
every state; `first_divergence` / `noise` measure how far a state is from the fixed point.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from models import transformer as transformer_lib

CONTEXTS = ('noisy', 'clean')


@dataclasses.dataclass(frozen=True)
class Layout:
  """The packed row of one prompt and `blocks` blocks of `block` tokens (static)."""
  prompt: int   # P
  block: int    # n
  blocks: int   # M

  def __post_init__(self):
    for name in ('prompt', 'block', 'blocks'):
      if getattr(self, name) < 1:
        raise ValueError(f'Jacobi layout: {name} must be >= 1, got {getattr(self, name)}.')

  @property
  def length(self) -> int:
    """T: packed tokens per row."""
    return self.prompt + 2 * self.blocks * self.block

  def noisy_start(self, j: int) -> int:
    return self.prompt + 2 * j * self.block

  def clean_start(self, j: int) -> int:
    return self.prompt + (2 * j + 1) * self.block

  def positions(self) -> np.ndarray:
    """[T] RoPE positions: block j's noisy and clean copies share P + jn .. P + jn + n - 1."""
    pos = np.arange(self.length, dtype=np.int32)
    for j in range(self.blocks):
      block_pos = self.prompt + j * self.block + np.arange(self.block)
      pos[self.noisy_start(j):self.noisy_start(j) + self.block] = block_pos
      pos[self.clean_start(j):self.clean_start(j) + self.block] = block_pos
    return pos

  def segments(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[T] each token's kind (0 prompt, 1 noisy, 2 clean), block index and offset."""
    kind = np.zeros(self.length, np.int32)
    block = np.full(self.length, -1, np.int32)
    offset = np.arange(self.length, dtype=np.int32)
    for j in range(self.blocks):
      for k, start in ((1, self.noisy_start(j)), (2, self.clean_start(j))):
        kind[start:start + self.block] = k
        block[start:start + self.block] = j
        offset[start:start + self.block] = np.arange(self.block)
    return kind, block, offset

  def mask(self, context: str) -> np.ndarray:
    """[T, T] bool: which packed tokens (keys, columns) each token (query, row) sees."""
    if context not in CONTEXTS:
      raise ValueError(f'Unknown Jacobi context {context!r}; choose one of {CONTEXTS}.')
    kind, block, offset = self.segments()
    qk, kk = kind[:, None], kind[None, :]
    qb, kb = block[:, None], block[None, :]
    qo, ko = offset[:, None], offset[None, :]
    prompt_q = (qk == 0) & (kk == 0) & (ko <= qo)
    earlier = 1 if context == 'noisy' else 2  # which copy of earlier blocks noisy_j reads
    noisy_q = (qk == 1) & ((kk == 0) | ((kk == earlier) & (kb < qb)) |
                           ((kk == 1) & (kb == qb) & (ko <= qo)))
    clean_q = (qk == 2) & ((kk == 0) | ((kk == 2) & (kb <= qb) & ((kb < qb) | (ko <= qo))))
    return prompt_q | noisy_q | clean_q

  def pack(self, prompt_BxP: jax.Array, noisy_BxMxN: jax.Array, clean_BxMxN: jax.Array
           ) -> jax.Array:
    """[B, T] the packed row."""
    B = prompt_BxP.shape[0]
    blocks = jnp.stack([noisy_BxMxN, clean_BxMxN], axis=2)  # [B, M, 2, n]
    return jnp.concatenate([prompt_BxP, blocks.reshape(B, -1)], axis=1)

  def prediction_index(self, context: str) -> np.ndarray:
    """[M, n] the packed index whose logits give a Jacobi iteration's new token for
    (block j, offset o): the token before it in noisy_j's context."""
    idx = np.zeros((self.blocks, self.block), np.int32)
    for j in range(self.blocks):
      if j == 0:
        before = self.prompt - 1
      else:
        prev = self.clean_start(j - 1) if context == 'clean' else self.noisy_start(j - 1)
        before = prev + self.block - 1
      idx[j, 0] = before
      idx[j, 1:] = self.noisy_start(j) + np.arange(self.block - 1)
    return idx


def jacobi_iteration(model: transformer_lib.Transformer, params, layout: Layout,
                     prompt_BxP: jax.Array, clean_BxMxN: jax.Array, state_BxMxN: jax.Array
                     ) -> jax.Array:
  """One Jacobi iteration of every block after its converged context (context='clean')."""
  tokens_BxT = layout.pack(prompt_BxP, state_BxMxN, clean_BxMxN)
  B = tokens_BxT.shape[0]
  pos_BxT = jnp.broadcast_to(jnp.asarray(layout.positions()), tokens_BxT.shape)
  logits_BxTxV = model.apply({'params': params}, tokens_BxT, pos_BxT,
                             attn_mask=jnp.asarray(layout.mask('clean'))).logits_BxTxV
  idx = jnp.asarray(layout.prediction_index('clean')).reshape(-1)
  pred_BxMN = jnp.argmax(logits_BxTxV[:, idx], axis=-1).astype(jnp.int32)
  return pred_BxMN.reshape(B, layout.blocks, layout.block)


def collect(model: transformer_lib.Transformer, params, layout: Layout, prompt_BxP: jax.Array,
            clean_BxMxN: jax.Array, init_BxMxN: jax.Array) -> jax.Array:
  """[n + 1, B, M, n] the Jacobi states y^0 = init .. y^n (y^n is the fixed point under
  greedy; states after convergence repeat it). Gradients do not flow through it."""
  params = jax.lax.stop_gradient(params)

  def body(state, _):
    new = jacobi_iteration(model, params, layout, prompt_BxP, clean_BxMxN, state)
    return new, new

  _, states = jax.lax.scan(body, init_BxMxN, None, length=layout.block)
  return jnp.concatenate([init_BxMxN[None], states], axis=0)


def first_divergence(state_XxN: jax.Array, clean_XxN: jax.Array) -> jax.Array:
  """[X] the first offset where a state differs from the fixed point (n if none)."""
  n = state_XxN.shape[-1]
  diff = state_XxN != clean_XxN
  return jnp.where(jnp.any(diff, -1), jnp.argmax(diff, -1), n).astype(jnp.int32)


def noise(state_XxN: jax.Array, clean_XxN: jax.Array) -> jax.Array:
  """[X] (n - first divergence) / n: 0 at the fixed point, 1 when the first token differs."""
  n = state_XxN.shape[-1]
  return (n - first_divergence(state_XxN, clean_XxN)) / n


def iterations_to_converge(states_KxXxN: jax.Array, clean_XxN: jax.Array) -> jax.Array:
  """[X] the first iteration k whose state is the fixed point (k = 0: the initial guess)."""
  done_KxX = jnp.all(states_KxXxN == clean_XxN[None], -1)
  K = states_KxXxN.shape[0]
  return jnp.where(jnp.any(done_KxX, 0), jnp.argmax(done_KxX, 0), K).astype(jnp.int32)


def progressive_pick(states_KxBxMxN: jax.Array, clean_BxMxN: jax.Array, window: int,
                     rng: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The progressive noise schedule: block j of row b aims at noise
  linspace(0, 1, window)[(j + offset_b) mod window] (offset_b random) and takes the state
  whose noise is nearest (the earliest on ties). Returns (states [B, M, n], noise [B, M])."""
  K, B, M, _ = states_KxBxMxN.shape
  offset_B = jax.random.randint(rng, (B,), 0, window)
  levels = jnp.linspace(0.0, 1.0, window) if window > 1 else jnp.zeros((1,))
  target_BxM = levels[(jnp.arange(M)[None] + offset_B[:, None]) % window]
  noise_KxBxM = noise(states_KxBxMxN, jnp.broadcast_to(clean_BxMxN, states_KxBxMxN.shape))
  pick_BxM = jnp.argmin(jnp.abs(noise_KxBxM - target_BxM[None]), axis=0)
  picked = jnp.take_along_axis(states_KxBxMxN, pick_BxM[None, :, :, None], axis=0)[0]
  return picked, jnp.take_along_axis(noise_KxBxM, pick_BxM[None], axis=0)[0]


@functools.partial(jax.jit, static_argnums=(0, 2))
def collect_jit(model, params, layout, prompt_BxP, clean_BxMxN, init_BxMxN):
  """`collect`, jitted (tests and scripts)."""
  return collect(model, params, layout, prompt_BxP, clean_BxMxN, init_BxMxN)
