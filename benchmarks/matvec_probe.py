"""Is a one-row bf16 matmul slower than a two-row one on this device? (the GEMV question)

  python -m benchmarks.matvec_probe            # benchmarks/results/matvec_probe_<device>.md

The forward-cost curve of `base` on the H200 (benchmarks/results/forward_cost_gpu_h200.md)
has one token per row cost 1.8x two tokens per row at batch 1. Both shapes take the same
attention path there (the 'decode' case, XLA over the cache layout), but a batch-1, one-token
forward is the only shape whose matmuls have a single row (M = 1): this probe times the
matmuls alone, x[M, K] @ W[K, N] in bf16 for M = 1, 2, 8 over `base`-sized weights, in a
compiled loop whose every step depends on the whole last product, and writes the
microseconds per product and the bandwidth of reading W.
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


def time_matmul(m: int, k: int, n: int, dtype=jnp.bfloat16, steps: int = STEPS) -> float:
  """Seconds per x[m, k] @ w[k, n], best of 3 runs of a loop of `steps` dependent products."""
  w = jax.random.normal(jax.random.key(0), (k, n), dtype)
  x = jax.random.normal(jax.random.key(1), (m, k), dtype)

  @jax.jit
  def loop(x, w):
    def body(_, x):
      # The next product depends on every column of this one (a slice of it could let XLA
      # compute, and read, only part of W).
      y = jnp.sum(x @ w, axis=-1, keepdims=True, dtype=jnp.float32)
      return x + (y * 1e-6).astype(x.dtype)
    return jax.lax.fori_loop(0, steps, body, x)

  return forward_timing.time_min(lambda: jax.block_until_ready(loop(x, w)), 3) / steps


def main():
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument('--steps', type=int, default=STEPS, help='products per timed loop')
  ap.add_argument('--out', default='', help='results name (default matvec_probe_<device>)')
  args = ap.parse_args()
  rows = []
  for k, n in SHAPES:
    for m in (1, 2, 8):
      s = time_matmul(m, k, n, steps=args.steps)
      rows.append([m, k, n, f'{s * 1e6:.1f}', f'{k * n * 2 / s / 1e9:.0f}'])
      print(f'M={m} K={k} N={n}: {s * 1e6:.1f} us, W read at {rows[-1][-1]} GB/s', flush=True)
  body = ('bf16 x[M, K] @ W[K, N], a compiled loop of dependent products, best of 3 runs '
          f'divided by {args.steps}. GB/s: the bytes of W over the time of one product.\n\n'
          + common.markdown_table(['M', 'K', 'N', 'us per product', 'W read GB/s'], rows))
  print(common.write_results(args.out or f'matvec_probe_{forward_cost.device_tag()}',
                             'One-row vs two-row matmuls', body))


if __name__ == '__main__':
  main()
