"""The table `impl='auto'` reads: one `Entry` per (op, platform, case), each with its evidence.

An `Entry` names the implementation and the measurement behind it: a results file
(`KERNELS_MD`, written by `python -m benchmarks.kernels`) and the verbatim rows that back it
(tested to be in the file), or `UNMEASURED` with the reason for the default. The cases
(`CASES`) are described in `pallas_kernels/dispatch.py`, whose `choose` reads this table and
refuses an entry that cannot run a given call; `pallas_kernels/dispatch_refresh.py` says
which entries a new results file would change. Every CPU entry is XLA.
"""

from __future__ import annotations

import dataclasses

IMPLS = ('xla', 'pallas', 'cudnn', 'splash')
PLATFORMS = ('cpu', 'gpu', 'tpu')
CASES = {
    'attention': ('causal', 'segments', 'positions', 'explicit', 'decode', 'verify', 'tree'),
    'delta_rule': ('chunked',),
    'sampling': ('top_p', 'top_k'),
    'spec_verify': ('chain', 'tree'),
}
# Which implementations each op has (a table entry must name one of these).
OP_IMPLS = {
    'attention': ('xla', 'pallas', 'cudnn', 'splash', 'mosaic'),
    'delta_rule': ('xla', 'pallas'),
    'sampling': ('xla', 'pallas'),
    'spec_verify': ('xla', 'pallas'),
}
UNMEASURED = 'unmeasured: default'
KERNELS_MD = 'benchmarks/results/kernels.md'


@dataclasses.dataclass(frozen=True)
class Entry:
  """impl: what 'auto' runs. source: a results file (relative to the repo root) or
  UNMEASURED. rows: verbatim excerpts of that file's rows backing the entry. why: the
  reading of those rows (or the reason for the default). checked: for 'pallas' and 'mosaic'
  (our Hopper kernels), the dtypes whose on-device check passed (other dtypes fall back).
  fallback: what runs when `impl` cannot run this call (then 'xla'). cache_layout: our
  kernel's path that reads the decoding cache's layout in place has passed its on-device
  check (else a decode from that layout does not use it). flip: what would change this
  entry."""
  impl: str
  source: str
  why: str
  rows: tuple[str, ...] = ()
  checked: tuple[str, ...] = ()
  fallback: str = 'xla'
  cache_layout: bool = False
  flip: str = ''


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
        why='the nearest measurement: given the same dense mask (64 tree nodes over 2048 '
            'slots, B 8) cuDNN took 0.2915 ms, our Triton decode kernel 0.5126 ms; our flash '
            "kernel with a dense mask, what 'pallas' runs in this case, was not timed.",
        flip='our flash kernel with a dense mask >= 1x cuDNN on the same mask, forward and '
             "forward+backward (the flash section's dense-mask table, not yet run)."),
    ('attention', 'gpu', 'decode'): Entry(
        'pallas', KERNELS_MD, rows=_DECODE_ROWS, checked=('bfloat16',),
        why='our split-K kernel read K/V at 1.38x (B 8) and 2.24x (B 32) XLA\'s speed, context '
            '4096, and passed its bf16 check; cuDNN (kv_seqlen padding) was not measured '
            'for decoding. fp32: ' + _FP32_FAILED + '.',
        flip='cuDNN with key_value_seq_lengths, or XLA over the cache layout, measured faster.'),
    ('attention', 'gpu', 'verify'): Entry(
        'cudnn', KERNELS_MD, rows=(_TREE_ROW,), fallback='pallas', checked=('bfloat16',),
        why='the tree row is this case (64 nodes x G 4 = 256 rows per kv head over 2048 '
            'slots, B 8): given the same dense mask cuDNN took 0.2915 ms, our Triton decode '
            'kernel 0.5126 ms (the pallas fallback runs the flash kernel with that mask, not '
            'timed there).',
        flip="our Hopper decode kernel ('mosaic': row blocks, mask tiles only past the "
             'prefix) >= 1x cuDNN with the same mask on every row of the Hopper tree table, '
             'after its check (issue 16 goal: 1.5x).'),
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
    ('attention', 'tpu', 'verify'): Entry(
        'xla', UNMEASURED, why=_TPU_UNCHECKED + '.',
        flip='our TPU kernels checked and timed on a TPU.'),
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


def table_markdown() -> str:
  """TABLE as a markdown table (docs/kernels.md quotes it)."""
  lines = ['| op | case | gpu | tpu | cpu |', '|---|---|---|---|---|']
  for op, cases in CASES.items():
    for case in cases:
      cells = [TABLE[(op, p, case)].impl for p in ('gpu', 'tpu', 'cpu')]
      lines.append(f'| {op} | {case} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)

