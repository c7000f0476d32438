"""Pallas kernels: on-device correctness, then speed against the best peer, side by side.

  python -m benchmarks.kernels                   # GPU (or TPU): checks + every measurement
  python -m benchmarks.kernels --only=check,flash --quick      # a subset, fewer shapes
  python -m benchmarks.kernels --cpu_status      # CPU: interpret-mode checks + what remains

Sections (each prints its table as it finishes; all go to benchmarks/results/kernels.md, the
CPU interpret-mode status to kernels_cpu.md):
  check     every kernel against its XLA reference on this device (bf16 and fp32).
  flash     flash attention forward (and forward+backward) vs cuDNN
            (`jax.nn.dot_product_attention(implementation='cudnn')`) and XLA; T 1k-16k, Dh 64
            and 128, bf16, causal; TFLOP/s and fraction of the device's bf16 peak; then the
            explicit case: a dense block-causal mask, ours vs cuDNN given the same mask.
  tree      tree verification (64 nodes over a 2k/8k prefix) vs cuDNN given the same mask.
  decode    decode attention, B 8/32, context 4k/16k: GB/s of K/V read and fraction of HBM peak.
  delta     chunked DeltaProduct forward+backward vs flash-linear-attention's Triton
            `chunk_gated_delta_product` (skipped with a note when fla or our kernel is missing).
  sampling  fused top-k/top-p/min-p sampling vs sort-based top-p (the XLA reference), V 32k-256k,
            B 1-64.
  hopper    last, and the only section that runs our Hopper (Mosaic GPU) kernels: their checks
            (flash forward with the Triton and the Hopper backward, decode on both layouts and
            with a mask, a wide verification tree), then the flash section's comparison for
            them (forward, and forward+backward with either backward, vs cuDNN), the decode
            section's (GB/s on both layouts vs XLA on the cache layout) and the tree
            section's (the decode kernel verifying 64 nodes, 256 rows per kv head, vs cuDNN
            with the same mask): a kernel that hangs costs only this section.
Goals (issue 7): flash >= 0.8x cuDNN; tree >= 2x cuDNN; decode >= 75% of HBM peak; delta
>= 0.8x fla; sampling >= 5x the sort.

This file runs the sections and writes the tables; the checks are in
`benchmarks/kernel_checks.py`, the measurements in `benchmarks/kernel_speed.py`.
"""

from __future__ import annotations

import argparse
import time
import traceback
from typing import Callable

from benchmarks import common
from benchmarks import kernel_checks
from benchmarks import kernel_speed
from pallas_kernels import common as kcommon

SECTIONS = ('check', 'flash', 'tree', 'decode', 'delta', 'sampling', 'verify', 'hopper')


REMAINING = """\
Remaining on a GPU (H100/H200), all produced by `python -m benchmarks.kernels` in one run
(the Hopper section alone: `--only=hopper --out=hopper`, the suite's `hopper` stage):
- on-device correctness of every kernel (the `check` table: Triton lowering compiled to PTX
  and run, bf16 and fp32) — until then `attention_impl='auto'` stays on XLA;
- flash attention forward (and forward+backward) TFLOP/s vs cuDNN and XLA, T 1k-16k,
  Dh 64/128, bf16, causal (goal >= 0.8x cuDNN, >= 450 TFLOP/s at long T), for the Triton
  kernel and the Hopper one (`impl='mosaic'`, Mosaic GPU: TMA, wgmma, a producer
  warpgroup; checked here only in jax's GPU interpret mode and by lowering for CUDA), and
  the Hopper forward vs jax's own Mosaic GPU kernel (`attention_mgpu`, float16);
- flash attention with a dense mask (the explicit case) vs cuDNN with the same mask;
- tree attention vs cuDNN with the same mask (goal >= 2x; issue 16: 1.5x), for the Triton
  kernel and the Hopper decode kernel (the verify case: 256 rows per kv head);
- decode attention GB/s at B 8/32, context 4k/16k (goal >= 75% of HBM peak), for the Triton
  kernel and the Hopper one (`impl='mosaic'`, both cache layouts);
- chunked DeltaProduct forward+backward vs fla `chunk_gated_delta_product` at T 4k/16k
  (goal >= 0.8x; needs `pip install flash-linear-attention`);
- fused sampling vs sort-based top-p at V 32k-256k, B 1-64 (goal >= 5x);
- block-size tuning (BlockSizes, HopperConfig) for the above: `python -m benchmarks.kernel_sweep`
  (ready);
- fused chain/tree verification (every mode with a kernel, Traversal Verification included) vs
  the jnp reference `auto` runs, V 128256, B 1 and 64 (the `verify` section).
Remaining on a TPU: the same `check` with the Mosaic kernels (`impl='pallas'` there; fused
verification has no TPU kernel yet)."""


def _table(heading: str, caption: str, header: list[str], rows: list[list]) -> str:
  """A section of the results file: '## heading', an optional caption, the table."""
  return (f'## {heading}\n\n' + (f'{caption}\n\n' if caption else '')
          + common.markdown_table(header, rows))


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--only', default=','.join(SECTIONS), help=f'comma list of {SECTIONS}')
  ap.add_argument('--quick', action='store_true', help='fewer shapes per section')
  ap.add_argument('--out', default='',
                  help="suffix of the results file (kernels_<out>.md), e.g. 'hopper' for a "
                       'run of --only=hopper beside the full file')
  ap.add_argument('--cpu_status', action='store_true',
                  help='interpret-mode checks on CPU (both kernel families) and the list of '
                       'what remains to measure on hardware')
  args = ap.parse_args(argv)
  only = set(args.only.split(','))
  gpu_name = 'kernels' + (f'_{args.out}' if args.out else '')
  here = kcommon.platform()
  sections = []
  check_header = ['kernel', 'impl', 'shape', 'dtype', 'rel. error', 'tol', 'ok']
  if args.cpu_status or here == 'cpu':
    t0 = time.perf_counter()
    rows = (kernel_checks.checks(('pallas_gpu', 'pallas_tpu'), small=True)
            + kernel_checks.hopper_checks(small=True))
    sections.append(
        '## Correctness in interpret mode on CPU\n\nEvery kernel of both families against '
        'its reference (small shapes; `interpret=True` for the Triton-style GPU kernels, '
        '`pltpu.InterpretParams()` for the Mosaic TPU kernels). The test suite '
        '(`tests/pallas_kernels/`) covers more cases: GQA ratios, lengths that are not '
        'block multiples, padding and fully masked rows, gradients, the model with '
        f"`attention_impl='pallas'`. ({time.perf_counter() - t0:.0f}s)\n\n"
        + common.markdown_table(check_header, rows))
    sections.append('## Not measured yet\n\n' + REMAINING)
  else:
    def run_section(name: str, make: Callable[[], str]) -> None:
      """Runs one section; a crash becomes a note, and the file is rewritten after each
      section so that a run cut short keeps what it measured."""
      if name not in only:
        return
      print(name, flush=True)
      try:
        sections.append(make())
      except Exception as e:  # pylint: disable=broad-except
        traceback.print_exc()
        sections.append(f'## {name} ({make.__name__}): failed\n\n`{type(e).__name__}: {e}`'
                        [:2000])
      common.write_results(gpu_name, 'Pallas kernels', '\n\n'.join(sections))

    def section_check() -> str:
      rows = kernel_checks.checks(('pallas',), small=False)
      ok = all(r[-1] for r in rows)
      return (f'## Correctness on {here} ({"all pass" if ok else "FAILURES"})\n\n'
              + common.markdown_table(check_header, rows))

    def section_flash() -> str:
      return (
          _table('Flash attention, causal, bf16 (TFLOP/s; backward counted as 2.5x forward)',
                 '', kernel_speed.FLASH_HEADER, kernel_speed.bench_flash(args.quick))
          + '\n\n' + _table(
              'Dense-mask flash attention (the explicit case), bf16, H 16, Dh 128 (ms)',
              'A block-causal mask (blocks of 16, as block-diffusion training builds it) as a '
              'dense [B, T, T] array: our flash kernel reads it per tile and skips empty '
              'tiles; cuDNN gets the same mask.',
              kernel_speed.DENSE_HEADER, kernel_speed.bench_dense_mask_flash(args.quick)))

    def section_tree() -> str:
      return _table(
          'Tree verification attention, bf16, H 32, K 8, Dh 128 (ms)',
          '`ours` gets the tree K/V and the 64 x 64 ancestor mask apart from the cache; `ours, '
          'dense` and cuDNN get the same dense [N, S] mask over a cache holding the tree.',
          kernel_speed.TREE_HEADER, kernel_speed.bench_tree(args.quick))

    def section_decode() -> str:
      return _table('Decode attention, bf16, H 32, K 8, Dh 128 (GB/s of K/V read)', '',
                    kernel_speed.DECODE_HEADER, kernel_speed.bench_decode(args.quick))

    def section_delta() -> str:
      rows, note = kernel_speed.bench_delta(args.quick)
      return _table('Chunked gated DeltaProduct (n_h 2) forward+backward, bf16, B 1, H 16, '
                    'Dk 128, Dv 256 (ms)', note,
                    ['T', 'sub-steps', 'ours', 'XLA chunked', 'fla', 'fla / ours'], rows)

    def section_sampling() -> str:
      return _table(
          'Fused sampling (temperature 0.8, top-p 0.95) vs the sort (us)',
          'fused: one program a row (`sampling/gpu.py`); split: each row over many programs, '
          'about 512 in all, one call a pass (`sampling/split.py`, `parts=0`).',
          ['V', 'B', 'fused', 'sort-based', 'sort / fused', 'split', 'sort / split'],
          kernel_speed.bench_sampling(args.quick))

    def section_verify() -> str:
      return _table(
          'Fused verification vs the reference, float32 (us)',
          "`fused`: `spec_verify.chain_verify / tree_verify(impl='pallas')` (`spec_verify/gpu.py`, "
          "one program a row); `reference`: the jnp rules `'auto'` runs today.",
          kernel_speed.VERIFY_HEADER, kernel_speed.bench_verify(args.quick))

    # The Hopper section: its checks and each of its tables run (and are written) one at a
    # time, so that a table that fails or runs past a time limit costs only itself.
    def hopper_check() -> str:
      rows = kernel_checks.hopper_checks(small=False)
      ok = all(r[-1] for r in rows)
      return (f'## Correctness of the Hopper kernels on {here} '
              f'({"all pass" if ok else "FAILURES"})\n\n'
              + common.markdown_table(check_header, rows))

    def hopper_flash() -> str:
      return _table(
          'Hopper flash attention, causal, bf16 (TFLOP/s; backward counted as 2.5x forward)',
          "Our Mosaic GPU kernel (`impl='mosaic'`: TMA, wgmma, a producer warpgroup); `Hopper "
          'fwd+bwd` with the Triton backward (its default), `(Hopper bwd)` with '
          "`HopperConfig(backward=HopperBwdConfig())`; `jax Mosaic` is jax's own Mosaic GPU "
          'kernel (`jax.experimental.pallas.ops.gpu.attention_mgpu`, forward only: its causal '
          "backward is not implemented; given float16, which jax 0.10's kernel needs).",
          kernel_speed.HOPPER_FLASH_HEADER, kernel_speed.bench_hopper_flash(args.quick))

    def hopper_decode() -> str:
      return _table(
          'Hopper decode attention, bf16, H 32, K 8, Dh 128 (GB/s of K/V read)',
          "Our Mosaic GPU kernel (`impl='mosaic'`) on [B, S, K, Dh] and on the decoding "
          "cache's layout (k [B, K, S, Dh], v [B, K, Dh, S]) read in place, against XLA on the "
          'cache layout.',
          kernel_speed.HOPPER_DECODE_HEADER, kernel_speed.bench_hopper_decode(args.quick))

    def hopper_tree() -> str:
      return _table(
          'Hopper tree verification, bf16, H 32, K 8, Dh 128 (ms)',
          "Our Mosaic GPU decode kernel (`impl='mosaic'`) verifying 64 tree nodes (256 query "
          'rows per kv head: two row blocks) over a cache already holding them; it reads the '
          'mask only past the prefix every node sees. cuDNN gets the same dense [N, S] mask. '
          "`cuDNN / Hopper` takes the cache-layout time (the model's path) against cuDNN on "
          "[B, S, K, Dh]; `cuDNN from the cache layout` is what `auto` runs in the model's "
          "verify case (decode_attention(impl='cudnn') copies the cache to [B, S, K, Dh] "
          'first), `XLA (cache layout)` the reference reading it in place.',
          kernel_speed.HOPPER_TREE_HEADER, kernel_speed.bench_hopper_tree(args.quick))

    # The quick sections first, so that a run cut short by a time limit loses the least.
    run_section('check', section_check)
    run_section('decode', section_decode)
    run_section('tree', section_tree)
    run_section('sampling', section_sampling)
    run_section('delta', section_delta)
    run_section('flash', section_flash)
    run_section('verify', section_verify)  # after flash: the goals come first
    for make in (hopper_check, hopper_flash, hopper_decode, hopper_tree):
      run_section('hopper', make)
  body = '\n\n'.join(sections)
  name = 'kernels_cpu' if args.cpu_status or here == 'cpu' else gpu_name
  path = common.write_results(name, 'Pallas kernels', body)
  print(f'wrote {path}')
  return path


if __name__ == '__main__':
  try:
    main()
  except Exception:  # pylint: disable=broad-except
    traceback.print_exc()
    raise
