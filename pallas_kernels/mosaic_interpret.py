"""Mosaic GPU kernels on a CPU: jax's GPU interpret mode, plus what it lacks for attention.

jax 0.10 can run `plgpu.kernel` programs on the CPU (`InterpretGPUParams`: shared memory,
warpgroups as threads, TMA copies and barriers simulated). Two things an attention kernel
needs are missing there, and this module supplies them:

* a `wgmma` whose operand is a transposed shared-memory view (`plgpu.transpose_ref(k, (1, 0))`,
  how Q·Kᵀ reads K without moving it): the interpreter only follows index transforms. The
  replacement reads the operand under its index transforms and then applies the permutation.
* `plgpu.layout_cast` / `plgpu.broadcasted_iota(..., layout=...)` / `plgpu.load(...,
  layout=...)` have no CPU lowering: the kernels call `layout()` / `iota()` / `load()`
  below, which drop the register-layout hint when interpreting (the values are the same;
  the hint only tells Mosaic how to place them).

`wgmma` with a register (not shared-memory) left operand is not interpreted either; kernels
that use one take a flag to stage it through shared memory instead (`p_in_smem` in
`flash_attention/hopper.py` and `decode_attention/hopper.py`).

`interpret_params()` installs the `wgmma` replacement (once per process) and returns the
parameters to pass as `interpret=`.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from jax import lax

_INSTALLED = False


def interpret_params():
  """The `interpret=` value for a Mosaic GPU kernel run on the CPU (installs the shim)."""
  from jax._src.pallas.mosaic_gpu.interpret import params as interpret_params_lib
  _install()
  return interpret_params_lib.InterpretGPUParams()


def layout(x, layout_, interpret: bool):
  """`plgpu.layout_cast(x, layout_)` on a GPU; `x` unchanged when interpreting."""
  if interpret:
    return x
  import jax.experimental.pallas.mosaic_gpu as plgpu
  return plgpu.layout_cast(x, layout_)


def iota(dtype, shape, dim, layout_, interpret: bool):
  """`plgpu.broadcasted_iota` with a register layout on a GPU; `lax`'s when interpreting."""
  if interpret:
    return lax.broadcasted_iota(dtype, shape, dim)
  import jax.experimental.pallas.mosaic_gpu as plgpu
  return plgpu.broadcasted_iota(dtype, shape, dim, layout=layout_)


def load(ref, layout_, interpret: bool):
  """`plgpu.load(ref, (), layout=layout_)` on a GPU (a shared-memory tile into a register
  layout, e.g. a mask tile beside a wgmma result); `ref[...]` when interpreting."""
  if interpret:
    return ref[...]
  import jax.experimental.pallas.mosaic_gpu as plgpu
  return plgpu.load(ref, (), layout=layout_)


def kernel_kwargs(interpret, approx_math: bool = True) -> dict:
  """`plgpu.kernel`'s keyword arguments: jax's GPU interpret mode when `interpret` is truthy
  (True = `interpret_params()`, or the parameters given), else the GPU compiler's."""
  if interpret:
    return {'interpret': interpret_params() if interpret is True else interpret}
  import jax.experimental.pallas.mosaic_gpu as plgpu
  return {'compiler_params': plgpu.CompilerParams(approx_math=approx_math)}


def operand(x, staging, stage: bool):
  """A value as a wgmma operand: itself (from registers), or with `stage` written to the
  shared-memory `staging` ref first (the interpreter has no register operand)."""
  if not stage:
    return x
  import jax.experimental.pallas.mosaic_gpu as plgpu
  staging[...] = x
  plgpu.commit_smem()
  return staging


def registers(n: int, action: str, interpret: bool) -> None:
  """`plgpu.set_max_registers(n, action=action)` for a warpgroup on the GPU (consumers take
  more, the producer fewer); nothing when interpreting."""
  if not interpret:
    import jax.experimental.pallas.mosaic_gpu as plgpu
    plgpu.set_max_registers(n, action=action)


def _split_transpose(transforms):
  """(index transforms, permutation or None) of a ref's transforms (transpose last)."""
  from jax._src.state import types as state_types
  for i, t in enumerate(transforms):
    if isinstance(t, state_types.TransposeTransform):
      if i != len(transforms) - 1:
        raise NotImplementedError('interpreted wgmma: an index after a transpose')
      return transforms[:i], tuple(int(p) for p in t.permutation)
  return transforms, None


def _install():
  global _INSTALLED
  if _INSTALLED:
    return
  from jax._src.pallas.mosaic.interpret import utils as interpret_utils
  from jax._src.pallas.mosaic_gpu.interpret import gpu_callbacks as cb

  original = cb.wgmma

  @functools.wraps(original)
  def wgmma(*, token, device_id, grid_point_coords, thread_id, acc_allocation_key_as_array,
            acc_transforms, acc_dtype, a_allocation_key_as_array, a_transforms,
            b_allocation_key_as_array, b_transforms, source_info=None):
    a_transforms = cb._remove_noop_transforms(a_transforms)
    b_transforms = cb._remove_noop_transforms(b_transforms)
    a_index, a_perm = _split_transpose(a_transforms)
    b_index, b_perm = _split_transpose(b_transforms)
    if a_perm is None and b_perm is None:
      return original(
          token=token, device_id=device_id, grid_point_coords=grid_point_coords,
          thread_id=thread_id, acc_allocation_key_as_array=acc_allocation_key_as_array,
          acc_transforms=acc_transforms, acc_dtype=acc_dtype,
          a_allocation_key_as_array=a_allocation_key_as_array, a_transforms=a_transforms,
          b_allocation_key_as_array=b_allocation_key_as_array, b_transforms=b_transforms,
          source_info=source_info)
    memory = cb._get_shared_memory()
    thread = memory.get_global_thread_id(int(device_id), int(thread_id))
    info = interpret_utils.GPULoggingInfo(
        device_id=int(device_id), grid_point_coords=tuple(int(x) for x in grid_point_coords),
        thread_id=int(thread_id), source_info=source_info)

    def read(key, index, perm):
      index = jax.tree.map(int, index)
      value, _, _ = memory.get_buffer_content(
          cb.HostAllocationKey.from_array(key), interpret_utils.to_range(index), thread,
          logging_info=info)
      return value if perm is None else np.transpose(value, perm)

    a = read(a_allocation_key_as_array, a_index, a_perm)
    b = read(b_allocation_key_as_array, b_index, b_perm)
    acc_key = cb.HostAllocationKey.from_array(acc_allocation_key_as_array)
    acc_range = interpret_utils.to_range(
        jax.tree.map(int, cb._remove_noop_transforms(acc_transforms)))
    acc, _, _ = memory.get_buffer_content(acc_key, acc_range, thread, logging_info=info)
    memory.store_buffer_content(acc_key, acc_range, acc + np.matmul(a, b, dtype=acc_dtype),
                                thread, logging_info=info)
    return token

  cb.wgmma = wgmma
  _INSTALLED = True


def mma(acc, lhs, rhs, shape, interpret: bool):
  """acc + lhs @ rhs by one wgmma ([M, N] float32; acc None = a fresh product).

  On the GPU the product accumulates into `acc` in place (`pl.run_state` over an
  accumulator initialised from it); the interpreter has no `run_state`, so there a fresh
  accumulator is added to `acc` (the same value).
  """
  import jax.experimental.pallas as pl  # pylint: disable=g-import-not-at-top
  import jax.experimental.pallas.mosaic_gpu as plgpu
  if acc is not None and not interpret:
    return pl.run_state(lambda ref: plgpu.wgmma(ref, lhs, rhs))(plgpu.ACC.init(acc))

  def product(ref):
    plgpu.wgmma(ref, lhs, rhs)
    return ref[...]
  fresh = pl.run_scoped(product, plgpu.ACC(shape, jax.numpy.float32))
  return fresh if acc is None else acc + fresh
