"""`SamplingConfig` and the one place logits become a sampling distribution.

Every decoder turns logits into probabilities with `log_probs(logits, cfg)` — draft and target
alike — so temperature, top-k, top-p and min-p are applied identically to every distribution
a decoder compares (speculative losslessness depends on it).

Temperature 0 means greedy: the distribution is one-hot on the argmax (ties: lowest id).
"""

from __future__ import annotations

import dataclasses
import math
import operator

import jax
import jax.numpy as jnp

import pallas_kernels.common as kernel_common

NEG_INF = -jnp.inf


# Positive temperatures are limited to [MIN, MAX]: below, logits / temperature approach float32
# overflow (use 0 for greedy); above, the distribution is uniform to float32 precision and
# would lift even the ids a model masks out (logit -1e30, see models.layers.NEVER_LOGIT).
MIN_TEMPERATURE = 1e-6
MAX_TEMPERATURE = 1e6


def _number(name: str, value, kind=float):
  """`value` as a finite float (or int), or a ValueError naming the setting."""
  try:
    number = operator.index(value) if kind is int else float(value)
  except (TypeError, ValueError):
    raise ValueError(f'{name} must be {"an integer" if kind is int else "a number"}, got '
                     f'{value!r}.') from None
  if isinstance(value, bool) or not math.isfinite(number):
    raise ValueError(f'{name} must be a finite number, got {value!r}.')
  return number


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """temperature 0 = greedy; top_k 0 = off; top_p 1 = off; min_p 0 = off.

  Every value is checked when the config is built: NaN, infinities and values out of range
  (temperature other than 0 or [1e-6, 1e6], top_k < 0 or not an integer, top_p outside
  (0, 1], min_p outside [0, 1)) raise a ValueError that names the setting.
  """
  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0
  min_p: float = 0.0

  def __post_init__(self):
    temperature = _number('temperature', self.temperature)
    top_k = _number('top_k', self.top_k, int)
    top_p = _number('top_p', self.top_p)
    min_p = _number('min_p', self.min_p)
    if temperature != 0 and not MIN_TEMPERATURE <= temperature <= MAX_TEMPERATURE:
      raise ValueError(f'temperature must be 0 (greedy) or in [{MIN_TEMPERATURE:g}, '
                       f'{MAX_TEMPERATURE:g}], got {self.temperature!r}.')
    if top_k < 0:
      raise ValueError(f'top_k must be >= 0, got {self.top_k!r}.')
    if not 0.0 < top_p <= 1.0:
      raise ValueError(f'top_p must be in (0, 1], got {self.top_p!r}.')
    if not 0.0 <= min_p < 1.0:
      raise ValueError(f'min_p must be in [0, 1), got {self.min_p!r}.')
    for name, value in (('temperature', temperature), ('top_k', top_k), ('top_p', top_p),
                        ('min_p', min_p)):
      object.__setattr__(self, name, value)

  @property
  def greedy(self) -> bool:
    return self.temperature == 0.0


def kth_largest(x_NxV: jax.Array, k: int) -> jax.Array:
  """[..., 1]: the k-th largest value of each row, counting equal values separately (what
  `lax.top_k(x, k)[0][..., -1:]` gives), for 1 <= k <= V, through `kernel_common.top_k`
  (on XLA:CPU its TopK routine; it also beat the k - 1 argmax passes this used before, at
  every size tried on this 2-core CPU, k = 8 to 64, V = 272 and 32000)."""
  return kernel_common.top_k(x_NxV, k)[0][..., -1:]


def log_probs(logits_BxV: jax.Array, cfg: SamplingConfig) -> jax.Array:
  """Normalised log-probabilities after temperature, top-k, top-p and min-p (float32).

  Filtered-out tokens get -inf. Works on any leading shape [..., V]. Filters apply in the
  order temperature -> top-k -> top-p -> min-p, each on the distribution left by the previous.
  """
  logits = logits_BxV.astype(jnp.float32)
  V = logits.shape[-1]
  if cfg.greedy:
    onehot = jax.nn.one_hot(jnp.argmax(logits, axis=-1), V, dtype=jnp.bool_)
    return jnp.where(onehot, 0.0, NEG_INF)
  logits = logits / cfg.temperature
  if 0 < cfg.top_k < V:
    kth = kth_largest(logits, cfg.top_k)
    logits = jnp.where(logits < kth, NEG_INF, logits)
  if cfg.top_p < 1.0:
    # Keep the smallest set of most likely tokens whose mass reaches top_p (ties kept).
    sorted_desc = kernel_common.sort_descending(logits)
    probs_desc = jax.nn.softmax(sorted_desc, axis=-1)
    mass_before = jnp.cumsum(probs_desc, axis=-1) - probs_desc
    keep_sorted = mass_before < cfg.top_p
    cutoff = jnp.min(jnp.where(keep_sorted, sorted_desc, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < cutoff, NEG_INF, logits)
  if cfg.min_p > 0.0:
    logp = jax.nn.log_softmax(logits, axis=-1)
    threshold = jnp.max(logp, axis=-1, keepdims=True) + jnp.log(cfg.min_p)
    logits = jnp.where(logp < threshold, NEG_INF, logits)
  return jax.nn.log_softmax(logits, axis=-1)


def probs(logits_BxV: jax.Array, cfg: SamplingConfig) -> jax.Array:
  return jnp.exp(log_probs(logits_BxV, cfg))


def uniform_from_bits(bits: jax.Array) -> jax.Array:
  """float32 uniforms strictly inside (0, 1) from uint32 random bits: (k + 1/2) / 2^23, k the
  top 23 bits.

  Every k + 1/2 below 2^23 is exact in float32, so u < 1 always. (With 24 bits, (k + 1/2) /
  2^24 rounded the largest k up to u = 1 exactly: -log(-log u) was then +inf, and in the race
  below a token filtered out by top-k (log p = -inf) won with probability 2^-24 per token.)
  """
  return ((bits >> 9).astype(jnp.float32) + 0.5) * (1.0 / (1 << 23))


def sample_from_log_probs(rng: jax.Array, logp_BxV: jax.Array) -> jax.Array:
  """Draws one token per row by the exponential race argmax(log p - log E), E ~ Exp(1).

  E is computed as -log(U) with U uniform in (0, 1) (`uniform_from_bits`, 23 random bits), so
  its smallest value is about 6e-8: the race matches `logp` exactly up to events of
  probability < 1e-7 (no temperature-lowering truncation). `rng` may be one key or one key
  per row [B].
  """
  shape = logp_BxV.shape
  if rng.ndim == 0:
    bits = jax.random.bits(rng, shape, jnp.uint32)
  else:  # one key per row: rows are independent of batch composition.
    bits = jax.vmap(lambda k: jax.random.bits(k, shape[1:], jnp.uint32))(rng)
  race = logp_BxV - jnp.log(-jnp.log(uniform_from_bits(bits)))
  return jnp.argmax(race, axis=-1).astype(jnp.int32)


def sample(rng: jax.Array, logits_BxV: jax.Array, cfg: SamplingConfig) -> jax.Array:
  """Samples [B] tokens from logits [B, V] under `cfg` (greedy: argmax, rng unused)."""
  if cfg.greedy:
    return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  return sample_from_log_probs(rng, log_probs(logits_BxV, cfg))


def token_keys(row_keys_B: jax.Array, positions_B: jax.Array) -> jax.Array:
  """The key for the token at absolute position t of each row: fold_in(row_key, t).

  Tying randomness to (row, position) makes sampled outputs independent of batching and of
  how many steps a decoder took to reach a position.
  """
  return jax.vmap(jax.random.fold_in)(row_keys_B, positions_B)
