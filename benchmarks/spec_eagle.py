"""EAGLE-3 vs EAGLE-1 vs Medusa vs MTP vs a draft model on one target: tau and acceptance by
draft depth.

  # the target and four drafters, 600 steps each (configs/spec_heads.py), and a distilled
  # draft model (configs/spec_draft.py, 800 steps)
  python train.py --config=configs/lm.py:tiny --workdir=runs/spec/target
  for k in eagle3 eagle1 medusa mtp; do
    python train.py --config=configs/spec_heads.py:$k --workdir=runs/spec/$k; done
  python train.py --config=configs/spec_draft.py --workdir=runs/spec/draft
  python -m benchmarks.spec_eagle            # about 5 minutes on 2 CPU cores

Held-out prompts of the code corpus, greedy (temperature 0), every method on the same
prompts and target, at a chain of 4 drafts and at a tree of 24 drafted nodes (EAGLE: the
EAGLE-2 dynamic tree; Medusa and MTP: their static trees; the draft model: its dynamic tree
of stochastic beams, the same tree policy under greedy verification). Per method: tau (tokens per target
forward, bonus token and prefill counted), acceptance by position (share of verification
steps whose accepted path reached depth d), drafted nodes per step, draft forwards per
generated token, and whether the tokens equal AR's. tau does not depend on the machine's load;
tokens/s does (one pass each), so speed is printed but not written (rerun on a quiet machine).
Writes benchmarks/results/eagle_tiny_cpu.md and .json.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import numpy as np

import workbench
from benchmarks import common
from benchmarks import harness
from decoding import SamplingConfig

# name -> (decoder, settings, heads run it needs)
METHODS: dict[str, tuple[str, dict[str, Any], str]] = {
    'eagle3 chain 4': ('eagle3', dict(tree='chain', gamma=4), 'eagle3'),
    'eagle1 chain 4': ('eagle1', dict(tree='chain', gamma=4), 'eagle1'),
    'medusa chain 4': ('medusa', dict(tree='chain', gamma=4), 'medusa'),
    'mtp chain 3': ('mtp', dict(tree='chain', gamma=3), 'mtp'),
    'eagle3 dynamic tree 24': ('eagle3', dict(gamma=5, top_k=4, tree_nodes=24), 'eagle3'),
    'eagle1 dynamic tree 24': ('eagle1', dict(gamma=5, top_k=4, tree_nodes=24), 'eagle1'),
    'medusa static tree 24': ('medusa', dict(tree='static', gamma=4, tree_nodes=24), 'medusa'),
    'mtp static tree 24': ('mtp', dict(tree='static', gamma=3, tree_nodes=24), 'mtp'),
    'draft model chain 4': ('speculative', dict(gamma=4), 'draft'),
    'draft model dynamic tree 24': ('speculative', dict(tree='dynamic', gamma=5, top_k=4,
                                                        tree_nodes=24), 'draft'),
}
HEADS = ('eagle3', 'eagle1', 'medusa', 'mtp')
DRAFT = 'draft'  # a separate model (speculative's draft_workdir), not heads on the target


def run(args) -> tuple[str, str]:
  bench = workbench.Workbench.load(args.target)
  have, skipped = set(), []
  for name in HEADS:
    workdir = os.path.join(args.runs, name)
    if workbench.has_checkpoint(workdir):
      bench.add_heads(name, workdir)
      have.add(name)
  if workbench.has_checkpoint(os.path.join(args.runs, DRAFT)):
    have.add(DRAFT)
  tok = bench.tokenizer
  prompts = workbench.read_prompts(tok, prompt=None, prompts_file=None, heldout=args.prompts,
                                   prompt_chars=args.prompt_chars,
                                   data_config=bench.config['data'])
  sampling = SamplingConfig(temperature=0.0)
  cache = harness.cache_slots(prompts, args.max_new_tokens)
  batches = harness.make_batches(prompts, args.batch_size, tok.pad_id)
  kw = dict(max_new=args.max_new_tokens, cache_size=cache, eos_id=tok.eos_id, pad_id=tok.pad_id)
  ar = harness.ar_reference(bench, batches, **kw)
  rows = {}
  for name, (dec_name, settings, needs) in METHODS.items():
    if needs not in have:
      skipped.append(f'{name} (no {needs} run in {args.runs})')
      continue
    if needs == DRAFT:
      settings = dict(settings, draft_workdir=os.path.join(args.runs, DRAFT))
    dec = bench.decoder(dec_name, sampling, settings)
    models, params = bench.models_for(dec)
    r = harness.measure(dec, models, params, batches, warmup=True, **kw)
    rows[name] = harness.tau_row(r, ar['tokens'])
    print(f"{name}: tau {r['tau']:.3f}  acceptance {np.round(r['acceptance_by_position'], 3)}"
          f"  = AR: {rows[name]['equals_ar']}  ({r['tokens_per_s']:.0f} tok/s vs AR "
          f"{ar['tokens_per_s']:.0f} on a shared machine; not recorded)", flush=True)
  lens = [len(p) for p in prompts]
  meta = {'prompts': len(prompts), 'max_new_tokens': args.max_new_tokens,
          'prompt_tokens_mean': float(np.mean(lens)), 'last_position': max(lens) +
          args.max_new_tokens - 1, 'train_seq_len': int(bench.config['data']['seq_len']),
          'batch_size': args.batch_size, 'temperature': 0.0, 'target': args.target,
          'runs': args.runs, 'ar_tau': ar['tau'], 'skipped': skipped,
          'provenance': common.provenance()}
  out_json = common.write_json(args.name, {**meta, 'rows': rows})
  return common.write_results(args.name, 'EAGLE-3 / EAGLE-1 / Medusa / MTP / draft model on '
                              'the tiny target (tau, acceptance by depth)',
                              _body(rows, meta)), out_json


def _body(rows, meta) -> str:
  D = max((len(r['acceptance_by_position']) for r in rows.values()), default=0)
  header = (['method', 'tau', 'drafted nodes / step', 'draft forwards / token']
            + [f'acc@{d + 1}' for d in range(D)] + ['tokens = AR'])
  table = []
  for name, r in rows.items():
    acc = list(r['acceptance_by_position']) + [''] * (D - len(r['acceptance_by_position']))
    table.append([name, round(r['tau'], 3), round(r['drafted_per_step'], 1),
                  round(r['other_forwards_per_token'], 2)]
                 + [round(a, 3) if a != '' else '' for a in acc]
                 + ['yes' if r['equals_ar'] else 'NO'])
  text = [
      f"{meta['prompts']} held-out prompts of the code corpus, {meta['max_new_tokens']} new "
      f"tokens each, greedy, batches of {meta['batch_size']}; target `{meta['target']}` (the "
      f"`tiny` preset), drafters trained 600 steps each on the frozen target "
      f"(`configs/spec_heads.py`), the draft model (the `test` preset: 2 layers, width 64) "
      f"distilled from it for 800 steps (`configs/spec_draft.py`), one run and one seed each. "
      f"Draft forwards of the draft model are forwards of a separate model (of ~8x fewer "
      f"FLOPs than the target), not of heads on the target's features. tau counts the bonus token and "
      "the prefill; acc@d = share of verification steps whose accepted path reached depth d. "
      "Speed is not recorded here (measured on a shared machine).", '',
      f"Prompts are {meta['prompt_tokens_mean']:.0f} tokens on average; decoding reaches "
      f"position {meta['last_position']}, while the target and the drafters were trained on "
      f"rows of {meta['train_seq_len']} tokens"
      + (' (positions past training: the attention drafters (EAGLE) see relative distances '
         'they were not trained on; Medusa and MTP heads have no attention).'
         if meta['last_position'] >= meta['train_seq_len'] else '.'), '',
      common.markdown_table(header, table)]
  if meta['skipped']:
    text += ['', 'Skipped: ' + '; '.join(meta['skipped'])]
  return '\n'.join(text)


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--target', default='runs/spec/target')
  p.add_argument('--runs', default='runs/spec',
                 help='folder with eagle3/ eagle1/ medusa/ mtp/ draft/')
  p.add_argument('--prompts', type=int, default=16)
  p.add_argument('--prompt_chars', type=int, default=200)
  p.add_argument('--max_new_tokens', type=int, default=128)
  p.add_argument('--batch_size', type=int, default=8)
  p.add_argument('--name', default='eagle_tiny_cpu')
  args = p.parse_args()
  print(*run(args), sep='\n')


if __name__ == '__main__':
  main()
