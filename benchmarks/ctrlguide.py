"""Classifier-guided CtrlDiff against guided block diffusion at a fixed block size.

  python train.py --config=configs/diffusion_tasks.py:progression,ctrldiff --workdir=runs/diffusion/progression_ctrldiff
  python train.py --config=configs/ctrldiff.py:progression --workdir=runs/diffusion/progression_ctrldiff_sizes
  python train.py --config=configs/ctrlguide.py:progression --workdir=runs/diffusion/progression_ctrlguide
  python -m benchmarks.ctrlguide --run=runs/diffusion/progression_ctrlguide

The run holds the frozen multi-size block diffusion model, CtrlDiff's block-size predictor and
the attribute classifier (configs/ctrlguide.py). Task 'progression' (an arithmetic
progression of 7 terms from an empty prompt), attribute 'step_parity', target class
`--target` (default 'even'; the generator makes even steps 4 times in 9). Every row decodes
the same empty prompt with its own key (temperature 1), so the rows are samples of the
model's (guided) distribution. For each guidance scale γ of `--scales`:
  ctrldiff    the learned block size (`--threshold`), guided;
  bd3 b=N     `ctrldiff` with force_size=N (exactly fixed-size block diffusion, BD3-LM
              cache: tests/decoding/test_ctrldiff.py), guided through the same code;
one whole block per step; and one token per step (blocks of the smallest size) at the
smallest and largest γ as a reference. Reports the attribute rate (the label of the decoded
text, not the classifier's opinion), valid % (a 7-term progression with step 1..9), both at
once, increasing 7 terms % and equal steps % (weaker bars), distinct answers (% of rows), target forwards per generated token (NFE/token, prompt prefill and
CtrlDiff's boundary forwards included), classifier calls per token and the mean block size.
Writes benchmarks/results/OUT.md, OUT.json and OUT.png (OUT: --out, default
ctrlguide_cpu). One training run of each model, one seed.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any, Sequence

import numpy as np

import decoding
import workbench
from benchmarks import common
from data.tasks import attributes
from data.tasks import exact_match
from models import block_size as bs_lib


def well_formed(answer: str, terms: int = 7) -> bool:
  """`terms` non-negative integers separated by single spaces, increasing (a weaker bar than
  a valid progression, which also needs equal steps of 1..9)."""
  parts = answer.split(' ')
  if len(parts) != terms or not all(p.isdigit() for p in parts):
    return False
  xs = [int(p) for p in parts]
  return all(b > a for a, b in zip(xs, xs[1:]))


def equal_steps(answer: str) -> float:
  """The share of the later steps (x[k+1] - x[k], k >= 1) equal to the first step, over the
  leading integers of `answer` (0 when fewer than three parse): a graded form of validity."""
  xs = []
  for p in answer.split(' '):
    if not p.isdigit():
      break
    xs.append(int(p))
  if len(xs) < 3:
    return 0.0
  d = [b - a for a, b in zip(xs, xs[1:])]
  return sum(x == d[0] for x in d[1:]) / 5.0  # of the 5 later steps of a 7-term answer


def measure(bench, label: str, settings: dict[str, Any], prompts, max_new, score,
            sampling) -> dict[str, Any]:
  dec = bench.decoder('ctrldiff', sampling=sampling, settings=settings)
  rows, stats = bench.run_one(dec, prompts, max_new_tokens=max_new, batch_size=len(prompts))
  gen = max(stats.generated, 1)
  blocks = sum(r.extra.get('blocks', 0) for r in rows)
  size_sum = sum(r.extra.get('block_size_sum', 0) for r in rows)
  nll = sum(float(r.extra['model_nll_sum']) for r in rows)
  committed = sum(int(r.extra['committed']) for r in rows)
  out = dict(label=label, settings=dict(settings), **score(rows),
             model_nll_per_token=nll / max(committed, 1),
             nfe_per_token=stats.target_forwards / gen,
             classifier_calls_per_token=stats.other_forwards / gen,
             generated=stats.generated, mean_block_size=size_sum / max(blocks, 1))
  print(f"{label:28s} attr {out['attribute_pct']:5.1f}%  valid {out['valid_pct']:5.1f}%  "
        f"formed {out['well_formed_pct']:5.1f}%  equal {out['equal_steps_pct']:5.1f}%  "
        f"both {out['both_pct']:5.1f}%  distinct {out['distinct_pct']:5.1f}%  "
        f"NLL {out['model_nll_per_token']:.3f}  NFE/token {out['nfe_per_token']:.3f}  block {out['mean_block_size']:.2f}", flush=True)
  return out


def main(argv: Sequence[str] | None = None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--run', default='runs/diffusion/progression_ctrlguide')
  ap.add_argument('--rows', type=int, default=128)
  ap.add_argument('--seed', type=int, default=0)
  ap.add_argument('--scales', default='0,0.5,1,2,4')
  ap.add_argument('--target', default='even')
  ap.add_argument('--threshold', type=float, default=0.9)
  ap.add_argument('--fixed', default='2,4', help='fixed block sizes to compare, comma-separated')
  ap.add_argument('--guidance', default='exact')
  ap.add_argument('--top_k', type=int, default=8)
  ap.add_argument('--out', default='ctrlguide_cpu')
  args = ap.parse_args(argv)
  bench = workbench.Workbench.load(args.run)
  attr = attributes.get(bench.config['attribute']['name'])
  target = attr.class_index(args.target)
  task = exact_match.get(attr.task)
  sizes = bs_lib.parse_sizes(bench.config['diffusion']['block_sizes'])
  tok = bench.tokenizer
  prompt_text = ''
  prompts = [exact_match.prompt_ids(tok, prompt_text)] * args.rows
  max_new = task.max_answer_chars + 1
  sampling = decoding.SamplingConfig(temperature=1.0)

  def score(rows):
    answers = [tok.decode([t for t in r.tokens if t != tok.eos_id]) for r in rows]
    hit = np.array([attr.label(prompt_text, a) == target for a in answers])
    ok = np.array([task.score(prompt_text, a) for a in answers])
    formed = np.array([well_formed(a) for a in answers])
    equal = np.array([equal_steps(a) for a in answers])
    return dict(attribute_pct=100.0 * hit.mean(), valid_pct=100.0 * ok.mean(),
                well_formed_pct=100.0 * formed.mean(), equal_steps_pct=100.0 * equal.mean(),
                both_pct=100.0 * (hit & ok).mean(),
                distinct_pct=100.0 * len(set(answers)) / len(answers),
                examples=answers[:4])

  guide = dict(guidance_class=target, guidance=args.guidance, guidance_top_k=args.top_k)
  all_sizes = ','.join(map(str, sizes))
  results = []
  scales = [float(x) for x in args.scales.split(',') if x.strip()]
  for gamma in scales:
    results.append(measure(bench, f'ctrldiff threshold={args.threshold} γ={gamma:g}',
                           dict(guide, guidance_scale=gamma, threshold=args.threshold,
                                block_size=sizes[-1], sizes=all_sizes),
                           prompts, max_new, score, sampling))
    for b in [int(x) for x in args.fixed.split(',') if x.strip()]:
      results.append(measure(bench, f'bd3 b={b} γ={gamma:g}',
                             dict(guide, guidance_scale=gamma, force_size=b, block_size=b,
                                  sizes=str(b)), prompts, max_new, score, sampling))
  for gamma in (scales[0], scales[-1]):
    results.append(measure(bench, f'one token per step γ={gamma:g}',
                           dict(guide, guidance_scale=gamma, force_size=sizes[0],
                                block_size=sizes[0], sizes=str(sizes[0]), tokens_per_step=1),
                           prompts, max_new, score, sampling))
  header = ['decoder', 'γ', 'attribute %', 'valid %', 'valid and attribute %',
            'increasing 7 terms %', 'equal steps %', 'distinct %', 'model NLL / token (nats)', 'NFE / token', 'classifier calls / token',
            'mean block size']
  table = common.markdown_table(header, [
      [r['label'].rsplit(' γ=', 1)[0], r['settings']['guidance_scale'], r['attribute_pct'],
       r['valid_pct'], r['both_pct'], r['well_formed_pct'], r['equal_steps_pct'],
       r['distinct_pct'], r['model_nll_per_token'],
       r['nfe_per_token'],
       r['classifier_calls_per_token'], r['mean_block_size']] for r in results])
  evals = [json.loads(line) for line in open(os.path.join(bench.workdir, 'metrics.jsonl'))
           if '"eval"' in line]
  cls_line = ''
  if evals:
    e = evals[-1]
    cls_line = (f"Classifier (step {e['step']}, held-out noised rows): accuracy "
                f"{e['accuracy']:.3f}, on rows at most half masked "
                f"{e['accuracy_mostly_clean']:.3f}, more than half masked "
                f"{e['accuracy_mostly_masked']:.3f}.")
  body = f"""Run: `{args.run}` ({workbench.describe_run(bench)}); attribute
`{attr.name}` ({attr.description}), target class '{attr.classes[target]}'; {args.rows} rows
from the empty prompt, temperature 1, seed {args.seed}, answer {max_new} tokens; guidance
'{args.guidance}' (top {args.top_k} candidates per position for 'exact').
One training run of each model (diffusion model, block-size predictor, classifier), one
decoding seed: with {args.rows} rows a rate near 50 % has a standard error near
{100 * np.sqrt(0.25 / args.rows):.1f} points.
{cls_line}
Attribute % is the label of the decoded text (a step of the wanted parity), not the
classifier's opinion; valid % = a 7-term progression with step 1..9. NFE / token = target
forwards (prompt prefill and CtrlDiff's boundary forwards included) / generated tokens;
classifier calls / token = guidance steps / generated tokens (an 'exact' call scores
B x M x {args.top_k} sequences, M = the largest block size).

{table}
"""
  path = common.write_results(args.out, 'Classifier-guided CtrlDiff vs guided fixed-size '
                              'block diffusion (progression, step parity, CPU)', body)
  with open(os.path.join(common.RESULTS_DIR, f'{args.out}.json'), 'w') as f:
    json.dump(dict(provenance=common.provenance(), run=args.run, rows=args.rows,
                   seed=args.seed, target=attr.classes[target], guidance=args.guidance,
                   top_k=args.top_k, threshold=args.threshold, results=results), f, indent=1)
  plt = common.pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
  groups = sorted({r['label'].rsplit(' γ=', 1)[0] for r in results})
  for g in groups:
    pts = [r for r in results if r['label'].rsplit(' γ=', 1)[0] == g]
    gam = [r['settings']['guidance_scale'] for r in pts]
    axes[0].plot(gam, [r['attribute_pct'] for r in pts], marker='o', label=g)
    axes[1].plot(gam, [r['valid_pct'] for r in pts], marker='o', label=g)
  axes[0].set_ylabel(f"step {attr.classes[target]} (% of rows)")
  axes[1].set_ylabel('valid progression (% of rows)')
  for ax in axes:
    ax.set_xlabel('guidance scale γ')
  axes[0].legend(fontsize=8)
  fig.suptitle('Classifier guidance, progression step parity (one run, one seed)', fontsize=9)
  fig.tight_layout()
  fig.savefig(os.path.join(common.RESULTS_DIR, f'{args.out}.png'), dpi=120)
  print('wrote', path)


if __name__ == '__main__':
  main()
