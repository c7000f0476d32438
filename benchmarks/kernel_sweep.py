"""Block-size sweeps of the Pallas kernels, time-limited: which tiles, warps and stages (for
the split sampler: block and parts) are fastest on this device, measured in the same device
call as everything else (issue 16).

  python -m benchmarks.kernel_sweep --ops=flash_hopper,decode_hopper,verify_hopper,flash,decode,sampling \
      --budget_s=150
  python -m benchmarks.kernel_sweep --rehearse   # CPU: toy shapes in interpret mode

Each op has one representative shape and a list of settings, its default first. Each
setting is compiled, its output checked against the op's XLA reference on the same inputs
(a setting whose output is wrong is reported and never chosen), then timed (median of 10
runs after 2 warm-ups). The sweep stops when its time budget is spent, lists the settings
it did not reach, and rewrites its results file after every setting, so a sweep cut short
keeps its rows. Per op it reports the fastest correct setting next to the default; a
kernel's defaults (`BlockSizes`, `fused_sample`'s) change by hand from a committed file.

Writes benchmarks/results/kernel_sweep_<device>[_<out>].md and .json.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common, forward_cost
from benchmarks.kernel_checks import (BF16, F32, error_text, normal, random_parents, rel_error,
                                      tree_over_cache)
from benchmarks.kernel_speed import time_call
from pallas_kernels import decode_attention as decode_lib
from pallas_kernels import flash_attention as flash_lib
from pallas_kernels.decode_attention import hopper as decode_hopper_lib
from pallas_kernels.flash_attention import hopper as hopper_lib
from pallas_kernels.sampling import fused_sample, gumbel_noise


@dataclasses.dataclass
class Op:
  """One op to sweep: `run(setting)` builds a zero-argument call for a setting (dict of
  keyword arguments), `check(out)` says whether its output is right ((ok, error)), and
  `rate(seconds)` turns a time into the op's figure of merit (a string, or '')."""
  name: str
  shape: str
  settings: list[dict[str, Any]]
  run: Callable[[dict[str, Any]], Callable[[], Any]]
  check: Callable[[Any], tuple[bool, float]]
  rate: Callable[[float], str] = lambda s: ''


def label(setting: dict[str, Any]) -> str:
  return ', '.join(f'{k}={v}' for k, v in setting.items()) or 'default'


def sweep(op: Op, deadline: float, timer: Callable[[Callable[[], Any]], float] = time_call,
          clock: Callable[[], float] = time.monotonic,
          on_row: Callable[[dict[str, Any]], None] = lambda res: None) -> dict[str, Any]:
  """Times op's settings in order until `deadline` (by `clock`); returns {'rows': [...],
  'not_reached': [labels], 'best': the fastest correct row or None, 'default': the first
  setting's row or None}, also handed to `on_row` after every row. A row: setting, label,
  ok, error (vs the reference), seconds (None where it failed or was wrong), note (the
  failure, if any)."""
  res: dict[str, Any] = dict(rows=[], not_reached=[], best=None, default=None)
  for i, setting in enumerate(op.settings):
    if clock() >= deadline:
      res['not_reached'] = [label(s) for s in op.settings[i:]]
      break
    row = dict(setting=setting, label=label(setting), ok=False, error=None, seconds=None,
               note='')
    try:
      fn = op.run(setting)
      ok, err = op.check(fn())
      row.update(ok=bool(ok), error=float(err))
      if ok:
        row['seconds'] = timer(fn)
      else:
        row['note'] = 'output differs from the reference'
    except Exception as e:  # pylint: disable=broad-except
      row['note'] = error_text(e, 80)
    res['rows'].append(row)
    timed = [r for r in res['rows'] if r['ok'] and r['seconds'] is not None]
    res['best'] = min(timed, key=lambda r: r['seconds']) if timed else None
    res['default'] = res['rows'][0]  # the first setting is the op's default
    us = '' if row['seconds'] is None else f"{row['seconds'] * 1e6:.1f} us"
    print(f"  {op.name} {row['label']}: ok={row['ok']} {us} {row['note']}", flush=True)
    on_row(res)
  return res


def _tiled(block_sizes_cls, call, args) -> Callable[[dict[str, Any]], Callable[[], Any]]:
  """run(setting) for a kernel taking `block_sizes`: call(*args, block_sizes=...) jitted,
  the setting's fields over the class's defaults."""
  def run(setting):
    bs = dataclasses.replace(block_sizes_cls(), **setting)
    f = jax.jit(lambda *a: call(*a, block_sizes=bs))
    return lambda: f(*args)
  return run


def _close_to(ref, dtype) -> Callable[[Any], tuple[bool, float]]:
  """check(out): relative error to `ref` within 1e-4 (float32) or 3e-2 (16-bit)."""
  def check(out):
    err = rel_error(out, ref)
    return err <= (1e-4 if dtype == F32 else 3e-2), err
  return check


def flash_op(rehearse: bool) -> Op:
  """Causal forward, bf16 (float32 when rehearsing), Dh 128, T 4096 (issue 16's shape)."""
  B, T, H, Dh, dt = (1, 64, 2, 32, F32) if rehearse else (4, 4096, 16, 128, BF16)
  q, k, v = (normal(i, (B, T, H, Dh), dt) for i in range(3))
  ref = jax.jit(lambda q, k, v: flash_lib.flash_attention(q, k, v, causal=True, impl='xla'))(
      q, k, v)
  grid = ([dict(), dict(block_q=32, block_k=32)] if rehearse else
          [dict()] + [dict(block_q=bq, block_k=bk, num_warps=w, num_stages=st)
                      for bq, bk, w, st in itertools.product((64, 128), (32, 64, 128), (4, 8),
                                                             (2, 3))])
  flops = 4 * B * H * T * T * Dh / 2
  run = _tiled(flash_lib.BlockSizes, functools.partial(flash_lib.flash_attention, causal=True,
                                                       impl='pallas'), (q, k, v))
  return Op('flash', f'B{B} T{T} H{H} Dh{Dh} causal {jnp.dtype(dt).name}', grid, run,
            _close_to(ref, dt), lambda s: f'{flops / s / 1e12:.1f} TFLOP/s')


def flash_hopper_op(rehearse: bool) -> Op:
  """The Hopper kernel (impl='mosaic') forward on flash_op's shape: K/V tile, ring depth and
  rows per consumer warpgroup (rehearsal: interpret mode, a toy shape in bf16)."""
  B, T, H, Dh = (1, 128, 2, 64) if rehearse else (4, 4096, 16, 128)
  q, k, v = (normal(i, (B, T, H, Dh), BF16) for i in range(3))
  ref = jax.jit(lambda q, k, v: flash_lib.flash_attention(q, k, v, causal=True, impl='xla'))(
      q, k, v)
  # The default, then ping-pong on the default tiles, then every tiling that fits in shared
  # memory with and without ping-pong.
  grid = ([dict(), dict(block_kv=64, stages=3, pingpong=True)] if rehearse else
          [dict(), dict(pingpong=True)] + [
              dict(block_q=bq, block_kv=bk, stages=st, pingpong=pp)
              for bq, bk, st, pp in itertools.product((64, 128), (64, 128), (2, 3, 4),
                                                      (True, False))
              if (bq, bk, st) != (64, 128, 2) and hopper_lib.smem_bytes(
                  hopper_lib.HopperConfig(bq, bk, st), Dh) <= hopper_lib.SMEM_BYTES])
  flops = 4 * B * H * T * T * Dh / 2

  def run(setting):
    cfg = flash_lib.HopperConfig(**setting)
    f = lambda q, k, v: flash_lib.flash_attention(q, k, v, causal=True, impl='mosaic',
                                                  hopper_config=cfg)
    f = f if rehearse else jax.jit(f)  # interpreted kernels run eagerly (test_flash_hopper)
    return lambda: f(q, k, v)
  return Op('flash hopper', f'B{B} T{T} H{H} Dh{Dh} causal bfloat16', grid, run,
            _close_to(ref, BF16), lambda s: f'{flops / s / 1e12:.1f} TFLOP/s')


def decode_op(rehearse: bool) -> Op:
  """One new token over a full cache, bf16, batch 8, context 4096 (issue 16's shape)."""
  B, S, H, K, Dh, dt = (2, 128, 4, 2, 32, F32) if rehearse else (8, 4096, 32, 8, 128, BF16)
  q = normal(0, (B, 1, H, Dh), dt)
  kc, vc = normal(1, (B, S, K, Dh), dt), normal(2, (B, S, K, Dh), dt)
  lengths = jnp.full((B,), S, jnp.int32)
  ref = jax.jit(lambda q, k, v: decode_lib.decode_attention(q, k, v, lengths, impl='xla'))(
      q, kc, vc)
  grid = ([dict(), dict(block_k=32, num_parts=2)] if rehearse else
          [dict()] + [dict(block_k=bk, num_parts=p, num_warps=w)
                      for bk, p, w in itertools.product((64, 128, 256), (0, 4, 16), (4, 8))])
  nbytes = 2 * B * S * K * Dh * jnp.dtype(dt).itemsize
  run = _tiled(decode_lib.BlockSizes, functools.partial(decode_lib.decode_attention,
                                                        impl='pallas'), (q, kc, vc, lengths))
  return Op('decode', f'B{B} S{S} H{H} K{K} Dh{Dh} {jnp.dtype(dt).name}', grid, run,
            _close_to(ref, dt), lambda s: f'{nbytes / s / 1e9:.0f} GB/s')


def decode_hopper_op(rehearse: bool) -> Op:
  """The Hopper decode kernel (impl='mosaic') on decode_op's shape, reading the decoding
  cache's layout in place (what the model's decode would pass): K/V tile, ring depth and
  split-K parts (rehearsal: interpret mode, a toy shape)."""
  B, S, H, K, Dh = (2, 256, 4, 2, 64) if rehearse else (8, 4096, 32, 8, 128)
  q = normal(0, (B, 1, H, Dh), BF16)
  kc, vc = normal(1, (B, K, S, Dh), BF16), normal(2, (B, K, Dh, S), BF16)
  lengths = jnp.full((B,), S, jnp.int32)
  call = lambda cfg: (lambda f: f if rehearse else jax.jit(f))(  # eager when interpreted
      lambda q, k, v: decode_lib.decode_attention(q, k, v, lengths, impl='mosaic',
                                                  kv_layout='cache', hopper_config=cfg))
  ref = jax.jit(lambda q, k, v: decode_lib.decode_attention(
      q, k, v, lengths, impl='xla', kv_layout='cache'))(q, kc, vc)
  grid = ([dict(), dict(block_k=64, stages=3, num_parts=2)] if rehearse else
          [dict()] + [dict(block_k=bk, stages=st, num_parts=p)
                      for bk, st, p in itertools.product((64, 128), (2, 3, 4), (0, 8, 32))
                      if (bk, st, p) != (128, 2, 0) and decode_hopper_lib.smem_bytes(
                          decode_lib.HopperDecodeConfig(bk, st), Dh)
                      <= decode_hopper_lib.SMEM_BYTES])
  nbytes = 2 * B * S * K * Dh * 2

  def run(setting):
    f = call(decode_lib.HopperDecodeConfig(**setting))
    return lambda: f(q, kc, vc)
  return Op('decode hopper', f'B{B} S{S} H{H} K{K} Dh{Dh} bfloat16, cache layout', grid, run,
            _close_to(ref, BF16), lambda s: f'{nbytes / s / 1e9:.0f} GB/s')


def verify_hopper_op(rehearse: bool) -> Op:
  """The Hopper decode kernel verifying a 64-node tree (256 query rows per kv head: two row
  blocks of 128) over a 2048-token prefix, the cache's layout and the dense mask, as the
  `hopper` section's tree table: K/V tile, ring depth and parts (rehearsal: interpret mode,
  40 nodes at G 4, 160 rows, over a toy cache)."""
  B, N, H, K, Dh, prefix = (1, 40, 4, 1, 64, 88) if rehearse else (8, 64, 32, 8, 128, 2048)
  S = prefix + N
  q = normal(0, (B, N, H, Dh), BF16)
  kc, vc = normal(1, (B, K, S, Dh), BF16), normal(2, (B, K, Dh, S), BF16)
  lengths = jnp.full((B,), S, jnp.int32)
  dense = tree_over_cache(random_parents(N), jnp.full((B,), prefix, jnp.int32), S)
  call = lambda cfg: (lambda f: f if rehearse else jax.jit(f))(  # eager when interpreted
      lambda q, k, v: decode_lib.decode_attention(q, k, v, lengths, mask_BxTxS=dense,
                                                  impl='mosaic', kv_layout='cache',
                                                  hopper_config=cfg))
  ref = jax.jit(lambda q, k, v: decode_lib.decode_attention(
      q, k, v, lengths, mask_BxTxS=dense, impl='xla', kv_layout='cache'))(q, kc, vc)
  rows = decode_hopper_lib.rows_for(N * H // K)
  grid = ([dict(), dict(block_k=64, stages=3, num_parts=2)] if rehearse else
          [dict()] + [dict(block_k=bk, stages=st, num_parts=p)
                      for bk, st, p in itertools.product((64, 128), (2, 3, 4), (0, 4, 16))
                      if (bk, st, p) != (64, 2, 0) and decode_hopper_lib.smem_bytes(
                          decode_lib.HopperDecodeConfig(bk, st), Dh, rows=rows,
                          has_mask=True) <= decode_hopper_lib.SMEM_BYTES])

  def run(setting):
    f = call(decode_lib.HopperDecodeConfig(**setting))
    return lambda: f(q, kc, vc)
  return Op('verify hopper', f'B{B} N{N} prefix {prefix} H{H} K{K} Dh{Dh} bfloat16, cache '
            'layout, tree mask', grid, run, _close_to(ref, BF16))


def sampling_op(rehearse: bool, batch: int) -> Op:
  """Temperature 0.8, top-p 0.95 over V 131072 (float32 logits): the one-program kernel
  (parts=1) and the split one over block and part counts; tokens must equal the sort's."""
  V = 4096 if rehearse else 131072
  logits = normal(0, (batch, V), F32) * 4
  g = gumbel_noise(jax.random.key(1), (batch, V))
  cfg = dict(temperature=0.8, top_p=0.95)
  ref = jax.jit(lambda l, g: fused_sample(l, g, impl='xla', **cfg))(logits, g)
  grid = ([dict(parts=1, block_v=2048), dict(parts=0, block_v=256)] if rehearse else
          [dict(parts=1, block_v=2048)] + [dict(parts=p, block_v=bv)
                                           for bv, p in itertools.product((256, 1024, 4096),
                                                                          (0, 8, 64, 256))])

  def run(setting):
    f = jax.jit(lambda l, g: fused_sample(l, g, impl='pallas', **setting, **cfg))
    return lambda: f(logits, g)

  def check(out):
    wrong = float((np.asarray(out) != np.asarray(ref)).mean())
    return wrong == 0.0, wrong
  return Op(f'sampling B{batch}', f'B{batch} V{V} top-p 0.95', grid, run, check)


OPS = {'flash_hopper': lambda r: [flash_hopper_op(r)], 'flash': lambda r: [flash_op(r)],
       'decode': lambda r: [decode_op(r)], 'decode_hopper': lambda r: [decode_hopper_op(r)],
       'verify_hopper': lambda r: [verify_hopper_op(r)],
       'sampling': lambda r: [sampling_op(r, 1), sampling_op(r, 64 if not r else 4)]}


def _fmt_row(op: Op, row: dict[str, Any], default: dict[str, Any] | None) -> list[Any]:
  s = row['seconds']
  speed = (f"{default['seconds'] / s:.2f}x" if s and default and default.get('seconds')
           else 'n/a')
  return [op.name, row['label'], 'yes' if row['ok'] else 'NO',
          'n/a' if row['error'] is None else f"{row['error']:.2e}",
          'n/a' if s is None else f'{s * 1e6:.1f}', op.rate(s) if s else '', speed,
          row['note']]


def write(results: list[tuple[Op, dict[str, Any]]], args, budget_s: float) -> str:
  name = f'kernel_sweep_{forward_cost.device_tag()}' + (f'_{args.out}' if args.out else '')
  common.write_json(name, {'provenance': common.provenance(), 'budget_s': budget_s, 'ops': [
      dict(op=op.name, shape=op.shape, rows=[{k: v for k, v in r.items()} for r in res['rows']],
           not_reached=res['not_reached'],
           best=None if res['best'] is None else res['best']['label']) for op, res in results]})
  summary, table = [], []
  for op, res in results:
    best, default = res['best'], res['default']
    if best is None:
      summary.append([op.name, op.shape, 'n/a', 'no correct setting timed', 'n/a'])
    else:
      summary.append([op.name, op.shape, best['label'], f"{best['seconds'] * 1e6:.1f}",
                      f"{default['seconds'] / best['seconds']:.2f}x"
                      if default and default.get('seconds') else 'n/a (default failed)'])
    table += [_fmt_row(op, r, default) for r in res['rows']]
    if res['not_reached']:
      table.append([op.name, f"not reached (budget): {'; '.join(res['not_reached'])}",
                    '', '', '', '', '', ''])
  body = ('Each op on one shape, its settings in order (the default first), each compiled, '
          'checked against the XLA reference on the same inputs (relative error; sampling: '
          'share of tokens that differ from the sort-based reference) and timed (median of 10 '
          f'after 2 warm-ups), within a budget of {budget_s:.0f} s. One run: settings within '
          'a few percent of each other are not ordered by it.\n\n## Best correct setting per '
          'op\n\n' + common.markdown_table(['op', 'shape', 'best setting', 'us',
                                             'speedup over the default'], summary)
          + '\n\n## Every setting\n\n' + common.markdown_table(
              ['op', 'setting', 'correct', 'error', 'us', 'rate', 'vs default', 'note'], table))
  return common.write_results(name, 'Kernel block-size sweep', body)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--ops', default='flash_hopper,decode_hopper,verify_hopper,flash,decode,'
                 'sampling',
                 help=f'comma list of {list(OPS)}')
  p.add_argument('--budget_s', type=float, default=150.0,
                 help='stop starting settings after this many seconds (all ops together)')
  p.add_argument('--rehearse', action='store_true',
                 help='toy shapes and two settings per op (CPU: interpret mode)')
  p.add_argument('--out', default='', help='suffix of the results file name')
  args = p.parse_args(argv)
  unknown = set(args.ops.split(',')) - set(OPS)
  if unknown:
    raise SystemExit(f'Unknown ops {sorted(unknown)}; choose from {list(OPS)}.')
  deadline = time.monotonic() + args.budget_s
  # Rehearsing, the interpreted Hopper kernels take seconds a call: one timed call, no
  # warm-up (the rehearsal checks that every op runs and is checked, not its speed).
  timer = (lambda fn: common.median_time(lambda: jax.block_until_ready(fn()), warmup=0,
                                         repeats=1)) if args.rehearse else time_call
  results: list[tuple[Op, dict[str, Any]]] = []
  path = ''
  for name in args.ops.split(','):
    try:  # inputs and the reference: an op that cannot even build them is skipped, said
      ops = OPS[name](args.rehearse)
    except Exception as e:  # pylint: disable=broad-except
      print(f'{name}: could not build its inputs or reference: {error_text(e, 200)}')
      continue
    for op in ops:
      print(op.name, op.shape, flush=True)
      results.append((op, dict(rows=[], not_reached=[], best=None, default=None)))

      def on_row(res, i=len(results) - 1, op=op):
        results[i] = (op, res)
        write(results, args, args.budget_s)
      results[-1] = (op, sweep(op, deadline, timer=timer, on_row=on_row))
      path = write(results, args, args.budget_s)
  print(path)
  return path


if __name__ == '__main__':
  main()
