"""Entry points of the fused verification kernels (same signatures as `reference`).

  n_B, residual_logp_BxV = chain_verify_pallas(target_logp_BxG1xV, draft_logq_BxGxV, draft_BxG,
                                               valid_BxG, u_BxG, mode='iid')
  path_BxD1, n_B, residual_logp_BxV = tree_verify_pallas(target_logp_BxTxV, None, tokens_BxT,
                                                         children_BxTxK, u_BxDxK)

GPU kernels (Triton lowering; interpreted elsewhere). Tree verification is fused for
mode 'deterministic' (EAGLE-style top-k children, heads, n-gram trees); the other tree modes
need a full-vocabulary residual update per rejected child and use the reference. Mode
'traversal' has no kernel yet, chain or tree: it always runs the reference.
"""

from __future__ import annotations

import jax.numpy as jnp

from pallas_kernels import common
from pallas_kernels.spec_verify import gpu
from pallas_kernels.spec_verify.reference import (MODES, chain_verify_reference,
                                                  tree_verify_reference)


def _setup(V: int, impl: str, block_v: int, deterministic: bool):
  family, interpret = common.resolve_impl(impl, kernels=('gpu',))
  if family == 'xla':
    return None, V
  bv = min(common.next_pow2(block_v), common.next_pow2(V))
  return gpu.Static(deterministic=deterministic, block_v=bv, interpret=interpret), \
      common.round_up(V, bv)


def chain_verify_pallas(target_logp_BxG1xV, draft_logq_BxGxV, draft_BxG, valid_BxG, u_BxG, *,
                        mode: str = 'iid', impl: str = 'pallas', block_v: int = 2048):
  """See `reference.chain_verify_reference`."""
  if mode not in MODES:
    raise ValueError(f'Unknown verification mode {mode!r}; choose one of {MODES}.')
  deterministic = mode == 'deterministic' or draft_logq_BxGxV is None
  V = target_logp_BxG1xV.shape[-1]
  st, Vp = _setup(V, impl, block_v, deterministic)
  if st is None or mode == 'traversal':  # no kernel for traversal yet
    return chain_verify_reference(target_logp_BxG1xV, draft_logq_BxGxV, draft_BxG, valid_BxG,
                                  u_BxG, mode=mode)
  pad = lambda x: common.pad_axis(x.astype(jnp.float32), 2, Vp, -jnp.inf)
  n, res = gpu.chain_verify(pad(target_logp_BxG1xV),
                            None if deterministic else pad(draft_logq_BxGxV),
                            draft_BxG, valid_BxG, u_BxG, st)
  return n, res[:, :V]


def tree_verify_pallas(target_logp_BxTxV, draft_logq_BxTxV, tokens_BxT, children_BxTxK, u_BxDxK,
                       *, mode: str = 'deterministic', impl: str = 'pallas',
                       block_v: int = 2048):
  """See `reference.tree_verify_reference`; fused for mode 'deterministic'."""
  V = target_logp_BxTxV.shape[-1]
  st, Vp = _setup(V, impl, block_v, True)
  if st is None or mode != 'deterministic':
    return tree_verify_reference(target_logp_BxTxV, draft_logq_BxTxV, tokens_BxT,
                                 children_BxTxK, u_BxDxK, mode=mode)
  logp = common.pad_axis(target_logp_BxTxV.astype(jnp.float32), 2, Vp, -jnp.inf)
  path, n, res = gpu.tree_verify(logp, tokens_BxT, children_BxTxK, u_BxDxK, st)
  return path, n, res[:, :V]
