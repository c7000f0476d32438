"""Entry points of the fused verification kernels (same signatures as `reference`).

  n_B, residual_logp_BxV = chain_verify_pallas(target_logp_BxG1xV, draft_logq_BxGxV, draft_BxG,
                                               valid_BxG, u_BxG, mode='iid')
  path_BxD1, n_B, residual_logp_BxV = tree_verify_pallas(target_logp_BxTxV, None, tokens_BxT,
                                                         children_BxTxK, u_BxDxK)

GPU kernels (Triton lowering; interpreted elsewhere). Tree verification is fused for
mode 'deterministic' (EAGLE-style top-k children, heads, n-gram trees) and 'traversal'
(Traversal Verification: one vocabulary sweep per rejected leaf, `gpu.tree_traversal`); the
other tree modes need a full-vocabulary residual update per rejected child and use the
reference. The chain is fused for every mode ('traversal': block verification,
`gpu.chain_traversal`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels import common
from pallas_kernels.spec_verify import gpu
from pallas_kernels.spec_verify.reference import (MODES, chain_verify_reference, require_logq,
                                                  traversal_uniforms, tree_structure,
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
  if st is None:
    return chain_verify_reference(target_logp_BxG1xV, draft_logq_BxGxV, draft_BxG, valid_BxG,
                                  u_BxG, mode=mode)
  pad = lambda x: common.pad_axis(x.astype(jnp.float32), 2, Vp, -jnp.inf)
  if mode == 'traversal':
    require_logq(draft_logq_BxGxV, mode)
    n, res = gpu.chain_traversal(pad(target_logp_BxG1xV), pad(draft_logq_BxGxV), draft_BxG,
                                 valid_BxG, u_BxG, st)
    return n, res[:, :V]
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
  if st is None or mode not in ('deterministic', 'traversal'):
    return tree_verify_reference(target_logp_BxTxV, draft_logq_BxTxV, tokens_BxT,
                                 children_BxTxK, u_BxDxK, mode=mode)
  logp = common.pad_axis(target_logp_BxTxV.astype(jnp.float32), 2, Vp, -jnp.inf)
  if mode == 'traversal':
    return _tree_traversal(logp, draft_logq_BxTxV, tokens_BxT, children_BxTxK, u_BxDxK, st, V,
                           Vp)
  path, n, res = gpu.tree_verify(logp, tokens_BxT, children_BxTxK, u_BxDxK, st)
  return path, n, res[:, :V]


def _tree_traversal(logp_BxTxVp, draft_logq_BxTxV, tokens_BxT, children_BxTxK, u_BxDxK, st, V,
                    Vp):
  """Mode 'traversal' through `gpu.tree_traversal`: the tree's per-node vectors (parent,
  depth, rank, the parent's p and q at the node's token) gathered here, padded to a power of
  two."""
  require_logq(draft_logq_BxTxV, 'traversal')
  B, T, _ = logp_BxTxVp.shape
  D, K = u_BxDxK.shape[1], children_BxTxK.shape[2]
  u_BxN = traversal_uniforms(u_BxDxK, T)
  logq = common.pad_axis(draft_logq_BxTxV.astype(jnp.float32), 2, Vp, -jnp.inf)
  parent, depth, rank = jax.vmap(lambda ch: tree_structure(ch, D))(children_BxTxK)
  par = jnp.maximum(parent, 0)
  rows_B1 = jnp.arange(B)[:, None]
  at_token = lambda lp: jnp.exp(lp[rows_B1, par, tokens_BxT])  # [B, T]: p_parent(x)(token x)
  Tp = common.next_pow2(T)
  vec = lambda x, fill: common.pad_axis(x, 1, Tp, fill)
  path, n, res = gpu.tree_traversal(logp_BxTxVp, logq, vec(parent, -1), vec(depth, 0),
                                    vec(rank, 0), vec(at_token(logp_BxTxVp), 0.0),
                                    vec(at_token(logq), 0.0), u_BxN, D, K, st)
  return path, n, res[:, :V]
