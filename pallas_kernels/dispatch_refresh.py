"""Refreshing the GPU entries of the dispatch table from a `python -m benchmarks.kernels` run.

  python -m pallas_kernels.dispatch benchmarks/results/kernels.md

reads a results file, says per case which implementation its rows make the winner
(`proposals_from_results`) and prints where that differs from `dispatch_table.TABLE`.
"""

from __future__ import annotations

from pallas_kernels import dispatch_table


def parse_results(markdown: str) -> dict[str, list[dict[str, str]]]:
  """{section heading: [row as {column: cell}]} for every table of a results file."""
  sections: dict[str, list[dict[str, str]]] = {}
  heading, header = '', None
  for line in markdown.splitlines():
    if line.startswith('## '):
      heading, header = line[3:].strip(), None
      sections.setdefault(heading, [])
    elif line.startswith('|') and heading:
      cells = [c.strip() for c in line.strip().strip('|').split('|')]
      if header is None:
        header = cells
      elif not all(set(c) <= set('-: ') for c in cells):
        sections[heading].append(dict(zip(header, cells)))
    else:
      header = None
  return sections


def _num(cell: str | None) -> float | None:
  try:
    return float(cell)
  except (TypeError, ValueError):
    return None


def _section(sections, prefix: str) -> list[dict[str, str]]:
  return next((rows for h, rows in sections.items() if h.startswith(prefix)), [])


def _checked(sections, *kernels: str) -> tuple[str, ...]:
  """Dtypes in which every correctness row of these kernels passed."""
  rows = [r for h, section in sections.items() if h.startswith('Correctness')
          for r in section if any(r.get('kernel', '').startswith(k) for k in kernels)]
  dtypes = sorted({r['dtype'] for r in rows})
  return tuple(d for d in dtypes if all(r['ok'] == 'True' for r in rows if r['dtype'] == d))


def _all_at_least(rows, column: str, bound: float) -> bool | None:
  """Every row's `column` >= bound (None: no row has a number there)."""
  vals = [_num(r.get(column)) for r in rows]
  vals = [v for v in vals if v is not None]
  return None if not vals else min(vals) >= bound


def _all_numbers(rows, column: str) -> bool:
  """Every row has a number in `column` (and there is a row)."""
  return bool(rows) and all(_num(r.get(column)) is not None for r in rows)


def _least(rows, column: str) -> float:
  return min(v for v in (_num(r.get(column)) for r in rows) if v is not None)


def _ratio_rows(rows, numerator: str, denominator: str) -> list[dict[str, str]]:
  """Rows {'r': numerator / denominator} where both cells are numbers (for `_all_at_least`)."""
  return [{'r': str(_num(r.get(numerator)) / _num(r.get(denominator)))} for r in rows
          if _num(r.get(numerator)) and _num(r.get(denominator))]


def _propose(out, key, win: bool | None, checked: tuple[str, ...], peer: str,
             ratio: str) -> None:
  """out[key]: ours ('pallas') if it won every measured row (`win`) and passed its check in
  some dtype, else `peer`; nothing when the file does not measure the case (`win` None)."""
  if win is not None:
    out[key] = ('pallas' if win and checked else peer,
                f'{ratio} >= 1 on every row: {win}; checked {checked}')


def proposals_from_results(markdown: str) -> dict[tuple[str, str, str], tuple[str, str]]:
  """What each GPU case's winner is by a `benchmarks.kernels` results file: {(op, 'gpu',
  case): (impl, why)}. Ours wins a comparison only if it wins on every measured row and its
  on-device check passed (in some dtype); a case the file does not measure is left out."""
  s = parse_results(markdown)
  out: dict[tuple[str, str, str], tuple[str, str]] = {}
  flash_ok, decode_ok = _checked(s, 'flash'), _checked(s, 'decode')
  tree_ok, delta_ok = _checked(s, 'tree'), _checked(s, 'delta')
  sampling_ok, chain_ok = _checked(s, 'sampling'), _checked(s, 'chain verify')

  flash = _section(s, 'Flash attention')
  fwd = _all_at_least(flash, 'ours/cuDNN speed', 1.0)
  both = _all_at_least(flash, 'ours/cuDNN fwd+bwd', 1.0)
  hopper_ok = _checked(s, 'hopper flash')
  hopper = _section(s, 'Hopper flash attention')  # the Hopper section (or its own file)
  hop_fwd = _all_at_least(hopper, 'Hopper/cuDNN speed', 1.0)
  hop_both = _all_at_least(hopper, 'Hopper/cuDNN fwd+bwd', 1.0)
  if fwd is not None or hop_fwd is not None:
    wins = {}  # impl -> its worst forward ratio over cuDNN, where it won every row
    if fwd and both is not False and flash_ok:
      wins['pallas'] = _least(flash, 'ours/cuDNN speed')
    if hop_fwd and hop_both is not False and hopper_ok:
      wins['mosaic'] = _least(hopper, 'Hopper/cuDNN speed')
    out[('attention', 'gpu', 'causal')] = (
        max(wins, key=wins.get) if wins else 'cudnn',
        f'ours/cuDNN >= 1 on every row: forward {fwd}, fwd+bwd {both}; checked {flash_ok}; '
        f'Hopper/cuDNN >= 1 on every row: forward {hop_fwd}, fwd+bwd {hop_both}; checked '
        f'{hopper_ok}')
  tree = _section(s, 'Tree verification')
  tree_win = _all_at_least(tree, 'cuDNN / ours', 1.0)
  _propose(out, ('attention', 'gpu', 'tree'), tree_win, tree_ok, 'cudnn', 'cuDNN/ours')
  # The explicit case: our flash kernel with a dense mask against cuDNN with it (the tree
  # table's `ours, dense mask` is the decode kernel, not what 'pallas' runs here).
  dense = _section(s, 'Dense-mask flash attention')
  dense_fwd = _all_at_least(dense, 'cuDNN / ours', 1.0)
  if dense_fwd is not None:
    dense_both = _all_at_least(dense, 'cuDNN / ours fwd+bwd', 1.0)
    out[('attention', 'gpu', 'explicit')] = (
        'pallas' if dense_fwd and dense_both is not False and flash_ok else 'cudnn',
        f'cuDNN/ours >= 1 on every row: forward {dense_fwd}, fwd+bwd {dense_both}; '
        f'checked {flash_ok}')
  # Verification over a cache (128 < T x G <= 512 rows): the Hopper decode kernel against
  # cuDNN with the same dense mask (the Hopper section's tree table).
  hop_tree = _section(s, 'Hopper tree verification')
  hop_tree_win = _all_at_least(hop_tree, 'cuDNN / Hopper', 1.0)
  if hop_tree_win is not None:
    hop_tree_ok = _checked(s, 'hopper verify')
    out[('attention', 'gpu', 'verify')] = (
        'mosaic' if hop_tree_win and hop_tree_ok else 'cudnn',
        f'cuDNN/Hopper >= 1 on every row: {hop_tree_win}; checked {hop_tree_ok}')
    # What the model runs from its cache's layout: cuDNN pays for a copy of the cache, XLA
    # reads it in place; the fastest of the three on every row (Hopper only if checked).
    runs = {'mosaic': 'Hopper, cache layout', 'cudnn': 'cuDNN from the cache layout',
            'xla': 'XLA (cache layout)'}
    if not hop_tree_ok:
      runs.pop('mosaic')
    timed = all(_all_numbers(hop_tree, col) for col in runs.values())
    winners = [impl for impl, col in runs.items() if timed and all(
        _num(r[col]) <= _num(r[other]) for r in hop_tree for other in runs.values())]
    if winners:
      out[('attention', 'gpu', 'verify')] = (
          winners[0], f'fastest from the cache layout on every row ({", ".join(runs)}); '
                      f'cuDNN/Hopper kernel to kernel >= 1 on every row: {hop_tree_win}; '
                      f'checked {hop_tree_ok}')
  decode = _section(s, 'Decode attention')
  dec = _all_at_least(decode, 'ours/XLA speed', 1.0)
  _propose(out, ('attention', 'gpu', 'decode'), dec, decode_ok, 'xla', 'ours/XLA')
  # The Hopper kernel reads the cache's layout in place: judged on those rows against XLA.
  hop_decode = _section(s, 'Hopper decode attention')
  hop_dec = _all_at_least(hop_decode, 'Hopper (cache layout)/XLA speed', 1.0)
  hop_dec_ok = _checked(s, 'hopper decode')
  if hop_dec and hop_dec_ok:
    ours = out.get(('attention', 'gpu', 'decode'), ('xla', ''))[0]
    if ours != 'pallas' or (_least(hop_decode, 'Hopper (cache layout)/XLA speed')
                            > _least(decode, 'ours/XLA speed')):
      out[('attention', 'gpu', 'decode')] = (
          'mosaic', f'Hopper (cache layout)/XLA >= 1 on every row: {hop_dec}; checked '
                    f'{hop_dec_ok}')
  delta = _section(s, 'Chunked gated DeltaProduct')
  dwin = _all_at_least(_ratio_rows(delta, 'XLA chunked', 'ours'), 'r', 1.0)
  _propose(out, ('delta_rule', 'gpu', 'chunked'), dwin, delta_ok, 'xla', 'XLA/ours')
  samp = _all_at_least(_section(s, 'Fused sampling'), 'sort / fused', 1.0)
  _propose(out, ('sampling', 'gpu', 'top_p'), samp, sampling_ok, 'xla', 'sort/fused')
  # Fused verification: the kernel where it beat the reference on every row of its case
  # (each mode it fuses) and every check of that case passed.
  # (The tree rows' check is named 'verify tree': 'tree' alone is the attention kernel's.)
  verify = _section(s, 'Fused verification')
  for case, check in (('chain', 'chain verify'), ('tree', 'verify tree')):
    rows = [r for r in verify if r.get('case') == case]
    ok = _checked(s, check)
    if rows:
      _propose(out, ('spec_verify', 'gpu', case), _all_at_least(rows, 'reference / fused', 1.0),
               ok, 'xla', 'reference/fused')
    elif case == 'chain' and ok:
      out[('spec_verify', 'gpu', 'chain')] = ('xla', f'checked {ok}; speed not measured')
  return out


def main(argv: list[str]) -> int:
  """Prints, per case a results file (argv[1], default KERNELS_MD) measures, its winner and
  whether the table agrees."""
  path = argv[1] if len(argv) > 1 else dispatch_table.KERNELS_MD
  with open(path) as f:
    proposals = proposals_from_results(f.read())
  changed = 0
  for key, (impl, why) in sorted(proposals.items()):
    now = dispatch_table.TABLE[key].impl
    mark = 'same' if impl == now else 'FLIP'
    changed += impl != now
    print(f'{mark:4} {"/".join(key)}: table {now}, {path} says {impl} ({why})')
  print(f'{changed} entr{"y" if changed == 1 else "ies"} to change in '
        'pallas_kernels/dispatch_table.py')
  return 0

