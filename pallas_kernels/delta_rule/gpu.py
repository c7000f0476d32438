"""The delta rule's chunk recurrences for GPUs: Pallas kernels with the Triton lowering.

One program per (batch, head, block of Dv columns): the state's columns evolve
independently, so S [Dk, block_v] stays in registers while the program walks the N chunks
(forward: first to last; backward: last to first). Chunk factors come from `chunk.prepare`
([B, H, N, C, .]); matmul operands are in the input dtype, the state and accumulations f32.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels import common

F32 = jnp.float32


def _dot(a, b, contract=(1, 0)):
  return lax.dot_general(a, b, (((contract[0],), (contract[1],)), ((), ())),
                         preferred_element_type=F32, precision=common.dot_precision(a.dtype))


def _fwd_kernel(w_ref, u_ref, p_ref, qg_ref, kt_ref, d_ref, s0_ref, o_ref, sf_ref, *starts,
                N: int):
  def body(n, S):
    if starts:
      starts[0][n] = S
    Sc = S.astype(w_ref.dtype)
    vnew = u_ref[n] - _dot(w_ref[n], Sc)  # [C, bv]
    o_ref[n] = _dot(qg_ref[n], Sc) + _dot(p_ref[n], vnew.astype(p_ref.dtype))
    return d_ref[n] * S + _dot(kt_ref[n], vnew.astype(kt_ref.dtype), (0, 0))

  sf_ref[...] = lax.fori_loop(0, N, body, s0_ref[...])


def _bwd_kernel(do_ref, p_ref, qg_ref, kt_ref, w_ref, d_ref, dsf_ref, ds_ends_ref, ds0_ref, *,
                N: int):
  def body(i, dS):
    n = N - 1 - i
    ds_ends_ref[n] = dS
    do = do_ref[n]
    dt = p_ref.dtype
    dvnew = _dot(p_ref[n], do.astype(dt), (0, 0)) + _dot(kt_ref[n], dS.astype(dt))  # [C, bv]
    return (d_ref[n] * dS + _dot(qg_ref[n], do.astype(dt), (0, 0))
            - _dot(w_ref[n], dvnew.astype(dt), (0, 0)))

  ds0_ref[...] = lax.fori_loop(0, N, body, dsf_ref[...])


def _specs(N, C, Dk, bv):
  whole = lambda *shape: pl.BlockSpec((None, None, N) + shape, lambda b, h, j: (b, h, 0, 0, 0))
  cols = lambda rows: pl.BlockSpec((None, None, N, rows, bv), lambda b, h, j: (b, h, 0, 0, j))
  state = pl.BlockSpec((None, None, Dk, bv), lambda b, h, j: (b, h, 0, j))
  decay = pl.BlockSpec((None, None, N), lambda b, h, j: (b, h, 0))
  return whole, cols, state, decay


def forward_scan(p, S0, st, save_states: bool):
  """(o [B, H, N, C, Dv] f32, final state [B, H, Dk, Dv], chunk start states or None)."""
  B, H, N, C, Dk = p.W.shape
  Dv = p.U.shape[-1]
  bv = st.block_v
  whole, cols, state, decay = _specs(N, C, Dk, bv)
  out_specs = [cols(C), state]
  out_shape = [jax.ShapeDtypeStruct((B, H, N, C, Dv), F32),
               jax.ShapeDtypeStruct((B, H, Dk, Dv), F32)]
  if save_states:
    out_specs.append(cols(Dk))
    out_shape.append(jax.ShapeDtypeStruct((B, H, N, Dk, Dv), F32))
  outs = pl.pallas_call(
      functools.partial(_fwd_kernel, N=N),
      grid=(B, H, Dv // bv),
      in_specs=[whole(C, Dk), cols(C), whole(C, C), whole(C, Dk), whole(C, Dk), decay, state],
      out_specs=out_specs, out_shape=out_shape,
      compiler_params=common.triton_params(4, 2), interpret=st.interpret,
      name='delta_rule_fwd_scan',
  )(p.W, p.U, p.P, p.Qg, p.Kt, p.decay, S0)
  return outs[0], outs[1], outs[2] if save_states else None


def backward_scan(p, do, dS_final, st):
  """(dS_ends [B, H, N, Dk, Dv]: gradient of each chunk's end state, dS0 [B, H, Dk, Dv])."""
  B, H, N, C, Dk = p.W.shape
  Dv = p.U.shape[-1]
  bv = st.block_v
  whole, cols, state, decay = _specs(N, C, Dk, bv)
  return pl.pallas_call(
      functools.partial(_bwd_kernel, N=N),
      grid=(B, H, Dv // bv),
      in_specs=[cols(C), whole(C, C), whole(C, Dk), whole(C, Dk), whole(C, Dk), decay, state],
      out_specs=[cols(Dk), state],
      out_shape=[jax.ShapeDtypeStruct((B, H, N, Dk, Dv), F32),
                 jax.ShapeDtypeStruct((B, H, Dk, Dv), F32)],
      compiler_params=common.triton_params(4, 2), interpret=st.interpret,
      name='delta_rule_bwd_scan',
  )(do, p.P, p.Qg, p.Kt, p.W, p.decay, dS_final)
