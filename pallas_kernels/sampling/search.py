"""Sort-free thresholds: a multi-pivot search over the order-preserving int32 keys of floats.

Every filter of the sampler keeps the tokens at or above one threshold value (ties kept):
  top-k  the k-th largest value    = the smallest key v with  count(key > v) < k,
  top-p  the sorted cut-off        = the smallest key v with  mass(key > v) < top_p * Z
         (Z the mass left by top-k), which is always a value present in the row.
Both predicates are monotone in v, so a search over keys finds them exactly. Each pass
evaluates NP = 16 pivots spread over (lo, hi) — one read of the row — and keeps the
sub-interval where the predicate flips: 2^32 keys take at most 10 passes instead of a sort.

Only integer adds, multiplies, shifts and reductions: the same code runs inside the GPU
and TPU kernels. Invariant: f(lo) is false, f(hi) is true; the answer is hi once
hi == lo + 1.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import lax

@dataclasses.dataclass(frozen=True)
class Filters:
  """The sampling rule every kernel applies (its `Static` adds the kernel's own settings)."""
  temperature: float
  top_k: int
  top_p: float
  min_p: float


NP = 16  # pivots per pass (a power of two for Triton)
MAX_PASSES = 10  # enough for any int32 interval (one coarse pass, then /17 per pass)
_FLIP = 0x7FFFFFFF


def to_key(x_f32: jax.Array) -> jax.Array:
  """int32 keys with the order of the float32 values (-0.0 < +0.0; NaN not supported)."""
  bits = lax.bitcast_convert_type(x_f32, jnp.int32)
  return jnp.where(bits >= 0, bits, bits ^ _FLIP)


def from_key(key: jax.Array) -> jax.Array:
  bits = jnp.where(key >= 0, key, key ^ _FLIP)
  return lax.bitcast_convert_type(bits, jnp.float32)


def pivots(lo: jax.Array, hi: jax.Array, j: jax.Array, num: int = NP) -> jax.Array:
  """Pivots in [lo, hi) for j = 1..num (increasing, possibly repeating lo when hi - lo is
  small; `num` a power of two). int32 arithmetic that wraps: the results are in range even
  when hi - lo is not."""
  shift = (2 * num).bit_length() - 1  # 2^shift = 2 num
  coarse = (hi >> shift) - (lo >> shift)  # ~ (hi - lo) / (2 num), never overflows
  big = lo + coarse * (2 * j - 1)  # wraps back into (lo, hi) when hi - lo >= 2^30
  span = hi - lo  # exact when the interval is < 2^31
  n = num + 1
  small = lo + lax.div(span, n) * j + lax.div(lax.rem(span, n) * j, n)
  return jnp.where(coarse > (1 << (30 - shift)), big, small)


def max_passes(num: int = NP) -> int:
  """Passes that narrow any int32 interval to hi == lo + 1 with `num` pivots a pass: a first
  pass over a span of up to 2^32 leaves at most 2^32 / num + 1 (pivots spaced span / num),
  each later one ceil(span / (num + 1)) (tested over the whole float range)."""
  span, passes = (1 << 32) // num + 2, 1
  while span > 1:
    span, passes = -(-span // (num + 1)), passes + 1
  return passes


def narrow(lo, hi, piv, flips):
  """New (lo, hi) from the predicate at the pivots (`flips`: bool, monotone in pivots)."""
  new_lo = jnp.max(jnp.where(flips, lo, piv))
  new_hi = jnp.min(jnp.where(flips, piv, hi))
  return jnp.maximum(lo, new_lo), jnp.minimum(hi, new_hi)


def narrow_rows(lo_B, hi_B, piv_BxN, flips_BxN):
  """`narrow` for B rows at once: lo, hi [B]; pivots and flips [B, N]."""
  new_lo = jnp.max(jnp.where(flips_BxN, lo_B[:, None], piv_BxN), axis=-1)
  new_hi = jnp.min(jnp.where(flips_BxN, piv_BxN, hi_B[:, None]), axis=-1)
  return jnp.maximum(lo_B, new_lo), jnp.minimum(hi_B, new_hi)
