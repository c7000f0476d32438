"""Learned unmasking policies against hand-set rules at equal forwards, in and out of
distribution (sudoku4).

  python -m benchmarks.unmask_policy --policies=runs/diffusion/sudoku4_policy
  python -m benchmarks.unmask_policy --policies=A,B --puzzles=16 --out=t      # smoke

MEASURES QUALITY AGAINST FORWARDS, NOT SPEED. One masked-diffusion model (the policy runs'
frozen base; every policy run must hold the same one) decodes the same held-out puzzles with
  llada             one token per step (the one-per-step reference)
  fast_dllm         Fast-dLLM thresholds, a sweep
  localleap         LocalLeap (anchor / relaxed thresholds, radius 2), a sweep
  learned_unmask    each policy run at policy thresholds `--thresholds`
all greedy, no cache, the block = the whole answer. Puzzles: in distribution, the task's own
held-out stream (sudoku4: 6-10 blanks, what the model and the policies were trained on); out
of distribution, 4x4 puzzles with `--ood_blanks` blanks (harder: more cells to infer, never
seen in training). Solved = a valid grid that keeps every clue (`sudoku.is_valid_solution`).
For every learned point, the rules' solved rate at the same forwards per token is read off
their sweep (linear interpolation between the two sweep points around it; '-' outside the
sweep's range): "vs Fast-dLLM" and "vs LocalLeap" are the learned policy's solved rate minus
theirs at equal forwards. Writes benchmarks/results/unmask_policy_<device>.md, .json and .png
(solved against forwards per token).
"""

from __future__ import annotations

import argparse
import json
import os

import jax
import numpy as np

from benchmarks import common
from benchmarks import diffusion as diffusion_bench
from benchmarks import forward_cost
from data.tasks import exact_match
from data.tasks import sudoku

FAST = [0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99]
LEAP = [(0.7, 0.4), (0.8, 0.5), (0.9, 0.6), (0.95, 0.7), (0.99, 0.9)]


def puzzles(n: int, seed: int, ood_blanks: tuple[int, int]) -> dict[str, list[tuple[str, str]]]:
  """{'in': held-out task puzzles, 'out': harder puzzles} as (puzzle, grid) pairs."""
  rng = np.random.default_rng([seed, 11])
  return {'in': exact_match.examples(exact_match.get('sudoku4'), n, seed=seed),
          'out': [sudoku.make_puzzle(rng, 2, *ood_blanks) for _ in range(n)]}


def decoders(policies: list[str], thresholds: list[float]):
  """(label, policy run or '', decoder name, settings) of every measured point."""
  out = [('one per step', '', 'llada', dict(tokens_per_step=1, ordering='confidence'))]
  out += [(f'Fast-dLLM {t:g}', '', 'fast_dllm', dict(threshold=t)) for t in FAST]
  out += [(f'LocalLeap {a:g}/{r:g}', '', 'localleap',
           dict(anchor_threshold=a, relaxed_threshold=r, radius=2)) for a, r in LEAP]
  out += [(f'learned {os.path.basename(p.rstrip("/"))} @{t:g}', p, 'learned_unmask',
           dict(threshold=t)) for p in policies for t in thresholds]
  return out


def measure(args) -> list[dict]:
  benches = {p: diffusion_bench.open_run(p) for p in args.policies}
  missing = [p for p, b in benches.items() if b is None]
  if missing:
    raise SystemExit(f'No checkpoint in {missing}: train with configs/unmask_policy.py.')
  first = benches[args.policies[0]]
  for p, b in benches.items():
    same = all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(b.params),
                                                    jax.tree.leaves(first.params)))
    if not same:
      raise SystemExit(f'{p} holds another diffusion model than {args.policies[0]}: compare '
                       'policies of one base.')
  tok = first.tokenizer
  sets = puzzles(args.puzzles, args.seed, args.ood_blanks)
  max_new = exact_match.get('sudoku4').max_answer_chars + 1  # the grid and <eos>
  rows = []
  for label, policy, name, settings in decoders(args.policies, args.thresholds):
    bench = benches[policy] if policy else first
    settings = {'block_size': max_new, 'shift': -1, 'block_causal': -1, **settings}
    row = dict(label=label, decoder=name, policy=policy, settings=settings)
    for part, pairs in sets.items():
      prompts = [exact_match.prompt_ids(tok, p) for p, _ in pairs]
      out, stats, _ = diffusion_bench.run(name, settings, bench, prompts, max_new)
      solved = [sudoku.is_valid_solution(p, tok.decode(r.tokens)) for (p, _), r in
                zip(pairs, out)]
      row[part] = dict(solved=100.0 * float(np.mean(solved)),
                       forwards_per_token=stats.target_forwards / max(stats.generated, 1))
    rows.append(row)
    print(f"{label}: in {row['in']['solved']:.1f}% at {row['in']['forwards_per_token']:.3f} "
          f"fwd/token; out {row['out']['solved']:.1f}% at "
          f"{row['out']['forwards_per_token']:.3f}", flush=True)
  return rows


def at_equal_forwards(rows: list[dict], decoder: str, part: str, x: float) -> float | None:
  """The `decoder` sweep's solved % at `x` forwards per token (linear between neighbours)."""
  pts = sorted((r[part]['forwards_per_token'], r[part]['solved']) for r in rows
               if r['decoder'] == decoder)
  xs = [p[0] for p in pts]
  if not pts or x < xs[0] or x > xs[-1]:
    return None
  return float(np.interp(x, xs, [p[1] for p in pts]))


def report(rows: list[dict], args, name: str) -> str:
  table = []
  for r in rows:
    line = [r['label']]
    for part in ('in', 'out'):
      line += [f"{r[part]['solved']:.1f}", f"{r[part]['forwards_per_token']:.3f}"]
      if r['decoder'] == 'learned_unmask':
        for peer in ('fast_dllm', 'localleap'):
          v = at_equal_forwards(rows, peer, part, r[part]['forwards_per_token'])
          line.append('-' if v is None else f"{r[part]['solved'] - v:+.1f} points")
      else:
        line += ['', '']
    table.append(line)
  header = ['decoder']
  for part in ('in distribution', 'out of distribution'):
    header += [f'solved % ({part})', 'forwards / token', 'vs Fast-dLLM', 'vs LocalLeap']
  se = max(100 * np.sqrt(r[part]['solved'] / 100 * (1 - r[part]['solved'] / 100) /
                         args.puzzles) for r in rows for part in ('in', 'out'))
  runs = '; '.join(f'`{p}`: {diffusion_bench.LOADED.get(os.path.basename(p.rstrip("/")), "")}'
                   for p in args.policies)
  body = [
      f'sudoku4, {args.puzzles} held-out puzzles per set (seed {args.seed}); in distribution: '
      f'the task stream (6-10 blanks); out of distribution: {args.ood_blanks[0]}-'
      f'{args.ood_blanks[1]} blanks. Greedy, no cache, block = the whole answer; one run, '
      'one seed, one trained policy per run. Quality against forwards per token, not speed. '
      '"vs X": the learned policy\'s solved % minus X\'s at the same forwards per token '
      '(interpolated in X\'s sweep; "-" outside it). The standard error of one solved % '
      f'here is up to {se:.1f} points (binomial, {args.puzzles} puzzles), so differences of a '
      'few points are within noise. At policy threshold 0.5 the untrained policy (its warm '
      'start: output layer zero, a soft threshold at confidence 0.9) decodes exactly as '
      'Fast-dLLM 0.9: the gap between the two rows is what training added.',
      '', f'Policy runs: {runs}', '', common.markdown_table(header, table), '',
      f'![solved against forwards]({name}.png)']
  return common.write_results(name, 'Learned unmasking against hand-set rules (sudoku4)',
                              '\n'.join(body))


def plot(rows: list[dict], name: str) -> None:
  plt = common.pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
  for ax, part, title in zip(axes, ('in', 'out'), ('in distribution', 'out of distribution')):
    for dec, style in (('fast_dllm', 'o-'), ('localleap', 's-'), ('llada', 'k*'),
                       ('learned_unmask', 'D')):
      pts = sorted((r[part]['forwards_per_token'], r[part]['solved']) for r in rows
                   if r['decoder'] == dec)
      if pts:
        ax.plot(*zip(*pts), style, label=dec)
    ax.set_xscale('log')
    ax.set_xlabel('forwards per token')
    ax.set_title(title)
  axes[0].set_ylabel('solved %')
  axes[0].legend()
  fig.tight_layout()
  fig.savefig(os.path.join(common.RESULTS_DIR, f'{name}.png'), dpi=100)
  plt.close(fig)


def parse_args(argv=None) -> argparse.Namespace:
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument('--policies', default='runs/diffusion/sudoku4_policy',
                  help='comma-separated policy runs (configs/unmask_policy.py)')
  ap.add_argument('--thresholds', default='0.3,0.5,0.7,0.9')
  ap.add_argument('--puzzles', type=int, default=128)
  ap.add_argument('--ood_blanks', default='11,13')
  ap.add_argument('--seed', type=int, default=0)
  ap.add_argument('--out', default='', help='results name (default unmask_policy_<device>)')
  args = ap.parse_args(argv)
  args.policies = [p for p in args.policies.split(',') if p]
  args.thresholds = [float(t) for t in args.thresholds.split(',')]
  lo, hi = (int(x) for x in args.ood_blanks.split(','))
  if not 1 <= lo <= hi <= 16:
    ap.error('--ood_blanks must be LO,HI with 1 <= LO <= HI <= 16.')
  args.ood_blanks = (lo, hi)
  args.out = args.out or f'unmask_policy_{forward_cost.device_tag()}'
  return args


def main(argv=None) -> str:
  args = parse_args(argv)
  rows = measure(args)
  os.makedirs(common.RESULTS_DIR, exist_ok=True)
  with open(os.path.join(common.RESULTS_DIR, f'{args.out}.json'), 'w') as f:
    json.dump({'provenance': common.provenance(), 'rows': rows}, f, indent=1)
  plot(rows, args.out)
  path = report(rows, args, args.out)
  print(path)
  return path


if __name__ == '__main__':
  main()
