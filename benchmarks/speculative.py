"""Speculative decoding benchmark: every method against our AR decoder, in the same run.

  # 1. train the target and the drafters (docs/speculative.md, about 5-15 minutes each on CPU)
  # 2. measure (one job per temperature / batch size keeps each under ~15 minutes on CPU):
  python -m benchmarks.speculative --temperature=0 --batch_size=1
  python -m benchmarks.speculative --temperature=0 --batch_size=8
  python -m benchmarks.speculative --temperature=1 --batch_size=1
  python -m benchmarks.speculative --temperature=1 --batch_size=8
  # 3. merge the measurements into benchmarks/results/speculative.md (+ acceptance plot):
  python -m benchmarks.speculative --report

Held-out prompts of the embedded code corpus (validation split). Per method: tau (tokens per
target forward, the bonus token counted, prefill included), acceptance by draft position
(share of verification steps whose accepted path reached depth d), target and other forwards
per generated token, tokens/s (median of `--repeats` timed runs after one AOT compile) and the
speedup against AR timed in the same process, and at temperature 0 whether the tokens equal
AR's. Methods whose runs are missing (no draft / heads trained) are skipped and listed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import cli
from benchmarks import common
from decoding import Models, SamplingConfig, registry, runner

RAW_DIR = os.path.join(common.RESULTS_DIR, 'speculative_raw')

# name -> (decoder, settings, needed runs). Trees of a draft model stay within 64 nodes.
METHODS: dict[str, tuple[str, dict[str, Any], tuple[str, ...]]] = {
    'draft chain g4': ('speculative', dict(gamma=4), ('draft',)),
    'draft chain adaptive': ('speculative', dict(gamma=8, stop_below=0.4), ('draft',)),
    'draft static tree 32': ('speculative', dict(tree='static', gamma=6, tree_nodes=32),
                             ('draft',)),
    'draft dynamic tree 32': ('spec_dynamic', dict(gamma=6, top_k=4, tree_nodes=32),
                              ('draft',)),
    'draft static tree 60': ('speculative', dict(tree='static', gamma=8, tree_nodes=60),
                             ('draft',)),
    'draft dynamic tree 60': ('spec_dynamic', dict(gamma=8, top_k=6, tree_nodes=60),
                              ('draft',)),
    'draft K-SEQ 4x3': ('speculative', dict(tree='static', branching='4,1,1', verifier='kseq'),
                        ('draft',)),
    'prompt lookup': ('prompt_lookup', {}, ()),
    'token recycling': ('token_recycling', {}, ()),
    'jacobi': ('jacobi', {}, ()),
    'lookahead': ('lookahead', {}, ()),
    'layerskip': ('layerskip', dict(exit_layer=2), ()),
    'kangaroo': ('kangaroo', {}, ('kangaroo',)),
    'del': ('del', {}, ()),
    'medusa': ('medusa', dict(gamma=4, tree_nodes=32), ('medusa',)),
    'mtp': ('mtp', dict(gamma=3), ('mtp',)),
}


def _load(args) -> tuple[Any, dict[str, Any], Models, set[str]]:
  from training import loading  # pylint: disable=g-import-not-at-top
  target = loading.load_model(args.target)
  params: dict[str, Any] = {'target': target.params}
  extras, have = [], set()
  runs = {'draft': args.draft, 'medusa': args.medusa, 'mtp': args.mtp,
          'kangaroo': args.kangaroo}
  for name, workdir in runs.items():
    if not workdir or not os.path.isdir(os.path.join(workdir, 'checkpoints')):
      continue
    run = loading.load_model(workdir)
    if run.tokenizer.vocab_size != target.tokenizer.vocab_size:
      raise ValueError(f'{workdir} has a different vocabulary from the target.')
    if name == 'draft':
      extras.append(('draft', run.model))
      params['draft'] = run.params
    else:  # heads trained on the (frozen) target: same model, extra params
      params[name] = run.extras[name]
    have.add(name)
  return target, params, Models(target.model, extras=tuple(extras)), have


def _batches(prompts, batch_size, pad_id, bucket=32):
  out = []
  for start in range(0, len(prompts), batch_size):
    chunk = prompts[start:start + batch_size]
    P = int(np.ceil(max(map(len, chunk)) / bucket) * bucket)
    arr = np.full((len(chunk), P), pad_id, np.int32)
    for r, p in enumerate(chunk):
      arr[r, :len(p)] = p
    ids = jnp.arange(start, start + len(chunk))
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(0), i))(ids)
    out.append((jnp.asarray(arr), jnp.asarray([len(p) for p in chunk], jnp.int32), keys))
  return out


def measure(decoder, models, params, prompts, *, batch_size, max_new, cache_size, eos_id,
            pad_id, repeats) -> dict[str, Any]:
  """Compile once per shape, then time `repeats` passes over all prompts (median)."""
  batches = _batches(prompts, batch_size, pad_id)
  compiled, t0 = {}, time.perf_counter()
  for prompt, lens, keys in batches:
    if prompt.shape not in compiled:
      compiled[prompt.shape] = runner._generate.lower(  # pylint: disable=protected-access
          decoder, models, params, prompt, lens, keys, max_new_tokens=max_new,
          cache_size=cache_size, eos_id=eos_id, pad_id=pad_id).compile()
  compile_s = time.perf_counter() - t0
  times, results = [], []
  for _ in range(repeats):
    t0 = time.perf_counter()
    results = [jax.block_until_ready(compiled[p.shape](params, p, l, k))
               for p, l, k in batches]
    times.append(time.perf_counter() - t0)
  results = jax.device_get(results)
  tokens, gen, tfwd, ofwd = [], 0, 0, 0
  extra: dict[str, np.ndarray] = {}
  for r in results:
    for b in range(r.tokens_BxN.shape[0]):
      n = int(r.num_generated_B[b])
      tokens.append([int(t) for t in r.tokens_BxN[b, :n]])
    gen += int(r.num_generated_B.sum())
    tfwd += int(r.target_forwards_B.sum())
    ofwd += int(r.other_forwards_B.sum())
    for k, v in r.extra.items():
      extra[k] = extra.get(k, 0) + np.asarray(v).sum(0)
  wall = statistics.median(times)
  out = {'tokens': tokens, 'generated': gen, 'target_forwards': tfwd, 'other_forwards': ofwd,
         'wall_s': wall, 'tokens_per_s': gen / wall, 'compile_s': compile_s,
         'tau': gen / max(tfwd, 1)}
  if 'spec_steps' in extra:
    steps = max(int(extra['spec_steps']), 1)
    out['acceptance_by_position'] = (np.asarray(extra['accepted_by_depth']) / steps).tolist()
    out['drafted_per_step'] = float(extra['drafted_tokens']) / steps
  for k in ('exit_steps', 'exit_acceptance'):
    if k in extra:
      out[k] = np.asarray(extra[k]).tolist()
  return out


def run(args) -> str:
  target, params, models, have = _load(args)
  tok = target.tokenizer
  prompts = cli.read_prompts(tok, prompt=None, prompts_file=None, heldout=args.prompts,
                             prompt_chars=args.prompt_chars, data_config=target.config['data'])
  sampling = SamplingConfig(temperature=args.temperature)
  names = [m for m in (args.methods.split(',') if args.methods else METHODS)]
  cache = int(np.ceil((max(map(len, prompts)) + args.max_new_tokens + 128) / 64) * 64)
  common_kw = dict(batch_size=args.batch_size, max_new=args.max_new_tokens, cache_size=cache,
                   eos_id=tok.eos_id, pad_id=tok.pad_id, repeats=args.repeats)
  rows: dict[str, Any] = {}
  skipped = []
  ar = measure(registry.build('ar', sampling=sampling), Models(target.model),
               {'target': params['target']}, prompts, **common_kw)
  rows['ar'] = ar
  print(f"ar: {ar['tokens_per_s']:.1f} tok/s", flush=True)
  for name in names:
    dec_name, settings, needs = METHODS[name]
    if any(n not in have for n in needs):
      skipped.append(f'{name} (needs {", ".join(needs)})')
      continue
    settings = dict(settings)
    if 'draft' in needs:
      settings['draft_workdir'] = args.draft
    dec = registry.build(dec_name, settings, sampling)
    sub = Models(target.model, extras=models.extras if 'draft' in needs else ())
    r = measure(dec, sub, params, prompts, **common_kw)
    # AR again right after each method: the speedup compares neighbours in time, which
    # matters on a shared machine.
    ar_again = measure(registry.build('ar', sampling=sampling), Models(target.model),
                       {'target': params['target']}, prompts, **dict(common_kw, repeats=1))
    ar_tps = max(ar['tokens_per_s'], ar_again['tokens_per_s'])
    r['speedup'] = r['tokens_per_s'] / ar_tps
    r['ar_tokens_per_s'] = ar_tps
    if args.temperature == 0:
      r['equals_ar'] = r['tokens'] == ar['tokens']
    rows[name] = r
    print(f"{name}: tau {r['tau']:.2f}, {r['tokens_per_s']:.1f} tok/s, "
          f"{r['speedup']:.2f}x" + (f", = AR: {r.get('equals_ar')}" if args.temperature == 0
                                    else ''), flush=True)
  for r in rows.values():
    r.pop('tokens', None)
  os.makedirs(RAW_DIR, exist_ok=True)
  path = os.path.join(RAW_DIR, f't{args.temperature:g}_b{args.batch_size}.json')
  with open(path, 'w') as f:
    json.dump({'temperature': args.temperature, 'batch_size': args.batch_size,
               'prompts': len(prompts), 'max_new_tokens': args.max_new_tokens,
               'provenance': common.provenance(), 'skipped': skipped, 'rows': rows}, f)
  return path


def report() -> str:
  """Merges the raw measurements into benchmarks/results/speculative.md and a plot."""
  runs = []
  for name in sorted(os.listdir(RAW_DIR)):
    with open(os.path.join(RAW_DIR, name)) as f:
      runs.append(json.load(f))
  body = []
  for r in runs:
    body.append(f"## temperature {r['temperature']:g}, batch {r['batch_size']}\n\n"
                f"{r['prompts']} held-out prompts, {r['max_new_tokens']} new tokens each.\n\n"
                + r['provenance'].replace('- ', '  - ', 0) + '\n')
    header = ['method', 'tau', 'acceptance by position (d=1..)', 'target fwd/token',
              'other fwd/token', 'tokens/s', 'AR tokens/s', 'speedup']
    if r['temperature'] == 0:
      header.append('= AR')
    table = []
    for name, row in r['rows'].items():
      acc = ' '.join(f'{a:.2f}' for a in row.get('acceptance_by_position', [])[:8])
      line = [name, f"{row['tau']:.2f}", acc or '-',
              f"{row['target_forwards'] / row['generated']:.3f}",
              f"{row['other_forwards'] / row['generated']:.3f}",
              f"{row['tokens_per_s']:.0f}", f"{row.get('ar_tokens_per_s', row['tokens_per_s']):.0f}",
              f"{row.get('speedup', 1.0):.2f}x"]
      if r['temperature'] == 0:
        line.append({True: 'yes', False: 'NO', None: '-'}[row.get('equals_ar')])
      table.append(line)
    body.append(common.markdown_table(header, table))
    if r['skipped']:
      body.append('\nSkipped (runs not trained): ' + '; '.join(r['skipped']))
    body.append('')
  plot = _plot(runs)
  if plot:
    body.append(f'![acceptance by position]({os.path.basename(plot)})')
  return common.write_results('speculative', 'Speculative decoding', '\n'.join(body))


def _plot(runs) -> str | None:
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  chosen = [r for r in runs if r['temperature'] == 0 and r['batch_size'] == 1] or runs[:1]
  if not chosen:
    return None
  fig, ax = plt.subplots(figsize=(8, 5))
  for name, row in chosen[0]['rows'].items():
    acc = row.get('acceptance_by_position')
    if acc:
      ax.plot(range(1, len(acc) + 1), acc, marker='o', label=name)
  ax.set_xlabel('draft position d')
  ax.set_ylabel('share of steps accepting >= d drafted tokens')
  ax.set_title('Acceptance by position (temperature 0, batch 1)')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  path = os.path.join(common.RESULTS_DIR, 'speculative_acceptance.png')
  fig.savefig(path, dpi=120, bbox_inches='tight')
  return path


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--target', default='runs/spec/target')
  p.add_argument('--draft', default='runs/spec/draft')
  p.add_argument('--medusa', default='runs/spec/medusa')
  p.add_argument('--mtp', default='runs/spec/mtp')
  p.add_argument('--kangaroo', default='runs/spec/kangaroo')
  p.add_argument('--temperature', type=float, default=0.0)
  p.add_argument('--batch_size', type=int, default=1)
  p.add_argument('--prompts', type=int, default=8)
  p.add_argument('--prompt_chars', type=int, default=200)
  p.add_argument('--max_new_tokens', type=int, default=128)
  p.add_argument('--repeats', type=int, default=3)
  p.add_argument('--methods', default='', help='comma-separated subset of ' + ', '.join(METHODS))
  p.add_argument('--report', action='store_true', help='merge raw results into the .md')
  args = p.parse_args()
  if args.report:
    print(report())
    return
  print(run(args))


if __name__ == '__main__':
  main()
