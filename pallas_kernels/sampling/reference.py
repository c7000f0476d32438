"""Plain-jnp sampling with temperature, top-k, top-p and min-p: the sort-based reference.

Same rules as `decoding.sampling.log_probs` (this package imports nothing from the
project): temperature -> top-k -> top-p -> min-p, each on the distribution the previous
step left, ties at every cut-off kept; temperature 0 = greedy (argmax, lowest id). A
sample is the exponential race argmax(log p + g) with Gumbel noise g passed in.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def gumbel_noise(rng: jax.Array, shape: tuple[int, int]) -> jax.Array:
  """[B, V] noise g = -log(-log u) from the same bits as `decoding.sampling`'s race.

  `rng` is one key or one key per row [B]; argmax(log p + g) is then exactly the token
  `decoding.sampling.sample_from_log_probs(rng, log p)` draws.
  """
  if rng.ndim == 0:
    bits = jax.random.bits(rng, shape, jnp.uint32)
  else:
    bits = jax.vmap(lambda k: jax.random.bits(k, shape[1:], jnp.uint32))(rng)
  # decoding.sampling.uniform_from_bits (kernels do not import decoding): u < 1 strictly.
  u = ((bits >> 9).astype(jnp.float32) + 0.5) * (1.0 / (1 << 23))
  return -jnp.log(-jnp.log(u))


def filtered_log_probs(logits_BxV: jax.Array, temperature: float, top_k: int = 0,
                       top_p: float = 1.0, min_p: float = 0.0) -> jax.Array:
  """Normalised log-probabilities after the filters (float32; filtered-out tokens -inf)."""
  logits = logits_BxV.astype(jnp.float32)
  V = logits.shape[-1]
  if temperature == 0:
    onehot = jax.nn.one_hot(jnp.argmax(logits, axis=-1), V, dtype=jnp.bool_)
    return jnp.where(onehot, 0.0, -jnp.inf)
  logits = logits / temperature
  if 0 < top_k < V:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p < 1.0:
    sorted_desc = jnp.sort(logits, axis=-1)[..., ::-1]
    probs_desc = jax.nn.softmax(sorted_desc, axis=-1)
    mass_before = jnp.cumsum(probs_desc, axis=-1) - probs_desc
    cutoff = jnp.min(jnp.where(mass_before < top_p, sorted_desc, jnp.inf), axis=-1,
                     keepdims=True)
    logits = jnp.where(logits < cutoff, -jnp.inf, logits)
  if min_p > 0.0:
    logp = jax.nn.log_softmax(logits, axis=-1)
    threshold = jnp.max(logp, axis=-1, keepdims=True) + jnp.log(min_p)
    logits = jnp.where(logp < threshold, -jnp.inf, logits)
  return jax.nn.log_softmax(logits, axis=-1)


def sample_reference(logits_BxV: jax.Array, gumbel_BxV: jax.Array, temperature: float,
                     top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0) -> jax.Array:
  """[B] int32 tokens: argmax(filtered log p + g); greedy ignores g."""
  if temperature == 0:
    return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  logp = filtered_log_probs(logits_BxV, temperature, top_k, top_p, min_p)
  return jnp.argmax(logp + gumbel_BxV, axis=-1).astype(jnp.int32)
