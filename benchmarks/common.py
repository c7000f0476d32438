"""Shared benchmark plumbing: device facts, timing, and results files with provenance."""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Sequence

import jax

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMIT_ENV = 'LEAPFROG_COMMIT'  # for copies of the code without .git (e.g. a lent GPU)
# Where results go: benchmarks/results, or $LEAPFROG_RESULTS_DIR (a rehearsal of
# benchmarks/gpu_suite.sh on CPU writes there, so that no toy figure lands among the results).
RESULTS_ENV = 'LEAPFROG_RESULTS_DIR'
RESULTS_DIR = os.path.abspath(os.environ.get(RESULTS_ENV)
                              or os.path.join(REPO_ROOT, 'benchmarks', 'results'))

# Dense peaks by device kind (bf16 FLOP/s, HBM bytes/s); None where not meaningful (CPU).
PEAKS = {
    'NVIDIA H100 80GB HBM3': (989e12, 3.35e12),
    'NVIDIA H100': (989e12, 3.35e12),
    'NVIDIA H200': (989e12, 4.8e12),
    'TPU v5 lite': (197e12, 0.82e12),
    'TPU v4': (275e12, 1.2e12),
}


def device_peaks() -> tuple[float | None, float | None]:
  kind = jax.devices()[0].device_kind
  for name, peaks in PEAKS.items():
    if kind.startswith(name):
      return peaks
  return None, None


def git_commit(root: str = REPO_ROOT) -> str:
  """The commit of the code that runs and whether the code differs from it.

  'abc123def456 (clean)', 'abc123def456 + uncommitted changes (dirty)', or, when
  $LEAPFROG_COMMIT is set, that value: a lent machine gets a copy whose .git may be older than
  the code sent with it (the H200 call of 2026-12-04 read a stale HEAD and called the code
  dirty), so the commit written out by whoever sent the code wins. Changes under
  benchmarks/results (what the benchmarks write) do not count as dirty; untracked files
  outside git's ignores do.
  """
  def git(*args):
    return subprocess.run(['git', '-C', root, *args], capture_output=True, text=True,
                          check=True, timeout=30).stdout.strip()
  given = os.environ.get(COMMIT_ENV)
  if given:
    return f'{given} (from ${COMMIT_ENV})'
  try:
    sha = git('rev-parse', 'HEAD')
    changed = git('status', '--porcelain', '--', '.', ':(exclude)benchmarks/results')
  except (OSError, subprocess.SubprocessError):
    return f'unknown (no git checkout; set ${COMMIT_ENV})'
  return f'{sha[:12]} + uncommitted changes (dirty)' if changed else f'{sha[:12]} (clean)'


NO_COMMIT = '- commit: not recorded (written before results files recorded their commit)'


def with_commit_line(provenance_text: str) -> str:
  """A provenance block from before results recorded their commit, saying so (for scripts
  that re-render saved runs)."""
  if '\n- commit: ' in provenance_text:
    return provenance_text
  return re.sub(r'(- date: [^\n]*)', lambda m: f'{m.group(1)}\n{NO_COMMIT}', provenance_text,
                count=1)


def provenance() -> str:
  """Device, versions, date, commit and the exact command: goes above every results table."""
  d = jax.devices()[0]
  lines = [f'- device: {d.platform} / {d.device_kind} x{jax.device_count()} '
           f'({os.cpu_count()} host cores)', f'- host: {host_cpu()}',
           f'- versions: python {platform.python_version()}, jax {jax.__version__}']
  try:
    import flax  # pylint: disable=g-import-not-at-top
    lines[-1] += f', flax {flax.__version__}'
  except ImportError:
    pass
  lines.append(f'- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC')
  lines.append(f'- commit: {git_commit()}')
  lines.append(f'- command: `python -m {_module()} {" ".join(sys.argv[1:])}`')
  return '\n'.join(lines)


def host_cpu() -> str:
  """The host's CPU model and last-level cache, e.g. 'Intel(R) Xeon(R) Processor, last-level
  cache 480 MiB' (Linux; 'unknown' elsewhere). CPU timings depend on them: whether a preset's
  weights fit in the cache decides whether its decoding is memory-bound (the `mem` preset's
  126 MB do not fit a 32 MiB cache, but do fit a 480 MiB one)."""
  model = 'unknown'
  try:
    with open('/proc/cpuinfo') as f:
      model = next((line.split(':', 1)[1].strip() for line in f
                    if line.startswith('model name')), model)
  except OSError:
    pass
  base = '/sys/devices/system/cpu/cpu0/cache'
  size = None
  try:
    for index in sorted(os.listdir(base)):
      with open(os.path.join(base, index, 'size')) as f:
        size = f.read().strip()  # the highest level comes last
  except (OSError, ValueError):
    pass
  if size and size.endswith('K') and size[:-1].isdigit():
    kib = int(size[:-1])
    size = f'{kib // 1024} MiB' if kib >= 1024 else f'{kib} KiB'
  return f'{model}, last-level cache {size}' if size else model


def _module() -> str:
  main = getattr(sys.modules['__main__'], '__file__', None) or ''
  rel = os.path.relpath(os.path.abspath(main), REPO_ROOT)
  return rel.removesuffix('.py').replace(os.sep, '.')


def speedup_above_tau(speedup: float, tau: float) -> bool:
  """A speedup against AR on the same model above the tokens per target forward (τ).

  A multi-token step runs the target over at least one token (plus any drafting), so it never
  costs less than an AR step and tokens/s can exceed AR's by at most τ: a measured speedup
  above τ is timing noise (e.g. load on a shared machine during the AR passes), not the
  method. Results tables flag such rows with '(!)' (checked by benchmarks/check_results.py).
  """
  return speedup > tau


def median_time(fn: Callable[[], Any], *, warmup: int = 1, repeats: int = 5) -> float:
  """Median wall time of fn() (which must block until its result is ready)."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def distinct_ngrams(rows: list[list[int]], n: int = 4) -> float:
  """Share of a row's n-grams that are distinct, over all rows (1 = no repeats): how
  repetitive the greedy text is (a model can converge fast by repeating itself)."""
  distinct, total = 0, 0
  for r in rows:
    grams = [tuple(r[i:i + n]) for i in range(len(r) - n + 1)]
    distinct, total = distinct + len(set(grams)), total + len(grams)
  return distinct / max(total, 1)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  fmt = lambda v: f'{v:.4g}' if isinstance(v, float) else str(v)
  out = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  out += ['| ' + ' | '.join(fmt(v) for v in row) + ' |' for row in rows]
  return '\n'.join(out)


def write_json(name: str, payload: Any) -> str:
  """Writes benchmarks/results/<name>.json (replacing it) and returns the path."""
  os.makedirs(RESULTS_DIR, exist_ok=True)
  path = os.path.join(RESULTS_DIR, f'{name}.json')
  with open(path, 'w') as f:
    json.dump(payload, f, indent=1)
  return path


def write_results(name: str, title: str, body: str) -> str:
  """Writes benchmarks/results/<name>.md (replacing it) and returns the path."""
  os.makedirs(RESULTS_DIR, exist_ok=True)
  path = os.path.join(RESULTS_DIR, f'{name}.md')
  with open(path, 'w') as f:
    f.write(f'# {title}\n\n{provenance()}\n\n{body.rstrip()}\n')
  return path


def pyplot():
  """matplotlib.pyplot on the Agg backend (plots go to files): what every benchmark plots with.

  Imported when a benchmark plots, not at the top of its module: selecting Agg on import would
  switch the backend of a notebook that imports the module, and pyplot takes ~0.4 s to import.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt
