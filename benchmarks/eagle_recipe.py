"""EAGLE-3 training recipes compared on one target: tau of the drafts each recipe trains.

  python -m benchmarks.eagle_recipe --target=runs/tiny            # about 25 minutes, 2 CPU cores
  python -m benchmarks.eagle_recipe --kind=medusa --variants=...   # Medusa heads' recipes

Each variant is a set of `train.py` overrides of `configs/spec_heads.py:eagle3,SIZE` (SIZE the
target's preset), trained for `--steps` steps once per seed into `--workdirs`/VARIANT_sSEED
(a workdir that already holds a checkpoint is reused, so a cut run resumes where it stopped),
then measured greedy on the same held-out prompts: a chain of 4 drafts and the EAGLE-2
dynamic tree of 24 nodes, tau counting the bonus token and the prefill, each output checked
against AR's. tau does not depend on the machine's load; speed is not recorded. Default
variants: the draft reading the target's frozen head (`own_head=False`, the recipe's default)
and with its own head (a trained correction to the target's), both at the default 3
training-time-test steps, and its own head with 5 steps (15 draft-layer passes over a row per
training step instead of 6). `--kind=medusa` (or `mtp`) compares recipes of Medusa heads
(MTP modules), `configs/spec_heads.py:KIND,SIZE`, the same way, on a chain of 4 (3) and the
decoder's default (Medusa's tree, MTP's chain of 2).
Writes benchmarks/results/<name>.md and .json.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from typing import Any

import numpy as np

import workbench
from benchmarks import common
from benchmarks import harness
from decoding import SamplingConfig
from training import metrics as metrics_lib
from workdir import checkpoint

SHAPES_BY_KIND = {'eagle3': {'chain 4': dict(tree='chain', gamma=4),
                             'dynamic tree 24': dict(gamma=5, top_k=4, tree_nodes=24)},
                  'medusa': {'chain 4': dict(tree='chain', gamma=4), 'default tree': {}},
                  'mtp': {'chain 3': dict(tree='chain', gamma=3), 'default chain of 2': {}}}
# The eval metrics of each kind's table: top-1 agreement per draft depth.
AGREE = {'eagle3': ('agree1', 'agree2', 'agree3'),
         'medusa': ('head1_acc', 'head2_acc', 'head3_acc'),
         'mtp': ('head1_acc', 'head2_acc', 'head3_acc')}
DEFAULT_VARIANTS = ('target head:--config.spec.own_head=False;'
                    'own head:--config.spec.own_head=True;'
                    'own head, 5 TTT steps:--config.spec.own_head=True --config.spec.ttt_steps=5')


def parse_variants(spec: str) -> dict[str, list[str]]:
  """'NAME:OVERRIDE OVERRIDE;NAME:...' -> {NAME: [overrides]} (an empty list: the recipe's
  defaults)."""
  out = {}
  for part in filter(None, (p.strip() for p in spec.split(';'))):
    name, sep, rest = part.partition(':')
    if not sep or not name.strip():
      raise ValueError(f'A variant is NAME:OVERRIDES, got {part!r}.')
    if name.strip() in out:
      raise ValueError(f'Variant {name.strip()!r} is given twice.')
    out[name.strip()] = rest.split()
  if not out:
    raise ValueError('--variants names no variant.')
  return out


def workdir_name(variant: str, seed: int) -> str:
  return ''.join(c if c.isalnum() else '_' for c in variant) + f'_s{seed}'


def train(args, size: str, variant: str, overrides: list[str], seed: int) -> str:
  workdir = os.path.join(args.workdirs, workdir_name(variant, seed))
  if workbench.has_checkpoint(workdir) and not args.retrain:
    latest = checkpoint.Checkpointer(workdir, read_only=True, async_save=False).latest_step()
    if latest is not None and latest >= args.steps:
      return workdir
  cmd = [sys.executable, 'train.py', f'--config=configs/spec_heads.py:{args.kind},{size}',
         f'--workdir={workdir}', f'--config.spec.target_workdir={args.target}',
         f'--config.seed={seed}', f'--config.train.steps={args.steps}',
         f'--config.train.warmup_steps={max(args.steps // 10, 1)}',
         f'--config.train.eval_every={args.steps}', f'--config.train.checkpoint_every={args.steps}',
         f'--config.train.log_every={max(args.steps // 6, 1)}',
         '--config.train.progress_bar=False', *overrides]
  print('$', ' '.join(cmd), flush=True)
  subprocess.run(cmd, check=True)
  return workdir


def eval_metrics(workdir: str) -> dict[str, float]:
  """The run's last eval metrics (agree1.., kl1.., head1_acc.., and hot_mass for a reduced
  vocabulary)."""
  evals = [r for r in metrics_lib.read_metrics(workdir) if r.get('split') == 'eval']
  last = evals[-1] if evals else {}
  return {k: float(v) for k, v in last.items()
          if k.startswith(('agree', 'kl', 'hot_mass', 'head'))}


def run(args) -> tuple[str, str]:
  bench = workbench.Workbench.load(args.target)
  size = args.size
  variants = parse_variants(args.variants)
  seeds = [int(s) for s in args.seeds.split(',')]
  runs = {(v, s): train(args, size, v, o, s) for v, o in variants.items() for s in seeds}
  tok = bench.tokenizer
  prompts = workbench.read_prompts(tok, prompt=None, prompts_file=None, heldout=args.prompts,
                                   prompt_chars=args.prompt_chars,
                                   data_config=bench.config['data'])
  cache = harness.cache_slots(prompts, args.max_new_tokens)
  batches = harness.make_batches(prompts, args.batch_size, tok.pad_id)
  kw = dict(max_new=args.max_new_tokens, cache_size=cache, eos_id=tok.eos_id, pad_id=tok.pad_id)
  ar = harness.ar_reference(bench, batches, **kw)
  rows = []
  for (variant, seed), workdir in runs.items():
    b = workbench.Workbench(bench.target)  # the restored target, its heads set per run
    b.add_heads(args.kind, workdir)
    row = {'variant': variant, 'seed': seed, 'workdir': workdir,
           'overrides': variants[variant], 'eval': eval_metrics(workdir)}
    for shape, settings in SHAPES_BY_KIND[args.kind].items():
      dec = b.decoder(args.kind, SamplingConfig(temperature=0.0), settings)
      models, params = b.models_for(dec)
      r = harness.measure(dec, models, params, batches, warmup=False, **kw)
      row[shape] = harness.tau_row(r, ar['tokens'])
      print(f"{variant} seed {seed} {shape}: tau {r['tau']:.3f}  = AR: "
            f"{row[shape]['equals_ar']}", flush=True)
    rows.append(row)
  lens = [len(p) for p in prompts]
  meta = {'target': args.target, 'kind': args.kind, 'size': size, 'steps': args.steps,
          'seeds': seeds,
          'prompts': len(prompts), 'max_new_tokens': args.max_new_tokens,
          'last_position': max(lens) + args.max_new_tokens - 1,
          'train_seq_len': int(bench.config['data']['seq_len']),
          'provenance': common.provenance()}
  out_json = common.write_json(args.name, {**meta, 'rows': rows})
  title = {'eagle3': 'EAGLE-3', 'medusa': 'Medusa', 'mtp': 'MTP'}[args.kind]
  return common.write_results(args.name, f'{title} training recipes on one target (tau)',
                              _body(rows, meta, list(variants))), out_json


def _body(rows: list[dict[str, Any]], meta: dict[str, Any], variants: list[str]) -> str:
  kind = meta.get('kind', 'eagle3')
  shapes = SHAPES_BY_KIND[kind]
  hot = any('hot_mass' in r['eval'] for r in rows)  # a reduced draft vocabulary somewhere
  header = (['variant', 'seed', ' / '.join(AGREE[kind]) + ' (eval)']
            + (['target mass on the draft vocabulary (eval)'] if hot else [])
            + [f'tau, {s}' for s in shapes] + ['tokens = AR'])
  table = []
  for r in rows:
    ag = ' / '.join(f"{r['eval'][k]:.3f}" for k in AGREE[kind] if k in r['eval'])
    mass = [f"{r['eval']['hot_mass']:.3f}" if 'hot_mass' in r['eval'] else '1 (all)'] if hot else []
    table.append([r['variant'], r['seed'], ag] + mass + [round(r[s]['tau'], 3) for s in shapes]
                 + ['yes' if all(r[s]['equals_ar'] for s in shapes) else 'NO'])
  means = []
  for v in variants:
    mine = [r for r in rows if r['variant'] == v]
    means.append([v, len(mine)] + [round(float(np.mean([r[s]['tau'] for r in mine])), 3)
                                   for s in shapes])
  overrides = {r['variant']: ' '.join(r['overrides']) or '(the recipe as it is)' for r in rows}
  return '\n'.join([
      f"Target `{meta['target']}` (preset `{meta['size']}`). Each variant: "
      f"`configs/spec_heads.py:{kind},{meta['size']}` trained {meta['steps']} steps on the "
      f"frozen target, once per seed ({', '.join(map(str, meta['seeds']))}: the draft's "
      "initialisation; the data order is the same). Measured greedy on "
      f"{meta['prompts']} held-out prompts, {meta['max_new_tokens']} new tokens each "
      f"(positions up to {meta['last_position']}; training rows of {meta['train_seq_len']} "
      "tokens); tau counts the bonus token and the prefill. Speed is not recorded.", '',
      *[f'- {v}: {o}' for v, o in overrides.items()], '',
      common.markdown_table(header, table), '',
      'Mean tau over seeds:', '',
      common.markdown_table(['variant', 'seeds'] + [f'tau, {s}' for s in shapes], means)])


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--target', default='runs/tiny')
  p.add_argument('--kind', default='eagle3', choices=sorted(SHAPES_BY_KIND),
                 help='the drafter whose recipes are compared')
  p.add_argument('--size', default='tiny', help="the target's preset (configs/common.py)")
  p.add_argument('--workdirs', default='runs/eagle_recipe')
  p.add_argument('--variants', default=DEFAULT_VARIANTS,
                 help="'NAME:OVERRIDES;...' (overrides of train.py, space-separated)")
  p.add_argument('--seeds', default='0,1')
  p.add_argument('--steps', type=int, default=300)
  p.add_argument('--retrain', action='store_true')
  p.add_argument('--prompts', type=int, default=8)
  p.add_argument('--prompt_chars', type=int, default=60)
  p.add_argument('--max_new_tokens', type=int, default=64)
  p.add_argument('--batch_size', type=int, default=8)
  p.add_argument('--name', default='eagle_recipe_tiny_cpu')
  args = p.parse_args()
  print(*run(args), sep='\n')


if __name__ == '__main__':
  main()
