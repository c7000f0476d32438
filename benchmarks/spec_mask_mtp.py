"""Masked-input MTP ("Your LLM Knows the Future") on the tiny target: tau and acceptance by
draft depth, next to the MTP / Medusa chains of benchmarks/results/eagle_tiny_cpu_within128.md.

  python train.py --config=configs/lm.py:tiny --workdir=runs/tiny                 # the target
  python train.py --config=configs/mask_mtp.py --workdir=runs/mask_mtp \\
      --config.spec.target_workdir=runs/tiny                    # 600 steps, base frozen
  python -m benchmarks.spec_mask_mtp --target runs/tiny --run runs/mask_mtp \\
      --prompt_chars 60 --max_new_tokens 64

Held-out prompts of the code corpus, greedy (temperature 0), batches of 8, linear decoding at
2, 3 and 4 masks (= drafts per step) and quadratic decoding (masks after every drafted node)
at 3 and 4. Per setting: tau (tokens per target forward, bonus and
prefill counted), acceptance by position (share of verification steps whose accepted path
reached depth d; steps without drafts — the first, and each one after a rejection — count as
reaching no depth), drafted nodes per step, sampler-head calls per token, and whether the
tokens equal AR's. Speed is printed but not written (a shared machine). Writes
benchmarks/results/NAME.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

import workbench
from benchmarks import common
from benchmarks import harness
from decoding import SamplingConfig

# name -> mask_mtp settings
SETTINGS = {f'mask_mtp chain {g}': dict(gamma=g) for g in (2, 3, 4)}
SETTINGS.update({f'mask_mtp quadratic chain {g}': dict(gamma=g, quadratic=True) for g in (3, 4)})


def run(args) -> tuple[str, str]:
  bench = workbench.Workbench.load(args.target)
  bench.add_heads('mask_mtp', args.run)
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
  for name, settings in SETTINGS.items():
    dec = bench.decoder('mask_mtp', sampling, settings)
    models, params = bench.models_for(dec)
    r = harness.measure(dec, models, params, batches, **kw)
    rows[name] = harness.tau_row(r, ar['tokens'])
    print(f"{name}: tau {r['tau']:.3f}  acceptance {np.round(r['acceptance_by_position'], 3)}"
          f"  = AR: {rows[name]['equals_ar']}  ({r['tokens_per_s']:.0f} tok/s vs AR "
          f"{ar['tokens_per_s']:.0f} on a shared machine; not recorded)", flush=True)
  lens = [len(p) for p in prompts]
  with open(os.path.join(args.run, 'config.json')) as f:
    train = json.load(f)
  meta = {'prompts': len(prompts), 'max_new_tokens': args.max_new_tokens,
          'prompt_tokens_mean': float(np.mean(lens)), 'batch_size': args.batch_size,
          'temperature': 0.0, 'target': args.target, 'run': args.run, 'ar_tau': ar['tau'],
          'train_steps': train['train']['steps'],
          'spec': {k: v for k, v in train['spec'].items() if k != 'target_workdir'},
          'provenance': common.provenance()}
  out_json = common.write_json(args.name, {**meta, 'rows': rows})
  return common.write_results(args.name, 'Masked-input MTP (mask_mtp) on the tiny target (tau, '
                              'acceptance by depth)', _body(rows, meta)), out_json


def _body(rows, meta) -> str:
  D = max(len(r['acceptance_by_position']) for r in rows.values())
  header = (['method', 'tau', 'drafted nodes / step', 'sampler calls / token']
            + [f'acc@{d + 1}' for d in range(D)] + ['tokens = AR'])
  table = []
  for name, r in rows.items():
    acc = list(r['acceptance_by_position']) + [''] * (D - len(r['acceptance_by_position']))
    table.append([name, round(r['tau'], 3), round(r['drafted_per_step'], 2),
                  round(r['other_forwards_per_token'], 2)]
                 + [round(a, 3) if a != '' else '' for a in acc]
                 + ['yes' if r['equals_ar'] else 'NO'])
  s = meta['spec']
  return '\n'.join([
      f"{meta['prompts']} held-out prompts of the code corpus ({meta['prompt_tokens_mean']:.0f} "
      f"tokens on average), {meta['max_new_tokens']} new tokens each, greedy, batches of "
      f"{meta['batch_size']}; target `{meta['target']}` (the `tiny` preset), the mask_mtp tree "
      f"trained {meta['train_steps']} steps on the frozen target (`configs/mask_mtp.py`: "
      f"{s['heads']} masks, LoRA rank {s['lora_rank']}, {s['anchors']} anchors per row, loss "
      f"{s['loss']}, weights mtp {s['mtp_weight']} / sampler {s['sampler_weight']} / latent "
      f"{s['latent_weight']}), one run and one seed. Linear decoding (chain): a step after a "
      "rejection (and the first) verifies no drafts; quadratic: k masks after every node, so "
      "only the first step has none. tau counts the bonus token and the prefill; acc@d = "
      "share of verification steps whose accepted path reached depth d (steps without drafts "
      "included). Speed is not recorded here (measured on a shared machine).", '',
      common.markdown_table(header, table)])


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--target', default='runs/tiny')
  p.add_argument('--run', default='runs/mask_mtp', help='the configs/mask_mtp.py run')
  p.add_argument('--prompts', type=int, default=16)
  p.add_argument('--prompt_chars', type=int, default=200)
  p.add_argument('--max_new_tokens', type=int, default=128)
  p.add_argument('--batch_size', type=int, default=8)
  p.add_argument('--name', default='mask_mtp_tiny_cpu')
  args = p.parse_args()
  print(*run(args), sep='\n')


if __name__ == '__main__':
  main()
