"""Jacobi Forcing: iterations per token of Jacobi decoding before and after training the same
base on its own Jacobi trajectories, tokens/s against AR in the same run, and quality.

  python train.py --config=configs/lm.py:tiny --workdir=runs/tiny                 # the base
  python train.py --config=configs/jacobi_forcing.py --workdir=runs/jf_tiny       # forced
  python -m benchmarks.jacobi_forcing --base=runs/tiny --forced=runs/jf_tiny

For the base and the forced run, on the same held-out prompts of the code corpus (validation
split), greedy: AR and the Jacobi decoders (`jacobi` one block of n, `jacobi_forcing` K blocks
of n without and with rejection recycling). Per row: iterations per token (target forwards
per generated token, the prefill counted: 1 for AR, 1 / tau for the others; tau is tokens per
target forward as in every speculative table here), tokens/s of the method
and of AR on the same model (timed alternately, each keeping its fastest pass), the speedup,
and whether the tokens equal AR's. Quality: bits per byte of each model on the same held-out
rows (teacher-forced next-token loss). Writes benchmarks/results/jacobi_forcing_<tag>.md and
.json.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import data as data_lib
import workbench
from benchmarks import common
from benchmarks import harness
from decoding import SamplingConfig


def methods(block: int, blocks: int, recycle: int) -> dict[str, tuple[str, dict[str, Any]]]:
  short = max(block // 2, 1)
  return {
      f'jacobi n={short}': ('jacobi', dict(window=short)),
      f'jacobi n={block}': ('jacobi', dict(window=block)),
      f'jacobi_forcing {blocks}x{block}': ('jacobi_forcing', dict(block=block, blocks=blocks,
                                                                  recycle=0)),
      f'jacobi_forcing {blocks}x{block} + recycle {recycle}': (
          'jacobi_forcing', dict(block=block, blocks=blocks, recycle=recycle)),
  }


def training(config: dict[str, Any]) -> str:
  """The run's objective, learning rate, batch and (Jacobi Forcing) loss weights."""
  train, jf = config.get('train', {}), config.get('jf', {})
  out = (f"{config.get('objective')}, lr {train.get('learning_rate')}, "
         f"batch {config.get('data', {}).get('batch_size')}")
  if jf:
    out += (f", weights AR {jf.get('ar_weight')} / consistency {jf.get('consistency_weight')}"
            f" / corpus {jf.get('corpus_weight')}, n {jf.get('block')} x {jf.get('blocks')}")
  return out


def bits_per_byte(bench: workbench.Workbench, batches: list[dict[str, np.ndarray]]) -> float:
  """Teacher-forced next-token bits per byte of the run's model on `batches`."""
  model, params = bench.model, bench.params
  lengths = bench.tokenizer.token_byte_lengths()

  @jax.jit
  def nll(tokens):
    logits = model.apply({'params': params}, tokens[:, :-1]).logits_BxTxV
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
    return -jnp.take_along_axis(logp, tokens[:, 1:, None], -1).sum()

  total, nbytes = 0.0, 0.0
  for b in batches:
    total += float(nll(jnp.asarray(b['tokens'])))
    nbytes += float(lengths[np.asarray(b['tokens'])[:, 1:]].sum())
  return total / nbytes / np.log(2)


def measure(bench: workbench.Workbench, prompts, args
            ) -> tuple[dict[str, dict[str, Any]], float]:
  """(rows by method, distinct 4-gram share of the AR output)."""
  tok = bench.tokenizer
  sampling = SamplingConfig(temperature=0.0)
  cache = int(np.ceil((max(map(len, prompts)) + args.max_new_tokens + 160) / 64) * 64)
  batches = harness.make_batches(prompts, args.batch_size, tok.pad_id)
  kw = dict(max_new=args.max_new_tokens, cache_size=cache, eos_id=tok.eos_id, pad_id=tok.pad_id)
  ar_dec = bench.decoder('ar', sampling)
  ar_models, ar_params = bench.models_for(ar_dec)[0], {'target': bench.params}
  ar_fns, ar_compile = harness.compile_decoder(ar_dec, ar_models, ar_params, batches, **kw)
  ar_best, ar_results = harness.best_pass(ar_fns, ar_params, batches, args.repeats)
  ar = harness.summarise(ar_results, ar_best, ar_compile)
  rows = {'ar': {'iters_per_token': ar['target_forwards'] / ar['generated'], 'tau': ar['tau'],
                 'tokens_per_s': ar['tokens_per_s'], 'ar_tokens_per_s': ar['tokens_per_s'],
                 'speedup': 1.0, 'equals_ar': True, 'generated': ar['generated']}}
  for name, (dec_name, settings) in methods(args.block, args.blocks, args.recycle).items():
    dec = bench.decoder(dec_name, sampling, settings)
    models, params = bench.models_for(dec)
    fns = harness.compile_decoder(dec, models, params, batches, **kw)
    r, ar_wall = harness.measure_pair(fns, (ar_fns, ar_compile), params, batches,
                                      repeats=args.repeats)
    ar_tps = ar['generated'] / ar_wall
    rows[name] = {'iters_per_token': r['target_forwards'] / r['generated'], 'tau': r['tau'],
                  'tokens_per_s': r['tokens_per_s'], 'ar_tokens_per_s': ar_tps,
                  'speedup': r['tokens_per_s'] / ar_tps, 'equals_ar': r['tokens'] == ar['tokens'],
                  'generated': r['generated'], 'drafted_per_step': r['drafted_per_step']}
    print(f"  {name}: {rows[name]['iters_per_token']:.3f} iters/token, tau {r['tau']:.2f}, "
          f"{r['tokens_per_s']:.0f} vs AR {ar_tps:.0f} tok/s, = AR: {rows[name]['equals_ar']}",
          flush=True)
  return rows, common.distinct_ngrams(ar['tokens'])


def render(result: dict[str, Any]) -> str:
  runs = result['runs']
  names = list(next(iter(runs.values()))['rows'])
  header = ['method'] + [f'{label}: {col}' for label in runs
                         for col in ('iters/token', 'tau', 'speedup')]
  table = []
  for name in names:
    row = [name]
    for run in runs.values():
      r = run['rows'][name]
      flag = ' (!)' if common.speedup_above_tau(r['speedup'], r['tau']) else ''
      row += [f"{r['iters_per_token']:.3f}", f"{r['tau']:.2f}", f"{r['speedup']:.2f}{flag}"]
    table.append(row)
  speed = []
  for label, run in runs.items():
    for name, r in run['rows'].items():
      speed.append([label, name, f"{r['tokens_per_s']:.1f}", f"{r['ar_tokens_per_s']:.1f}",
                    f"{r['speedup']:.2f}", 'yes' if r['equals_ar'] else 'NO'])
  quality = [[label, run['workdir'], run['step'], run.get('train', ''),
              f"{run['bits_per_byte']:.4f}", f"{run['distinct_4grams']:.3f}"]
             for label, run in runs.items()]
  s = result['settings']
  return '\n\n'.join([
      f"{s['prompts']} held-out prompts ({s['prompt_chars']} characters) x {s['max_new_tokens']} "
      f"new tokens, greedy, batch {s['batch_size']}; Jacobi blocks of n = {s['block']}, "
      f"K = {s['blocks']} blocks, recycling pool {s['recycle']}; "
      f"fastest of {s['repeats']} alternating passes. Each forced run is one training run of "
      "one seed.",
      '## Iterations per token (target forwards per generated token, the prefill counted)',
      common.markdown_table(header, table),
      '## Tokens/s against AR on the same model (same process, alternating passes)',
      common.markdown_table(['model', 'method', 'tokens/s', 'AR tokens/s', 'speedup',
                             'equals AR'], speed),
      '## Quality: teacher-forced bits per byte on held-out rows; share of distinct 4-grams '
      'in the greedy (AR) continuations of the prompts above (1 = no repeats)',
      common.markdown_table(['model', 'workdir', 'step', 'training', 'bits per byte',
                             'distinct 4-grams of greedy output'], quality),
  ])


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--base', default='runs/tiny')
  p.add_argument('--forced', default='runs/jf_tiny',
                 help='one or more forced runs of the same base, comma-separated')
  p.add_argument('--prompts', type=int, default=8)
  p.add_argument('--prompt_chars', type=int, default=200)
  p.add_argument('--max_new_tokens', type=int, default=96)
  p.add_argument('--batch_size', type=int, default=1)
  p.add_argument('--block', type=int, default=16)
  p.add_argument('--blocks', type=int, default=2)
  p.add_argument('--recycle', type=int, default=2)
  p.add_argument('--repeats', type=int, default=3)
  p.add_argument('--eval_batches', type=int, default=8)
  p.add_argument('--tag', default='cpu')
  args = p.parse_args(argv)
  if args.repeats < 1:
    raise ValueError(f'--repeats must be >= 1, got {args.repeats}.')
  runs = {}
  prompts = None
  forced = [w for w in args.forced.split(',') if w]
  if not forced:
    raise ValueError('--forced must name at least one run.')
  labelled = [('base', args.base)] + [
      ('forced' if len(forced) == 1 else f'forced {os.path.basename(w.rstrip("/"))}', w)
      for w in forced]
  for label, workdir in labelled:
    bench = workbench.Workbench.load(workdir)
    if prompts is None:  # the same token ids for both (the forced run keeps the tokenizer)
      prompts = workbench.read_prompts(bench.tokenizer, prompt=None, prompts_file=None,
                                       heldout=args.prompts, prompt_chars=args.prompt_chars,
                                       data_config=bench.config['data'])
      dc = data_lib.DataConfig(**bench.config['data'])
      eval_batches = data_lib.make_eval_batches(dc, bench.tokenizer,
                                                max_batches=args.eval_batches)
    print(f'{label}: {workdir}', flush=True)
    runs[label] = {'workdir': workdir, 'step': bench.step, 'train': training(bench.config),
                   'bits_per_byte': bits_per_byte(bench, eval_batches)}
    runs[label]['rows'], runs[label]['distinct_4grams'] = measure(bench, prompts, args)
  result = {'settings': {k: v for k, v in vars(args).items() if k not in ('base', 'forced')},
            'provenance': common.provenance(), 'runs': runs}
  path = common.write_results(f'jacobi_forcing_{args.tag}',
                              'Jacobi Forcing: iterations per token before and after',
                              render(result))
  with open(path.removesuffix('.md') + '.json', 'w') as f:
    json.dump(result, f, indent=1)
  print(f'wrote {path}', flush=True)


if __name__ == '__main__':
  main()
