"""The Hopper flash attention kernel (Mosaic GPU: TMA, wgmma, a producer warpgroup).

On CPU it runs in jax's GPU interpret mode, where the three warpgroups are threads and the
barriers are checked (a phase completed twice before a waiter saw it, or left unseen at
exit, is an error), so these tests exercise the pipeline's synchronisation as well as the
arithmetic. The GPU's own path (P from registers, register layouts) is checked by lowering
for CUDA here and on the device by `benchmarks.kernels` (`hopper flash` rows).
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from pallas_kernels import common, dispatch, dispatch_refresh, dispatch_table
from pallas_kernels.flash_attention import HopperConfig, flash_attention
from pallas_kernels.flash_attention import hopper

BF16, F32 = jnp.bfloat16, jnp.float32


def _qkv(B, T, S, H, K, Dh, seed=0, dtype=BF16):
  ks = jax.random.split(jax.random.key(seed), 3)
  return (jax.random.normal(ks[0], (B, T, H, Dh), F32).astype(dtype),
          jax.random.normal(ks[1], (B, S, K, Dh), F32).astype(dtype),
          jax.random.normal(ks[2], (B, S, K, Dh), F32).astype(dtype))


def _reference(q, k, v, *, causal, window, t_real, s_real, scale):
  """(o, lse base 2) in float64 numpy, written here from the definition."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  G = q.shape[2] // k.shape[2]
  k, v = np.repeat(k, G, axis=2), np.repeat(v, G, axis=2)
  s = np.einsum('bthd,bshd->bhts', q, k) * scale
  r = np.arange(q.shape[1])[:, None] + (s_real - t_real)  # query positions
  c = np.arange(k.shape[1])[None]
  visible = c < s_real
  if causal:
    visible = visible & (c <= r)
  if window:
    visible = visible & (c > r - window)
  s = np.where(visible, s, -np.inf)
  m = s.max(-1, keepdims=True)
  p = np.exp(s - m)
  lse = (np.log(p.sum(-1)) + m[..., 0]) / np.log(2)
  o = np.einsum('bhts,bshd->bthd', p / p.sum(-1, keepdims=True), v)
  return o, lse


# (causal, window, T, t_real, S, s_real, H, K, Dh, block_kv, stages, pingpong)
CASES = [
    (True, 0, 128, 128, 128, 128, 2, 1, 64, 64, 2, False),    # square, one pair of blocks
    (True, 0, 128, 100, 256, 200, 4, 2, 64, 64, 2, False),    # the last T of S, padding, GQA
    (True, 0, 128, 100, 256, 200, 4, 2, 64, 64, 2, True),     # the same, ping-pong
    (False, 0, 128, 77, 192, 130, 2, 2, 64, 64, 3, False),    # bidirectional, 3 stages
    (True, 50, 256, 250, 256, 250, 2, 1, 64, 64, 2, False),   # window: tiles skipped below
    (True, 50, 256, 250, 256, 250, 2, 1, 64, 64, 3, True),    # the same, ping-pong
    (True, 1, 128, 128, 128, 128, 2, 1, 64, 64, 2, False),    # window 1: each row sees itself
    (True, 0, 128, 128, 256, 256, 2, 1, 128, 128, 2, False),  # Dh 128, the default K/V tile
]


@pytest.mark.parametrize('causal,window,T,t_real,S,s_real,H,K,Dh,block_kv,stages,pingpong',
                         CASES)
def test_forward_equals_the_definition(causal, window, T, t_real, S, s_real, H, K, Dh,
                                       block_kv, stages, pingpong):
  q, k, v = _qkv(2, T, S, H, K, Dh)
  scale = Dh ** -0.5
  o, lse = hopper.forward(q, k, v, causal=causal, window=window, scale=scale, t_real=t_real,
                          s_real=s_real, interpret=True,
                          config=HopperConfig(block_kv=block_kv, stages=stages, p_in_smem=True,
                                              pingpong=pingpong))
  want_o, want_lse = _reference(q, k, v, causal=causal, window=window, t_real=t_real,
                                s_real=s_real, scale=scale)
  got_o = np.asarray(o, np.float64)[:, :t_real]
  want_o = want_o[:, :t_real]
  assert o.shape == q.shape and o.dtype == q.dtype and lse.shape == (2, H, T)
  # bf16 output: half an ulp of values of order 1 is 2^-9; the sums are float32.
  assert np.abs(got_o - want_o).max() < 1e-2 * max(1.0, np.abs(want_o).max())
  np.testing.assert_allclose(np.asarray(lse)[..., :t_real], want_lse[..., :t_real],
                             atol=1e-4, rtol=1e-5)
  if window == 1:  # exact: a single visible key, probability 1
    np.testing.assert_array_equal(np.asarray(o)[:, :t_real],
                                  np.asarray(jnp.repeat(v, H // K, 2))[:, :t_real])


@pytest.mark.parametrize('causal,window', [(True, 0), (True, 40), (False, 0)])
def test_flash_attention_mosaic_values_and_gradients(causal, window):
  """impl='mosaic' (Hopper forward, Triton backward over its lse) against impl='xla', on a
  length that is not a block multiple."""
  q, k, v = _qkv(1, 100, 100, 4, 2, 64, seed=1)
  do = jax.random.normal(jax.random.key(9), q.shape, F32)

  def loss(impl):
    return lambda q, k, v: (flash_attention(q, k, v, causal=causal, window=window, impl=impl)
                            .astype(F32) * do).sum()
  got = jax.jit(jax.value_and_grad(loss('mosaic'), (0, 1, 2)))(q, k, v)
  want = jax.jit(jax.value_and_grad(loss('xla'), (0, 1, 2)))(q, k, v)
  assert abs(float(got[0]) - float(want[0])) < 2e-2 * abs(float(want[0])) + 0.5
  for a, b in zip(got[1], want[1]):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    assert np.abs(a - b).max() < 3e-2 * np.abs(b).max()


@pytest.mark.parametrize('Dh,p_in_smem,window,pingpong', [
    (64, False, 0, False), (128, False, 300, False), (256, False, 0, False),
    (128, True, 0, False), (128, False, 0, True)])
def test_lowers_for_cuda(Dh, p_in_smem, window, pingpong):
  """The GPU path (registers for P, Mosaic register layouts, no interpreter) lowers to a
  Mosaic GPU custom call on this CPU-only machine."""
  cfg = HopperConfig(p_in_smem=p_in_smem, pingpong=pingpong)
  f = lambda q, k, v: hopper.forward(q, k, v, causal=True, window=window, scale=0.1,
                                     t_real=1000, s_real=1000, config=cfg)
  sd = lambda *s: jax.ShapeDtypeStruct(s, BF16)
  text = export.export(jax.jit(f), platforms=['cuda'])(
      sd(2, 1024, 8, Dh), sd(2, 1024, 2, Dh), sd(2, 1024, 2, Dh)).mlir_module()
  assert 'mosaic_gpu' in text


def test_flash_attention_mosaic_lowers_with_its_triton_backward():
  if tuple(int(x) for x in jax.__version__.split('.')[:2]) >= (0, 11):
    pytest.skip('jax >= 0.11 lowers Triton kernels only with a GPU present')
  q, k, v = (jax.ShapeDtypeStruct(s, BF16) for s in ((1, 256, 4, 128), (1, 256, 2, 128),
                                                       (1, 256, 2, 128)))
  grad = jax.grad(lambda q, k, v: flash_attention(q, k, v, impl='mosaic').astype(F32).sum(),
                  (0, 1, 2))
  with common.compile_for('gpu'):
    text = export.export(jax.jit(grad), platforms=['cuda'], disabled_checks=[
        export.DisabledSafetyCheck.custom_call('__gpu$xla.gpu.triton')])(q, k, v).mlir_module()
  assert 'mosaic_gpu' in text and text.count('__gpu$xla.gpu.triton') >= 2  # dq, dk/dv


@pytest.mark.parametrize('kw,words', [
    (dict(dtype=F32), 'dtype float32'),
    (dict(Dh=96), 'head dim 96'),
    (dict(segments=True), "mask case 'segments'"),
])
def test_flash_attention_mosaic_refuses_what_it_cannot_run(kw, words):
  Dh = kw.get('Dh', 64)
  q, k, v = _qkv(1, 64, 64, 2, 1, Dh, dtype=kw.get('dtype', BF16))
  seg = dict(q_segment_ids_BxT=jnp.zeros((1, 64), jnp.int32),
             kv_segment_ids_BxS=jnp.zeros((1, 64), jnp.int32)) if kw.get('segments') else {}
  with pytest.raises(ValueError, match=words):
    flash_attention(q, k, v, impl='mosaic', **seg)


def test_forward_checks_its_arguments():
  q, k, v = _qkv(1, 128, 128, 2, 1, 64)
  run = lambda **kw: hopper.forward(q, k, v, causal=True, scale=0.1, t_real=128, s_real=128,
                                    **kw)
  with pytest.raises(ValueError, match='p_in_smem'):
    run(interpret=True)
  with pytest.raises(ValueError, match='shared memory'):
    run(config=HopperConfig(block_kv=256, stages=8))
  with pytest.raises(ValueError, match='multiple of'):
    hopper.forward(q[:, :100], k, v, causal=True, scale=0.1, t_real=100, s_real=128)
  with pytest.raises(ValueError, match='needs causal'):
    hopper.forward(q, k, v, causal=False, window=8, scale=0.1, t_real=128, s_real=128)
  with pytest.raises(ValueError, match='multiple of 64'):
    HopperConfig(block_kv=96)


def test_tiles_cover_exactly_the_visible_keys():
  """`_tiles` against a brute force over every row of a block: [first, end) holds every
  tile with a visible key and no tile without one; [full_first, full_end) only tiles whose
  every key every row sees (and all of them, for the blocks' interior)."""
  bkv, n = 16, 8
  for causal, window, offset, s_real, q0 in itertools.product(
      (True, False), (0, 1, 5, 20), (0, 7), (40, 48), range(0, 40, 8)):
    if window and not causal:
      continue
    t = [int(x) for x in hopper._tiles(jnp.int32(q0), n, causal=causal, window=window,
                                       offset=offset, s_real=s_real, block_kv=bkv)]
    first, full_first, full_end, end = t
    rows = offset + q0 + np.arange(n)[:, None]
    cols = np.arange(-(-s_real // bkv) * bkv)[None]
    vis = cols < s_real
    if causal:
      vis = vis & (cols <= rows)
    if window:
      vis = vis & (cols > rows - window)
    tiles = np.broadcast_to(vis, (n, cols.size)).reshape(n, -1, bkv)
    seen = np.flatnonzero(tiles.any(axis=(0, 2)))
    full = np.flatnonzero(tiles.all(axis=(0, 2)))
    assert first <= full_first <= full_end <= end
    if seen.size:
      assert first <= seen.min() and seen.max() < end, (causal, window, offset, q0, t)
    assert all(j in full for j in range(full_first, full_end)), (causal, window, q0, t)
    assert set(full) <= set(range(full_first, full_end)) or not full.size or window, t


# --- dispatch ---

def _entry(checked=('bfloat16',)):
  return dispatch_table.Entry('mosaic', 'benchmarks/results/kernels.md', 'test',
                              checked=checked, fallback='cudnn')


@pytest.mark.parametrize('kw,words', [
    (dict(platform='cpu'), 'NVIDIA GPU'),
    (dict(case='segments'), 'causal and decode cases only'),
    (dict(dtype=F32), 'not float32'),
    (dict(head_dim=96), 'not 96'),
    (dict(entry=_entry(checked=())), 'on-device check'),
])
def test_dispatch_refuses_the_hopper_kernel_where_it_cannot_run(kw, words):
  args = dict(platform='gpu', case='causal', dtype=BF16, head_dim=128, entry=_entry())
  args.update(kw)
  entry = args.pop('entry')
  assert words in dispatch.refusal('mosaic', entry, **args)
  assert dispatch.refusal('mosaic', _entry(), platform='gpu', case='causal', dtype=BF16,
                          head_dim=128) is None


def _results(hopper_ratio: float, hopper_ok: bool, hopper_both: float = 1.05) -> str:
  check = ['| kernel | impl | shape | dtype | rel. error | tol | ok |',
           '|---|---|---|---|---|---|---|',
           '| flash fwd | pallas | s | bfloat16 | 0.001 | 0.03 | True |',
           f'| hopper flash fwd | mosaic | s | bfloat16 | 0.001 | 0.03 | {hopper_ok} |']
  head = ('| Dh | T | B | H | ours fwd | cuDNN fwd | XLA fwd | ours/cuDNN speed | ours / peak | '
          'ours fwd+bwd | cuDNN fwd+bwd | ours/cuDNN fwd+bwd | Hopper fwd | Hopper/cuDNN speed '
          '| Hopper fwd+bwd | Hopper/cuDNN fwd+bwd |')
  row = (f'| 128 | 4096 | 4 | 16 | 190 | 346 | 40 | 0.55 | 0.2 | 100 | 200 | 0.5 | 400 | '
         f'{hopper_ratio} | 150 | {hopper_both} |')
  return ('## Correctness on gpu\n\n' + '\n'.join(check) + '\n\n## Flash attention, causal\n\n'
          + head + '\n|' + '---|' * 16 + '\n' + row + '\n')


def test_refresh_proposes_the_hopper_kernel_only_when_it_wins_and_passed():
  causal = ('attention', 'gpu', 'causal')
  assert dispatch_refresh.proposals_from_results(_results(1.16, True))[causal][0] == 'mosaic'
  assert dispatch_refresh.proposals_from_results(_results(1.16, False))[causal][0] == 'cudnn'
  assert dispatch_refresh.proposals_from_results(_results(0.9, True))[causal][0] == 'cudnn'
  # Training runs the forward and the (Triton) backward: both must win.
  assert dispatch_refresh.proposals_from_results(
      _results(1.16, True, hopper_both=0.75))[causal][0] == 'cudnn'


def test_refresh_proposes_the_hopper_decode_kernel_when_its_cache_layout_rows_win():
  def results(hopper_gbs: float, ok: bool) -> str:
    return ('## Correctness on gpu\n\n| kernel | impl | shape | dtype | rel. error | tol | ok |\n'
            '|---|---|---|---|---|---|---|\n'
            '| decode | pallas | s | bfloat16 | 0.001 | 0.03 | True |\n'
            f'| hopper decode (cache) | mosaic | s | bfloat16 | 0.001 | 0.03 | {ok} |\n\n'
            '## Decode attention, bf16\n\n| B | context | ours GB/s | ours / HBM peak | XLA GB/s '
            '| ours/XLA speed | Hopper GB/s | Hopper / HBM peak | Hopper, cache layout GB/s | '
            'Hopper, cache layout / HBM peak |\n|' + '---|' * 10 + '\n'
            f'| 8 | 4096 | 1400 | 0.3 | 1000 | 1.4 | 3000 | 0.6 | {hopper_gbs} | 0.6 |\n')
  decode = ('attention', 'gpu', 'decode')
  assert dispatch_refresh.proposals_from_results(results(3000, True))[decode][0] == 'mosaic'
  assert dispatch_refresh.proposals_from_results(results(3000, False))[decode][0] == 'pallas'
  # Beats XLA, but by less than ours does: ours stays.
  assert dispatch_refresh.proposals_from_results(results(1200, True))[decode][0] == 'pallas'
  assert dispatch_refresh.proposals_from_results(results(900, True))[decode][0] == 'pallas'
