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
    (kernel_speed.bench_decode, kernel_speed.DECODE_HEADER),
    (kernel_speed.bench_hopper_flash, kernel_speed.HOPPER_FLASH_HEADER),
    (kernel_speed.bench_hopper_decode, kernel_speed.HOPPER_DECODE_HEADER),
    (kernel_speed.bench_hopper_tree, kernel_speed.HOPPER_TREE_HEADER),
]


@pytest.fixture
def fake_timer(monkeypatch):
  """Every timing takes 1 ms (the timed function is recorded, never called); inputs are tiny
  arrays of the right rank."""
  calls = []

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
  ratios = [i for i, h in enumerate(header) if 'speed' in h or '/cuDNN' in h or 'cuDNN /' in h]
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
