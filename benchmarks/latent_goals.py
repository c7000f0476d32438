"""The goals of benchmarks/latent.py, judged on its results: each goal's measured value and
whether it is met (or why it was not run), with binomial standard errors deciding what counts as
clearly better."""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks import common

GPU = 'not run on CPU (needs the GPU protocol, `--protocol=full`)'


def _se(acc: float, n: int) -> float:
  """Binomial standard error of an accuracy over n questions."""
  return float(np.sqrt(max(acc * (1 - acc), 1e-9) / max(n, 1)))


def goals(all_results: dict[str, Any], protocol: str = 'full', n: int = 0) -> str:
  """The issue's goals as a table: goal | measured | status (met / not met / not run)."""
  rows = []
  cpu = protocol == 'cpu'
  note = ' (CPU protocol: `test` models, short runs; the goal is for `--protocol=full`)'

  def m(task, label, split='train'):
    return all_results.get(task, {}).get('methods', {}).get(label, {}).get(split)

  def status(ok: bool) -> str:
    return ('met' if ok else 'not met') + (note if cpu else '')

  cot, coco, nocur = m('prosqa', 'CoT'), m('prosqa', 'Coconut'), m('prosqa',
                                                                   'Coconut w/o curriculum')
  goal = 'Coconut >= 95% on ProsQA with <= 1/3 of CoT tokens; no curriculum clearly lower'
  if cot and coco and nocur:
    gap = coco['accuracy'] - nocur['accuracy']
    clearly = gap > 2 * np.hypot(_se(coco['accuracy'], n), _se(nocur['accuracy'], n))
    ok = coco['accuracy'] >= 0.95 and coco['tokens'] <= cot['tokens'] / 3 and clearly
    rows.append([goal, f'Coconut {coco["accuracy"]:.1%} with {coco["tokens"]:.1f} tokens '
                 f'({coco["tokens"] / cot["tokens"]:.2f} x CoT\'s {cot["tokens"]:.1f}); '
                 f'no curriculum {nocur["accuracy"]:.1%} ({100 * gap:+.1f} points, '
                 f'{"more" if clearly else "not more"} than 2 s.e.)', status(ok)])
  else:
    rows.append([goal, '-', GPU if cpu else 'not measured'])
  goal = 'SIM-CoT >= Coconut + 3 points on multiplication'
  sim, coco_m = m('multiplication', 'Coconut + SIM-CoT'), m('multiplication', 'Coconut')
  if sim and coco_m:
    gain = 100 * (sim['accuracy'] - coco_m['accuracy'])
    rows.append([goal, f'{sim["accuracy"]:.1%} vs {coco_m["accuracy"]:.1%} ({gain:+.1f} '
                 'points)', status(gain >= 3)])
  else:
    sim_p, coco_p = m('prosqa', 'Coconut + SIM-CoT'), coco
    extra = (f'(ProsQA instead: {sim_p["accuracy"]:.1%} vs {coco_p["accuracy"]:.1%}, '
             f'{100 * (sim_p["accuracy"] - coco_p["accuracy"]):+.1f} points)'
             if sim_p and coco_p else '-')
    rows.append([goal, extra, GPU if cpu else 'not measured'])
  goal = 'Soft Thinking within 1 point of CoT with <= 80% of its tokens'
  measured = False
  for task in all_results:
    st, c = m(task, 'Soft Thinking'), m(task, 'CoT')
    if st and c:
      measured = True
      ok = st['accuracy'] >= c['accuracy'] - 0.01 and st['tokens'] <= 0.8 * c['tokens']
      rows.append([f'{goal} ({task})', f'{st["accuracy"]:.1%} vs {c["accuracy"]:.1%}; '
                   f'{st["tokens"]:.1f} vs {c["tokens"]:.1f} tokens '
                   f'({st["tokens"] / c["tokens"]:.2f} x)', status(ok)])
  if not measured:
    rows.append([goal, '-', GPU if cpu else 'not measured'])
  goal = 'routing beats a random router at the same large-model budget'
  measured = False
  for task in all_results:
    curves = all_results[task].get('routing', {}).get('curves', {})
    for name in ('glimprouter', 'r2r'):
      if name not in curves:
        continue
      measured = True
      # a budget where the router sends nothing or everything to the large model is the
      # small / large model alone for both routers: no comparison there
      pairs = [(r, rnd) for r, rnd in zip(curves[name], curves[f'random@{name}'])
               if 0.01 < r['large_fraction'] < 0.99]
      if not pairs:
        rows.append([f'{goal} ({task}, {name})', 'no budget strictly between 0 and 1',
                     'not measured'])
        continue
      wins = sum(r['accuracy'] > rnd['accuracy'] for r, rnd in pairs)
      gain = 100 * float(np.mean([r['accuracy'] - rnd['accuracy'] for r, rnd in pairs]))
      se = 100 * float(np.mean([np.hypot(_se(r['accuracy'], n), _se(rnd['accuracy'], n))
                                for r, rnd in pairs]))  # s.e. of one difference
      fracs = [r['large_fraction'] for r, _ in pairs]
      ok = wins > len(pairs) / 2 and gain > 2 * se
      rows.append([f'{goal} ({task}, {name})', f'above random at {wins}/{len(pairs)} budgets '
                   f'(large fraction {min(fracs):.2f}-{max(fracs):.2f}); mean {gain:+.1f} '
                   f'points, s.e. of a difference ~{se:.1f}'
                   + ('' if ok or gain <= 0 else ' (within 2 s.e.: noise)'), status(ok)])
  if not measured:
    rows.append([goal, '-', GPU if cpu else 'not measured'])
  return common.markdown_table(['goal', 'measured (in distribution)', 'status'], rows)
