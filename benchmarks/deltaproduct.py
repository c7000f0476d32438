"""Delta-rule speed: chunked form vs naive scan vs attention, forward + backward, with memory.

  python -m benchmarks.deltaproduct --preset=gpu     # T = 2k, 8k; the goal: chunked >= 10x scan
  python -m benchmarks.deltaproduct --preset=cpu     # CPU-feasible sizes (what ran so far)

Measures tokens/s of one jitted forward + backward (gradients w.r.t. every input) at shapes
[B, T, H, Dh] for:
  chunked    pallas_kernels.delta_rule.delta_rule (impl=auto: the chunked jnp form, C = 64)
  naive      delta_rule_recurrent (the scan over T)
  attention  causal softmax attention at the same shapes: jax.nn.dot_product_attention
             (cuDNN in bf16 on a GPU, XLA otherwise)
each at n_h = 1 (DeltaNet) and n_h = 2 (DeltaProduct: the op runs on 2T sub-steps; tokens/s
counts the T tokens). Memory: XLA's temporary buffer size of the compiled step
(`memory_analysis().temp_size_in_bytes`). Ratios are against the naive scan of the same row.
Writes benchmarks/results/deltaproduct[_cpu].md.
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from pallas_kernels.delta_rule import delta_rule, delta_rule_recurrent

PRESETS = {
    # B=1: the naive scan saves every state for its backward (33 GB at T=8k, B=1, H=16 on an
    # H100; B=4 ran out of memory there at T=4k sub-steps).
    'gpu': dict(batch=1, heads=16, head_dim=128, lengths='2048,8192', n_h='1,2', repeats=10,
                dtype='bfloat16', skip_naive_above=8192),
    'cpu': dict(batch=1, heads=4, head_dim=64, lengths='256,1024,2048', n_h='1,2', repeats=3,
                dtype='float32', skip_naive_above=1 << 30),
}


def _inputs(B, T, H, D, dtype, seed=0):
  rng = np.random.default_rng(seed)
  q, k, v = (rng.standard_normal((B, T, H, D)).astype(np.float32) for _ in range(3))
  k /= np.linalg.norm(k, axis=-1, keepdims=True)
  beta = 2 / (1 + np.exp(-rng.standard_normal((B, T, H)))).astype(np.float32)
  g = -np.log1p(np.exp(rng.standard_normal((B, T, H)))).astype(np.float32) * 0.1
  cast = lambda x: jnp.asarray(x, dtype)
  return cast(q), cast(k), cast(v), jnp.asarray(beta), jnp.asarray(g)


def _fwd_bwd(op):
  def loss(q, k, v, beta, g):
    return jnp.sum(op(q, k, v, beta, g).astype(jnp.float32))
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4)))


def _delta(kind, chunk):
  if kind == 'chunked':
    return lambda q, k, v, b, g: delta_rule(q, k, v, b, g, chunk_size=chunk)[0]
  return lambda q, k, v, b, g: delta_rule_recurrent(q, k, v, b, g)[0]


def _attention(q, k, v, beta, g):
  del beta, g
  gpu_bf16 = jax.devices()[0].platform == 'gpu' and q.dtype in (jnp.bfloat16, jnp.float16)
  return jax.nn.dot_product_attention(q, k, v, is_causal=True,
                                      implementation='cudnn' if gpu_bf16 else None)


def measure(fn, args, repeats: int) -> tuple[float, float]:
  """(seconds per call, temporary bytes of the compiled call)."""
  compiled = fn.lower(*args).compile()
  mem = compiled.memory_analysis()
  temp = float(getattr(mem, 'temp_size_in_bytes', 0) or 0) if mem is not None else float('nan')
  run = lambda: jax.block_until_ready(compiled(*args))
  return common.median_time(run, warmup=1, repeats=repeats), temp


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--preset', default='cpu', choices=sorted(PRESETS))
  for name in ('batch', 'heads', 'head_dim', 'repeats'):
    ap.add_argument(f'--{name}', type=int, default=None)
  for name in ('lengths', 'n_h', 'dtype'):
    ap.add_argument(f'--{name}', default=None)
  ap.add_argument('--chunk_size', type=int, default=64)
  ap.add_argument('--skip_naive_above', type=int, default=None,
                  help='skip the naive scan above this many sub-steps (memory; default by '
                       'preset)')
  ap.add_argument('--name', default=None, help='results file name (default by preset)')
  args = ap.parse_args()
  for key, value in PRESETS[args.preset].items():
    if getattr(args, key) is None:
      setattr(args, key, value)
  B, H, D = args.batch, args.heads, args.head_dim
  dtype = jnp.dtype(args.dtype)
  rows = []
  for T in (int(x) for x in args.lengths.split(',')):
    for n_h in (int(x) for x in args.n_h.split(',')):
      L = n_h * T
      ins = _inputs(B, L, H, D, dtype)
      results = {}
      for kind in ('naive', 'chunked'):
        if kind == 'naive' and L > args.skip_naive_above:
          continue
        results[kind] = measure(_fwd_bwd(_delta(kind, args.chunk_size)), ins, args.repeats)
      if n_h == 1:
        try:  # XLA attention materialises [T, T] scores: out of memory at long T on a GPU
          results['attention'] = measure(_fwd_bwd(_attention), ins, args.repeats)
        except Exception as e:  # pylint: disable=broad-except
          print(f'  attention at T={T}: {type(e).__name__} (row left out)', flush=True)
      base = results.get('naive', (float('nan'),))[0]
      for kind, (sec, temp) in results.items():
        rows.append([T, n_h, kind, B * T / sec, base / sec, temp / 2**20])
      print(rows[-len(results):], flush=True)
  header = ['T (tokens)', 'n_h', 'op', 'tokens/s fwd+bwd', 'x naive scan', 'temp MiB']
  body = (f'Forward + backward of the delta rule (gradients w.r.t. q, k, v, beta, g) at B={B}, '
          f'H={H}, Dk=Dv={D}, inputs {args.dtype} (state and decays float32), chunk '
          f'{args.chunk_size}; attention: causal softmax attention at the same shapes (n_h = 1 '
          'rows only). DeltaProduct n_h = 2 runs the op on 2T sub-steps; tokens/s counts the T '
          'tokens.\n\n' + common.markdown_table(header, rows) + '\n')
  body += '\n' + _goal_line(rows) + '\n'
  if hasattr(os, 'getloadavg'):
    body += (f'\nHost load average (1, 5, 15 min) at the end of the run: '
             f'{", ".join(f"{x:.1f}" for x in os.getloadavg())} on {os.cpu_count()} cores.\n')
  name = args.name or ('deltaproduct' if args.preset == 'gpu' else 'deltaproduct_cpu')
  path = os.path.join(common.RESULTS_DIR, f'{name}.md')
  earlier = _earlier_runs(path)
  print(common.write_results(name, 'Delta rule: chunked vs naive scan vs attention',
                             body + earlier))


GOAL_T, GOAL_X = 8192, 10.0


def _goal_line(rows) -> str:
  """The issue's goal (chunked >= 10x the naive scan at T = 8k, n_h = 1, on a GPU)."""
  on_gpu = jax.devices()[0].platform == 'gpu'
  hit = [r for r in rows if r[0] == GOAL_T and r[1] == 1 and r[2] == 'chunked']
  if not on_gpu or not hit or not np.isfinite(hit[0][4]):
    return (f'Goal (chunked >= {GOAL_X:g}x the naive scan at T = {GOAL_T}, fwd + bwd, on a '
            'GPU): not measured by this run; `python -m benchmarks.deltaproduct --preset=gpu` '
            'on a GPU measures it.')
  x = hit[0][4]
  return (f'Goal (chunked >= {GOAL_X:g}x the naive scan at T = {GOAL_T}, n_h = 1): '
          f'{"met" if x >= GOAL_X else "NOT met"} ({x:.1f}x).')


def _earlier_runs(path: str) -> str:
  """The previous contents of the results file (another device or preset), kept below."""
  if not os.path.exists(path):
    return ''
  with open(path) as f:
    old = f.read()
  old = old.split('\n## Earlier run', 1)[0]  # keep one level: the run just replaced
  lines = old.splitlines()
  if lines and lines[0].startswith('# '):
    lines = lines[1:]
  return '\n## Earlier run (replaced by the run above)\n' + '\n'.join(lines).rstrip() + '\n'


if __name__ == '__main__':
  main()
