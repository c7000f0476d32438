"""Fused sampling: temperature, top-k, top-p and min-p without sorting the vocabulary.

    tokens_B = fused_sample(logits_BxV, gumbel_BxV, temperature=0.8, top_p=0.95)

The rules are those of `decoding.sampling` (see `reference`): filters in the order
temperature -> top-k -> top-p -> min-p, ties at a cut-off kept, greedy = argmax with the
lowest id. Each filter is one threshold on the scaled logits, found exactly by a
multi-pivot search over float keys (`search`); the token is the exponential race
argmax(x + g) over the kept tokens. The noise g is passed in (`gumbel_noise(rng, (B, V))`
gives the noise `decoding.sampling` would draw from the same key, so both pick the same
token up to float rounding at a cut-off). Thresholds and sums are float32; at a cut-off
the kept set can differ from the sort-based reference only where their float32 sums round
differently (a token whose cumulative mass equals top_p to ~1e-7).

impl: 'auto' (what `pallas_kernels.dispatch` says for case 'top_p', or 'top_k' when only
top-k filters; on a GPU the sort, which beat the fused kernel on the H100) | 'xla' (the
sort-based reference) | 'pallas' | 'pallas_gpu' | 'pallas_tpu'. With return_threshold=True,
'auto' runs a kernel (only the kernels compute the threshold).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels import common
from pallas_kernels import dispatch
from pallas_kernels.sampling import gpu
from pallas_kernels.sampling import split
from pallas_kernels.sampling import tpu
from pallas_kernels.sampling.reference import (filtered_log_probs, gumbel_noise,
                                               sample_reference)


def sampling_case(top_k: int, top_p: float) -> str:
  return 'top_k' if top_k and top_p >= 1.0 else 'top_p'


def fused_sample(logits_BxV: jax.Array, gumbel_BxV: jax.Array | None, *, temperature: float,
                 top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0,
                 block_v: int = 2048, impl: str = 'auto',
                 return_threshold: bool = False, parts: int = 1):
  """Samples [B] int32 tokens from logits [B, V] (any float dtype).

  Args:
    gumbel_BxV: float32 noise -log(-log u), u uniform (unused and may be None when greedy).
    temperature: 0 = greedy. top_k: 0 = off. top_p: 1 = off. min_p: 0 = off.
    block_v: GPU: vocabulary entries per step (a power of two).
    parts: GPU: programs per row. 1: one program sweeps its row (`gpu.py`); > 1: each row
      split over that many programs, one `pallas_call` per pass (`split.py`, for small
      batches); 0: as many as make about 512 programs in all (`split.auto_parts`).
    return_threshold: also return (tau [B], log_mass [B]): the kept tokens are those with
      logits / temperature >= tau (and, with min_p, the min-p rule on top).
  """
  B, V = logits_BxV.shape
  top_k = top_k if 0 < top_k < V else 0
  if temperature == 0:
    tok = jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    return (tok, None, None) if return_threshold else tok
  if impl == 'auto':
    impl = dispatch.choose('sampling', sampling_case(top_k, top_p), dtype=jnp.float32).impl
    if return_threshold and impl == 'xla':
      impl = 'pallas'
  family, interpret = common.resolve_impl(impl)
  if family == 'xla':
    if return_threshold:
      raise ValueError("return_threshold needs a kernel impl; the reference has no tau.")
    return sample_reference(logits_BxV, gumbel_BxV, temperature, top_k, top_p, min_p)
  gumbel_BxV = gumbel_BxV.astype(jnp.float32)
  if family == 'tpu':
    Vp = common.round_up(V, 128)
    st = tpu.Static(temperature=float(temperature), top_k=int(top_k), top_p=float(top_p),
                    min_p=float(min_p), interpret=interpret)
    kernel = tpu.sample
  elif parts == 1:
    bv = min(common.next_pow2(block_v), common.next_pow2(V))
    Vp = common.round_up(V, bv)
    st = gpu.Static(temperature=float(temperature), top_k=int(top_k), top_p=float(top_p),
                    min_p=float(min_p), block_v=bv, interpret=interpret)
    kernel = gpu.sample
  else:
    if parts < 0:
      raise ValueError(f'parts must be >= 0 (0: auto), got {parts}.')
    bv = min(common.next_pow2(block_v), common.next_pow2(V))
    parts = parts or split.auto_parts(B, V, bv)
    Vp = common.round_up(V, bv * parts)
    st = split.Static(temperature=float(temperature), top_k=int(top_k), top_p=float(top_p),
                      min_p=float(min_p), block_v=bv, parts=parts, interpret=interpret)
    kernel = split.sample
  # Padding: -inf logits are never kept; their noise is irrelevant.
  logits = common.pad_axis(logits_BxV, 1, Vp, -jnp.inf)
  tok, tau, log_s = kernel(logits, common.pad_axis(gumbel_BxV, 1, Vp), st)
  return (tok, tau, log_s) if return_threshold else tok


__all__ = ['fused_sample', 'gumbel_noise', 'filtered_log_probs', 'sample_reference']
