"""Chimera and S2D on the tiny target(s): tau and acceptance by draft depth, next to MTP.

  # target A: the tiny quickstart run; target B: a 2-layer variant (300 steps)
  python train.py --config=configs/lm.py:tiny --workdir=runs/tiny
  python train.py --config=configs/lm.py:tiny --workdir=runs/tiny2 \
      --config.model.num_layers=2 --config.train.steps=300
  # drafters on target A (400 steps each) and one nested S2D draft for both targets
  for k in chimera mtp; do python train.py --config=configs/spec_heads.py:$k \
      --workdir=runs/$k --config.spec.target_workdir=runs/tiny --config.train.steps=400; done
  python train.py --config=configs/s2d.py --workdir=runs/s2d_draft
  python -m benchmarks.spec_chimera_s2d --prompt_chars 60 --max_new_tokens 64

Held-out prompts of the code corpus, greedy (temperature 0), every method on the same prompts.
Chimera and MTP on target A at a chain (4 and 3 drafts) and a static tree of 24 nodes. S2D:
for each target, `decoding.speculative.s2d.calibrate` picks the sub-model (exit layer) on
`--calib` calibration prompts (held-out prompts after the evaluation ones, 32 new tokens);
then every exit is measured on the evaluation prompts as a chain of 4, so the table shows
whether the calibrated choice was the best one. tau does not depend on the machine's load;
tokens/s does, so speed is printed but not written. Writes benchmarks/results/NAME.md and
.json.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import workbench
from benchmarks import common
from benchmarks import harness
from decoding import SamplingConfig
from decoding.speculative import s2d as s2d_lib

# name -> (decoder, settings, heads run it needs) on target A
HEAD_METHODS: dict[str, tuple[str, dict[str, Any], str]] = {
    'chimera chain 4': ('chimera', dict(tree='chain', gamma=4), 'chimera'),
    'mtp chain 3': ('mtp', dict(tree='chain', gamma=3), 'mtp'),
    'chimera static tree 24': ('chimera', dict(tree='static', gamma=4, tree_nodes=24),
                               'chimera'),
    'mtp static tree 24': ('mtp', dict(tree='static', gamma=3, tree_nodes=24), 'mtp'),
}
S2D_GAMMA = 4


def _measure(bench, dec, batches, kw, ar_tokens) -> dict[str, Any]:
  models, params = bench.models_for(dec)
  return harness.tau_row(harness.measure(dec, models, params, batches, **kw), ar_tokens,
                         harness.TAU_KEYS + ('tokens_per_s',))


def run(args) -> tuple[str, str]:
  sampling = SamplingConfig(temperature=0.0)
  rows, s2d_rows, calib, skipped, meta_targets = {}, {}, {}, [], {}
  for label, target in (('A', args.target), ('B', args.target_b)):
    if not workbench.has_checkpoint(target):
      skipped.append(f'target {label} ({target}: no checkpoint)')
      continue
    bench = workbench.Workbench.load(target)
    tok = bench.tokenizer
    allp = workbench.read_prompts(tok, prompt=None, prompts_file=None,
                                  heldout=args.prompts + args.calib,
                                  prompt_chars=args.prompt_chars,
                                  data_config=bench.config['data'])
    if len(allp) < args.prompts + args.calib:
      raise ValueError(f'Only {len(allp)} held-out prompts of {args.prompt_chars} characters; '
                       f'lower --prompts ({args.prompts}) or --calib ({args.calib}).')
    prompts, calib_prompts = allp[:args.prompts], allp[args.prompts:]
    cache = harness.cache_slots(allp, args.max_new_tokens)
    batches = harness.make_batches(prompts, args.batch_size, tok.pad_id)
    kw = dict(max_new=args.max_new_tokens, cache_size=cache, eos_id=tok.eos_id,
              pad_id=tok.pad_id)
    ar = harness.ar_reference(bench, batches, **kw)
    meta_targets[label] = dict(workdir=target, layers=bench.model.cfg.num_layers,
                               ar_tau=ar['tau'])
    if label == 'A':
      for name in sorted({h for _, _, h in HEAD_METHODS.values()}):
        workdir = os.path.join(args.runs, name)
        if workbench.has_checkpoint(workdir):
          bench.add_heads(name, workdir)
      for name, (dec_name, settings, needs) in HEAD_METHODS.items():
        if needs not in bench.extras:
          skipped.append(f'{name} (no {needs} run in {args.runs})')
          continue
        rows[name] = _measure(bench, bench.decoder(dec_name, sampling, settings), batches, kw,
                              ar['tokens'])
        print(f"{name}: tau {rows[name]['tau']:.3f}  = AR: {rows[name]['equals_ar']}",
              flush=True)
    if not workbench.has_checkpoint(args.s2d_draft):
      skipped.append(f'S2D on target {label} (no draft in {args.s2d_draft})')
      continue
    dec = bench.decoder('s2d', sampling, dict(draft_workdir=args.s2d_draft, tree='chain',
                                              gamma=S2D_GAMMA))
    models, params = bench.models_for(dec)
    exits = tuple(range(1, models['draft'].cfg.num_layers + 1))
    best, table = s2d_lib.calibrate(dec, models, params, calib_prompts, exits=exits,
                                    max_new_tokens=32, cache_size=cache, eos_id=tok.eos_id,
                                    pad_id=tok.pad_id)
    calib[label] = dict(chosen=best, table={str(k): v for k, v in table.items()})
    for k in exits:
      d = bench.decoder('s2d', sampling, dict(draft_workdir=args.s2d_draft, tree='chain',
                                              gamma=S2D_GAMMA, exit_layer=k))
      r = _measure(bench, d, batches, kw, ar['tokens'])
      r['cost_ratio'] = table[k]['cost_ratio']
      r['chosen'] = k == best
      s2d_rows[f'{label}:{k}'] = r
      print(f"S2D target {label} exit {k}: tau {r['tau']:.3f} (calibration tau "
            f"{table[k]['tau']:.3f}, score {table[k]['score']:.3f})"
            + ('  <- chosen' if k == best else ''), flush=True)
  meta = {'prompts': args.prompts, 'calibration_prompts': args.calib,
          'max_new_tokens': args.max_new_tokens, 'batch_size': args.batch_size,
          'prompt_chars': args.prompt_chars, 'temperature': 0.0, 'targets': meta_targets,
          'runs': args.runs, 's2d_draft': args.s2d_draft, 'skipped': skipped,
          'provenance': common.provenance()}
  out_json = common.write_json(args.name, {**meta, 'rows': rows, 's2d_rows': s2d_rows,
                                           'calibration': calib})
  return common.write_results(args.name, 'Chimera and S2D on tiny targets (tau, acceptance by '
                              'depth)', _body(rows, s2d_rows, calib, meta)), out_json


def _acc(r, D):
  acc = list(r['acceptance_by_position'])
  return [round(a, 3) for a in acc] + [''] * (D - len(acc))


def _body(rows, s2d_rows, calib, meta) -> str:
  t = meta['targets']
  text = [
      f"{meta['prompts']} held-out prompts of the code corpus (about {meta['prompt_chars']} "
      f"characters), {meta['max_new_tokens']} new tokens each, greedy, batches of "
      f"{meta['batch_size']}; one run and one seed each. tau counts the bonus token and the "
      "prefill; acc@d = share of verification steps whose accepted path reached depth d. "
      "Speed is not recorded (measured on a shared machine).", '']
  if rows:
    D = max(len(r['acceptance_by_position']) for r in rows.values())
    header = (['method', 'tau', 'drafted nodes / step', 'draft forwards / token']
              + [f'acc@{d + 1}' for d in range(D)] + ['tokens = AR'])
    text += [f"Target A `{t['A']['workdir']}` (the `tiny` preset, {t['A']['layers']} layers); "
             f"Chimera and MTP trained 400 steps each on the frozen target "
             "(`configs/spec_heads.py`).", '',
             common.markdown_table(header, [
                 [n, round(r['tau'], 3), round(r['drafted_per_step'], 1),
                  round(r['other_forwards_per_token'], 2)] + _acc(r, D)
                 + ['yes' if r['equals_ar'] else 'NO'] for n, r in rows.items()]), '']
  if s2d_rows:
    D = max(len(r['acceptance_by_position']) for r in s2d_rows.values())
    header = (['target', 'exit (sub-model layers)', 'draft cost / target cost',
               'calibration tau', 'calibration score', 'tau', 'draft forwards / token']
              + [f'acc@{d + 1}' for d in range(D)] + ['chosen', 'tokens = AR'])
    table = []
    for key, r in s2d_rows.items():
      label, k = key.split(':')
      c = calib[label]['table'][k]
      table.append([f"{label} ({t[label]['layers']} layers)", k, round(c['cost_ratio'], 3),
                    round(c['tau'], 3), round(c['score'], 3), round(r['tau'], 3),
                    round(r['other_forwards_per_token'], 2)] + _acc(r, D)
                   + ['yes' if r['chosen'] else '', 'yes' if r['equals_ar'] else 'NO'])
    text += [f"S2D: one nested draft `{meta['s2d_draft']}` (4 layers of width 64, SoFT with "
             "exits 1/2/4, `configs/s2d.py`) drafting a chain of 4 for each target. The "
             f"sub-model is chosen per target on {meta['calibration_prompts']} other held-out "
             "prompts (32 new tokens) by score = tau / (1 + draft forwards per step x cost "
             "ratio), the cost ratio counting the parameters a token touches (a FLOP proxy, "
             "not a timing); every exit is then measured on the evaluation prompts.", '',
             common.markdown_table(header, table)]
    if 'B' in t:
      text += ['', f"Target B `{t['B']['workdir']}`: the `tiny` preset with 2 layers, "
               "trained 300 steps."]
  if meta['skipped']:
    text += ['', 'Skipped: ' + '; '.join(meta['skipped'])]
  return '\n'.join(text)


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--target', default='runs/tiny')
  p.add_argument('--target_b', default='runs/tiny2')
  p.add_argument('--runs', default='runs', help='folder with chimera/ and mtp/ on target A')
  p.add_argument('--s2d_draft', default='runs/s2d_draft')
  p.add_argument('--prompts', type=int, default=10)
  p.add_argument('--calib', type=int, default=4)
  p.add_argument('--prompt_chars', type=int, default=60)
  p.add_argument('--max_new_tokens', type=int, default=64)
  p.add_argument('--batch_size', type=int, default=8)
  p.add_argument('--name', default='chimera_s2d_tiny_cpu')
  args = p.parse_args()
  print(*run(args), sep='\n')


if __name__ == '__main__':
  main()
