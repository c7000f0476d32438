"""Top-k, sorts and orderings on XLA:CPU: `lax.top_k` / `jnp.sort` against `kernel_common`.

  python -m benchmarks.top_k                       # ops, then sampled AR on runs/tiny
  python -m benchmarks.top_k --workdir=''          # ops only

`lax.top_k` on XLA:CPU is a comparator sort of every row unless the compiler recognises
"sort, then the first k" on a rank-2 operand; `pallas_kernels.common.top_k` (and
`sort_descending`, `argsort_descending`, built on it) keep that pattern intact so that the
TopK runtime routine runs instead. Two parts, each side by side in one process:

* ops: each call site's shape, in a compiled loop whose every call depends on the last (as a
  decode loop calls it), the plain jax call against ours; microseconds per call, and whether
  the results are equal;
* decode: AR with temperature 0.7, top-k 50 and top-p 0.9 on a trained run (`--workdir`),
  compiled twice, once with `kernel_common`'s three functions replaced by the plain jax calls
  (what the decoders called before), passes alternated, best of `--repeats`; tokens/s and
  whether the tokens are equal (the filters are exact, so they must be).

Writes benchmarks/results/top_k_<device>.md.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from decoding import compare, forward_timing, limits, runner
from decoding import sampling as sampling_lib
import pallas_kernels.common as kernel_common
import workbench


def plain_top_k(x, k):
  return tuple(jax.lax.top_k(x, k))


def plain_sort_descending(x):
  return jnp.sort(x, axis=-1)[..., ::-1]


def plain_argsort_descending(x):
  return jnp.argsort(-x, axis=-1, stable=True).astype(jnp.int32)


# (name, call site, shape, the op as ours, the op as before)
OPS: list[tuple[str, str, tuple[int, ...], Callable, Callable]] = [
    ('top_k k=8, ids', 'drafter children (Token Recycling, trees)', (4, 1, 272),
     lambda x: kernel_common.top_k(x, 8)[1], lambda x: plain_top_k(x, 8)[1]),
    ('top_k k=50, k-th value', 'top-k filter (byte vocabulary)', (8, 272),
     lambda x: kernel_common.top_k(x, 50)[0][..., -1:], lambda x: plain_top_k(x, 50)[0][..., -1:]),
    ('top_k k=50, k-th value', 'top-k filter (32k vocabulary)', (8, 32000),
     lambda x: kernel_common.top_k(x, 50)[0][..., -1:], lambda x: plain_top_k(x, 50)[0][..., -1:]),
    ('sort descending', 'top-p filter (byte vocabulary)', (8, 272),
     kernel_common.sort_descending, plain_sort_descending),
    ('sort descending', 'top-p filter (32k vocabulary)', (8, 32000),
     kernel_common.sort_descending, plain_sort_descending),
    ('argsort descending', 'diffusion commit order', (8, 256),
     kernel_common.argsort_descending, plain_argsort_descending),
]


def time_op(fn: Callable, shape: tuple[int, ...], steps: int, repeats: int
            ) -> tuple[float, np.ndarray]:
  """(seconds per call, the first call's result) for `fn` in a loop of dependent calls."""
  x0 = jax.random.normal(jax.random.key(0), shape, jnp.float32)

  @jax.jit
  def loop(x):
    def body(_, carry):
      x, acc = carry
      y = fn(x)
      # The next input depends on this result, so no call can be hoisted or skipped.
      return x + 1e-6 * jnp.sum(y.astype(jnp.float32)), acc + jnp.sum(y.astype(jnp.float32))
    return jax.lax.fori_loop(0, steps, body, (x, jnp.float32(0)))

  seconds = forward_timing.time_min(lambda: jax.block_until_ready(loop(x0)), repeats) / steps
  return seconds, np.asarray(jax.jit(fn)(x0))


@contextlib.contextmanager
def plain_orderings() -> Iterator[None]:
  """Inside: `kernel_common`'s top_k / sort_descending / argsort_descending are the plain jax
  calls (traced anew: jax's caches are cleared on entry and exit)."""
  saved = (kernel_common.top_k, kernel_common.sort_descending, kernel_common.argsort_descending)
  jax.clear_caches()
  kernel_common.top_k, kernel_common.sort_descending, kernel_common.argsort_descending = (
      plain_top_k, plain_sort_descending, plain_argsort_descending)
  try:
    yield
  finally:
    kernel_common.top_k, kernel_common.sort_descending, kernel_common.argsort_descending = saved
    jax.clear_caches()


def measure_ops(steps: int, repeats: int) -> list[list[Any]]:
  rows = []
  for name, site, shape, ours, plain in OPS:
    t_plain, y_plain = time_op(plain, shape, steps, repeats)
    t_ours, y_ours = time_op(ours, shape, steps, repeats)
    rows.append([name, site, 'x'.join(map(str, shape)), f'{t_plain * 1e6:.1f}',
                 f'{t_ours * 1e6:.1f}', f'{t_plain / t_ours:.1f}x',
                 'yes' if np.array_equal(y_plain, y_ours) else 'NO'])
    print(' | '.join(map(str, rows[-1])), flush=True)
  return rows


def measure_decode(workdir: str, prompts_n: int, new_tokens: int, repeats: int
                   ) -> tuple[list[list[Any]], str]:
  """Sampled AR on `workdir`, both ways, passes alternated: table rows and a setting line."""
  bench = workbench.Workbench.load(workdir)
  sampling = sampling_lib.SamplingConfig(temperature=0.7, top_k=50, top_p=0.9)
  decoder = bench.decoder('ar', sampling)
  tok = bench.tokenizer
  prompts = workbench.read_prompts(tok, prompt=None, prompts_file=None, heldout=prompts_n,
                                   prompt_chars=200, data_config=bench.config.get('data'))
  prompts = limits.fit_prompts(prompts, max_new_tokens=new_tokens,
                               max_len=bench.target.model_config.max_seq_len,
                               prefix=tok.prompt_prefix)
  cache_size = compare.default_cache_size(prompts, new_tokens, [decoder])
  P = -(-max(map(len, prompts)) // 32) * 32
  prompt_BxP = np.full((len(prompts), P), tok.pad_id, np.int32)
  for r, p in enumerate(prompts):
    prompt_BxP[r, :len(p)] = p
  args = (jnp.asarray(prompt_BxP), jnp.asarray([len(p) for p in prompts], jnp.int32),
          jax.vmap(lambda i: jax.random.fold_in(jax.random.key(0), i))(
              jnp.arange(len(prompts))))
  models, params = bench.models_for(decoder)
  static = dict(max_new_tokens=new_tokens, cache_size=cache_size, eos_id=tok.eos_id,
                pad_id=tok.pad_id)
  with plain_orderings():
    before = runner.lower_generate(decoder, models, params, *args, **static).compile()
  after = runner.lower_generate(decoder, models, params, *args, **static).compile()
  outs, best = {}, {'before': float('inf'), 'after': float('inf')}
  for i in range(repeats + 1):  # pass 0 warms up and is not counted
    for name, fn in (('before', before), ('after', after)):
      t0 = time.perf_counter()
      outs[name] = jax.block_until_ready(fn(params, *args))
      if i:
        best[name] = min(best[name], time.perf_counter() - t0)
  generated = int(np.sum(np.asarray(outs['after'].num_generated_B)))
  equal = all(np.array_equal(np.asarray(getattr(outs['before'], f)),
                             np.asarray(getattr(outs['after'], f)))
              for f in ('tokens_BxN', 'num_generated_B'))
  rows = [[name, f'{generated / best[name]:.0f}', f'{best["before"] / best[name]:.2f}x',
           'yes' if equal else 'NO'] for name in ('before', 'after')]
  for r in rows:
    print(' | '.join(r), flush=True)
  setting = (f'`{workdir}`, AR, {len(prompts)} held-out prompts in one batch x {new_tokens} new '
             f'tokens, {sampling}, prefill included, best of {repeats} passes alternated (after '
             'one warm-up pass each); "before": the same program with `kernel_common.top_k`, '
             '`sort_descending` and `argsort_descending` replaced by `lax.top_k`, `jnp.sort` '
             'and `jnp.argsort`.')
  return rows, setting


def main():
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument('--steps', type=int, default=200, help='calls per timed loop (ops)')
  ap.add_argument('--repeats', type=int, default=5)
  ap.add_argument('--workdir', default='runs/tiny', help="a trained run for the decode part; "
                  "'' skips it")
  ap.add_argument('--prompts', type=int, default=8)
  ap.add_argument('--max_new_tokens', type=int, default=96)
  ap.add_argument('--out', default='', help='results name (default top_k_<device>)')
  args = ap.parse_args()
  ops = measure_ops(args.steps, args.repeats)
  body = ['## Ops\n',
          f'A compiled loop of {args.steps} dependent calls, best of {args.repeats} runs, '
          'divided by the loop length. "before": `lax.top_k` / `jnp.sort` / `jnp.argsort` as '
          'the call sites had them; "after": `pallas_kernels.common`. Random normal rows.\n',
          common.markdown_table(['op', 'call site', 'shape', 'before us', 'after us',
                                 'speedup', 'equal'], ops)]
  if args.workdir:
    rows, setting = measure_decode(args.workdir, args.prompts, args.max_new_tokens,
                                   args.repeats)
    body += ['\n## Sampled AR decoding\n', setting + '\n',
             common.markdown_table(['orderings', 'tokens/s', 'speedup vs before',
                                    'tokens equal'], rows)]
  name = args.out or f'top_k_{"cpu" if jax.default_backend() == "cpu" else jax.default_backend()}'
  print(common.write_results(name, 'Top-k, sorts and orderings', '\n'.join(body)))


if __name__ == '__main__':
  main()
