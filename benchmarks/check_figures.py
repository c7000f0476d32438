"""Check 4 of `benchmarks/check_results.py`: every figure that README.md and docs/*.md quote
must round from a number of the same kind in a results file they link.

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
import os
import re
from typing import Iterable, Iterator

from benchmarks import results_text  # its ROOT / RESULTS are read at call time (tests move them)
from benchmarks.results_text import (NOT_BACKED, NUMBER, Number, kinds_of, numbers_in, read_text,
                                     rel, results_files)


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
    out.append(os.path.join(results_text.ROOT, named))
  return out


def _results_links(block: str, doc: str, follow: bool = True) -> tuple[str, ...]:
  """Results files a block links, directly or (follow) through a docs page it links."""
  out = []
  for path in _links(block, doc):
    if path.startswith(results_text.RESULTS + os.sep) and path.endswith('.md'):
      out.append(path)
    elif follow and path.endswith('.md') and os.path.isfile(path) and path != doc:
      out += _results_links(read_text(path), path, follow=False)
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
  text = read_text(doc)
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
    root = results_text.ROOT
    docs = [os.path.join(root, 'README.md')] + sorted(
        os.path.join(root, 'docs', n) for n in os.listdir(os.path.join(root, 'docs'))
        if n.endswith('.md'))
  every = results_files()
  out = []
  for doc in docs:
    for fig in figures(doc):
      if NOT_BACKED in fig.sentence.lower():
        continue
      if not fig.links:
        out.append(f'{rel(doc)}:{fig.line}: {fig.text}: neither its paragraph nor its '
                   f'section links a results file: {fig.context!r}')
        continue
      files = [p for p in every if p in fig.links or (not p.endswith('.md') and any(
          p.startswith(os.path.splitext(l)[0]) for l in fig.links))]
      if not any(_backs(n, fig) for p in files for n in numbers_in(p)):
        names = ', '.join(os.path.basename(l) for l in fig.links)
        out.append(f'{rel(doc)}:{fig.line}: {fig.text} is in none of the results files it '
                   f'cites ({names}): {fig.context!r}')
  return out
