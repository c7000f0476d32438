"""Plain-jnp (gated) delta rule: the readable recurrent scan, the chunked WY/UT form, one step.

The recurrence, per batch row and head, with a state S in R^{Dk x Dv} (always float32):

  S <- exp(g_t) * S                                  (gate; g_t <= 0, skipped when g is None)
  S <- S + beta_t k_t (v_t - S^T k_t)^T              (= (I - beta_t k_t k_t^T) S + beta_t k_t v_t^T)
  o_t = scale * S^T q_t

A step with beta_t = 0 and g_t = 0 leaves the state unchanged (padding). With beta in [0, 2]
and unit-norm keys every factor (I - beta k k^T) has eigenvalues in [-1, 1], so S stays bounded.

Shapes (axis letters as in the README; in einsum strings `k` is the key dim Dk, `v` the value
dim Dv, `N` chunks, `C` and `c` positions inside a chunk):
  q_BxTxHxDk, k_BxTxHxDk   queries and keys (the caller normalises them)
  v_BxTxHxDv               values
  beta_BxTxH, g_BxTxH      write strength and log-decay (g None = no gate)
  state_BxHxDkxDv          the recurrent state (float32)

Three forms that agree (tests/pallas_kernels/test_delta_rule_reference.py):
  `delta_rule_recurrent`  the naive scan over T, optionally returning every state.
  `delta_rule_chunked`    chunks of C steps: inside a chunk the product of Householder
                          factors is written in WY form and solved with one unit-lower-
                          triangular system (the UT transform), chunks are chained by a scan.
  `delta_product_step`    one token of gated DeltaProduct for decoding: decay once, n_h
                          Householder sub-steps, read once.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

F32 = jnp.float32


def _check(q, k, v, beta, g, initial_state):
  """Shape checks shared by the sequence forms; returns (B, T, H, Dk, Dv)."""
  if q.ndim != 4 or k.shape != q.shape:
    raise ValueError(f'q and k must both be [B, T, H, Dk]; got {q.shape} and {k.shape}.')
  B, T, H, Dk = q.shape
  if v.ndim != 4 or v.shape[:3] != (B, T, H):
    raise ValueError(f'v must be [B, T, H, Dv] = [{B}, {T}, {H}, Dv]; got {v.shape}.')
  if beta.shape != (B, T, H):
    raise ValueError(f'beta must be [B, T, H] = [{B}, {T}, {H}]; got {beta.shape}.')
  if g is not None and g.shape != (B, T, H):
    raise ValueError(f'g must be [B, T, H] = [{B}, {T}, {H}] or None; got {g.shape}.')
  Dv = v.shape[-1]
  if initial_state is not None and initial_state.shape != (B, H, Dk, Dv):
    raise ValueError(f'initial_state must be [B, H, Dk, Dv] = [{B}, {H}, {Dk}, {Dv}]; got '
                     f'{initial_state.shape}.')
  return B, T, H, Dk, Dv


def _initial(initial_state, B, H, Dk, Dv):
  if initial_state is None:
    return jnp.zeros((B, H, Dk, Dv), F32)
  return initial_state.astype(F32)


def delta_rule_recurrent(q_BxTxHxDk: jax.Array, k_BxTxHxDk: jax.Array, v_BxTxHxDv: jax.Array,
                         beta_BxTxH: jax.Array, g_BxTxH: jax.Array | None = None, *,
                         scale: float | None = None,
                         initial_state_BxHxDkxDv: jax.Array | None = None,
                         return_all_states: bool = False):
  """The naive scan, one step at a time (float32). The readable reference.

  Returns:
    (o_BxTxHxDv in v's dtype, final_state_BxHxDkxDv float32), plus, when `return_all_states`,
    states_BxTxHxDkxDv: the state after each step (memory T x the state: short calls only).
  """
  B, T, H, Dk, Dv = _check(q_BxTxHxDk, k_BxTxHxDk, v_BxTxHxDv, beta_BxTxH, g_BxTxH,
                           initial_state_BxHxDkxDv)
  scale = Dk ** -0.5 if scale is None else scale
  g_BxTxH = jnp.zeros((B, T, H), F32) if g_BxTxH is None else g_BxTxH
  time_major = lambda x: jnp.moveaxis(x.astype(F32), 1, 0)
  xs = tuple(map(time_major, (q_BxTxHxDk, k_BxTxHxDk, v_BxTxHxDv, beta_BxTxH, g_BxTxH)))

  def step(S_BxHxkxv, x):
    q_BxHxk, k_BxHxk, v_BxHxv, b_BxH, g_BxH = x
    S_BxHxkxv = S_BxHxkxv * jnp.exp(g_BxH)[..., None, None]
    kS_BxHxv = jnp.einsum('BHk,BHkv->BHv', k_BxHxk, S_BxHxkxv)
    u_BxHxv = b_BxH[..., None] * (v_BxHxv - kS_BxHxv)
    S_BxHxkxv = S_BxHxkxv + jnp.einsum('BHk,BHv->BHkv', k_BxHxk, u_BxHxv)
    o_BxHxv = scale * jnp.einsum('BHk,BHkv->BHv', q_BxHxk, S_BxHxkxv)
    return S_BxHxkxv, (o_BxHxv, S_BxHxkxv if return_all_states else None)

  S0 = _initial(initial_state_BxHxDkxDv, B, H, Dk, Dv)
  final, (o_TxBxHxDv, states) = jax.lax.scan(step, S0, xs)
  o_BxTxHxDv = jnp.moveaxis(o_TxBxHxDv, 0, 1).astype(v_BxTxHxDv.dtype)
  if return_all_states:
    return o_BxTxHxDv, final, jnp.moveaxis(states, 0, 1)
  return o_BxTxHxDv, final


def unit_lower_inverse(A_xCxC: jax.Array) -> jax.Array:
  """(I + A)^{-1} for strictly lower-triangular A [..., C, C] (float32), by block forward
  substitution: diagonal blocks of size s are merged pairwise into blocks of size 2s with

    [[T11, 0], [T21, T22]],  T21 = -T22 A21 T11,

  log2(C) levels of batched matmuls (no power series, so no cancellation when |A| ~ 2).
  XLA's batched `triangular_solve` is ~100x slower on CPU; this form is also plain
  matmuls on accelerators, and differentiable as is. C is padded to a power of two.
  """
  C = A_xCxC.shape[-1]
  P = 1 << max(C - 1, 0).bit_length()
  if P != C:
    pad = [(0, 0)] * (A_xCxC.ndim - 2) + [(0, P - C), (0, P - C)]
    return unit_lower_inverse(jnp.pad(A_xCxC, pad))[..., :C, :C]
  batch = A_xCxC.shape[:-2]
  T = jnp.ones(batch + (P, 1, 1), A_xCxC.dtype)  # P diagonal blocks of size 1
  s = 1
  while s < P:
    m = P // (2 * s)
    # Lower-left s x s block of each diagonal 2s x 2s block of A.
    blocks = A_xCxC.reshape(batch + (m, 2 * s, m, 2 * s))
    blocks = jnp.diagonal(blocks, axis1=-4, axis2=-2)  # [..., 2s, 2s, m]
    A21 = jnp.moveaxis(blocks, -1, -3)[..., s:, :s]  # [..., m, s, s]
    T11, T22 = T[..., 0::2, :, :], T[..., 1::2, :, :]
    T21 = -jnp.einsum('...ij,...jk,...kl->...il', T22, A21, T11)
    top = jnp.concatenate([T11, jnp.zeros_like(T11)], axis=-1)
    bottom = jnp.concatenate([T21, T22], axis=-1)
    T = jnp.concatenate([top, bottom], axis=-2)  # [..., m, 2s, 2s]
    s *= 2
  return T[..., 0, :, :]


def delta_rule_chunked(q_BxTxHxDk: jax.Array, k_BxTxHxDk: jax.Array, v_BxTxHxDv: jax.Array,
                       beta_BxTxH: jax.Array, g_BxTxH: jax.Array | None = None, *,
                       scale: float | None = None, chunk_size: int = 64,
                       initial_state_BxHxDkxDv: jax.Array | None = None
                       ) -> tuple[jax.Array, jax.Array]:
  """The chunked parallel form (float32 state, triangular solve and decays).

  Inside a chunk of C steps with cumulative log-decay gamma_i = g_1 + ... + g_i, the state
  after step i is  S_i = e^{gamma_i} S_0 + sum_{j<=i} e^{gamma_i - gamma_j} k_j u_j^T  where

    (I + A) U = diag(beta) V - diag(beta) (K * e^gamma) S_0,
    A_ij = beta_i (k_i . k_j) e^{gamma_i - gamma_j}  for j < i (strictly lower).

  So with U~ = (I + A)^{-1} diag(beta) V and W = (I + A)^{-1} diag(beta) (K * e^gamma), both
  independent of S_0 (one triangular solve per chunk, all chunks at once):

    V_new = U~ - W S_0
    O     = scale * [(Q * e^gamma) S_0 + tril(Q K^T * e^{gamma_i - gamma_j}) V_new]
    S_C   = e^{gamma_C} S_0 + (K * e^{gamma_C - gamma})^T V_new

  and a scan over chunks carries S. Every exponent is <= 0; the causal masks are applied to
  the exponent (-inf) before `exp`, so no inf * 0 appears in values or gradients. T need not
  be a multiple of C: the tail is padded with identity steps (beta = g = 0).

  Returns:
    (o_BxTxHxDv in v's dtype, final_state_BxHxDkxDv float32).
  """
  B, T, H, Dk, Dv = _check(q_BxTxHxDk, k_BxTxHxDk, v_BxTxHxDv, beta_BxTxH, g_BxTxH,
                           initial_state_BxHxDkxDv)
  if chunk_size <= 0:
    raise ValueError(f'chunk_size must be positive, got {chunk_size}.')
  scale = Dk ** -0.5 if scale is None else scale
  C = chunk_size
  N = -(-T // C)
  pad = N * C - T
  g_BxTxH = jnp.zeros((B, T, H), F32) if g_BxTxH is None else g_BxTxH

  def chunks(x):  # [B, T, H, ...] -> [B, H, N, C, ...] float32, zero-padded in time
    x = jnp.pad(x.astype(F32), [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
    x = x.reshape((B, N, C) + x.shape[2:])
    return jnp.moveaxis(x, 3, 1)

  q, k, v = chunks(q_BxTxHxDk), chunks(k_BxTxHxDk), chunks(v_BxTxHxDv)
  beta_BxHxNxC, g_BxHxNxC = chunks(beta_BxTxH), chunks(g_BxTxH)
  gamma_BxHxNxC = jnp.cumsum(g_BxHxNxC, axis=-1)
  gamma_last_BxHxN = gamma_BxHxNxC[..., -1]

  i_Cx1, j_1xC = jnp.arange(C)[:, None], jnp.arange(C)[None, :]
  diff_BxHxNxCxC = gamma_BxHxNxC[..., :, None] - gamma_BxHxNxC[..., None, :]
  # Mask the exponent, not the product: e^{gamma_i - gamma_j} for j > i may overflow.
  decay_strict = jnp.exp(jnp.where(j_1xC < i_Cx1, diff_BxHxNxCxC, -jnp.inf))
  decay_incl = jnp.exp(jnp.where(j_1xC <= i_Cx1, diff_BxHxNxCxC, -jnp.inf))

  kk_BxHxNxCxC = jnp.einsum('BHNik,BHNjk->BHNij', k, k)
  A_BxHxNxCxC = beta_BxHxNxC[..., :, None] * kk_BxHxNxCxC * decay_strict
  T_BxHxNxCxC = unit_lower_inverse(A_BxHxNxCxC)
  u_BxHxNxCxDv = jnp.einsum('BHNij,BHNjv->BHNiv', T_BxHxNxCxC, beta_BxHxNxC[..., None] * v)
  w_BxHxNxCxDk = jnp.einsum('BHNij,BHNjk->BHNik', T_BxHxNxCxC,
                            (beta_BxHxNxC * jnp.exp(gamma_BxHxNxC))[..., None] * k)

  qk_BxHxNxCxC = jnp.einsum('BHNik,BHNjk->BHNij', q, k) * decay_incl
  qg_BxHxNxCxDk = q * jnp.exp(gamma_BxHxNxC)[..., None]
  ktail_BxHxNxCxDk = k * jnp.exp(gamma_last_BxHxN[..., None] - gamma_BxHxNxC)[..., None]
  decay_C_BxHxN = jnp.exp(gamma_last_BxHxN)

  per_chunk = tuple(jnp.moveaxis(x, 2, 0) for x in (
      u_BxHxNxCxDv, w_BxHxNxCxDk, qk_BxHxNxCxC, qg_BxHxNxCxDk, ktail_BxHxNxCxDk, decay_C_BxHxN))

  def step(S_BxHxkxv, x):
    u_BxHxCxv, w_BxHxCxk, qk_BxHxCxc, qg_BxHxCxk, ktail_BxHxCxk, decay_BxH = x
    vnew_BxHxCxv = u_BxHxCxv - jnp.einsum('BHCk,BHkv->BHCv', w_BxHxCxk, S_BxHxkxv)
    o_BxHxCxv = scale * (jnp.einsum('BHCk,BHkv->BHCv', qg_BxHxCxk, S_BxHxkxv)
                         + jnp.einsum('BHCc,BHcv->BHCv', qk_BxHxCxc, vnew_BxHxCxv))
    S_BxHxkxv = (decay_BxH[..., None, None] * S_BxHxkxv
                 + jnp.einsum('BHCk,BHCv->BHkv', ktail_BxHxCxk, vnew_BxHxCxv))
    return S_BxHxkxv, o_BxHxCxv

  S0 = _initial(initial_state_BxHxDkxDv, B, H, Dk, Dv)
  final, o_NxBxHxCxDv = jax.lax.scan(step, S0, per_chunk)
  o_BxNxCxHxDv = jnp.transpose(o_NxBxHxCxDv, (1, 0, 3, 2, 4))
  o_BxTxHxDv = o_BxNxCxHxDv.reshape(B, N * C, H, Dv)[:, :T]
  return o_BxTxHxDv.astype(v_BxTxHxDv.dtype), final


def delta_product_step(q_BxHxDk: jax.Array, k_BxJxHxDk: jax.Array, v_BxJxHxDv: jax.Array,
                       beta_BxJxH: jax.Array, g_BxH: jax.Array | None,
                       state_BxHxDkxDv: jax.Array, *, scale: float | None = None
                       ) -> tuple[jax.Array, jax.Array]:
  """One token of gated DeltaProduct (decoding): S <- e^g S once, then J = n_h Householder
  sub-steps with keys k_j, values v_j and strengths beta_j, then o = scale * S^T q.

  With J = 1 this is one step of (gated) DeltaNet, identical to `delta_rule_recurrent` over
  one step. Returns (o_BxHxDv in v's dtype, new state float32).
  """
  B, H, Dk = q_BxHxDk.shape
  J = k_BxJxHxDk.shape[1]
  if k_BxJxHxDk.shape != (B, J, H, Dk) or beta_BxJxH.shape != (B, J, H):
    raise ValueError(f'k must be [B, J, H, Dk] and beta [B, J, H] with q [B, H, Dk] = '
                     f'{q_BxHxDk.shape}; got {k_BxJxHxDk.shape} and {beta_BxJxH.shape}.')
  scale = Dk ** -0.5 if scale is None else scale
  S_BxHxkxv = state_BxHxDkxDv.astype(F32)
  if g_BxH is not None:
    S_BxHxkxv = S_BxHxkxv * jnp.exp(g_BxH.astype(F32))[..., None, None]
  for j in range(J):
    k_BxHxk = k_BxJxHxDk[:, j].astype(F32)
    kS_BxHxv = jnp.einsum('BHk,BHkv->BHv', k_BxHxk, S_BxHxkxv)
    u_BxHxv = beta_BxJxH[:, j].astype(F32)[..., None] * (v_BxJxHxDv[:, j].astype(F32) - kS_BxHxv)
    S_BxHxkxv = S_BxHxkxv + jnp.einsum('BHk,BHv->BHkv', k_BxHxk, u_BxHxv)
  o_BxHxv = scale * jnp.einsum('BHk,BHkv->BHv', q_BxHxDk.astype(F32), S_BxHxkxv)
  return o_BxHxv.astype(v_BxJxHxDv.dtype), S_BxHxkxv
