"""CtrlDiff against block diffusion at fixed block sizes, same model, on sudoku4.

  python train.py --config=configs/diffusion_tasks.py:sudoku4,ctrldiff --workdir=runs/diffusion/sudoku4_ctrldiff
  python train.py --config=configs/ctrldiff.py:sudoku4 --workdir=runs/diffusion/sudoku4_ctrldiff_sizes
  python -m benchmarks.ctrldiff --run=runs/diffusion/sudoku4_ctrldiff_sizes

The run holds the frozen multi-size block diffusion model and its block-size predictor. On
held-out sudoku4 puzzles, greedy, every decoder commits a whole block per step (one step per
block), so the block size sets the parallelism:
  bd3 b=N     `llada` with block_causal=1, block_size=N, tokens_per_step=N, cache='prefix'
              (the BD3-LM exact cache), for every size of the set;
  ctrldiff    the learned block size per block at several thresholds (its boundary forwards
              counted as target forwards);
  reference   one token per step (llada, tokens_per_step=1, blocks of 16).
Also checked per size: `ctrldiff` with force_size=N gives exactly bd3 b=N's tokens.
Reports solved %, target forwards per generated token (NFE/token; the prompt's prefill
included) and the mean block size. Writes benchmarks/results/OUT.md, OUT.json and
OUT_speed_quality.png (OUT: --out, default ctrldiff_cpu). One run, one seed.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any, Sequence

import numpy as np

import workbench
from benchmarks import common
from data.tasks import exact_match
from models import block_size as bs_lib


def puzzles(tokenizer, n: int, seed: int):
  """(prompts, max_new, accuracy(rows) in %) for n held-out sudoku4 puzzles."""
  task = exact_match.get('sudoku4')
  examples = exact_match.examples(task, n, seed=seed)
  prompts = [exact_match.prompt_ids(tokenizer, p) for p, _ in examples]

  def accuracy(rows):
    return 100.0 * float(np.mean([task.score(p, tokenizer.decode(r.tokens))
                                  for (p, _), r in zip(examples, rows)]))
  return prompts, task.max_answer_chars + 1, accuracy


def measure(bench, label: str, name: str, settings: dict[str, Any], prompts, max_new,
            accuracy) -> dict[str, Any]:
  dec = bench.decoder(name, settings=settings)
  rows, stats = bench.run_one(dec, prompts, max_new_tokens=max_new, batch_size=64)
  gen = max(stats.generated, 1)
  blocks = sum(r.extra.get('blocks', 0) for r in rows)
  size_sum = sum(r.extra.get('block_size_sum', 0) for r in rows)
  out = dict(label=label, decoder=name, settings={k: v for k, v in settings.items()},
             solved_pct=accuracy(rows), nfe_per_token=stats.target_forwards / gen,
             target_forwards=stats.target_forwards, generated=stats.generated,
             mean_block_size=(size_sum / blocks) if blocks else settings.get('block_size'),
             tokens=[r.tokens for r in rows])
  print(f"{label:24s} solved {out['solved_pct']:5.1f}%  NFE/token {out['nfe_per_token']:.3f}"
        f"  mean block {out['mean_block_size']}", flush=True)
  return out


def main(argv: Sequence[str] | None = None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--run', default='runs/diffusion/sudoku4_ctrldiff_sizes')
  ap.add_argument('--prompts', type=int, default=512)
  ap.add_argument('--seed', type=int, default=0)
  ap.add_argument('--thresholds', default='0.3,0.5,0.7,0.9')
  ap.add_argument('--out', default='ctrldiff_cpu')
  args = ap.parse_args(argv)
  bench = workbench.Workbench.load(args.run)
  sizes = bs_lib.parse_sizes(bench.target.config['ctrldiff']['sizes'])
  prompts, max_new, accuracy = puzzles(bench.tokenizer, args.prompts, args.seed)
  fixed = dict(block_causal=1, shift=-1, mask_id=-1, cache='prefix')
  results, exact = [], {}
  results.append(measure(bench, 'one token per step', 'llada',
                         dict(fixed, block_size=sizes[-1], tokens_per_step=1), prompts, max_new,
                         accuracy))
  for b in sizes:
    bd3 = measure(bench, f'bd3 b={b}', 'llada', dict(fixed, block_size=b, tokens_per_step=b),
                  prompts, max_new, accuracy)
    forced = measure(bench, f'ctrldiff force_size={b}', 'ctrldiff',
                     dict(force_size=b, block_size=b, sizes=','.join(map(str, sizes))),
                     prompts, max_new, accuracy)
    exact[b] = forced['tokens'] == bd3['tokens']
    results.append(bd3)
  for tau in [float(x) for x in args.thresholds.split(',') if x.strip()]:
    results.append(measure(bench, f'ctrldiff threshold={tau}', 'ctrldiff',
                           dict(threshold=tau, block_size=sizes[-1],
                                sizes=','.join(map(str, sizes))), prompts, max_new, accuracy))
  header = ['decoder', 'solved %', 'NFE / token', 'tokens / forward', 'mean block size']
  table = common.markdown_table(header, [
      [r['label'], r['solved_pct'], r['nfe_per_token'], 1.0 / r['nfe_per_token'],
       float(r['mean_block_size'])] for r in results])
  run_line = workbench.describe_run(bench)
  exact_line = ', '.join(f'b={b}: {"yes" if ok else "NO"}' for b, ok in exact.items())
  body = f"""Run: `{args.run}` ({run_line}); {len(prompts)} held-out sudoku4 puzzles
(seed {args.seed}), greedy, answer {max_new} tokens. One training run, one seed.
Every decoder commits a whole block per step except the one-token-per-step reference.
NFE / token = target forwards (prompt prefill included; ctrldiff's boundary forwards
included) / generated tokens.

{table}

`ctrldiff` with force_size=b gives exactly the tokens of bd3 b: {exact_line}.
"""
  path = common.write_results(args.out, 'CtrlDiff: learned block sizes vs fixed-size block '
                              'diffusion (sudoku4, CPU)', body)
  with open(os.path.join(common.RESULTS_DIR, f'{args.out}.json'), 'w') as f:
    json.dump(dict(provenance=common.provenance(), run=args.run, prompts=len(prompts),
                   seed=args.seed, forced_equals_fixed={str(b): ok for b, ok in exact.items()},
                   results=[{k: v for k, v in r.items() if k != 'tokens'} for r in results]),
              f, indent=1)
  plt = common.pyplot()
  fig, ax = plt.subplots(figsize=(5.5, 4))
  for group, marker in (('bd3', 'o'), ('ctrldiff threshold', 's'), ('one token', '^')):
    pts = [r for r in results if r['label'].startswith(group)]
    ax.plot([r['nfe_per_token'] for r in pts], [r['solved_pct'] for r in pts], marker=marker,
            label=group, linestyle='-' if len(pts) > 1 else 'none')
    for r in pts:
      ax.annotate(r['label'].split()[-1], (r['nfe_per_token'], r['solved_pct']), fontsize=7)
  ax.set_xlabel('target forwards per token')
  ax.set_ylabel('sudoku4 solved %')
  ax.legend(fontsize=8)
  ax.set_title('CtrlDiff vs fixed block sizes (one run, one seed)', fontsize=9)
  fig.tight_layout()
  fig.savefig(os.path.join(common.RESULTS_DIR, f'{args.out}_speed_quality.png'), dpi=120)
  print('wrote', path)


if __name__ == '__main__':
  main()
