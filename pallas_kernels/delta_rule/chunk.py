"""The chunked delta rule with its two sequential scans in Pallas, forward and backward.

The chunked form (see `reference.delta_rule_chunked`) splits into
  * chunk-local work, parallel over (B, H, chunks): the UT transform T = (I + A)^-1, the
    WY factors W, U, the intra-chunk scores P and the decayed queries/keys — batched
    matmuls that XLA runs well (`prepare`);
  * the state recurrence, sequential over chunks: V_new = U - W S, O = Qg S + P V_new,
    S <- d S + Kt^T V_new. Run as a lax.scan it is hundreds of tiny launches; here it is one
    Pallas kernel per (B, H, Dv block) with the state [Dk, block_v] held on chip (`gpu.py`
    registers / `tpu.py` VMEM), writing O and (for the backward) each chunk's start state.
Backward (custom_vjp): a second Pallas scan runs the state gradient backwards over chunks,
    dV_new = P^T dO + Kt dS',   dS <- d dS' + Qg^T dO - W^T dV_new,
giving dS' (the gradient of every chunk's end state) and the initial state's gradient;
then every chunk's input gradients are the VJP of the chunk-local function at the saved
start states — parallel over chunks, by XLA autodiff of `_chunk_step`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from pallas_kernels import common
from pallas_kernels.delta_rule import gpu
from pallas_kernels.delta_rule import tpu
from pallas_kernels.delta_rule.reference import unit_lower_inverse

F32 = jnp.float32


@dataclasses.dataclass(frozen=True)
class Static:
  family: str  # 'gpu' | 'tpu'
  chunk: int
  block_v: int
  scale: float
  interpret: object = False


class Prepared(NamedTuple):
  """Chunk-local factors, [B, H, N, C, .] float32 (scale folded into Qg and P)."""
  W: jax.Array  # [.., C, Dk]  T diag(beta) (K * e^gamma)
  U: jax.Array  # [.., C, Dv]  T diag(beta) V
  P: jax.Array  # [.., C, C]   scale * tril(Q K^T * e^{gamma_i - gamma_j})
  Qg: jax.Array  # [.., C, Dk] scale * Q * e^gamma
  Kt: jax.Array  # [.., C, Dk] K * e^{gamma_C - gamma}
  decay: jax.Array  # [B, H, N] e^{gamma_C}


def _chunks(x, C):
  """[B, T, H, ...] (T a multiple of C) -> [B, H, N, C, ...] float32."""
  B, T = x.shape[:2]
  x = x.astype(F32).reshape((B, T // C, C) + x.shape[2:])
  return jnp.moveaxis(x, 3, 1)


def prepare(q, k, v, beta, g, C: int, scale: float) -> Prepared:
  q, k, v, beta, g = (_chunks(x, C) for x in (q, k, v, beta, g))
  gamma = jnp.cumsum(g, axis=-1)
  i, j = jnp.arange(C)[:, None], jnp.arange(C)[None, :]
  diff = gamma[..., :, None] - gamma[..., None, :]
  # The exponent is masked before exp (e^{gamma_i - gamma_j} for j > i may overflow).
  strict = jnp.exp(jnp.where(j < i, diff, -jnp.inf))
  incl = jnp.exp(jnp.where(j <= i, diff, -jnp.inf))
  A = beta[..., :, None] * jnp.einsum('BHNik,BHNjk->BHNij', k, k) * strict
  Tm = unit_lower_inverse(A)
  U = jnp.einsum('BHNij,BHNjv->BHNiv', Tm, beta[..., None] * v)
  W = jnp.einsum('BHNij,BHNjk->BHNik', Tm, (beta * jnp.exp(gamma))[..., None] * k)
  P = scale * jnp.einsum('BHNik,BHNjk->BHNij', q, k) * incl
  Qg = scale * q * jnp.exp(gamma)[..., None]
  last = gamma[..., -1:]
  Kt = k * jnp.exp(last - gamma)[..., None]
  return Prepared(W, U, P, Qg, Kt, jnp.exp(last[..., 0]))


def _chunk_step(p: Prepared, S_BxHxNxKxV):
  """Every chunk from its start state at once: (O [B,H,N,C,Dv], end states)."""
  vnew = p.U - jnp.einsum('BHNCk,BHNkv->BHNCv', p.W, S_BxHxNxKxV)
  o = (jnp.einsum('BHNCk,BHNkv->BHNCv', p.Qg, S_BxHxNxKxV)
       + jnp.einsum('BHNCc,BHNcv->BHNCv', p.P, vnew))
  S_next = (p.decay[..., None, None] * S_BxHxNxKxV
            + jnp.einsum('BHNCk,BHNCv->BHNkv', p.Kt, vnew))
  return o, S_next


def _kernels(family: str):
  return tpu if family == 'tpu' else gpu


def _cast(p: Prepared, dtype) -> Prepared:
  """Matmul operands in the input dtype (bf16 tensor cores); U and the decay stay f32."""
  return p._replace(W=p.W.astype(dtype), P=p.P.astype(dtype), Qg=p.Qg.astype(dtype),
                    Kt=p.Kt.astype(dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7))
def _delta(q, k, v, beta, g, S0, st: Static, dtype):
  p = _cast(prepare(q, k, v, beta, g, st.chunk, st.scale), dtype)
  o, S_final, _ = _kernels(st.family).forward_scan(p, S0, st, save_states=False)
  return o, S_final


def _delta_fwd(q, k, v, beta, g, S0, st, dtype):
  p = _cast(prepare(q, k, v, beta, g, st.chunk, st.scale), dtype)
  o, S_final, starts = _kernels(st.family).forward_scan(p, S0, st, save_states=True)
  return (o, S_final), (q, k, v, beta, g, starts)


def _delta_bwd(st, dtype, res, cot):
  q, k, v, beta, g, starts = res
  do, dS_final = cot
  f = lambda q, k, v, beta, g: _chunk_step(prepare(q, k, v, beta, g, st.chunk, st.scale),
                                           starts)
  (o, _), vjp = jax.vjp(f, q, k, v, beta, g)
  del o
  p = _cast(prepare(q, k, v, beta, g, st.chunk, st.scale), dtype)
  dS_ends, dS0 = _kernels(st.family).backward_scan(p, do.astype(F32), dS_final.astype(F32), st)
  dq, dk, dv, dbeta, dg = vjp((do.astype(F32), dS_ends))
  return dq, dk, dv, dbeta, dg, dS0


_delta.defvjp(_delta_fwd, _delta_bwd)


def delta_rule_pallas(q_BxTxHxDk, k_BxTxHxDk, v_BxTxHxDv, beta_BxTxH, g_BxTxH=None, *,
                      chunk_size: int = 64, initial_state_BxHxDkxDv=None,
                      scale: float | None = None, impl: str = 'pallas', block_v: int = 64):
  """`delta_rule` on the Pallas scans (same signature and results as the reference).

  On GPU the chunk size must be a power of two >= 16 (Triton tiles) and Dk is zero-padded
  to one; Dv is padded to a multiple of `block_v`, T to a multiple of the chunk with identity
  steps (beta = g = 0).
  """
  B, T, H, Dk = q_BxTxHxDk.shape
  Dv = v_BxTxHxDv.shape[-1]
  family, interpret = common.resolve_impl(impl)
  if family == 'xla':
    raise ValueError('delta_rule_pallas needs a kernel impl.')
  C = chunk_size
  if family == 'gpu' and (C < 16 or C & (C - 1)):
    raise ValueError(f'chunk_size must be a power of two >= 16 for the GPU kernel, got {C}.')
  scale = Dk ** -0.5 if scale is None else float(scale)
  Dkp = max(16, common.next_pow2(Dk)) if family == 'gpu' else Dk
  bv = min(block_v, max(16, common.next_pow2(Dv)))
  if family == 'tpu' and interpret is False:
    bv = common.round_up(block_v, 128)  # Mosaic: 128-lane blocks
  Tp, Dvp = common.round_up(T, C), common.round_up(Dv, bv)
  g = jnp.zeros((B, T, H), F32) if g_BxTxH is None else g_BxTxH.astype(F32)
  pad_t = lambda x: common.pad_axis(x, 1, Tp)
  q, k = (common.pad_axis(pad_t(x), 3, Dkp) for x in (q_BxTxHxDk, k_BxTxHxDk))
  v = common.pad_axis(pad_t(v_BxTxHxDv), 3, Dvp)
  S0 = (jnp.zeros((B, H, Dkp, Dvp), F32) if initial_state_BxHxDkxDv is None else
        common.pad_axis(common.pad_axis(initial_state_BxHxDkxDv.astype(F32), 2, Dkp), 3, Dvp))
  dtype = jnp.promote_types(q_BxTxHxDk.dtype, k_BxTxHxDk.dtype)
  st = Static(family=family, chunk=C, block_v=bv, scale=scale, interpret=interpret)
  o, S_final = _delta(q, k, v, pad_t(beta_BxTxH), pad_t(g), S0, st, dtype)
  o_BxTxHxDv = jnp.moveaxis(o, 1, 3).reshape(B, Tp, H, Dvp)[:, :T, :, :Dv]
  return o_BxTxHxDv.astype(v_BxTxHxDv.dtype), S_final[:, :, :Dk, :Dv]
