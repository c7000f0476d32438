"""Reading the committed results files for the checks: the files, the typed numbers they hold
(`numbers_in`), their tables, and the script-written part of each (see
`benchmarks/check_results.py`)."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
from typing import Iterator


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


def read_text(path: str) -> str:
  with open(path, encoding='utf-8') as f:
    return f.read()


def number(text: str) -> float | None:
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
  text = read_text(path)
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
          found += [Number(number(m.group(1)), frozenset({'tau'})),
                    Number(number(m.group(2)), frozenset({'ratio'}))]
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
  lines = (read_text(path) if text is None else text).splitlines()
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


def rel(path: str) -> str:
  return os.path.relpath(path, ROOT)
