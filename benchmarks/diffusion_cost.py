"""Where a diffusion decoder's time goes, and whether it can beat cached AR at all.

  python -m benchmarks.diffusion_cost --runs=runs/diffusion     # sudoku4 runs, see below

Needs the sudoku4 runs of `configs/diffusion_tasks.py` under RUNS: `sudoku4_ar` (the cached
AR baseline), `sudoku4_mdlm` (LLaDA one token per step, Fast-dLLM with and without its
caches, FreeDave, and the drafter of DiffuSpec), `sudoku4_asarm` (ASSD), `sudoku4_wedlm`
(WeDLM streaming); a missing run skips its rows. Sudoku is the task where these decoders
commit several tokens per forward (the answer's cells are nearly independent given the
puzzle); prompts are held-out puzzles, greedy.

Per decoder, at batch 1 and in one run with the AR model of the same task (passes
alternated, best of --repeats):
  tokens / forward  generated tokens / target forwards (the decoder's own statistics);
  step ms           wall time / loop iterations (target forwards of the longest row);
  other ms          the same loop with every model a no-op (`cost_model.NoopModel`): canvas
                    updates, confidence ranking, drafting, verification, caches, bookkeeping;
  model ms          step - other: what the step's model forwards cost here;
  ideal             tokens per step x AR time per token / model ms: the speedup over cached
                    AR if "other" were free, given what a forward over this step's tokens
                    costs in this regime;
  memory-bound      tokens per step: the same ideal if a forward over the step's tokens cost
                    one AR step (flat forward-cost curve, as at batch 1 on an HBM-bound GPU);
  measured          decoder tokens/s over AR tokens/s, same run.
A decoder can beat cached AR in a regime only if its ideal there is above 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from typing import Any

import numpy as np

from benchmarks import common, cost_model, harness
from benchmarks import diffusion as diffusion_bench
from decoding import base, registry
from decoding import sampling as sampling_lib

OVERHEAD_GOAL = 0.25  # issue: "other" at most a quarter of a step on the tiny model

# (label, run, decoder, settings, extra runs); block = the whole answer as on sudoku4 in
# benchmarks/diffusion.py, where these settings were chosen.
DECODERS = [
    ('LLaDA, one per step', 'sudoku4_mdlm', 'llada', dict(tokens_per_step=1), {}),
    ('Fast-dLLM (no cache)', 'sudoku4_mdlm', 'fast_dllm', dict(threshold=0.98), {}),
    ('Fast-dLLM prefix cache', 'sudoku4_mdlm', 'fast_dllm',
     dict(threshold=0.98, cache='prefix'), {}),
    ('Fast-dLLM dual cache', 'sudoku4_mdlm', 'fast_dllm', dict(threshold=0.98, cache='dual'),
     {}),
    ('FreeDave', 'sudoku4_mdlm', 'freedave', dict(num_candidates=4), {}),
    ('DiffuSpec (AR target, MDLM drafter)', 'sudoku4_ar', 'diffuspec',
     dict(draft_len=8, block_causal=0), {'drafter': 'sudoku4_mdlm'}),
    ('ASSD draft 4', 'sudoku4_asarm', 'assd', dict(draft_len=4), {}),
    ('ASSD draft 8', 'sudoku4_asarm', 'assd', dict(draft_len=8), {}),
    ('WeDLM streaming', 'sudoku4_wedlm', 'wedlm', dict(window=16), {}),
]


def build(name: str, settings: dict[str, Any], target, extras: dict[str, Any], max_new: int):
  """The decoder with its run-dependent fields (mask id, shift, block) filled in by the
  workbench of `target`."""
  if name in ('llada', 'fast_dllm', 'freedave'):
    settings = {'block_size': max_new, 'shift': -1, 'block_causal': -1, **settings}
  if name == 'diffuspec':
    settings = dict(settings, drafter=extras['drafter'].workdir, shift=-1)
  if name == 'wedlm':
    settings = dict(settings, shift=-1, block_causal=-1)
  return target.decoder(name, settings=settings)


def iterations(results) -> int:
  """Loop iterations of a pass: per batch, the most target forwards of any row."""
  return sum(int(np.max(np.asarray(r.target_forwards_B))) for r in results)


def measure(dec, target, extras, ar, prompts, *, max_new: int, repeats: int) -> dict[str, Any]:
  """One decoder against `ar` (a loaded AR run of the same task) at batch 1: see module doc."""
  tok = target.tokenizer
  size = max(map(len, prompts)) + max_new + dec.extra_cache_slots(max_new)
  kw = dict(max_new=max_new, cache_size=int(math.ceil(size / 64) * 64), pad_id=tok.pad_id)
  batches = harness.make_batches(prompts, 1, tok.pad_id)
  models = base.Models(target.model, extras=tuple((k, v.model) for k, v in extras.items()))
  params = {'target': target.params, **{k: v.params for k, v in extras.items()}}
  ar_models, ar_params = base.Models(ar.model), {'target': ar.params}
  ar_dec = registry.build('ar', {}, sampling_lib.SamplingConfig())
  method, _ = harness.compile_decoder(dec, models, params, batches, eos_id=tok.eos_id, **kw)
  ar_fns, _ = harness.compile_decoder(ar_dec, ar_models, ar_params, batches,
                                      eos_id=ar.tokenizer.eos_id, **kw)
  # Every model a no-op; EOS never matches, so rows run their full budget (the time per
  # iteration does not depend on when rows stop).
  noop = cost_model.noop_models(models, ['target'] + list(extras))
  noop_fns, _ = harness.compile_decoder(dec, noop, params, batches, eos_id=-1, **kw)
  (wall, ar_wall, noop_wall), (res, ar_res, noop_res) = harness.alternate(
      [(method, params), (ar_fns, ar_params), (noop_fns, params)], batches, repeats=repeats)
  summary = harness.summarise(res, wall, 0.0)
  ar_summary = harness.summarise(ar_res, ar_wall, 0.0)
  steps = iterations(res)
  step, other = wall / steps, noop_wall / iterations(noop_res)
  t_ar_token = ar_wall / ar_summary['generated']
  per_step = summary['generated'] / steps
  model = max(step - other, 1e-12)
  return dict(tokens_per_forward=summary['tau'], tokens_per_step=per_step,
              step_ms=step * 1e3, other_ms=other * 1e3, model_ms=model * 1e3,
              overhead_share=other / step, ar_ms_per_token=t_ar_token * 1e3,
              ideal=per_step * t_ar_token / model, ideal_memory_bound=per_step,
              speedup=summary['tokens_per_s'] / ar_summary['tokens_per_s'],
              tokens_per_s=summary['tokens_per_s'], ar_tokens_per_s=ar_summary['tokens_per_s'],
              tokens=summary['tokens'], ar_tokens=ar_summary['tokens'])


def run(args) -> str:
  ar = diffusion_bench.open_run(os.path.join(args.runs, 'sudoku4_ar'))
  if ar is None:
    raise SystemExit(f'No sudoku4_ar run under {args.runs}: train it with configs/'
                     'diffusion_tasks.py:sudoku4,ar (see the module docstring).')
  prompts, max_new, accuracy = diffusion_bench.sudoku_puzzles(ar.tokenizer, args.prompts,
                                                              args.seed)
  ar_row = None
  rows = []
  for label, run_name, name, settings, extra_runs in DECODERS:
    target = diffusion_bench.open_run(os.path.join(args.runs, run_name))
    extras = {k: diffusion_bench.open_run(os.path.join(args.runs, v))
              for k, v in extra_runs.items()}
    if target is None or any(v is None for v in extras.values()):
      print(f'{label}: missing run(s) {run_name} {list(extra_runs.values())}; skipped.')
      continue
    dec = build(name, settings, target, extras, max_new)
    r = measure(dec, target, extras, ar, prompts, max_new=max_new, repeats=args.repeats)
    solved = accuracy([_Row(t) for t in r.pop('tokens')])
    ar_solved = accuracy([_Row(t) for t in r.pop('ar_tokens')])
    r.update(label=label, run=run_name, decoder=name, solved=solved)
    ar_row = ar_row or dict(solved=ar_solved)
    rows.append(r)
    print(f"{label}: {r['tokens_per_forward']:.2f} tokens/forward, step {r['step_ms']:.2f} ms "
          f"(other {100 * r['overhead_share']:.0f}%), {r['speedup']:.2f}x AR "
          f"(ideal {r['ideal']:.2f}x here, {r['ideal_memory_bound']:.2f}x memory-bound), "
          f'solved {solved:.1f}% (AR {ar_solved:.1f}%)', flush=True)
  if not rows:
    raise SystemExit('No decoder could run: train the sudoku4 runs first.')
  return report(rows, ar_row, args)


@dataclasses.dataclass
class _Row:  # what the sudoku scorer reads
  tokens: list[int]


def verdict(r: dict[str, Any]) -> str:
  if r['ideal'] > 1:
    return 'yes' if r['speedup'] > 1 else 'in principle (overhead eats it)'
  return 'no: a forward over its step costs more than the tokens it commits'


def report(rows, ar_row, args) -> str:
  header = ['decoder', 'run', 'tokens/forward', 'step ms', 'other ms', 'other share',
            'model ms', 'ideal vs cached AR (here)', 'ideal, memory-bound', 'measured vs AR',
            'solved %', 'beats cached AR here?']
  table = [[r['label'], r['run'], f"{r['tokens_per_forward']:.2f}", f"{r['step_ms']:.3f}",
            f"{r['other_ms']:.3f}", f"{100 * r['overhead_share']:.0f}%"
            + (' (over goal)' if r['overhead_share'] > OVERHEAD_GOAL else ''),
            f"{r['model_ms']:.3f}", f"{r['ideal']:.2f}x", f"{r['ideal_memory_bound']:.2f}x",
            f"{r['speedup']:.2f}x", f"{r['solved']:.1f}", verdict(r)] for r in rows]
  over = [r['label'] for r in rows if r['overhead_share'] > OVERHEAD_GOAL]
  can = [r['label'] for r in rows if r['ideal'] > 1]
  body = [
      f'Task: sudoku4, {args.prompts} held-out puzzles (seed {args.seed}), batch 1, greedy. '
      f"Cached AR baseline: `sudoku4_ar`, {rows[0]['ar_ms_per_token']:.3f} ms per token, "
      f"{ar_row['solved']:.1f}% solved. Every row is timed in passes alternating with AR's "
      f'and with its own loop over no-op models (best of {args.repeats}); columns as in the '
      'module docstring of `benchmarks/diffusion_cost.py`. Models: `tiny` (0.8M parameters), '
      'cache-resident on this machine, so a forward over the step\'s tokens costs several AR '
      'steps (see `forward_cost_*.md`).\n',
      common.markdown_table(header, table), '',
      f'Overhead goal (other <= {100 * OVERHEAD_GOAL:.0f}% of a step): '
      + ('met by every decoder.' if not over else 'NOT met by ' + ', '.join(over) + '.'),
      '',
      'Which can beat cached AR in this regime: ' + (', '.join(can) if can else 'none') + '. '
      'The "memory-bound" column is what the same tokens per step would give where a forward '
      'over a few dozen tokens costs one AR step (an LLM at batch 1 on a GPU): every decoder '
      'that commits more than one token per target forward would be ahead there, by at most '
      'that many tokens, less its overhead.']
  return common.write_results(args.out, 'Diffusion decoders: where a step goes (sudoku4)',
                              '\n'.join(body))


def main():
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument('--runs', default='runs/diffusion')
  ap.add_argument('--prompts', type=int, default=16)
  ap.add_argument('--seed', type=int, default=0)
  ap.add_argument('--repeats', type=int, default=3)
  ap.add_argument('--out', default='diffusion_cost')
  args = ap.parse_args()
  print('wrote', run(args))


if __name__ == '__main__':
  main()
