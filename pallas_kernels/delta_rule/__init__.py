"""The (gated) delta rule over a sequence, with an `impl=` switch.

  o_BxTxHxDv, final_state_BxHxDkxDv = delta_rule(
      q_BxTxHxDk, k_BxTxHxDk, v_BxTxHxDv, beta_BxTxH, g_BxTxH=None, *,
      chunk_size=64, initial_state_BxHxDkxDv=None, scale=None, impl='auto')

Per head, state S [Dk, Dv] (float32); per step t: S <- exp(g_t) S; S <- S + beta_t k_t (v_t -
S^T k_t)^T; o_t = scale * S^T q_t (scale defaults to Dk ** -0.5). See `reference.py` for the
maths. A step with beta = g = 0 is the identity (padding). DeltaProduct runs this op on the
interleaved sequence of n_h sub-steps per token (g only on the first sub-step, q only on the
last); see `models/deltaproduct.py`.

Inputs are cast to float32 inside; the output has v's dtype and the final state is float32.
Gradients flow to every input, the initial state included.

impl:
  'xla'     the chunked jnp form (`reference.delta_rule_chunked`), any backend.
  'auto'    what `pallas_kernels.dispatch` says for case 'chunked': 'xla' on every platform
            today (on the H100 the kernel ran 2.9x faster but failed its float32 check).
  'pallas'  the chunk recurrences as Pallas kernels (`chunk.py`; GPU Triton-style `gpu.py`,
            TPU Mosaic `tpu.py`; interpreted on CPU), forward and backward. 'pallas_gpu' /
            'pallas_tpu' pick a family.

Also exported: `delta_rule_recurrent` (the naive scan; can return every state) and
`delta_product_step` (one decoding token with n_h sub-steps).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels import dispatch
from pallas_kernels.delta_rule.chunk import delta_rule_pallas
from pallas_kernels.delta_rule.reference import (delta_product_step, delta_rule_chunked,
                                                 delta_rule_recurrent)

IMPLS = ('auto', 'xla', 'pallas', 'pallas_gpu', 'pallas_tpu')


def delta_rule(q_BxTxHxDk: jax.Array, k_BxTxHxDk: jax.Array, v_BxTxHxDv: jax.Array,
               beta_BxTxH: jax.Array, g_BxTxH: jax.Array | None = None, *,
               chunk_size: int = 64, initial_state_BxHxDkxDv: jax.Array | None = None,
               scale: float | None = None, impl: str = 'auto') -> tuple[jax.Array, jax.Array]:
  """The chunked (training / prefill) delta rule.

  Args:
    q_BxTxHxDk, k_BxTxHxDk: queries and keys (L2-normalise keys, or beta <= 2 is unstable).
    v_BxTxHxDv: values.
    beta_BxTxH: write strengths, in [0, 1] or [0, 2] (negative eigenvalues).
    g_BxTxH: log-decays (<= 0), or None for no gate.
    chunk_size: C, steps per chunk; T need not be a multiple of it.
    initial_state_BxHxDkxDv: the state before step 0 (default zeros).
    scale: output scale (default Dk ** -0.5).
    impl: 'auto' | 'xla' | 'pallas' (see module docstring).

  Returns:
    (o_BxTxHxDv, final_state_BxHxDkxDv).
  """
  if impl == 'auto':  # the kernels compute in float32 whatever the inputs
    impl = dispatch.choose('delta_rule', 'chunked', dtype=jnp.float32).impl
  if impl == 'xla':
    return delta_rule_chunked(q_BxTxHxDk, k_BxTxHxDk, v_BxTxHxDv, beta_BxTxH, g_BxTxH,
                              scale=scale, chunk_size=chunk_size,
                              initial_state_BxHxDkxDv=initial_state_BxHxDkxDv)
  if impl in ('pallas', 'pallas_gpu', 'pallas_tpu'):
    return delta_rule_pallas(q_BxTxHxDk, k_BxTxHxDk, v_BxTxHxDv, beta_BxTxH, g_BxTxH,
                             chunk_size=chunk_size, scale=scale, impl=impl,
                             initial_state_BxHxDkxDv=initial_state_BxHxDkxDv)
  raise ValueError(f'Unknown delta_rule impl {impl!r}; choose one of {IMPLS}.')


__all__ = ['delta_rule', 'delta_rule_chunked', 'delta_rule_recurrent', 'delta_product_step',
           'IMPLS']
