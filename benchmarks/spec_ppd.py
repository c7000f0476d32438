"""PPD on one target: prompt accuracy, the forward-cost curve, the tree it picks, and tau.

  python train.py --config=configs/lm.py:tiny --workdir=runs/tiny               # the target
  python train.py --config=configs/ppd.py --workdir=runs/ppd \
      --config.spec.target_workdir=runs/tiny                      # 300 steps, ~10-18 minutes
  python -m benchmarks.spec_ppd --target=runs/tiny --ppd=runs/ppd \
      --prompt_chars 60 --max_new_tokens 64 --name ppd_tiny_cpu    # a few minutes, 2 CPU cores

1. Top-r accuracy of each prompt position on held-out text (`decoding.speculative.ppd.
   measure_accuracy`: prompt i attached to token t against the target's greedy token at
   t + 2 + i).
2. The forward-cost curve of the target at the tree sizes PPD would run ((1 + nodes) x
   (1 + gamma) tokens, explicit mask), relative to a one-token forward, timed here; the
   expected tokens per unit of cost of each node budget, and the budget it picks.
3. Greedy decoding of held-out prompts with the chain, static trees built from the measured
   accuracy, and the hardware-aware tree: tau (tokens per target forward, bonus token and
   prefill counted), acceptance by depth, expected vs measured accepted length, tokens = AR.
The forward costs depend on the machine's load (a shared CPU here): the chosen budget is
what this machine measured at that moment, not a speed claim. tau does not depend on it.
Writes benchmarks/results/NAME.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

import workbench
from benchmarks import common
from benchmarks import harness
from data import pipeline
from decoding import SamplingConfig
from decoding.speculative import ppd
from models import ppd as ppd_model

RANKS = 5


def _n_params(tree) -> int:
  return int(sum(np.size(x) for x in jax.tree.leaves(tree)))


def run(args) -> tuple[str, str]:
  bench = workbench.Workbench.load(args.target)
  bench.add_heads(ppd_model.PPD, args.ppd)
  prompts_KxD = bench.extras[ppd_model.PPD]['prompts']
  K = int(prompts_KxD.shape[0])
  G = min(args.gamma, K)
  model = bench.model
  tok = bench.tokenizer
  # 1. Accuracy per prompt position on held-out rows.
  dc = pipeline.DataConfig(**bench.config['data'])
  rows = [b['tokens'] for b in pipeline.make_eval_batches(dc, tok, max_batches=args.eval_batches)]
  acc = np.mean([ppd.measure_accuracy(model, bench.params, prompts_KxD, jnp.asarray(r), RANKS)
                 for r in rows], axis=0)
  accuracy = tuple(tuple(round(float(a), 4) for a in row) for row in acc[:G])
  acc_text = ';'.join(','.join(f'{a:g}' for a in row) for row in accuracy)
  # 2. Forward-cost curve and the budget it picks.
  prompts = workbench.read_prompts(tok, prompt=None, prompts_file=None, heldout=args.prompts,
                                   prompt_chars=args.prompt_chars,
                                   data_config=bench.config['data'])
  cache = harness.cache_slots(prompts, args.max_new_tokens,
                              margin=ppd.forward_tokens(max(ppd.BUDGETS), G) + 8)
  costs = ppd.measure_costs(model, bench.params, G, ppd.BUDGETS, batch=args.batch_size,
                            cache_size=max(cache, 2 * ppd.forward_tokens(max(ppd.BUDGETS), G)),
                            seconds=0.2, repeats=5)
  best, values = ppd.choose_nodes(accuracy, G, costs, ppd.BUDGETS)
  # 3. Decoding.
  sampling = SamplingConfig(temperature=0.0)
  batches = harness.make_batches(prompts, args.batch_size, tok.pad_id)
  kw = dict(max_new=args.max_new_tokens, cache_size=cache, eos_id=tok.eos_id, pad_id=tok.pad_id)
  ar = harness.ar_reference(bench, batches, **kw)
  methods = {f'ppd chain {G}': dict(tree='chain', gamma=G)}
  for n in sorted({6, 12, 24, best}):
    label = f'ppd tree {n}' + (' (hardware-aware pick)' if n == best else '')
    methods[label] = dict(tree='static', gamma=G, tree_nodes=n, auto_size=False,
                          accuracy=acc_text)
  out_rows = {}
  for name, settings in methods.items():
    dec = bench.decoder('ppd', sampling, settings)
    tpl = dec.get_drafter().template
    models, params = bench.models_for(dec)
    r = harness.measure(dec, models, params, batches, **kw)
    expected = ppd.expected_accept(tpl, accuracy)
    steps = r['spec_steps']
    out_rows[name] = dict(
        tau=r['tau'], acceptance_by_position=r['acceptance_by_position'],
        drafted_per_step=r['drafted_per_step'], nodes=tpl.size - 1,
        forward_tokens=ppd.forward_tokens(tpl.size - 1, G), expected_accept=expected,
        measured_accept=float(np.sum(r['acceptance_by_position'])),
        other_forwards_per_row=r['other_forwards'] / len(prompts), equals_ar=r['tokens'] == ar['tokens'],
        generated=r['generated'], target_forwards=r['target_forwards'], spec_steps=steps)
    print(f"{name}: tau {r['tau']:.3f}  acceptance {np.round(r['acceptance_by_position'], 3)}"
          f"  expected accept {expected:.3f}  = AR: {out_rows[name]['equals_ar']}", flush=True)
  ref = {}
  if os.path.exists(args.reference):
    with open(args.reference) as f:
      ref_all = json.load(f)
    ref = {k: {'tau': v['tau'], 'acceptance_by_position': v['acceptance_by_position'],
               'drafted_per_step': v['drafted_per_step']}
           for k, v in ref_all['rows'].items() if k.startswith(('medusa', 'mtp'))}
  lens = [len(p) for p in prompts]
  meta = {'prompts': len(prompts), 'max_new_tokens': args.max_new_tokens,
          'prompt_tokens_mean': float(np.mean(lens)), 'batch_size': args.batch_size,
          'temperature': 0.0, 'target': args.target, 'ppd': args.ppd, 'gamma': G,
          'prompt_tokens': K, 'ppd_params': _n_params(bench.extras[ppd_model.PPD]),
          'target_params': _n_params(bench.params), 'ar_tau': ar['tau'],
          'accuracy': [list(r) for r in acc.tolist()], 'eval_rows': int(sum(len(r) for r in rows)),
          'eval_seq_len': int(rows[0].shape[1]) - 1,
          'costs': {str(k): v for k, v in costs.items()},
          'budget_values': {str(k): v for k, v in values.items()}, 'chosen_nodes': best,
          'reference': os.path.relpath(args.reference, common.REPO_ROOT) if ref else '', 'provenance': common.provenance()}
  out_json = common.write_json(args.name, {**meta, 'rows': out_rows, 'reference_rows': ref})
  return common.write_results(args.name, 'PPD prompt tokens on the tiny target (accuracy, '
                              'hardware-aware tree, tau)', _body(out_rows, ref, meta)), out_json


def _body(rows, ref, meta) -> str:
  G = meta['gamma']
  frac = meta['ppd_params'] / meta['target_params']
  text = [
      f"Target `{meta['target']}` (the `tiny` preset, frozen), {meta['prompt_tokens']} prompt "
      f"tokens trained on it (`{meta['ppd']}`, configs/ppd.py): {meta['ppd_params']} trained "
      f"numbers, {100 * frac:.3f}% of the target's {meta['target_params']} parameters. One "
      "training run (300 steps, batch 16 x 64 tokens), one seed.", '',
      f"## Prompt accuracy (held-out rows: {meta['eval_rows']} x {meta['eval_seq_len']} tokens)",
      '', 'Share of positions where prompt i (attached to token t) has the target\'s greedy '
      'token at t + 2 + i among its top r.', '']
  header = ['prompt position (depth)'] + [f'rank {r}' for r in range(len(meta['accuracy'][0]))]
  text.append(common.markdown_table(header, [[i + 1] + [round(a, 3) for a in row]
                                             for i, row in enumerate(meta['accuracy'])]))
  text += ['', '## Hardware-aware budget', '',
           f"Relative cost of one target forward over (1 + nodes) x (1 + {G}) tokens vs one "
           "token (batch {b}, explicit mask, timed on this machine while it was shared: a "
           "snapshot of its load, not a speed claim), and expected tokens per unit of cost "
           "(1 + E[accepted]) / cost under the measured accuracy.".format(b=meta['batch_size']),
           '']
  table = []
  for n, v in meta['budget_values'].items():
    T = (1 + int(n)) * (1 + G)
    table.append([n, T, meta['costs'][str(T)], round(v, 3),
                  'picked' if int(n) == meta['chosen_nodes'] else ''])
  text.append(common.markdown_table(['nodes', 'forward tokens', 'relative cost',
                                     'expected tokens / cost', ''], table))
  text += ['', f"## Greedy decoding ({meta['prompts']} held-out prompts of "
           f"{meta['prompt_tokens_mean']:.0f} tokens on average, {meta['max_new_tokens']} new "
           f"tokens each, batches of {meta['batch_size']}; AR tau {meta['ar_tau']:.3f})", '',
           'tau counts the bonus token and the prefill; acc@d = share of verification steps '
           'whose accepted path reached depth d; expected = the tree builder\'s model '
           '(independent positions), measured = sum of acc@d. The prompt tokens ride in the '
           'verifying forward; the one other forward per row runs the prompt tokens after the '
           'prompt (the first step\'s drafts).', '']
  header = (['method', 'tau', 'drafted nodes', 'forward tokens / step']
            + [f'acc@{d + 1}' for d in range(G)] + ['accepted: expected', 'measured',
                                                    'tokens = AR'])
  table = []
  for name, r in rows.items():
    a = list(r['acceptance_by_position']) + [''] * (G - len(r['acceptance_by_position']))
    table.append([name, round(r['tau'], 3), r['nodes'], r['forward_tokens']]
                 + [round(x, 3) if x != '' else '' for x in a[:G]]
                 + [round(r['expected_accept'], 3), round(r['measured_accept'], 3),
                    'yes' if r['equals_ar'] else 'NO'])
  text.append(common.markdown_table(header, table))
  if ref:
    text += ['', f"## Medusa and MTP for comparison (quoted from `{meta['reference']}`)", '',
             'Their own run: a different `tiny` target run (`runs/spec/target`, same preset), '
             'heads trained 600 steps, same prompt settings (60 characters, 64 new tokens).',
             '']
    table = [[k, round(v['tau'], 3), round(v['drafted_per_step'], 1)]
             + [round(x, 3) for x in v['acceptance_by_position'][:3]] for k, v in ref.items()]
    text.append(common.markdown_table(['method', 'tau', 'drafted nodes / step', 'acc@1',
                                       'acc@2', 'acc@3'], table))
  return '\n'.join(text)


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--target', default='runs/tiny')
  p.add_argument('--ppd', default='runs/ppd', help='the run trained by configs/ppd.py')
  p.add_argument('--gamma', type=int, default=3)
  p.add_argument('--prompts', type=int, default=16)
  p.add_argument('--prompt_chars', type=int, default=200)
  p.add_argument('--max_new_tokens', type=int, default=128)
  p.add_argument('--batch_size', type=int, default=8)
  p.add_argument('--eval_batches', type=int, default=4)
  p.add_argument('--reference', default=os.path.join(common.RESULTS_DIR,
                                                     'eagle_tiny_cpu_within128.json'))
  p.add_argument('--name', default='ppd_tiny_cpu')
  args = p.parse_args()
  print(*run(args), sep='\n')


if __name__ == '__main__':
  main()
