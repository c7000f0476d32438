"""Speculative verification (chain and tree accept/reject + residual), with an `impl=` switch.

  n_B, residual_logp_BxV = chain_verify(target_logp_BxG1xV, draft_logq_BxGxV, draft_BxG,
                                        valid_BxG, u_BxG, mode='iid')
  path_BxD1, n_B, residual_logp_BxV = tree_verify(target_logp_BxTxV, draft_logq_BxTxV,
                                                  tokens_BxT, children_BxTxK, u_BxDxK,
                                                  mode='deterministic')

impl:
  'xla'   the plain-jnp reference (`reference.py`), any backend.
  'pallas' the fused kernels of `fused.py` (GPU Triton-style; interpreted on CPU/TPU): the
          chain for every mode, the tree for modes 'deterministic' and 'traversal' (other tree
          modes fall back to the reference). 'pallas_gpu' names the family explicitly.
  'auto'  what `pallas_kernels.dispatch` says for case 'chain' / 'tree': 'xla' everywhere
          today (the chain kernel passed its H100 check; its speed is not measured).

The rules ('deterministic', 'iid', 'wor', 'kseq', 'traversal') and their exactness are
documented in `reference.py`. Randomness is passed in (uniforms in (0, 1)); kernels draw none.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels import dispatch
from pallas_kernels.spec_verify.fused import chain_verify_pallas, tree_verify_pallas
from pallas_kernels.spec_verify.reference import (MODES, chain_verify_reference, kseq_beta,
                                                  kseq_residual, kseq_rho, traversal_verify,
                                                  tree_verify_reference)

IMPLS = ('auto', 'xla', 'pallas', 'pallas_gpu')


def _check_impl(impl: str, case: str) -> str:
  if impl not in IMPLS:
    raise ValueError(f'Unknown spec_verify impl {impl!r}; choose one of {IMPLS}.')
  if impl == 'auto':
    return dispatch.choose('spec_verify', case, dtype=jnp.float32).impl
  return impl


def chain_verify(target_logp_BxG1xV: jax.Array, draft_logq_BxGxV: jax.Array | None,
                 draft_BxG: jax.Array, valid_BxG: jax.Array, u_BxG: jax.Array, *,
                 mode: str = 'iid', impl: str = 'auto') -> tuple[jax.Array, jax.Array]:
  """See `reference.chain_verify_reference`."""
  impl = _check_impl(impl, 'chain')
  if impl.startswith('pallas'):
    return chain_verify_pallas(target_logp_BxG1xV, draft_logq_BxGxV, draft_BxG, valid_BxG,
                               u_BxG, mode=mode, impl=impl)
  return chain_verify_reference(target_logp_BxG1xV, draft_logq_BxGxV, draft_BxG, valid_BxG,
                                u_BxG, mode=mode)


def tree_verify(target_logp_BxTxV: jax.Array, draft_logq_BxTxV: jax.Array | None,
                tokens_BxT: jax.Array, children_BxTxK: jax.Array, u_BxDxK: jax.Array, *,
                mode: str = 'deterministic', impl: str = 'auto'
                ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """See `reference.tree_verify_reference`."""
  impl = _check_impl(impl, 'tree')
  if impl.startswith('pallas'):
    return tree_verify_pallas(target_logp_BxTxV, draft_logq_BxTxV, tokens_BxT, children_BxTxK,
                              u_BxDxK, mode=mode, impl=impl)
  return tree_verify_reference(target_logp_BxTxV, draft_logq_BxTxV, tokens_BxT, children_BxTxK,
                               u_BxDxK, mode=mode)


__all__ = ['chain_verify', 'tree_verify', 'kseq_rho', 'kseq_beta', 'kseq_residual', 'MODES',
           'IMPLS', 'chain_verify_reference', 'tree_verify_reference', 'traversal_verify']
