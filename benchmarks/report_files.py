"""The files of benchmarks/report.py: its rows as a markdown table (flags for speedups above τ
and looping text), plots (speed against quality, acceptance by position), JSON beside the
markdown, and `--replot` (markdown and plots again from that JSON)."""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
from typing import Sequence

import numpy as np

from benchmarks import common


@dataclasses.dataclass
class Row:
  """One decoder at one temperature on one model."""
  method: str
  family: str
  lossless: bool
  temperature: float
  model: str
  tau: float
  nfe_per_token: float
  tokens_per_s: float
  generated: int
  compile_s: float
  step_hist: list[int]
  tokens: list[list[int]]
  texts: list[str]
  speedup: float = float('nan')
  perplexity: float = float('nan')
  entropy_bits: float = float('nan')
  same_as_ar: str = '—'


DEGENERATE = 0.5  # repeated 8-grams at or above this: the output loops


def repeated_fraction(texts: Sequence[str], n: int = 8) -> float:
  """How much of the generated text repeats itself: the share of its character n-grams that
  already occurred earlier in the same text, averaged over the texts (0 = no repeat; a text
  stuck in a loop approaches 1). NaN when no text has two n-grams."""
  shares = []
  for text in texts:
    grams = [text[i:i + n] for i in range(len(text) - n + 1)]
    if len(grams) < 2:
      continue
    seen, repeats = set(), 0
    for g in grams:
      repeats += g in seen
      seen.add(g)
    shares.append(repeats / len(grams))
  return float(np.mean(shares)) if shares else float('nan')


LEGEND = ('(!) after a speedup: above τ, which a method cannot reach (each step runs the target '
          'over at least one token, plus any drafting, so it never costs less than an AR '
          'step): timing noise, not the method. *repeated 8-grams*: the share of the '
          "generated text's 8-character windows already seen earlier in the same text (mean "
          f'over prompts); from {DEGENERATE:g} on the row is marked degenerate: the output '
          'loops, and speed measured on it (lookup drafters above all) says little about '
          'real text.')


def markdown(rows: Sequence[Row], skipped: Sequence[tuple[str, str]], plots: Sequence[str],
             setup: str) -> str:
  """The report body: the table, what was skipped and why, the plots."""
  fmt = lambda x, p=2: '—' if x != x else f'{x:.{p}f}'  # NaN -> dash
  lines = [setup, '', LEGEND, '',
           '| method | family | lossless | T | model | τ | NFE/token | tokens/s | speedup vs AR '
           '| judge ppl | entropy (bits) | repeated 8-grams | same tokens as AR (T=0) |',
           '|' + '---|' * 13]
  for r in sorted(rows, key=lambda r: (r.family != 'autoregressive', r.family, r.method,
                                       r.temperature)):
    flag = ' (!)' if common.speedup_above_tau(r.speedup, r.tau) else ''
    rep = repeated_fraction(r.texts)
    rep_cell = fmt(rep) + (' (degenerate)' if rep >= DEGENERATE else '')
    lines.append(f'| {r.method} | {r.family} | {"yes" if r.lossless else "no"} '
                 f'| {r.temperature:g} | {r.model} | {fmt(r.tau)} | {fmt(r.nfe_per_token)} '
                 f'| {r.tokens_per_s:.0f} | {fmt(r.speedup)}x{flag} | {fmt(r.perplexity)} '
                 f'| {fmt(r.entropy_bits)} | {rep_cell} | {r.same_as_ar} |')
  if skipped:
    lines += ['', '**Skipped**', ''] + [f'- `{n}`: {why}' for n, why in skipped]
  lines += [''] + [f'![{os.path.splitext(p)[0]}]({p})' for p in plots]
  return '\n'.join(lines)


def acceptance_curve(step_hist: Sequence[int]) -> np.ndarray:
  """[M-1] fraction of steps that committed at least k tokens, k = 1..M-1."""
  hist = np.asarray(step_hist, float)
  total = hist[1:].sum()
  return np.cumsum(hist[::-1])[::-1][1:] / max(total, 1.0)


def plot(rows: Sequence[Row], out_dir: str, prefix: str = 'report') -> list[str]:
  """Writes <prefix>_speed_quality.png and <prefix>_acceptance.png; returns file names."""
  plt = common.pyplot()
  os.makedirs(out_dir, exist_ok=True)
  names = []
  temps = sorted({r.temperature for r in rows})
  fig, axes = plt.subplots(1, len(temps), figsize=(5.5 * len(temps), 4.5), squeeze=False)
  for ax, t in zip(axes[0], temps):
    for r in (r for r in rows if r.temperature == t):
      ax.scatter(r.perplexity, r.speedup, color='C0' if r.lossless else 'C3')
      ax.annotate(r.method, (r.perplexity, r.speedup), fontsize=7)
    ax.set_xscale('log')
    ax.set_xlabel('judge perplexity of the generated text (lower is better)')
    ax.set_ylabel('speedup vs AR (tokens/s)')
    ax.set_title(f'T={t:g} (blue: lossless, red: lossy)', fontsize=9)
  names.append(f'{prefix}_speed_quality.png')
  fig.tight_layout()
  fig.savefig(os.path.join(out_dir, names[-1]), dpi=120)
  plt.close(fig)
  multi = [r for r in rows if r.tau > 1.05]  # one-token-per-step decoders: a flat line
  colors = {m: f'C{i % 10}' for i, m in enumerate(dict.fromkeys(r.method for r in multi))}
  fig, axes = plt.subplots(1, len(temps), figsize=(5.5 * len(temps), 4.5), squeeze=False)
  for ax, t in zip(axes[0], temps):
    for r in (r for r in multi if r.temperature == t):
      curve = acceptance_curve(r.step_hist)
      ax.plot(np.arange(1, len(curve) + 1), curve, marker='.', color=colors[r.method],
              label=f'{r.method} (tau {r.tau:.2f})')
    ax.set_xlabel('k (tokens committed in one step)')
    ax.set_ylabel('fraction of steps committing >= k')
    ax.set_ylim(0, 1.05)
    ax.set_title(f'acceptance by position, T={t:g}', fontsize=9)
    if any(r.temperature == t for r in multi):
      ax.legend(fontsize=7)
  names.append(f'{prefix}_acceptance.png')
  fig.tight_layout()
  fig.savefig(os.path.join(out_dir, names[-1]), dpi=120)
  plt.close(fig)
  return names


def write(out: str, rows: Sequence[Row], skipped: Sequence[tuple[str, str]], setup: str,
          provenance: str, rendered: str = '') -> list[str]:
  """Writes the markdown, its plots and <out>.json (rows without token ids); `rendered`
  (a provenance line for --replot) goes in the markdown only."""
  out_dir = os.path.dirname(os.path.abspath(out))
  prefix = os.path.splitext(os.path.basename(out))[0]
  os.makedirs(out_dir, exist_ok=True)
  plots = plot(rows, out_dir, prefix) if rows else []
  with open(out, 'w') as f:
    head = provenance + (f'\n{rendered}' if rendered else '')
    f.write(f'# Decoder report\n\n{head}\n\n{markdown(rows, skipped, plots, setup)}\n')
  saved = [dict(dataclasses.asdict(r), tokens=[]) for r in rows]
  with open(os.path.join(out_dir, f'{prefix}.json'), 'w') as f:
    json.dump({'provenance': provenance, 'setup': setup, 'rows': saved,
               'skipped': list(map(list, skipped))}, f, indent=1)
  return [out, *plots, f'{prefix}.json']


def replot(out: str) -> list[str]:
  """Rewrites the markdown and plots of a previous run from its JSON."""
  path = os.path.splitext(out)[0] + '.json'
  if not os.path.isfile(path):
    raise FileNotFoundError(f'--replot needs {path} from an earlier run.')
  with open(path) as f:
    saved = json.load(f)
  rows = [Row(**r) for r in saved['rows']]
  provenance = common.with_commit_line(saved['provenance'])
  when = f'{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC'
  rendered = (f'- rendered: from {os.path.basename(path)} by `python -m benchmarks.report '
              f'--replot` ({when}, commit {common.git_commit()}); the figures are those of '
              'the run above')
  return write(out, rows, [tuple(x) for x in saved['skipped']], saved['setup'],
               provenance, rendered)
