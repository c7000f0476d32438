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

What counts as a figure (the convention of check 4): a number in the prose or a table of
README.md or docs/*.md with a measurement unit right after it — `×`/`x` (a ratio; not a shape
like `4×4` or `16 × 2048`), `%`, `tok/s`, `tokens/s`, `ms`, `µs`, `GB`, `GiB`, `MiB`,
`GB/s`, `TB/s`, `TFLOP/s`, `NFE/token`, `tokens/forward`, `tokens per (target) forward`,
`points`, `nats`, `bits` (with decimals: `4 bits` counts digits) — or right after `τ`/`tau`
(`τ 4.49`, `τ = 3.38`). A range or comparison shares its last number's unit (`0.47–0.60×`,
`708 vs 343 tok/s`). Not figures: numbers in code spans, code blocks and links (commands,
settings, paths), and thresholds (after `≥ ≤ > < >= <=`, `goal`, `target`, `at least`,
`at most`, `up to`, `within`, `more/less than`, `above`, `below`, or before `goal`). Other
numbers (sizes, steps, counts, versions, dates, test times) are not checked.

Where a figure must come from: the results files its paragraph (or table row) links or names
(`benchmarks/results/x.md`, directly or through a docs page it links), else those its
section (heading to heading) links; with none, the figure cites no results file and is
reported. A figure is backed when one of those files (its script-written part, plus the JSON
beside it) holds a number of the same kind that rounds to it at the precision shown (`2.07×`
<- 2.065 in a speedup column, `19.5k tokens/s` <- 1.946e+04 in a tokens/s column, `44%` <-
0.4434 in a utilisation column or 44.3%); `~3000 tokens/s` rounds at its last nonzero digit.
A number's kind comes from its unit, its table column (or the heading above the table) or
its JSON key (`KINDS`); untyped numbers (settings, counts, dates) back nothing.

A figure that no results file can back (from a log, derived by hand, replaced) may stay only
if its sentence (a table row with its header counts as one) says "not backed by a results
file".
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import sys
from typing import Iterable, Iterator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, 'benchmarks', 'results')
PROVENANCE_KEYS = ('device', 'versions', 'date', 'commit', 'command')
NOT_BACKED = 'not backed by a results file'

HAND = re.compile(r'by hand|hand-written|handwritten|not generated|written after the run|'
                  r'copied from the log', re.I)
NUMBER = r'[-+−]?\d+(?:[.,]\d+)*(?:\.\d+)?(?:e[-+]?\d+)?'


# ------------------------------------------------------------------------------ reading

def results_files(root: str | None = None) -> list[str]:
  """Every results file (.md, .json, .jsonl), recursively, as absolute paths."""
  out = []
  for d, _, names in os.walk(root or RESULTS):
    out += [os.path.join(d, n) for n in names if n.endswith(('.md', '.json', '.jsonl'))]
  return sorted(out)


def _read(path: str) -> str:
  with open(path, encoding='utf-8') as f:
    return f.read()


def _number(text: str) -> float | None:
  text = text.replace('−', '-').replace(',', '')
  try:
    return float(text)
  except ValueError:
    return None


# Kinds of quantity. A figure is backed only by a number of a kind its unit allows: a
# number typed by its unit, its table column (or the heading above the table), or its
# JSON key. Untyped numbers (settings, counts, dates) back nothing.
KINDS = {  # kind: what names it in a column header, JSON key or unit
    'ratio': r'speedup|ratio|÷|×|\bx\b|\bvs\b| / |\bours ?/|/ ?ours\b|x naive|x cot|speed vs',
    'fraction': r'\bacc|accuracy|util|\bmfu\b|peak|fraction|acceptance|solved',
    'percent': r'%',
    'rate': r'tok/s|tokens/s|tokens_per_s|tokens per s',
    'ms': r'\bms\b|\(ms\)|_ms\b',
    'us': r'\bus\b|µs|\(us\)|_us\b',
    'seconds': r'_s\b|\btrain s\b|\bseconds\b',
    'mem': r'mib|\bgb\b|gib|temp|bytes',
    'bandwidth': r'gb/s|tb/s',
    'tflops': r'tflop',
    'tau': r'^\s*τ\s*$|^\s*tau\s*$|tokens/forward|tokens per forward|\btau\b',
    'nfe': r'nfe',
    'bits': r'\bbits\b|entropy',
    'nats': r'nats|\bloss\b|\bnll\b',
    'points': r'points?\b',
}
_KIND_RE = {k: re.compile(v, re.I) for k, v in KINDS.items()}
# Columns that hold settings or shapes, whatever the heading above the table says.
PARAMETER_COLUMNS = re.compile(
    r'^(b|t|h|k|v|dh|d|n_h|g|batch|context|prefix|nodes|sub-steps|seq|steps?|params|'
    r'layers|dtype|shape|mesh|preset|run|cell|model|method|decoder|settings|part|kernel|'
    r'impl|tol|train len|t \(tokens\)|op|side|goal|status|router|metric|family|lossless|'
    r'= ar|same tokens as ar.*|other|device)$', re.I)


def kinds_of(name: str) -> frozenset[str]:
  """The kinds a column header, JSON key or unit names."""
  return frozenset(k for k, r in _KIND_RE.items() if r.search(name))


@dataclasses.dataclass(frozen=True)
class Number:
  value: float
  kinds: frozenset[str]


NUM = r'(?<![\w.])(\d+(?:\.\d+)?(?:e[-+]?\d+)?)(k|M)?(?![\d])'
_SUFFIX = re.compile(r'^\s?(x|×|%|tok/s|tokens/s|ms|us|µs|MiB|GiB|GB/s|TB/s|GB|TFLOP/s|'
                     r'NFE/token|tokens/forward|tokens per forward|bits|nats|points?)(?![\w/])')


def _numbers(text: str, kinds: frozenset[str] = frozenset()) -> list[Number]:
  """Numbers in text: typed by `kinds` (their column) and by a unit right after them."""
  out = []
  for m in re.finditer(NUM, text):
    value = float(m.group(1)) * {None: 1, 'k': 1e3, 'M': 1e6}[m.group(2)]
    unit = _SUFFIX.match(text[m.end():])
    out.append(Number(value, kinds | (kinds_of(unit.group(1)) if unit else frozenset())))
  return out


@functools.lru_cache(maxsize=None)
def numbers_in(path: str) -> tuple[Number, ...]:
  """The typed numbers of a results file (script-written parts only; see `kinds_of`)."""
  text = _read(path)
  found: list[Number] = []
  if path.endswith(('.json', '.jsonl')):
    def walk(x, kinds):
      if isinstance(x, bool):
        return
      if isinstance(x, (int, float)):
        found.append(Number(float(x), kinds))
      elif isinstance(x, dict):
        for k, v in x.items():
          walk(v, kinds_of(str(k)) or kinds)
      elif isinstance(x, list):
        if len(x) > 8 and all(isinstance(v, (int, float)) for v in x):
          return  # raw data (per-position accuracy, histograms): not what prose quotes
        for v in x:
          walk(v, kinds)
      elif isinstance(x, str):
        found.extend(_numbers(x, kinds))
    lines = text.splitlines() if path.endswith('.jsonl') else [text]
    for line in lines:
      if line.strip():
        walk(json.loads(line), frozenset())
    return tuple(found)
  text = script_written(text)
  in_table = set()
  for table in tables(path, text):
    in_table.update(range(table.line, table.line + len(table.rows) + 2))
    above = kinds_of(table.heading)
    pairs = 'tau / speedup' in table.before.lower()
    cols = []
    for h in table.header:
      own = kinds_of(h)
      cols.append(own or (frozenset() if PARAMETER_COLUMNS.match(h.strip()) else above))
    metric = next((i for i, h in enumerate(table.header) if h.strip().lower() == 'metric'),
                  None)
    for _, cells in table.rows:
      row_cols = cols
      if metric is not None and metric < len(cells):  # 'quality' in the row's own metric
        row_cols = [k or (kinds_of(cells[metric]) if h.strip().lower() == 'quality' else k)
                    for h, k in zip(table.header, cols)]
      for c, kinds in zip(cells, row_cols):
        m = re.match(rf'^\s*({NUMBER})\s*/\s*({NUMBER})x', c) if pairs else None
        if m:
          found += [Number(_number(m.group(1)), frozenset({'tau'})),
                    Number(_number(m.group(2)), frozenset({'ratio'}))]
        else:
          found += _numbers(c, kinds)
  for n, line in enumerate(text.splitlines(), 1):
    if n in in_table or re.match(r'^- (device|versions|date|commit|command):', line):
      continue
    found += [x for x in _numbers(line) if x.kinds]
  return tuple(found)


def script_written(text: str) -> str:
  """A results file's text without the parts that say they were written by hand (a heading
  saying so drops its section, a paragraph saying so drops the paragraph); blank lines
  stand in for what is dropped, so line numbers stay."""
  out, skip_level = [], None
  for para in re.split(r'\n(?=\s*\n)', text):
    heading = re.match(r'\s*(#+)\s', para)
    if heading:
      level = len(heading.group(1))
      if skip_level is not None and level <= skip_level:
        skip_level = None
      if skip_level is None and HAND.search(para.strip().splitlines()[0]):
        skip_level = level
    if skip_level is not None or HAND.search(para):
      para = '\n' * para.count('\n')
    out.append(para)
  return '\n'.join(out)


@dataclasses.dataclass
class Table:
  path: str
  line: int           # 1-based line of the header
  header: list[str]
  rows: list[tuple[int, list[str]]]  # (line, cells)
  before: str         # the text just above the table (its caption)
  heading: str        # the nearest heading above it


def tables(path: str, text: str | None = None) -> Iterator[Table]:
  """The markdown tables of a file (or of `text`, lines numbered as in the file)."""
  lines = (_read(path) if text is None else text).splitlines()
  i, heading = 0, ''
  while i < len(lines):
    if lines[i].startswith('#'):
      heading = lines[i]
    if (lines[i].startswith('|') and i + 1 < len(lines)
        and re.match(r'^\|(\s*:?-+:?\s*\|)+\s*$', lines[i + 1])):
      header = _cells(lines[i])
      rows = []
      j = i + 2
      while j < len(lines) and lines[j].startswith('|'):
        cells = _cells(lines[j])
        if len(cells) > len(header):  # an unescaped '|' inside the last cell
          cells = cells[:len(header) - 1] + ['|'.join(cells[len(header) - 1:])]
        rows.append((j + 1, cells))
        j += 1
      before = '\n'.join(lines[max(0, i - 3):i])
      yield Table(path, i + 1, header, rows, before, heading)
      i = j
    else:
      i += 1


def _cells(line: str) -> list[str]:
  return [c.strip() for c in line.strip().strip('|').split('|')]


# --------------------------------------------------------------------------- checks 1-3

def check_provenance(path: str) -> list[str]:
  lines = _read(path).splitlines()
  keys = [m.group(1) for line in lines[:12] if (m := re.match(r'^- (\w+): ', line))]
  missing = [k for k in PROVENANCE_KEYS if k not in keys]
  return [f'{_rel(path)}: provenance lacks {", ".join(missing)}'] if missing else []


def check_no_hand_written(path: str) -> list[str]:
  out = []
  for n, line in enumerate(_read(path).splitlines(), 1):
    if HAND.search(line):
      out.append(f'{_rel(path)}:{n}: hand-written part in a results file: {line[:90]!r}')
  return out


def _value(cell: str) -> float | None:
  m = re.match(rf'^\s*({NUMBER})\s*(?:x|×|%)?\s*(\(!\))?\s*$', cell)
  return _number(m.group(1)) if m else None


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
          found.append((_number(m.group(1)), _number(m.group(2)), c))
    for tau_v, sp, cell in found:
      if tau_v is None or sp is None:
        continue
      cell_flagged = flagged or '(!)' in cell
      if sp > tau_v and not cell_flagged:
        out.append(f'{_rel(table.path)}:{line}: speedup {sp:g}x above tau {tau_v:g} and not '
                   f'flagged (!)')
  return out


ACC = re.compile(r'\bacc|accuracy|util|\bmfu\b|acceptance|fraction|/ peak', re.I)


def check_ranges(table: Table) -> list[str]:
  out = []
  acc_cols = [i for i, h in enumerate(table.header) if ACC.search(h)]
  for line, cells in table.rows:
    for i, c in enumerate(cells):
      for m in re.finditer(rf'({NUMBER})\s*%', c):
        v = _number(m.group(1))
        if v is not None and not 0 <= v <= 100:
          out.append(f'{_rel(table.path)}:{line}: percentage {m.group(0)} outside [0, 100]')
      if i in acc_cols and '%' not in c:
        for tok in c.split():
          v = _number(tok)
          if v is not None and not 0 <= v <= 1:
            out.append(f'{_rel(table.path)}:{line}: {table.header[i]!r} = {tok} outside '
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
      is_tau, op, bound, unit = m.group(1), m.group(2), _number(m.group(3)), m.group(4)
      if is_tau:
        got = re.search(rf'(?:tau\s*|τ\s*)?({NUMBER})', cells[measured])
      elif unit:
        got = re.search(rf'({NUMBER})\s*(?:{re.escape(unit)})', cells[measured])
      else:
        continue
      if not got or bound is None:
        continue
      value = _number(got.group(1))
      if value is None:
        continue
      if not _OPS[op](value, bound):
        out.append(f'{_rel(table.path)}:{line}: goal marked met but measured {value:g} is not '
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


# ------------------------------------------------------------------------------ check 4

UNIT = (r'(?:×|x(?![\w])|%|tok/s|tokens/s|ms\b|µs\b|us\b|GB/s|TB/s|GB\b|GiB\b|MiB\b|'
        r'TFLOP/s|NFE/token|NFE per token|tokens/forward|tokens per (?:target )?forward|'
        r'points?\b|nats\b|bits\b)')
SCALED = r'(\d+(?:\.\d+)?)(k|M)?'
JOIN = r'\s*(?:–|-|to|vs\.?|→|/)\s*'
THRESHOLD = re.compile(r'(?:≥|≤|>=|<=|>|<|goal|target|at least|at most|up to|within|more than|'
                       r'less than|above|below)\s*~?\s*$', re.I)


@dataclasses.dataclass(frozen=True)
class Figure:
  path: str
  line: int
  text: str       # as written, e.g. '2.07×'
  value: float
  resolution: float
  percent: bool
  kinds: frozenset[str]   # kinds of number that can back it
  links: tuple[str, ...]  # results files the paragraph (else its section) links
  context: str            # its paragraph (for messages)
  sentence: str           # its sentence, or its table row and header


def _blocks(text: str) -> Iterator[tuple[int, str]]:
  """Paragraphs (blank-line separated; each table row on its own), outside code blocks,
  with their first line number."""
  lines = text.splitlines()
  block, start, fenced = [], 0, False
  for n, line in enumerate(lines, 1):
    if line.strip().startswith('```'):
      fenced = not fenced
      if block:
        yield start, '\n'.join(block)
      block = []
      continue
    if fenced:
      continue
    if not line.strip() or line.startswith('|') or line.startswith('#'):
      if block:
        yield start, '\n'.join(block)
      block = []
      if line.strip():
        yield n, line
      continue
    if not block:
      start = n
    block.append(line)
  if block:
    yield start, '\n'.join(block)


def _links(block: str, doc: str) -> list[str]:
  """Files a block links ([text](path)) or names (`benchmarks/results/x.md`)."""
  out = []
  for target in re.findall(r'\]\(([^)\s]+)\)', block):
    if '://' not in target:
      out.append(os.path.normpath(os.path.join(os.path.dirname(doc), target.split('#')[0])))
  for named in re.findall(r'(?<![\w/.])benchmarks/results/[\w./-]+?\.md', block):
    out.append(os.path.join(ROOT, named))
  return out


def _results_links(block: str, doc: str, follow: bool = True) -> tuple[str, ...]:
  """Results files a block links, directly or (follow) through a docs page it links."""
  out = []
  for path in _links(block, doc):
    if path.startswith(RESULTS + os.sep) and path.endswith('.md'):
      out.append(path)
    elif follow and path.endswith('.md') and os.path.isfile(path) and path != doc:
      out += _results_links(_read(path), path, follow=False)
  return tuple(dict.fromkeys(out))


def _sections(text: str) -> list[tuple[int, str]]:
  """(first line, text) of each heading-delimited section."""
  out, start, lines = [], 1, []
  for n, line in enumerate(text.splitlines(), 1):
    if line.startswith('#') and lines:
      out.append((start, '\n'.join(lines)))
      start, lines = n, []
    lines.append(line)
  out.append((start, '\n'.join(lines)))
  return out


def _plain(block: str) -> str:
  """The block without code spans and link targets (kept the same length for offsets)."""
  blank = lambda m: ' ' * len(m.group(0))
  block = re.sub(r'`[^`]*`', blank, block)
  return re.sub(r'\]\([^)]*\)', blank, block)


def figures(doc: str) -> list[Figure]:
  """The figures of a README/docs page (see the module docstring)."""
  out = []
  text = _read(doc)
  sections = [(n, _results_links(sec, doc, follow=False)) for n, sec in _sections(text)]
  headers = _table_headers(text)
  for start, block in _blocks(text):
    plain = _plain(block)
    links = (_results_links(block, doc)
             or next(l for n, l in reversed(sections) if n <= start))
    spans = []
    unit_re = re.compile(rf'(?:{SCALED}(?:{JOIN}))*{SCALED}\s?{UNIT}')
    for m in unit_re.finditer(plain):
      if m.start() > 0 and (plain[m.start() - 1].isalnum() or plain[m.start() - 1] in '.×'):
        continue
      unit_m = re.search(rf'\s?{UNIT}$', m.group(0))
      unit = unit_m.group(0).strip()
      if unit in ('×', 'x'):
        if re.match(r'\s*\d', plain[m.end():m.end() + 8]):
          continue  # a shape: 4×4, 16 × 2048
      if THRESHOLD.search(plain[max(0, m.start() - 12):m.start()]):
        continue
      if unit == 'bits' and '.' not in m.group(0):
        continue  # '4 bits' counts binary digits; an entropy has decimals
      for n in re.finditer(SCALED, m.group(0)[:unit_m.start()]):
        spans.append((m.start() + n.start(), n.group(0), unit))
    for m in re.finditer(rf'(?:τ|\btau)\s*(?:=|of|:)?\s*~?({NUMBER})', plain):
      if THRESHOLD.search(plain[max(0, m.start() - 12):m.start()]):
        continue
      spans.append((m.start(1), m.group(1), 'τ'))
    for offset, num, unit in spans:
      if THRESHOLD.search(plain[max(0, offset - 12):offset]):
        continue
      if re.match(r'\S*\s+(?:goal|target)\b', plain[offset:offset + 40]):
        continue  # 'the 2.5x goal'
      approximate = bool(re.search(r'(?:~|≈|about |around )\s*$', plain[max(0, offset - 8):offset]))
      mm = re.fullmatch(SCALED, num) or re.fullmatch(r'(-?\d+(?:\.\d+)?)(k|M)?', num)
      if not mm:
        continue
      digits, scale = mm.group(1), {None: 1.0, 'k': 1e3, 'M': 1e6}[mm.group(2)]
      decimals = len(digits.split('.')[1]) if '.' in digits else 0
      if approximate and not decimals:  # '~3000': about 3000, to its last nonzero digit
        decimals = -(len(digits) - len(digits.rstrip('0')))
      line = start + block[:offset].count('\n')
      shown = 'τ ' + num if unit == 'τ' else num + ('' if unit in '×x%' else ' ') + unit
      out.append(Figure(doc, line, shown,
                        float(digits) * scale, 10.0 ** -decimals * scale, unit == '%',
                        _FIGURE_KINDS.get(unit) or kinds_of(unit), links,
                        block.replace('\n', ' ')[:160],
                        headers.get(start, '') + ' ' + _sentence(block, offset)))
  return out


def _sentence(block: str, offset: int) -> str:
  """The sentence of `block` around `offset` (a table row is one sentence)."""
  if block.startswith('|'):
    return block
  ends = [m.end() for m in re.finditer(r'[.;!?](?=\s|$)', block)]
  lo = max([e for e in ends if e <= offset], default=0)
  hi = min([e for e in ends if e > offset], default=len(block))
  return block[lo:hi]


def _table_headers(text: str) -> dict[int, str]:
  """Line number of each table row -> its table's header line."""
  out, header = {}, ''
  lines = text.splitlines()
  for n, line in enumerate(lines, 1):
    if not line.startswith('|'):
      header = ''
      continue
    if not header:
      header = line
    out[n] = header
  return out


_FIGURE_KINDS = {'×': frozenset({'ratio'}), 'x': frozenset({'ratio'}),
                 '%': frozenset({'percent', 'fraction', 'points'}),
                 'τ': frozenset({'tau'}), 'points': frozenset({'points', 'percent'}),
                 'point': frozenset({'points', 'percent'}),
                 'tokens per target forward': frozenset({'tau'}),
                 'NFE per token': frozenset({'nfe'})}


def _backs(number: Number, fig: Figure) -> bool:
  if not number.kinds & fig.kinds:
    return False
  half = fig.resolution / 2 * (1 + 1e-9)
  if abs(abs(number.value) - fig.value) <= half:
    return True
  return ('fraction' in number.kinds and fig.percent
          and abs(abs(number.value) * 100 - fig.value) <= half)


def check_figures(docs: Iterable[str] | None = None) -> list[str]:
  """Figures in README.md and docs/*.md that no results file backs (check 4)."""
  if docs is None:
    docs = [os.path.join(ROOT, 'README.md')] + sorted(
        os.path.join(ROOT, 'docs', n) for n in os.listdir(os.path.join(ROOT, 'docs'))
        if n.endswith('.md'))
  every = results_files()
  out = []
  for doc in docs:
    for fig in figures(doc):
      if NOT_BACKED in fig.sentence.lower():
        continue
      if not fig.links:
        out.append(f'{_rel(doc)}:{fig.line}: {fig.text}: neither its paragraph nor its '
                   f'section links a results file: {fig.context!r}')
        continue
      files = [p for p in every if p in fig.links or (not p.endswith('.md') and any(
          p.startswith(os.path.splitext(l)[0]) for l in fig.links))]
      if not any(_backs(n, fig) for p in files for n in numbers_in(p)):
        names = ', '.join(os.path.basename(l) for l in fig.links)
        out.append(f'{_rel(doc)}:{fig.line}: {fig.text} is in none of the results files it '
                   f'cites ({names}): {fig.context!r}')
  return out


def _rel(path: str) -> str:
  return os.path.relpath(path, ROOT)


def main() -> int:
  problems = check_results() + check_figures()
  print('\n'.join(problems) if problems else 'No problems.')
  return 1 if problems else 0


if __name__ == '__main__':
  sys.exit(main())
