"""What `impl='auto'` runs: one table per (op, platform, case), each entry with its evidence.

`auto` means the fastest correct implementation we have measured (issue 16). Every public
op resolves `impl='auto'` here, through `choose`:

    choice = dispatch.choose('attention', 'causal', dtype=q.dtype, head_dim=Dh, q_len=T,
                             kv_len=S)
    choice.impl     # 'xla' | 'pallas' | 'cudnn' | 'splash'
    choice.reason   # the entry's evidence, or why it was refused and what ran instead

An `Entry` names the implementation and the measurement behind it: a results file and the
verbatim rows that back it (tested to be in the file), or `UNMEASURED` with the reason for
the default. Before an entry is used, `choose` checks that its implementation can run this
call (cuDNN's dtypes and head dims, splash's block multiples, the dtypes whose on-device
check our kernel has passed, reading the cache layout in a decode) and falls back
along `Entry.fallback`, then to 'xla', saying why.

Cases (the `op` 'attention' covers every attention entry point: the model's masked
attention for training, prefill, verification and decoding, `flash_attention`,
`decode_attention` and `tree_attention`):

  attention/causal     causal, bidirectional or causal sliding window, default positions
                       and T == S: what cuDNN and splash take without a mask array.
  attention/segments   packed documents by segment ids (default positions, T == S).
  attention/positions  per-token positions (block-causal, padding by negative positions,
                       T != S, bidirectional windows): a per-element rule, no mask array.
  attention/explicit   a dense boolean mask over many query rows (the model's training and
                       prefill, and verification with T x G > 128 rows per kv head).
  attention/decode     few query rows per kv head (T x G <= 128) over a cache with per-row
                       lengths (decoding; small verification trees; + optional dense mask).
  attention/tree       `tree_attention`: tree nodes over a cache prefix, their K/V apart.
  delta_rule/chunked   the chunked (training / prefill) delta rule.
  sampling/top_p       fused temperature + top-p (+ min-p) sampling.
  sampling/top_k       fused temperature + top-k sampling (no top-p).
  spec_verify/chain    chain verification.   spec_verify/tree   tree verification.

Refreshing from a GPU run: `python -m pallas_kernels.dispatch benchmarks/results/kernels.md`
reads a `benchmarks.kernels` results file, says per case which implementation its rows
make the winner (`proposals_from_results`) and prints where that differs from `TABLE`.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import jax.numpy as jnp

from pallas_kernels import common

IMPLS = ('xla', 'pallas', 'cudnn', 'splash')
PLATFORMS = ('cpu', 'gpu', 'tpu')
CASES = {
    'attention': ('causal', 'segments', 'positions', 'explicit', 'decode', 'tree'),
    'delta_rule': ('chunked',),
    'sampling': ('top_p', 'top_k'),
    'spec_verify': ('chain', 'tree'),
}
# Which implementations each op has (a table entry must name one of these).
OP_IMPLS = {
    'attention': ('xla', 'pallas', 'cudnn', 'splash'),
    'delta_rule': ('xla', 'pallas'),
    'sampling': ('xla', 'pallas'),
    'spec_verify': ('xla', 'pallas'),
}
UNMEASURED = 'unmeasured: default'
KERNELS_MD = 'benchmarks/results/kernels.md'
# cuDNN flash attention (jax/_src/cudnn/fused_attention_stablehlo.py, check_layout and
# check_is_flash_attention): fp16/bf16 (fp8 aside), head dim a multiple of 8 and <= 256 on
# Hopper and later (<= 128 before), even T and S when a mask (bias) is trained through.
CUDNN_DTYPES = ('bfloat16', 'float16')
SPLASH_BLOCK = 128  # splash's default block sizes: T and S multiples of this


@dataclasses.dataclass(frozen=True)
class Entry:
  """impl: what 'auto' runs. source: a results file (relative to the repo root) or
  UNMEASURED. rows: verbatim excerpts of that file's rows backing the entry. why: the
  reading of those rows (or the reason for the default). checked: for 'pallas', the dtypes
  whose on-device check passed (other dtypes fall back). fallback: what runs when `impl`
  cannot run this call (then 'xla'). cache_layout: our kernel's path that reads the decoding
cache's layout in place has passed its on-device check (else a decode from that layout
does not use it). flip: what would change this entry."""
  impl: str
  source: str
  why: str
  rows: tuple[str, ...] = ()
  checked: tuple[str, ...] = ()
  fallback: str = 'xla'
  cache_layout: bool = False
  flip: str = ''


@dataclasses.dataclass(frozen=True)
class Choice:
  impl: str
  entry: Entry
  reason: str


_CPU = Entry('xla', UNMEASURED, 'XLA on CPU (issue 16): kernels run only interpreted there.')
_TPU_UNCHECKED = ('none of our TPU kernels has run on a TPU (only interpret mode and '
                  'lowering from CPU)')

# --- the evidence (verbatim rows of benchmarks/results/kernels.md, H100, 2026-11-23) ---
_FLASH_SPEED = (
    '| 64 | 1024 | 16 | 32 | 106.5 | 177.7 | 17.76 | 0.5991 |',
    '| 64 | 4096 | 4 | 32 | 165.6 | 317.5 | 21.18 | 0.5216 |',
    '| 64 | 16384 | 1 | 32 | 236.5 | 411.4 |',
    '| 128 | 1024 | 16 | 16 | 116.6 | 220.1 | 31.85 | 0.5298 |',
    '| 128 | 4096 | 4 | 16 | 190.9 | 346 | 40.03 | 0.5517 |',
    '| 128 | 16384 | 1 | 16 | 264 | 560.6 | 43.67 | 0.4709 |',
)
_FLASH_CHECK_BF16 = (
    '| flash fwd | pallas | B2 T1000 H16 K4 D128 causal+seg | bfloat16 | 0.003937 | 0.03 | True |',
    '| flash dq | pallas | B2 T1000 H16 K4 D128 causal+seg | bfloat16 | 0.009766 | 0.03 | True |',
)
_TREE_ROW = '| 8 | 2048 | 64 | 0.5632 | 0.5126 | 0.2915 | 0.5175 |'
_DECODE_ROWS = (
    '| 8 | 4096 | 691.2 | 0.2063 | 501.7 | 1.378 |',
    '| 32 | 4096 | 1436 | 0.4286 | 641.4 | 2.238 |',
    '| decode | pallas | B2 S4096 H16 K4 D128 | bfloat16 | 0.005128 | 0.03 | True |',
)
_FP32_FAILED = ('float32 rows failed their 1e-4 check on the H100 (3.2e-4 to 1.6e-3; TF32 '
                'references suspected, not rerun)')

TABLE: dict[tuple[str, str, str], Entry] = {
    # attention, NVIDIA GPU
    ('attention', 'gpu', 'causal'): Entry(
        'cudnn', KERNELS_MD, rows=_FLASH_SPEED, fallback='pallas', checked=('bfloat16',),
        why='cuDNN beat our flash kernel on every measured shape: ours/cuDNN forward '
            '0.47-0.60x, forward+backward 0.27-0.80x (causal, bf16, Dh 64/128, T 1k-16k).',
        flip='ours >= 1x cuDNN forward and forward+backward (issue 16 section 2).'),
    ('attention', 'gpu', 'segments'): Entry(
        'pallas', KERNELS_MD, rows=_FLASH_CHECK_BF16 + _FLASH_SPEED[:2], checked=('bfloat16',),
        why='jax.nn.dot_product_attention takes no segment ids (cuDNN only through a dense '
            'mask); our kernel passed its bf16 check with segments and ran 6-11x XLA '
            '(causal rows). fp32: ' + _FP32_FAILED + '.',
        flip='cuDNN given the dense segment mask measured faster than ours.'),
    ('attention', 'gpu', 'positions'): Entry(
        'pallas', KERNELS_MD, rows=_FLASH_CHECK_BF16 + _FLASH_SPEED[:2], checked=('bfloat16',),
        why='cuDNN has no per-token positions (only a dense mask); our kernel passed its bf16 '
            'check and ran 6-11x XLA (causal rows). fp32: ' + _FP32_FAILED + '.',
        flip='cuDNN given the materialised mask measured faster than ours.'),
    ('attention', 'gpu', 'explicit'): Entry(
        'cudnn', KERNELS_MD, rows=(_TREE_ROW,), fallback='pallas', checked=('bfloat16',),
        why='given the same dense mask (64 tree nodes over 2048 slots, B 8) cuDNN took '
            '0.2915 ms, ours 0.5126 ms.',
        flip='ours with a dense mask >= 1x cuDNN (issue 16 goal: 1.5x).'),
    ('attention', 'gpu', 'decode'): Entry(
        'pallas', KERNELS_MD, rows=_DECODE_ROWS, checked=('bfloat16',),
        why='our split-K kernel read K/V at 1.38x (B 8) and 2.24x (B 32) XLA\'s speed, context '
            '4096, and passed its bf16 check; cuDNN (kv_seqlen padding) was not measured '
            'for decoding. fp32: ' + _FP32_FAILED + '.',
        flip='cuDNN with key_value_seq_lengths, or XLA over the cache layout, measured faster.'),
    ('attention', 'gpu', 'tree'): Entry(
        'cudnn', KERNELS_MD, rows=(_TREE_ROW,), fallback='pallas', checked=('bfloat16',),
        why='cuDNN 0.2915 ms vs ours 0.5632 ms (64 nodes over a 2048 prefix, B 8). cuDNN ran '
            'over a cache already holding the tree; here the tree K/V are concatenated to the '
            'cache first (a copy the row did not time). XLA was not in that row.',
        flip='ours (issue 16 goal 1.5x cuDNN), or XLA, measured faster incl. the concat.'),
    # attention, TPU
    ('attention', 'tpu', 'causal'): Entry(
        'splash', UNMEASURED, why='issue 16 policy: jax\'s splash attention for standard masks '
        'until ours is measured faster; ' + _TPU_UNCHECKED + '.',
        flip='ours measured faster than splash on a TPU.'),
    ('attention', 'tpu', 'segments'): Entry(
        'splash', UNMEASURED, why='splash takes segment ids natively; ' + _TPU_UNCHECKED + '.',
        flip='ours measured faster than splash on a TPU.'),
    ('attention', 'tpu', 'positions'): Entry(
        'xla', UNMEASURED, why='splash masks are static (no per-token positions); '
        + _TPU_UNCHECKED + '.', flip='our TPU flash kernel checked and timed on a TPU.'),
    ('attention', 'tpu', 'explicit'): Entry(
        'xla', UNMEASURED, why='splash takes no traced dense mask; ' + _TPU_UNCHECKED + '.',
        flip='our TPU flash kernel checked and timed on a TPU.'),
    ('attention', 'tpu', 'decode'): Entry(
        'xla', UNMEASURED, why=_TPU_UNCHECKED + '.',
        flip='our TPU decode kernel checked and timed on a TPU.'),
    ('attention', 'tpu', 'tree'): Entry(
        'xla', UNMEASURED, why=_TPU_UNCHECKED + '.',
        flip='our TPU decode kernel checked and timed on a TPU.'),
    # delta rule
    ('delta_rule', 'gpu', 'chunked'): Entry(
        'xla', KERNELS_MD,
        rows=('| delta rule fwd | pallas | B2 T1000 H4 Dk128 Dv256 gated | float32 | 0.001578 |',
              '| 4096 | 8192 | 3.965 | 11.47 |'),
        why='ours ran 2.9x the XLA chunked form (3.965 vs 11.47 ms, T 4096) but failed its '
            'on-device check (fp32 rel. error 1.6e-3 > 1e-4; TF32 references suspected, '
            'not rerun).',
        flip='the float32 check passing (then pallas); fla not compared yet.'),
    ('delta_rule', 'tpu', 'chunked'): Entry(
        'xla', UNMEASURED, why=_TPU_UNCHECKED + '.', flip='TPU check and timing.'),
    # sampling
    ('sampling', 'gpu', 'top_p'): Entry(
        'xla', KERNELS_MD,
        rows=('| 32768 | 1 | 461.9 | 195.8 | 0.4239 |', '| 32768 | 64 | 434.7 | 409.1 | 0.9412 |',
              '| 262144 | 1 | 2509 | 243.4 | 0.09699 |',
              '| 262144 | 64 | 3056 | 2661 | 0.8705 |'),
        why='the fused kernel ran at 0.10-0.94x the sort-based reference (tokens equal).',
        flip='a fused kernel faster than the sort (issue 16 goal: 3x at V >= 128k).'),
    ('sampling', 'gpu', 'top_k'): Entry(
        'xla', UNMEASURED, why='top-k alone was not timed; the kernel runs the same '
        'threshold search that lost to the sort for top-p.', flip='a top-k timing.'),
    ('sampling', 'tpu', 'top_p'): Entry('xla', UNMEASURED, why=_TPU_UNCHECKED + '.',
                                        flip='TPU check and timing.'),
    ('sampling', 'tpu', 'top_k'): Entry('xla', UNMEASURED, why=_TPU_UNCHECKED + '.',
                                        flip='TPU check and timing.'),
    # speculative verification
    ('spec_verify', 'gpu', 'chain'): Entry(
        'xla', KERNELS_MD,
        rows=('| chain verify (iid) | pallas | B64 G6 V128256 | float32 | 2.39e-08 |',),
        why='the fused chain kernel passed its on-device check, but its speed was never '
            'measured.', flip='a timing against the reference.'),
    ('spec_verify', 'gpu', 'tree'): Entry(
        'xla', UNMEASURED, why='the fused tree kernel was neither checked nor timed on a GPU.',
        flip='an on-device check and timing.'),
    ('spec_verify', 'tpu', 'chain'): Entry('xla', UNMEASURED, why='no TPU kernel.'),
    ('spec_verify', 'tpu', 'tree'): Entry('xla', UNMEASURED, why='no TPU kernel.'),
}
for _op, _cases in CASES.items():
  for _case in _cases:
    TABLE.setdefault((_op, 'cpu', _case), _CPU)


# --- can this implementation run this call? ---

def _cuda_max_head_dim() -> int:
  """256 on Hopper and later, 128 before (cuDNN's rule); 256 off-GPU (the measured H100)."""
  try:
    import jax  # pylint: disable=g-import-not-at-top
    cc = getattr(jax.devices()[0], 'compute_capability', None)
    if cc is not None:
      return 256 if float(cc) >= 9.0 else 128
  except Exception:  # pylint: disable=broad-except
    pass
  return 256


def refusal(impl: str, entry: Entry, *, platform: str, dtype: Any = None,
            head_dim: int | None = None, q_len: int | None = None, kv_len: int | None = None,
            has_mask: bool = False, cache_layout: bool = False, case: str = '') -> str | None:
  """Why `impl` cannot run this call (None: it can)."""
  name = None if dtype is None else jnp.dtype(dtype).name
  if impl == 'xla':
    return None
  if impl == 'cudnn':
    if platform != 'gpu':
      return f'cudnn needs an NVIDIA GPU (platform {platform})'
    if name is not None and name not in CUDNN_DTYPES:
      return f'cudnn takes {"/".join(CUDNN_DTYPES)}, not {name}'
    hmax = _cuda_max_head_dim()
    if head_dim is not None and (head_dim % 8 or head_dim > hmax):
      return f'cudnn needs head_dim a multiple of 8 and <= {hmax}, got {head_dim}'
    if has_mask and ((q_len or 0) % 2 or (kv_len or 0) % 2):
      return f'cudnn with a mask needs even T and S (got T {q_len}, S {kv_len})'
  if impl == 'splash':
    if platform != 'tpu':
      return f'splash attention needs a TPU (platform {platform})'
    if (q_len or 0) % SPLASH_BLOCK or (kv_len or 0) % SPLASH_BLOCK:
      return f'splash needs T and S multiples of {SPLASH_BLOCK} (got T {q_len}, S {kv_len})'
  if impl == 'pallas':
    if platform not in ('gpu', 'tpu'):
      return f'no Pallas kernel runs natively on {platform}'
    if name is not None and name not in entry.checked:
      return (f'our kernel has not passed its on-device check in {name} '
              f'(passed: {", ".join(entry.checked) or "none"})')
  if cache_layout and case in ('decode', 'tree'):
    if impl == 'cudnn' or (impl == 'pallas' and platform == 'tpu'):
      return (f'{impl} would need a transposed copy of the cache per call, which costs more '
              'than a memory-bound decode saves (XLA reads the cache layout in place)')
    if impl == 'pallas' and not entry.cache_layout:
      return ('our decode kernel reads the cache layout (k [B,K,S,Dh], v [B,K,Dh,S]) only in '
              'a path not yet checked or timed on a GPU (measured: [B,S,K,Dh])')
  return None


def choose(op: str, case: str, *, platform: str | None = None, dtype: Any = None,
           head_dim: int | None = None, q_len: int | None = None, kv_len: int | None = None,
           has_mask: bool = False, cache_layout: bool = False) -> Choice:
  """The implementation 'auto' runs for this call, and why.

  Args:
    op, case: a key of CASES and one of its cases.
    platform: 'cpu' | 'gpu' | 'tpu' (default: `common.platform()`).
    dtype, head_dim, q_len, kv_len: of the call (None = not constrained).
    has_mask: a mask array would be passed (cuDNN needs even T and S then).
    cache_layout: the call's K/V are in the decoding cache's layout (models.cache).
  """
  if op not in CASES or case not in CASES[op]:
    raise ValueError(f'Unknown dispatch case {op}/{case}; cases: {CASES}.')
  platform = platform or common.platform()
  entry = TABLE.get((op, platform, case), _CPU)
  why = f'{entry.source}: {entry.why}'
  refused = []
  for impl in dict.fromkeys((entry.impl, entry.fallback, 'xla')):
    no = refusal(impl, entry, platform=platform, dtype=dtype, head_dim=head_dim, q_len=q_len,
                 kv_len=kv_len, has_mask=has_mask, cache_layout=cache_layout, case=case)
    if no is None:
      reason = why if not refused else f'{"; ".join(refused)}; so {impl} (table: {why})'
      return Choice(impl, entry, reason)
    refused.append(no)
  raise AssertionError('xla is never refused')


def table_markdown() -> str:
  """TABLE as a markdown table (docs/kernels.md quotes it)."""
  lines = ['| op | case | gpu | tpu | cpu |', '|---|---|---|---|---|']
  for op, cases in CASES.items():
    for case in cases:
      cells = [TABLE[(op, p, case)].impl for p in ('gpu', 'tpu', 'cpu')]
      lines.append(f'| {op} | {case} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


# --- refreshing the GPU rows from a `python -m benchmarks.kernels` results file ---

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
  rows = [r for r in _section(sections, 'Correctness')
          if any(r.get('kernel', '').startswith(k) for k in kernels)]
  dtypes = sorted({r['dtype'] for r in rows})
  return tuple(d for d in dtypes if all(r['ok'] == 'True' for r in rows if r['dtype'] == d))


def _all_at_least(rows, column: str, bound: float) -> bool | None:
  """Every row's `column` >= bound (None: no row has a number there)."""
  vals = [_num(r.get(column)) for r in rows]
  vals = [v for v in vals if v is not None]
  return None if not vals else min(vals) >= bound


def _ratio_rows(rows, numerator: str, denominator: str) -> list[dict[str, str]]:
  """Rows {'r': numerator / denominator} where both cells are numbers (for `_all_at_least`)."""
  return [{'r': str(_num(r.get(numerator)) / _num(r.get(denominator)))} for r in rows
          if _num(r.get(numerator)) and _num(r.get(denominator))]


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
  if fwd is not None:
    win = fwd and both is not False and bool(flash_ok)
    out[('attention', 'gpu', 'causal')] = (
        'pallas' if win else 'cudnn',
        f'ours/cuDNN >= 1 on every row: forward {fwd}, fwd+bwd {both}; checked {flash_ok}')
  tree = _section(s, 'Tree verification')
  tree_win = _all_at_least(tree, 'cuDNN / ours', 1.0)
  if tree_win is not None:
    out[('attention', 'gpu', 'tree')] = (
        'pallas' if tree_win and tree_ok else 'cudnn',
        f'cuDNN/ours >= 1 on every row: {tree_win}; checked {tree_ok}')
    dense_win = _all_at_least(_ratio_rows(tree, 'cuDNN', 'ours, dense mask'), 'r', 1.0)
    if dense_win is not None:
      out[('attention', 'gpu', 'explicit')] = (
          'pallas' if dense_win and decode_ok else 'cudnn',
          f'cuDNN/ours(dense mask) >= 1 on every row: {dense_win}')
  dec = _all_at_least(_section(s, 'Decode attention'), 'ours/XLA speed', 1.0)
  if dec is not None:
    out[('attention', 'gpu', 'decode')] = (
        'pallas' if dec and decode_ok else 'xla',
        f'ours/XLA >= 1 on every row: {dec}; checked {decode_ok}')
  delta = _section(s, 'Chunked gated DeltaProduct')
  dwin = _all_at_least(_ratio_rows(delta, 'XLA chunked', 'ours'), 'r', 1.0)
  if dwin is not None:
    out[('delta_rule', 'gpu', 'chunked')] = (
        'pallas' if dwin and delta_ok else 'xla',
        f'XLA/ours >= 1 on every row: {dwin}; checked {delta_ok}')
  samp = _all_at_least(_section(s, 'Fused sampling'), 'sort / fused', 1.0)
  if samp is not None:
    out[('sampling', 'gpu', 'top_p')] = (
        'pallas' if samp and sampling_ok else 'xla',
        f'sort/fused >= 1 on every row: {samp}; checked {sampling_ok}')
  if chain_ok and not _section(s, 'Chain verification'):
    out[('spec_verify', 'gpu', 'chain')] = ('xla', f'checked {chain_ok}; speed not measured')
  return out


def main(argv: list[str]) -> int:
  path = argv[1] if len(argv) > 1 else KERNELS_MD
  with open(path) as f:
    proposals = proposals_from_results(f.read())
  changed = 0
  for key, (impl, why) in sorted(proposals.items()):
    now = TABLE[key].impl
    mark = 'same' if impl == now else 'FLIP'
    changed += impl != now
    print(f'{mark:4} {"/".join(key)}: table {now}, {path} says {impl} ({why})')
  print(f'{changed} entr{"y" if changed == 1 else "ies"} to change in pallas_kernels/dispatch.py')
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv))
