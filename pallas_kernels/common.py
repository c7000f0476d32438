"""Helpers shared by the kernels: the `impl=` resolution, interpret mode, padding, and a
top-k that takes XLA:CPU's fast path (`top_k`).

Every op resolves its `impl` argument the same way:

  'auto'        the Pallas kernel written for this backend (GPU or TPU), else the reference.
  'xla'         the plain-jnp reference (any backend, any dtype).
  'pallas'      the kernel for this backend; on CPU the GPU-style (Triton) kernel in
                interpret mode (what the tests and the model-level check use).
  'pallas_gpu'  the GPU-style kernel; interpreted unless the backend is a GPU.
  'pallas_tpu'  the Mosaic TPU kernel; interpreted (`pltpu.InterpretParams`) unless on a TPU.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Iterator

import jax
import jax.numpy as jnp

IMPLS = ('auto', 'xla', 'pallas', 'pallas_gpu', 'pallas_tpu')
# Score of a masked key: finite (no inf - inf = NaN in running maxima), far below any real one.
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


def platform() -> str:
  """'gpu', 'tpu' or 'cpu' for the default backend."""
  p = jax.default_backend()
  return 'gpu' if p in ('gpu', 'cuda', 'rocm') else p


def resolve_impl(impl: str, kernels: tuple[str, ...] = ('gpu', 'tpu')) -> tuple[str, Any]:
  """Returns (family, interpret) where family is 'xla', 'gpu' or 'tpu'.

  `kernels` lists the kernel families the op has. `interpret` is False on the family's own
  hardware, else the interpret-mode argument for `pallas_call` (True for GPU-style kernels,
  `pltpu.InterpretParams()` for TPU kernels).
  """
  if impl not in IMPLS:
    raise ValueError(f'Unknown impl {impl!r}; choose one of {IMPLS}.')
  here = platform()
  if impl == 'xla' or (impl == 'auto' and here not in kernels):
    return 'xla', False
  if impl in ('auto', 'pallas'):
    family = here if here in kernels else 'gpu'
  else:
    family = impl.removeprefix('pallas_')
    if family not in kernels:
      raise ValueError(f'This op has no {family} kernel (kernels: {kernels}).')
  return family, interpret_arg(family)


_COMPILE_FOR: set[str] = set()


@contextlib.contextmanager
def compile_for(family: str) -> Iterator[None]:
  """Inside: kernels of `family` are built for their hardware even on another backend.

  For lowering checks on a machine without that hardware, e.g. on CPU:
    with compile_for('gpu'):
      jax.export.export(jax.jit(f), platforms=['cuda'], disabled_checks=...)(*args)
  """
  _COMPILE_FOR.add(family)
  try:
    yield
  finally:
    _COMPILE_FOR.discard(family)


def interpret_arg(family: str) -> Any:
  """False on the family's own hardware, else what `pallas_call(interpret=...)` wants."""
  if platform() == family or family in _COMPILE_FOR:
    return False
  if family == 'tpu':
    from jax.experimental.pallas import tpu as pltpu  # pylint: disable=g-import-not-at-top
    return pltpu.InterpretParams(out_of_bounds_reads='raise')
  return True


def cdiv(a: int, b: int) -> int:
  return -(-a // b)


def round_up(a: int, b: int) -> int:
  return cdiv(a, b) * b


def next_pow2(n: int) -> int:
  return 1 if n <= 1 else 1 << (n - 1).bit_length()


def pad_axis(x: jax.Array | None, axis: int, size: int, value: Any = 0) -> jax.Array | None:
  """Pads `x` along `axis` at the end up to `size` (no-op when already that size)."""
  if x is None or x.shape[axis] == size:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, size - x.shape[axis])
  return jnp.pad(x, widths, constant_values=value)


def dot_precision(dtype: Any) -> Any:
  """float32 inputs: full-precision dots (no TF32), so kernels match the fp32 reference."""
  return jax.lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else None


@functools.lru_cache(maxsize=None)
def triton_params(num_warps: int, num_stages: int) -> Any:
  from jax.experimental.pallas import triton as pltriton  # pylint: disable=g-import-not-at-top
  return pltriton.CompilerParams(num_warps=num_warps, num_stages=num_stages)


def top_k(x: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
  """`jax.lax.top_k(x, k)` over the last axis, any leading shape: ([..., k] values,
  [..., k] int32 indices), highest first, ties to the lowest index, exactly as `lax.top_k`.

  On XLA:CPU, `lax.top_k` becomes a full comparator sort of every row followed by a slice,
  unless its compiler recognises "sort, then take the first k" and calls its TopK runtime
  routine instead. That recognition is fragile: it needs a rank-2 operand and sees through
  neither a second slice of the result nor a reshape it can fold away, so most call sites
  got the sort. Here the rows are flattened to [N, V] and the result goes through an
  `optimization_barrier`, which keeps the pattern intact (`python -m benchmarks.top_k`
  times both at the decoders' call sites). Other backends get `lax.top_k` unchanged.

  k = 1, on every backend, is an argmax (one reduction) and the value it points at (whose
  gradient reaches that one entry, as `lax.top_k`'s does): no TopK routine call or sort, for
  the top token every greedy draft node takes.
  """
  if k == 1:
    ids = jnp.argmax(x, axis=-1, keepdims=True).astype(jnp.int32)
    return jnp.take_along_axis(x, ids, axis=-1), ids
  lead, V = x.shape[:-1], x.shape[-1]

  def cpu(x):
    values, ids = jax.lax.optimization_barrier(jax.lax.top_k(x.reshape(-1, V), k))
    return values.reshape(lead + (k,)), ids.reshape(lead + (k,))

  return jax.lax.platform_dependent(x, cpu=cpu, default=lambda x: tuple(jax.lax.top_k(x, k)))


def sort_descending(x: jax.Array) -> jax.Array:
  """`jnp.sort(x, axis=-1)[..., ::-1]`. On XLA:CPU, float32 rows go through `top_k` (the
  V - 1 largest, then the row's minimum): its TopK routine does not take k = V, and with
  k = V - 1 it beats the comparator sort (`benchmarks.top_k`). Other backends sort."""
  V = x.shape[-1]
  by_sort = lambda x: jnp.sort(x, axis=-1)[..., ::-1]
  if V == 1 or x.dtype != jnp.float32:
    return by_sort(x)

  def cpu(x):
    return jnp.concatenate([top_k(x, V - 1)[0], jnp.min(x, axis=-1, keepdims=True)], axis=-1)

  return jax.lax.platform_dependent(x, cpu=cpu, default=by_sort)


def argsort_descending(x: jax.Array) -> jax.Array:
  """[..., N] int32: `jnp.argsort(-x, axis=-1, stable=True)` (highest first, ties to the
  lowest index). On XLA:CPU, float32 rows go through `top_k` (the N - 1 first, then the one
  index left), which runs in its TopK routine rather than a comparator sort. Other backends
  sort."""
  N = x.shape[-1]
  by_sort = lambda x: jnp.argsort(-x, axis=-1, stable=True).astype(jnp.int32)
  if N == 1 or x.dtype != jnp.float32:
    return by_sort(x)

  def cpu(x):
    ids = top_k(x, N - 1)[1]
    rest = N * (N - 1) // 2 - jnp.sum(ids, axis=-1, keepdims=True)
    return jnp.concatenate([ids, rest.astype(jnp.int32)], axis=-1)

  return jax.lax.platform_dependent(x, cpu=cpu, default=by_sort)


def ranks_descending(x_BxN: jax.Array) -> jax.Array:
  """[B, N] int32: each entry's place in `argsort_descending(x_BxN)` (0 = the largest; ties:
  the lower index first), the inverse of that permutation."""
  B, N = x_BxN.shape
  order = argsort_descending(x_BxN)
  return jnp.zeros((B, N), jnp.int32).at[jnp.arange(B)[:, None], order].set(
      jnp.broadcast_to(jnp.arange(N, dtype=jnp.int32), (B, N)))
