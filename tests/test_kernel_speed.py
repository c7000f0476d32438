"""The GPU comparison tables of `benchmarks.kernels` (`benchmarks/kernel_speed.py`) built on
CPU with the timer faked: every row has its header's columns, ratios come out of the times,
and a comparison that cannot run on this machine gives its error in its cells, not a crash.
The kernels themselves are never called here (the fake timer does not call them): their
correctness is `benchmarks.kernel_checks`' and the kernel tests'."""

import jax.numpy as jnp
import pytest

from benchmarks import kernel_speed

BENCHES = [
    (kernel_speed.bench_flash, kernel_speed.FLASH_HEADER),
    (kernel_speed.bench_tree, kernel_speed.TREE_HEADER),
    (kernel_speed.bench_dense_mask_flash, kernel_speed.DENSE_HEADER),
    (kernel_speed.bench_decode, kernel_speed.DECODE_HEADER),
    (kernel_speed.bench_hopper_flash, kernel_speed.HOPPER_FLASH_HEADER),
    (kernel_speed.bench_hopper_decode, kernel_speed.HOPPER_DECODE_HEADER),
    (kernel_speed.bench_hopper_tree, kernel_speed.HOPPER_TREE_HEADER),
    (kernel_speed.bench_verify, kernel_speed.VERIFY_HEADER),
]


@pytest.fixture
def fake_timer(monkeypatch):
  """Every timing takes 1 ms (the timed function is recorded, never called); inputs are tiny
  arrays of the right rank (the verification rows' real inputs over a vocabulary of 64: at
  its 128256 their generation cost about 30 s of this module's CPU time)."""
  calls = []
  monkeypatch.setattr(kernel_speed, 'VERIFY_V', 64)

  def time_call(fn, repeats=10):
    calls.append(fn)
    return 1e-3
  monkeypatch.setattr(kernel_speed, 'time_call', time_call)
  monkeypatch.setattr(kernel_speed, 'normal',
                      lambda seed, shape, dtype=None: jnp.zeros((1,) * len(shape)))
  return calls


@pytest.mark.parametrize('bench,header', BENCHES, ids=[b.__name__ for b, _ in BENCHES])
def test_rows_have_their_headers_columns(fake_timer, bench, header):
  rows = bench(True)
  assert rows and fake_timer
  for row in rows:
    assert len(row) == len(header), (bench.__name__, row)
  ratios = [i for i, h in enumerate(header)
            if 'speed' in h or '/cuDNN' in h or 'cuDNN /' in h or h == 'reference / fused']
  assert ratios
  for row in rows:
    for i in ratios:  # equal fake times: every "peer / ours" ratio is 1
      assert row[i] == pytest.approx(1.0), (header[i], row)


def test_a_comparison_that_fails_gives_its_error(monkeypatch):
  def time_call(fn, repeats=10):
    raise RuntimeError('no GPU here')
  monkeypatch.setattr(kernel_speed, 'time_call', time_call)
  monkeypatch.setattr(kernel_speed, 'normal',
                      lambda seed, shape, dtype=None: jnp.zeros((1,) * len(shape)))
  rows = kernel_speed.bench_hopper_flash(True)
  header = kernel_speed.HOPPER_FLASH_HEADER
  assert all(len(r) == len(header) for r in rows)
  assert all('no GPU here' in str(r[header.index('Hopper fwd')]) for r in rows)
  assert all(r[header.index('Hopper/cuDNN speed')] == 'n/a' for r in rows)


@pytest.mark.parametrize('Dh', [64, 128])
def test_the_jax_mosaic_peer_lowers_for_cuda(monkeypatch, Dh):
  """The Hopper flash table's peer, jax's own Mosaic GPU attention, is called as it accepts
  (float16, causal, its tiling): it lowers for CUDA from this CPU (its CUDA runtime check
  faked at 13.0, the device's; it refuses 12.8.0-12.9.1 for causal masks)."""
  import types  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from jax import export  # pylint: disable=g-import-not-at-top
  from jax.experimental.pallas.ops.gpu import attention_mgpu  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(attention_mgpu, 'cuda_versions',
                      types.SimpleNamespace(cuda_runtime_get_version=lambda: 13000))
  sd = jax.ShapeDtypeStruct((2, 2048, 2048 // Dh, Dh), jnp.float16)
  text = export.export(jax.jit(kernel_speed._jax_mosaic_causal), platforms=['cuda'])(
      sd, sd, sd).mlir_module()
  assert 'mosaic_gpu' in text


def test_the_hopper_stage_writes_its_own_file_and_a_failing_table_costs_only_itself(
    fake_timer, tmp_path, monkeypatch):
  """`benchmarks.kernels --quick --only=hopper --out=hopper` (the suite's `hopper` stage)
  with the platform faked as a GPU, the timer faked and the checks replaced: it writes
  kernels_hopper.md with the Hopper checks and tables, each written as it finishes, so a
  table that raises leaves the others in the file; `dispatch_refresh` reads that file."""
  from benchmarks import common, kernel_checks, kernels  # pylint: disable=g-import-not-at-top
  from pallas_kernels import common as kcommon  # pylint: disable=g-import-not-at-top
  from pallas_kernels import dispatch_refresh  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(common, 'RESULTS_DIR', str(tmp_path))
  monkeypatch.setattr(kcommon, 'platform', lambda: 'gpu')
  monkeypatch.setattr(kernel_checks, 'hopper_checks', lambda small: [
      [name, 'mosaic', 's', 'bfloat16', 0.001, 0.03, True]
      for name in ('hopper flash fwd', 'hopper decode (cache)', 'hopper verify (cache)')])

  def broken(quick):
    raise RuntimeError('decode table broke')
  monkeypatch.setattr(kernel_speed, 'bench_hopper_decode', broken)
  path = kernels.main(['--quick', '--only=hopper', '--out=hopper'])
  assert path.endswith('kernels_hopper.md')
  text = open(path).read()
  for heading in ('Correctness of the Hopper kernels on gpu (all pass)',
                  'Hopper flash attention', 'hopper (hopper_decode): failed',
                  'Hopper tree verification'):
    assert f'## {heading}' in text, heading
  assert 'decode table broke' in text and '## Flash attention, causal' not in text
  proposals = dispatch_refresh.proposals_from_results(text)
  assert {('attention', 'gpu', 'causal'), ('attention', 'gpu', 'verify')} <= set(proposals)


def test_the_verify_section_is_written_and_read_by_the_dispatch_refresh(
    fake_timer, tmp_path, monkeypatch):
  """`benchmarks.kernels --quick --only=check,verify` with the platform faked as a GPU, the
  timer faked (equal times: every ratio 1) and the checks replaced: the file has the fused
  verification table under the heading `dispatch_refresh` reads, and both spec_verify cases
  get a proposal (the kernel: it is no slower on any row and its checks passed)."""
  from benchmarks import common, kernel_checks, kernels  # pylint: disable=g-import-not-at-top
  from pallas_kernels import common as kcommon  # pylint: disable=g-import-not-at-top
  from pallas_kernels import dispatch_refresh  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(common, 'RESULTS_DIR', str(tmp_path))
  monkeypatch.setattr(kcommon, 'platform', lambda: 'gpu')
  monkeypatch.setattr(kernel_checks, 'checks', lambda impls, small: [
      [name, 'pallas', 's', 'float32', 1e-8, 1e-4, True]
      for name in ('chain verify (iid)', 'chain verify (traversal)',
                   'verify tree (deterministic)', 'verify tree (traversal)')])
  text = open(kernels.main(['--quick', '--only=check,verify', '--out=v'])).read()
  assert '## Fused verification vs the reference' in text
  rows = dispatch_refresh.parse_results(text)
  table = next(r for h, r in rows.items() if h.startswith('Fused verification'))
  assert {(r['case'], r['mode']) for r in table} == {
      ('chain', 'iid'), ('chain', 'traversal'), ('tree', 'deterministic'), ('tree', 'traversal')}
  proposals = dispatch_refresh.proposals_from_results(text)
  assert proposals[('spec_verify', 'gpu', 'chain')][0] == 'pallas'
  assert proposals[('spec_verify', 'gpu', 'tree')][0] == 'pallas'
