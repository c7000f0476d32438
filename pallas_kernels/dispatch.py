"""What `impl='auto'` runs: one table per (op, platform, case), each entry with its evidence.

`auto` means the fastest correct implementation we have measured (issue 16). Every public
op resolves `impl='auto'` here, through `choose`:

    choice = dispatch.choose('attention', 'causal', dtype=q.dtype, head_dim=Dh, q_len=T,
                             kv_len=S)
    choice.impl     # 'xla' | 'pallas' | 'cudnn' | 'splash'
    choice.reason   # the entry's evidence, or why it was refused and what ran instead

The table (`dispatch_table.TABLE`) gives each case an `Entry`: the implementation and the
measurement behind it (a results file and its verbatim rows, or `UNMEASURED` with the reason
for the default). Before an entry is used, `choose` checks that its implementation can run this
call (cuDNN's dtypes and head dims, splash's block multiples, the dtypes whose on-device
check our kernel has passed, reading the cache layout in a decode) and falls back
along `Entry.fallback`, then to 'xla', saying why.

Cases (the `op` 'attention' covers every attention entry point: the model's masked
attention for training, prefill, verification and decoding, `flash_attention`,
`decode_attention` and `tree_attention`):

  attention/causal     causal, bidirectional or causal sliding window, default positions
                       and T == S: what cuDNN and splash take without a mask array (also
                       the model's training forward, by its `index_mask`).
  attention/segments   packed documents by segment ids (default positions, T == S).
  attention/positions  per-token positions (block-causal, padding by negative positions,
                       T != S, bidirectional windows): a per-element rule, no mask array.
  attention/explicit   a dense boolean mask over many query rows (the model's training and
                       prefill: T x G > 512 rows per kv head, or no cache).
  attention/decode     few query rows per kv head (T x G <= 128) over a cache with per-row
                       lengths (decoding; small verification trees; + optional dense mask).
  attention/verify     128 < T x G <= 512 rows per kv head over a cache with a dense mask
                       (verifying a wide tree: 64 nodes at G 4 is 256 rows).
  attention/tree       `tree_attention`: tree nodes over a cache prefix, their K/V apart.
  delta_rule/chunked   the chunked (training / prefill) delta rule.
  sampling/top_p       fused temperature + top-p (+ min-p) sampling.
  sampling/top_k       fused temperature + top-k sampling (no top-p).
  spec_verify/chain    chain verification.   spec_verify/tree   tree verification.

Refreshing from a GPU run: `python -m pallas_kernels.dispatch benchmarks/results/kernels.md`
reads a `benchmarks.kernels` results file, says per case which implementation its rows
make the winner (`dispatch_refresh.proposals_from_results`) and prints where that differs
from the table.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import jax
import jax.numpy as jnp

from pallas_kernels import common
from pallas_kernels import dispatch_refresh
from pallas_kernels import dispatch_table

# cuDNN flash attention (jax/_src/cudnn/fused_attention_stablehlo.py, check_layout and
# check_is_flash_attention): fp16/bf16 (fp8 aside), head dim a multiple of 8 and <= 256 on
# Hopper and later (<= 128 before), even T and S when a mask (bias) is trained through.
CUDNN_DTYPES = ('bfloat16', 'float16')
SPLASH_BLOCK = 128  # splash's default block sizes: T and S multiples of this


@dataclasses.dataclass(frozen=True)
class Choice:
  impl: str
  entry: dispatch_table.Entry
  reason: str


# --- can this implementation run this call? ---


# Our Hopper kernels (flash_attention/hopper.py, decode_attention/hopper.py; kept here so
# that this module does not import the kernels): their dtypes and head dims.
HOPPER_DTYPES = ('bfloat16', 'float16')
HOPPER_HEAD_DIMS = (64, 128, 256)  # flash (the causal case)
HOPPER_DECODE_HEAD_DIMS = (64, 128)  # decode: at 256 its float32 partials do not fit


def _compute_capability() -> float:
  """The first device's CUDA compute capability; 9.0 off-GPU (the measured H100/H200)."""
  try:
    cc = getattr(jax.devices()[0], 'compute_capability', None)
    if cc is not None:
      return float(cc)
  except Exception:  # pylint: disable=broad-except
    pass
  return 9.0


def _cuda_max_head_dim() -> int:
  """256 on Hopper and later, 128 before (cuDNN's rule); 256 off-GPU (the measured H100)."""
  return 256 if _compute_capability() >= 9.0 else 128


def refusal(impl: str, entry: dispatch_table.Entry, *, platform: str, dtype: Any = None,
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
  if impl == 'mosaic':  # our Hopper kernels: flash (the causal case), decode (and verify)
    if platform != 'gpu':
      return f'our Hopper kernel needs an NVIDIA GPU of compute capability 9.0+ ({platform})'
    if _compute_capability() < 9.0:
      return (f'our Hopper kernel needs compute capability 9.0+ (this GPU: '
              f'{_compute_capability()})')
    if case not in ('causal', 'decode', 'verify'):
      return f'our Hopper kernels take the causal, decode and verify cases only, not {case!r}'
    if name is not None and name not in HOPPER_DTYPES:
      return f'our Hopper kernel takes {"/".join(HOPPER_DTYPES)}, not {name}'
    dims = HOPPER_HEAD_DIMS if case == 'causal' else HOPPER_DECODE_HEAD_DIMS
    if head_dim is not None and head_dim not in dims:
      return f'our Hopper {case} kernel takes head dims {dims}, not {head_dim}'
    if name is not None and name not in entry.checked:
      return (f'our Hopper kernel has not passed its on-device check in {name} '
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
  cases = dispatch_table.CASES
  if op not in cases or case not in cases[op]:
    raise ValueError(f'Unknown dispatch case {op}/{case}; cases: {cases}.')
  platform = platform or common.platform()
  entry = dispatch_table.TABLE.get((op, platform, case),
                                  dispatch_table.TABLE[(op, 'cpu', case)])
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


if __name__ == '__main__':
  sys.exit(dispatch_refresh.main(sys.argv))
