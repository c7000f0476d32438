"""Is a one-row bf16 matmul slower than a two-row one on this device? (the GEMV question)

  python -m benchmarks.matvec_probe            # benchmarks/results/matvec_probe_<device>.md
  python -m benchmarks.matvec_probe --dtype=float32 --rows=1,2,5,8 --layouts=kn,nk \
      --shapes=512x2048,2048x512,512x512 --out=matvec_probe_cpu_mem   # `mem`'s weights, CPU

The forward-cost curve of `base` on the H200 (benchmarks/results/forward_cost_gpu_h200.md)
has one token per row cost 1.8x two tokens per row at batch 1. Both shapes take the same
attention path there (the 'decode' case, XLA over the cache layout), but a batch-1, one-token
forward is the only shape whose matmuls have a single row (M = 1): this probe times the
matmuls alone, x[M, K] @ W[K, N] in bf16 for M = 1, 2, 8 over `base`-sized weights, in a
compiled loop whose every step depends on the whole last product, and writes the
microseconds per product and the bandwidth of reading W.

`--layouts=kn,nk` also times the same product with W stored transposed, [N, K] (the
contraction over W's minor dimension, as `jnp.einsum('mk,nk->mn')`): the layout a
compiler's one-row product may read faster. The model stores [K, N].
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from benchmarks import common
from benchmarks import forward_cost
from decoding import forward_timing

SHAPES = ((2048, 8192), (8192, 2048), (2048, 32768))  # base: MLP up, down, unembedding
STEPS = 200


LAYOUTS = ('kn', 'nk')  # W stored [K, N] (the model's) or [N, K]


def product(x_MxK: jax.Array, w: jax.Array, layout: str = 'kn') -> jax.Array:
  """x @ W [M, N] for W stored as `layout` ('kn': [K, N]; 'nk': [N, K], contracted over its
  minor dimension)."""
  if layout not in LAYOUTS:
    raise ValueError(f'Unknown layout {layout!r}; choose one of {LAYOUTS}.')
  return x_MxK @ w if layout == 'kn' else jnp.einsum('mk,nk->mn', x_MxK, w)


def time_matmul(m: int, k: int, n: int, dtype=jnp.bfloat16, steps: int = STEPS,
                layout: str = 'kn') -> float:
  """Seconds per x[m, k] @ W (W [k, n] stored as `layout`), best of 3 runs of a loop of
  `steps` dependent products."""
  shape = (k, n) if layout == 'kn' else (n, k)
  w = jax.random.normal(jax.random.key(0), shape, dtype)
  x = jax.random.normal(jax.random.key(1), (m, k), dtype)

  @jax.jit
  def loop(x, w):
    def body(_, x):
      # The next product depends on every column of this one (a slice of it could let XLA
      # compute, and read, only part of W).
      y = jnp.sum(product(x, w, layout), axis=-1, keepdims=True, dtype=jnp.float32)
      return x + (y * 1e-6).astype(x.dtype)
    return jax.lax.fori_loop(0, steps, body, x)

  return forward_timing.time_min(lambda: jax.block_until_ready(loop(x, w)), 3) / steps


def parse_shapes(spec: str) -> tuple[tuple[int, int], ...]:
  """'KxN,KxN,...' -> ((K, N), ...)."""
  out = []
  for part in spec.split(','):
    k, sep, n = part.strip().lower().partition('x')
    if not sep or not k.isdigit() or not n.isdigit():
      raise ValueError(f'--shapes: expected KxN items such as 2048x8192, got {part!r}.')
    out.append((int(k), int(n)))
  return tuple(out)


def main():
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument('--steps', type=int, default=STEPS, help='products per timed loop')
  ap.add_argument('--out', default='', help='results name (default matvec_probe_<device>)')
  ap.add_argument('--dtype', default='bfloat16', choices=('bfloat16', 'float32'))
  ap.add_argument('--rows', default='1,2,8', help='M values, comma-separated')
  ap.add_argument('--shapes', default=','.join(f'{k}x{n}' for k, n in SHAPES),
                  help='KxN weight shapes, comma-separated (default: base\'s)')
  ap.add_argument('--layouts', default='kn',
                  help='kn (W [K, N], the model\'s) and/or nk (W stored [N, K])')
  args = ap.parse_args()
  dtype = jnp.dtype(args.dtype)
  layouts = [l.strip() for l in args.layouts.split(',')]
  for l in layouts:
    if l not in LAYOUTS:
      raise SystemExit(f'--layouts: unknown layout {l!r}; choose from {LAYOUTS}.')
  rows = []
  for k, n in parse_shapes(args.shapes):
    for layout in layouts:
      for m in (int(r) for r in args.rows.split(',')):
        s = time_matmul(m, k, n, dtype=dtype, steps=args.steps, layout=layout)
        rows.append([m, k, n, f'[{layout[0].upper()}, {layout[1].upper()}]', f'{s * 1e6:.1f}',
                     f'{k * n * dtype.itemsize / s / 1e9:.0f}'])
        print(f'M={m} K={k} N={n} W {layout}: {s * 1e6:.1f} us, W read at {rows[-1][-1]} GB/s',
              flush=True)
  body = (f'{args.dtype} x[M, K] @ W, a compiled loop of dependent products, best of 3 runs '
          f'divided by {args.steps}; W stored [K, N] (the model\'s layout) or [N, K]. GB/s: '
          'the bytes of W over the time of one product.\n\n'
          + common.markdown_table(['M', 'K', 'N', 'W stored', 'us per product', 'W read GB/s'],
                                  rows))
  print(common.write_results(args.out or f'matvec_probe_{forward_cost.device_tag()}',
                             'One-row vs two-row matmuls', body))


if __name__ == '__main__':
  main()
