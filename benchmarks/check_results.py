"""Checks the committed results and the figures that README.md and docs/*.md quote from them.

  python -m benchmarks.check_results       # prints every problem; exit status 1 if any

`tests/test_results.py` runs the same checks in CI. What is checked:

1. Provenance. Every `benchmarks/results/*.md` starts with the lines its script writes
   (`common.provenance`): device, versions, date, commit and command.
2. Written by a script only. No results file carries hand-written parts (a heading or
   paragraph saying "by hand", "hand-written", "copied from the log", ...): a script
   rewrites its file on the next run, and a reader cannot tell measured from typed.
   Comments on results go in docs/.
3. Impossible figures in results tables:
   * a speedup above τ — in a table with a τ (or tau) column and a speedup column, or a cell
     "τ / speedup×" under a "tau / speedup" summary — unless the row is flagged "(!)".
     Speedup here is against AR on the same model, and a step that runs the target over
     more tokens than AR (plus any drafting) never costs less than an AR step, so tokens/s
     can exceed AR's by at most τ; a row above it measured noise, not the method.
   * accuracies outside [0, 1] (columns named acc*, util*, MFU, acceptance*, fraction,
     '/ peak') and percentages outside [0, 100];
   * a goal row ("| goal | measured | status |") marked met whose measured value misses the
     threshold, where the goal states it as `>= 2x`, `<= 0.35 NFE/token`, `tau >= 4` and the
     measured cell has a number with the same unit (the first such number; for tau, the
     first number).
4. Figures in README.md and docs/*.md that no results file backs (below).

The convention of check 4 is documented in `benchmarks/check_figures.py`; the reading of
results files (numbers, their kinds, tables) shared by both is `benchmarks/results_text.py`.
"""

from __future__ import annotations

import re
import sys

from benchmarks.results_text import (HAND, NUMBER, PROVENANCE_KEYS, Table, number, read_text,
                                     rel, results_files, tables)
from benchmarks.check_figures import check_figures


def check_provenance(path: str) -> list[str]:
  lines = read_text(path).splitlines()
  keys = [m.group(1) for line in lines[:12] if (m := re.match(r'^- (\w+): ', line))]
  missing = [k for k in PROVENANCE_KEYS if k not in keys]
  return [f'{rel(path)}: provenance lacks {", ".join(missing)}'] if missing else []


def check_no_hand_written(path: str) -> list[str]:
  out = []
  for n, line in enumerate(read_text(path).splitlines(), 1):
    if HAND.search(line):
      out.append(f'{rel(path)}:{n}: hand-written part in a results file: {line[:90]!r}')
  return out


def _value(cell: str) -> float | None:
  m = re.match(rf'^\s*({NUMBER})\s*(?:x|×|%)?\s*(\(!\))?\s*$', cell)
  return number(m.group(1)) if m else None


def _is_tau(h: str) -> bool:
  return h.strip().lower() in ('τ', 'tau')


def check_speedup_above_tau(table: Table) -> list[str]:
  out = []
  head = [h.lower() for h in table.header]
  tau = [i for i, h in enumerate(table.header) if _is_tau(h)]
  speed = [i for i, h in enumerate(head) if 'speedup' in h]
  pairs = [(tau[0], speed[0])] if tau and speed else []
  for line, cells in table.rows:
    flagged = '(!)' in ' '.join(cells) or 'flagged' in ' '.join(cells).lower()
    found = []
    for t, s in pairs:
      if max(t, s) < len(cells):
        found.append((_value(cells[t]), _value(cells[s]), cells[s]))
    if 'tau / speedup' in table.before.lower() or 'τ / speedup' in table.before.lower():
      for c in cells:
        m = re.match(rf'^({NUMBER})\s*/\s*({NUMBER})x(\s*\(!\))?$', c)
        if m:
          found.append((number(m.group(1)), number(m.group(2)), c))
    for tau_v, sp, cell in found:
      if tau_v is None or sp is None:
        continue
      cell_flagged = flagged or '(!)' in cell
      if sp > tau_v and not cell_flagged:
        out.append(f'{rel(table.path)}:{line}: speedup {sp:g}x above tau {tau_v:g} and not '
                   f'flagged (!)')
  return out


ACC = re.compile(r'\bacc|accuracy|util|\bmfu\b|acceptance|fraction|/ peak', re.I)


def check_ranges(table: Table) -> list[str]:
  out = []
  acc_cols = [i for i, h in enumerate(table.header) if ACC.search(h)]
  for line, cells in table.rows:
    for i, c in enumerate(cells):
      for m in re.finditer(rf'({NUMBER})\s*%', c):
        v = number(m.group(1))
        if v is not None and not 0 <= v <= 100:
          out.append(f'{rel(table.path)}:{line}: percentage {m.group(0)} outside [0, 100]')
      if i in acc_cols and '%' not in c:
        for tok in c.split():
          v = number(tok)
          if v is not None and not 0 <= v <= 1:
            out.append(f'{rel(table.path)}:{line}: {table.header[i]!r} = {tok} outside '
                       '[0, 1]')
  return out


_OPS = {'>=': lambda a, b: a >= b, '≥': lambda a, b: a >= b, '<=': lambda a, b: a <= b,
        '≤': lambda a, b: a <= b}
_UNITS = r'x|×|%|NFE/token|tokens/forward|tokens/s|tok/s'


def check_goals(table: Table) -> list[str]:
  head = [h.lower() for h in table.header]
  if not (head and head[0] == 'goal' and any('measured' in h for h in head)
          and 'status' in head):
    return []
  measured, status = next(i for i, h in enumerate(head) if 'measured' in h), head.index('status')
  out = []
  for line, cells in table.rows:
    if max(measured, status) >= len(cells):
      continue
    if not cells[status].strip().lower().startswith('met'):
      continue
    for m in re.finditer(rf'(tau\s*|τ\s*)?(>=|<=|≥|≤)\s*({NUMBER})\s*({_UNITS})?', cells[0]):
      is_tau, op, bound, unit = m.group(1), m.group(2), number(m.group(3)), m.group(4)
      if is_tau:
        got = re.search(rf'(?:tau\s*|τ\s*)?({NUMBER})', cells[measured])
      elif unit:
        got = re.search(rf'({NUMBER})\s*(?:{re.escape(unit)})', cells[measured])
      else:
        continue
      if not got or bound is None:
        continue
      value = number(got.group(1))
      if value is None:
        continue
      if not _OPS[op](value, bound):
        out.append(f'{rel(table.path)}:{line}: goal marked met but measured {value:g} is not '
                   f'{op} {bound:g}')
  return out


def check_results(root: str | None = None) -> list[str]:
  """Problems in the results files themselves (checks 1-3)."""
  out = []
  for path in results_files(root):
    if not path.endswith('.md'):
      continue
    out += check_provenance(path)
    out += check_no_hand_written(path)
    for table in tables(path):
      out += check_speedup_above_tau(table)
      out += check_ranges(table)
      out += check_goals(table)
  return out


def main() -> int:
  problems = check_results() + check_figures()
  print('\n'.join(problems) if problems else 'No problems.')
  return 1 if problems else 0


if __name__ == '__main__':
  sys.exit(main())
