"""The forward-cost curve: one cached forward over T = 1, 2, 4, ... new tokens, per preset.

  python -m benchmarks.forward_cost                                   # CPU: tiny and mem
  python -m benchmarks.forward_cost --presets=tiny,mem,small,base --dtype=bfloat16  # GPU

Random weights, batch 1 and 8, a cache of `--cache` slots holding `--context` committed
tokens. The time of a forward over T tokens divided by the time over one token is what a
multi-token decoder pays per step for verifying T - 1 drafts: it bounds every speedup
(`cost_model.ideal_speedup`). A preset is *memory-bound* here when T = 8 costs at most 1.5x
T = 1 (reading the weights dominates, as in real LLM decoding). Writes
benchmarks/results/forward_cost_<device>.md, .json (rows: device, preset, dtype, batch,
tokens, ms, ratio) and a plot of ratio against T.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

import jax

from benchmarks import common
from benchmarks import cost_model
import pallas_kernels.attention as attention_ops

MEMORY_BOUND_RATIO = 1.5  # t(8) / t(1) at most this: memory-bound


def device_tag() -> str:
  d = jax.devices()[0]
  return 'cpu' if d.platform == 'cpu' else d.platform + '_' + d.device_kind.split()[-1].lower()


def parse_variants(spec: str) -> list[tuple[str, dict[str, Any]]]:
  """'default,no_triton:xla_gpu_enable_triton_gemm=false' -> [(name, XLA compile options)].

  Each variant is NAME[:OPTION=VALUE...]; values 'true'/'false' become bools, integers ints.
  An option named model.FIELD sets that `ModelConfig` field instead (same weights), e.g.
  'pad8:model.min_matmul_rows=8'. Variants are separated by ';' when the spec holds one (so
  that a value may list several items, 'default;graphs:xla_gpu_enable_command_buffer=FUSION,
  WHILE'), else by ','.
  """
  out = []
  for item in filter(None, spec.split(';' if ';' in spec else ',')):
    name, *pairs = item.split(':')
    opts: dict[str, Any] = {}
    for pair in pairs:
      key, sep, value = pair.partition('=')
      if not sep or not key:
        raise ValueError(f'Variant {item!r}: expected NAME[:OPTION=VALUE...], got {pair!r}.')
      opts[key] = cost_model.parse_value(value)
    out.append((name, opts))
  if len({n for n, _ in out}) != len(out):
    raise ValueError(f'Variant names repeat in {spec!r}.')
  return out


def measure(presets, batches, tokens, *, dtype, cache, context, attention_impl='auto',
            variants=(('default', {}),), on_rows=None) -> list[dict]:
  """Rows of every (preset, variant, batch, T); `on_rows(rows)` after each curve (so a run
  cut short can write what it measured)."""
  rows = []
  for preset in presets:
    model, params = cost_model.random_model(preset, dtype, attention_impl=attention_impl)
    mb = cost_model.weight_bytes(params) / 1e6
    # Each variant's model first: a model field the config refuses is the caller's error, and
    # is raised before anything is timed.
    runs = []
    for variant, options in variants:
      fields = {k[len('model.'):]: v for k, v in options.items() if k.startswith('model.')}
      xla = {k: v for k, v in options.items() if not k.startswith('model.')}
      m = cost_model.with_config(model, fields)
      runs.append((variant, m, fields, xla))
    for variant, m, fields, xla in runs:
      label = preset if variant == 'default' else f'{preset} [{variant}]'
      for batch in batches:
        try:
          curve = cost_model.forward_curve(m, params, batch=batch, tokens=tokens,
                                           cache_size=cache, context=context,
                                           compiler_options=xla or None)
        except Exception as e:  # pylint: disable=broad-except
          if variant == 'default':
            raise
          # An XLA option this XLA does not know: the other variants still run; the table
          # lacks this one's rows and the log says why.
          print(f'{label} B={batch}: not measured ({type(e).__name__}: {str(e)[:200]})',
                flush=True)
          continue
        for t, sec in curve.items():
          rows.append(dict(device=jax.devices()[0].device_kind, preset=label, dtype=dtype,
                           attention_impl=attention_impl, variant=variant,
                           compiler_options=xla, model_fields=fields, weight_mb=round(mb, 1),
                           batch=batch, tokens=t, ms=sec * 1e3, ratio=sec / curve[min(curve)]))
        line = ' '.join(f'T={t}:{sec * 1e3:.3f}ms' for t, sec in curve.items())
        print(f'{label} ({mb:.0f} MB) B={batch}: {line}', flush=True)
        if on_rows is not None:
          on_rows(rows)
  return rows


def memory_bound(rows, preset, batch) -> bool | None:
  r = {x['tokens']: x['ms'] for x in rows if x['preset'] == preset and x['batch'] == batch}
  if 1 not in r or 8 not in r:
    return None
  return r[8] / r[1] <= MEMORY_BOUND_RATIO


def report(rows, name: str) -> str:
  presets = list(dict.fromkeys(r['preset'] for r in rows))
  batches = sorted({r['batch'] for r in rows})
  tokens = sorted({r['tokens'] for r in rows})
  table = []
  for p in presets:
    for b in batches:
      sel = {r['tokens']: r for r in rows if r['preset'] == p and r['batch'] == b}
      if not sel:
        continue
      mb = next(iter(sel.values()))['weight_mb']
      bound = memory_bound(rows, p, b)
      table.append([p, f'{mb:g}', b]
                   + [f"{sel[t]['ms']:.3f} ({sel[t]['ratio']:.2f}x)" if t in sel else '-'
                      for t in tokens]
                   + [{True: 'yes', False: 'no', None: '-'}[bound]])
  body = [
      'Time of one cached forward over T new tokens per row, in ms, and (in brackets) its '
      'ratio to T = 1. Random weights; each entry is the best of 5 runs of a compiled loop '
      'of forwards (every logit consumed), divided by the loop length. "memory-bound": '
      f'T = 8 costs at most {MEMORY_BOUND_RATIO}x T = 1. These ratios bound every multi-token '
      'decoder: tau tokens per step at a step cost of t(T) give at most tau * t(1) / t(T) '
      'over AR.\n',
      common.markdown_table(['preset', 'weights MB', 'batch'] + [f'T={t}' for t in tokens]
                            + ['memory-bound'], table)]
  plot = _plot(rows, name)
  if plot:
    body.append(f'\n![forward cost]({os.path.basename(plot)})')
  return common.write_results(name, 'Forward-cost curve', '\n'.join(body))


def _plot(rows, name) -> str | None:
  try:
    plt = common.pyplot()
  except ImportError:
    return None
  fig, ax = plt.subplots(figsize=(7, 4.5))
  keys = list(dict.fromkeys((r['preset'], r['batch']) for r in rows))
  for i, (p, b) in enumerate(keys):
    sel = sorted((r['tokens'], r['ratio']) for r in rows if (r['preset'], r['batch']) == (p, b))
    ax.plot([t for t, _ in sel], [x for _, x in sel], marker='os^v'[i % 4],
            linestyle='-' if b == 1 else '--', label=f'{p}, batch {b}')
  ax.axhline(MEMORY_BOUND_RATIO, color='grey', lw=0.8, ls=':')
  ax.set_xscale('log', base=2)
  ax.set_yscale('log', base=2)
  ax.set_xlabel('new tokens per forward (T)')
  ax.set_ylabel('time / time at T = 1')
  ax.set_title(f'Forward cost ({jax.devices()[0].device_kind})')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  path = os.path.join(common.RESULTS_DIR, f'{name}.png')
  fig.savefig(path, dpi=110, bbox_inches='tight')
  plt.close(fig)
  return path


def main():
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument('--presets', default='tiny,mem')
  ap.add_argument('--batches', default='1,8')
  ap.add_argument('--tokens', default='1,2,4,8,16,32,64')
  ap.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16'])
  ap.add_argument('--cache', type=int, default=512)
  ap.add_argument('--context', type=int, default=256)
  ap.add_argument('--attention_impl', default='auto', choices=attention_ops.IMPLS,
                  help="the model's attention implementation (default: the dispatch table's)")
  ap.add_argument('--variants', default='default',
                  help='settings to compare in this one process: NAME[:OPTION=VALUE...], '
                  'comma-separated (semicolon-separated when a value lists items); an '
                  'OPTION is an XLA compile option or model.FIELD, e.g. '
                  '"default,no_triton_gemm:xla_gpu_enable_triton_gemm=false,'
                  'pad2:model.min_matmul_rows=2" or "default;graphs:'
                  'xla_gpu_enable_command_buffer=FUSION,WHILE"')
  ap.add_argument('--out', default='', help='results name (default forward_cost_<device>)')
  args = ap.parse_args()
  variants = parse_variants(args.variants)
  name = args.out or f'forward_cost_{device_tag()}'
  done: list[dict] = []

  def write(rows):
    os.makedirs(common.RESULTS_DIR, exist_ok=True)
    with open(os.path.join(common.RESULTS_DIR, f'{name}.json'), 'w') as f:
      json.dump({'provenance': common.provenance(), 'rows': rows}, f, indent=1)
    return report(rows, name)

  path = ''
  for preset in args.presets.split(','):  # written after each curve: a run cut short keeps them
    done += measure([preset], [int(b) for b in args.batches.split(',')],
                    [int(t) for t in args.tokens.split(',')], dtype=args.dtype,
                    cache=args.cache, context=args.context, attention_impl=args.attention_impl,
                    variants=variants, on_rows=lambda rows: write(done + rows))
    path = write(done)
  print(path)


if __name__ == '__main__':
  main()
