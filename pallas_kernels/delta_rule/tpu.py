"""The delta rule's chunk recurrences for TPUs: Mosaic kernels.

Grid (B, H, Dv blocks, chunks) with the chunk axis sequential ("arbitrary"): each step DMAs
one chunk's factors into VMEM (pipelined with the previous step's compute) and updates the
state [Dk, block_v] held in a VMEM scratch. The backward walks the chunks in reverse via its
index maps. The per-chunk decay arrives lane-replicated as [8, 128].
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

F32 = jnp.float32
TN = (((0,), (0,)), ((), ()))  # contract the leading dims: a^T b


def _mm(a, b):
  return jnp.dot(a, b, preferred_element_type=F32)


def _tmm(a, b):
  return lax.dot_general(a, b, TN, preferred_element_type=F32)


def _fwd_kernel(w_ref, u_ref, p_ref, qg_ref, kt_ref, d_ref, s0_ref, o_ref, sf_ref, *rest,
                N: int):
  starts_ref, s_scr = rest if len(rest) == 2 else (None, rest[0])
  n = pl.program_id(3)

  @pl.when(n == 0)
  def _init():
    s_scr[...] = s0_ref[...]

  S = s_scr[...]
  if starts_ref is not None:
    starts_ref[...] = S
  Sc = S.astype(w_ref.dtype)
  vnew = u_ref[...] - _mm(w_ref[...], Sc)
  o_ref[...] = _mm(qg_ref[...], Sc) + _mm(p_ref[...], vnew.astype(p_ref.dtype))
  S = d_ref[0:1, 0:1] * S + _tmm(kt_ref[...], vnew.astype(kt_ref.dtype))
  s_scr[...] = S

  @pl.when(n == N - 1)
  def _finish():
    sf_ref[...] = S


def _bwd_kernel(do_ref, p_ref, qg_ref, kt_ref, w_ref, d_ref, dsf_ref, ds_ends_ref, ds0_ref,
                ds_scr, *, N: int):
  i = pl.program_id(3)

  @pl.when(i == 0)
  def _init():
    ds_scr[...] = dsf_ref[...]

  dS = ds_scr[...]
  ds_ends_ref[...] = dS
  dt = p_ref.dtype
  do = do_ref[...].astype(dt)
  dvnew = _tmm(p_ref[...], do) + _mm(kt_ref[...], dS.astype(dt))
  dS = (d_ref[0:1, 0:1] * dS + _tmm(qg_ref[...], do)
        - _tmm(w_ref[...], dvnew.astype(dt)))
  ds_scr[...] = dS

  @pl.when(i == N - 1)
  def _finish():
    ds0_ref[...] = dS


def _specs(C, Dk, bv, chunk):
  """Per-step block specs; `chunk(n)` maps the sequential grid index to a chunk."""
  blk = lambda *shape: pl.BlockSpec((None, None, None) + shape,
                                    lambda b, h, j, n: (b, h, chunk(n), 0, 0))
  col = lambda rows: pl.BlockSpec((None, None, None, rows, bv),
                                  lambda b, h, j, n: (b, h, chunk(n), 0, j))
  state = pl.BlockSpec((None, None, Dk, bv), lambda b, h, j, n: (b, h, 0, j))
  return blk, col, state


def _decay(p):
  return jnp.broadcast_to(p.decay[..., None, None], p.decay.shape + (8, 128))


def _params():
  return pltpu.CompilerParams(
      dimension_semantics=('parallel', 'parallel', 'parallel', 'arbitrary'))


def forward_scan(p, S0, st, save_states: bool):
  B, H, N, C, Dk = p.W.shape
  Dv = p.U.shape[-1]
  bv = st.block_v
  blk, col, state = _specs(C, Dk, bv, lambda n: n)
  out_specs = [col(C), state]
  out_shape = [jax.ShapeDtypeStruct((B, H, N, C, Dv), F32),
               jax.ShapeDtypeStruct((B, H, Dk, Dv), F32)]
  if save_states:
    out_specs.append(col(Dk))
    out_shape.append(jax.ShapeDtypeStruct((B, H, N, Dk, Dv), F32))
  outs = pl.pallas_call(
      functools.partial(_fwd_kernel, N=N),
      grid=(B, H, Dv // bv, N),
      in_specs=[blk(C, Dk), col(C), blk(C, C), blk(C, Dk), blk(C, Dk), blk(8, 128), state],
      out_specs=out_specs, out_shape=out_shape,
      scratch_shapes=[pltpu.VMEM((Dk, bv), F32)],
      compiler_params=_params(), interpret=st.interpret, name='delta_rule_fwd_scan_tpu',
  )(p.W, p.U, p.P, p.Qg, p.Kt, _decay(p), S0)
  return outs[0], outs[1], outs[2] if save_states else None


def backward_scan(p, do, dS_final, st):
  B, H, N, C, Dk = p.W.shape
  Dv = p.U.shape[-1]
  bv = st.block_v
  blk, col, state = _specs(C, Dk, bv, lambda i: N - 1 - i)
  return pl.pallas_call(
      functools.partial(_bwd_kernel, N=N),
      grid=(B, H, Dv // bv, N),
      in_specs=[col(C), blk(C, C), blk(C, Dk), blk(C, Dk), blk(C, Dk), blk(8, 128), state],
      out_specs=[col(Dk), state],
      out_shape=[jax.ShapeDtypeStruct((B, H, N, Dk, Dv), F32),
                 jax.ShapeDtypeStruct((B, H, Dk, Dv), F32)],
      scratch_shapes=[pltpu.VMEM((Dk, bv), F32)],
      compiler_params=_params(), interpret=st.interpret, name='delta_rule_bwd_scan_tpu',
  )(do, p.P, p.Qg, p.Kt, p.W, _decay(p), dS_final)
