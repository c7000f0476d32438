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

from benchmarks import kernel_speed
from pallas_kernels import common, dispatch, dispatch_refresh, dispatch_table
from pallas_kernels.flash_attention import HopperBwdConfig, HopperConfig, flash_attention
from pallas_kernels.flash_attention import hopper, hopper_bwd

BF16, F32 = jnp.bfloat16, jnp.float32
# Interpreted Mosaic GPU kernels are run eagerly here, never inside an outer `jax.jit`: there
# the simulated warpgroups' programs are executed by XLA's CPU runtime from within the outer
# program's callback, and on this 2-core machine one graph (the Hopper backward under
# jit(vjp) with padded lengths) hung in 3 of 4 runs while every eager run finished (cause not
# settled: the runtime's threads blocked in the interpreter's barrier waits, or a race the
# interpreter exposes only then; the GPU check settles it).


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


@pytest.mark.parametrize('causal,window,backward', [
    (True, 0, None), (True, 40, None), (False, 0, None),
    (True, 0, HopperBwdConfig()), (True, 40, HopperBwdConfig(stages=3))])
def test_flash_attention_mosaic_values_and_gradients(causal, window, backward):
  """impl='mosaic' (Hopper forward; the Triton backward, or the Hopper one, over its lse)
  against impl='xla', on a length that is not a block multiple."""
  q, k, v = _qkv(1, 100, 100, 4, 2, 64, seed=1)
  do = jax.random.normal(jax.random.key(9), q.shape, F32)
  cfg = HopperConfig(backward=backward)

  def loss(impl, cfg=None):
    return lambda q, k, v: (flash_attention(q, k, v, causal=causal, window=window, impl=impl,
                                            hopper_config=cfg).astype(F32) * do).sum()
  # Eager: each interpreted kernel runs as its own computation (see the note at the top).
  got = jax.value_and_grad(loss('mosaic', cfg), (0, 1, 2))(q, k, v)
  want = jax.value_and_grad(loss('xla'), (0, 1, 2))(q, k, v)
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
  """`key_tiles` against a brute force over every row of a block: [first, end) holds every
  tile with a visible key and no tile without one; [full_first, full_end) only tiles whose
  every key every row sees (and all of them, for the blocks' interior)."""
  bkv, n = 16, 8
  for causal, window, offset, s_real, q0 in itertools.product(
      (True, False), (0, 1, 5, 20), (0, 7), (40, 48), range(0, 40, 8)):
    if window and not causal:
      continue
    t = [int(x) for x in hopper.key_tiles(jnp.int32(q0), n, causal=causal, window=window,
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


# --- the backward ---

def _reference_grads(q, k, v, do, *, causal, window, t_real, s_real, scale):
  """(dq, dk, dv) in float64 numpy from the definition (softmax Jacobian written out)."""
  q, k, v, do = (np.asarray(x, np.float64) for x in (q, k, v, do))
  G = q.shape[2] // k.shape[2]
  kk, vv = np.repeat(k, G, axis=2), np.repeat(v, G, axis=2)
  s = np.einsum('bthd,bshd->bhts', q, kk) * scale
  r = np.arange(q.shape[1])[:, None] + (s_real - t_real)
  c = np.arange(k.shape[1])[None]
  vis = (c < s_real) & ((c <= r) if causal else True) & ((c > r - window) if window else True)
  s = np.where(vis, s, -np.inf)
  p = np.exp(s - s.max(-1, keepdims=True))
  p = np.where(vis, p / p.sum(-1, keepdims=True), 0.0)
  dov = np.einsum('bthd,bshd->bhts', do, vv)                   # dP
  ds = p * (dov - (p * dov).sum(-1, keepdims=True))            # dS
  dq = np.einsum('bhts,bshd->bthd', ds, kk) * scale
  dk = np.einsum('bhts,bthd->bshd', ds, q) * scale
  dv = np.einsum('bhts,bthd->bshd', p, do)
  fold = lambda x: x.reshape(x.shape[0], x.shape[1], -1, G, x.shape[-1]).sum(3)
  return dq, fold(dk), fold(dv)


# (causal, window, T, t_real, S, s_real, H, K, stages)
BWD_CASES = [
    (True, 0, 128, 128, 128, 128, 4, 2, 2),     # square, GQA 2
    (True, 0, 128, 100, 256, 250, 2, 1, 2),     # the last T of S, padding on both
    (False, 0, 128, 77, 256, 200, 2, 2, 3),     # bidirectional, 3 stages
    (True, 50, 256, 250, 256, 250, 2, 1, 2),    # a window: query tiles skipped on both sides
]


@pytest.mark.parametrize('causal,window,T,t_real,S,s_real,H,K,stages', BWD_CASES)
def test_backward_equals_the_definition(causal, window, T, t_real, S, s_real, H, K, stages):
  q, k, v = _qkv(1, T, S, H, K, 64, seed=4)
  do = jax.random.normal(jax.random.key(5), q.shape, F32).astype(BF16).at[:, t_real:].set(0)
  scale = 64 ** -0.5
  kw = dict(causal=causal, window=window, scale=scale, t_real=t_real, s_real=s_real,
            interpret=True)
  o, lse = hopper.forward(q, k, v, config=HopperConfig(block_kv=64, p_in_smem=True), **kw)
  got = hopper_bwd.backward(q, k, v, o, lse, do, **kw,
                            config=HopperBwdConfig(stages=stages, p_in_smem=True))
  want = _reference_grads(q, k, v, do, causal=causal, window=window, t_real=t_real,
                          s_real=s_real, scale=scale)
  for name, a, b, n in zip(('dq', 'dk', 'dv'), got, want, (t_real, s_real, s_real)):
    a, b = np.asarray(a, np.float64)[:, :n], b[:, :n]
    assert a.shape == b.shape
    assert np.abs(a - b).max() < 2e-2 * np.abs(b).max(), name


def test_backward_lowers_for_cuda():
  sd = lambda *s, d=BF16: jax.ShapeDtypeStruct(s, d)
  f = lambda q, k, v, o, lse, do: hopper_bwd.backward(q, k, v, o, lse, do, causal=True,
                                                      scale=0.1, t_real=1000, s_real=1000,
                                                      window=300)
  text = export.export(jax.jit(f), platforms=['cuda'])(
      sd(2, 1024, 8, 128), sd(2, 1024, 2, 128), sd(2, 1024, 2, 128), sd(2, 1024, 8, 128),
      sd(2, 8, 1024, d=F32), sd(2, 1024, 8, 128)).mlir_module()
  assert text.count('mosaic_gpu') >= 2  # the dq and the dk/dv kernels


def test_the_hopper_backward_refuses_head_dim_256():
  q, k, v = _qkv(1, 128, 128, 2, 1, 256)
  with pytest.raises(ValueError, match='head dims'):
    flash_attention(q, k, v, impl='mosaic', hopper_config=HopperConfig(
        backward=HopperBwdConfig()))


def test_query_tiles_cover_exactly_the_rows_that_see_a_key_block():
  """`hopper_bwd.query_tiles` against a brute force, as `key_tiles` for the forward."""
  bq, n, nq = 8, 16, 7
  for causal, window, offset, s_real, k0 in itertools.product(
      (True, False), (0, 1, 5, 20), (0, 7), (50, 64), range(0, 64, 16)):
    if window and not causal:
      continue
    t = [int(x) for x in hopper_bwd.query_tiles(jnp.int32(k0), n, causal=causal, window=window,
                                             offset=offset, s_real=s_real, n_q_tiles=nq,
                                             block_q=bq)]
    first, full_first, full_end, end = t
    rows = offset + np.arange(nq * bq)[:, None]
    keys = k0 + np.arange(n)[None]
    vis = np.broadcast_to(keys < s_real, rows.shape[:1] + keys.shape[1:])
    if causal:
      vis = vis & (keys <= rows)
    if window:
      vis = vis & (keys > rows - window)
    tiles = vis.reshape(nq, bq, n)
    seen = np.flatnonzero(tiles.any(axis=(1, 2)))
    assert 0 <= first <= full_first <= full_end <= end <= nq, t
    if seen.size:
      assert first <= seen.min() and seen.max() < end, (causal, window, offset, k0, t)
    for i in range(full_first, full_end):
      assert tiles[i].all(), (causal, window, offset, s_real, k0, t)


# --- dispatch ---

def _entry(checked=('bfloat16',)):
  return dispatch_table.Entry('mosaic', 'benchmarks/results/kernels.md', 'test',
                              checked=checked, fallback='cudnn')


@pytest.mark.parametrize('kw,words', [
    (dict(platform='cpu'), 'NVIDIA GPU'),
    (dict(case='segments'), 'causal, decode and verify cases only'),
    (dict(case='explicit'), 'causal, decode and verify cases only'),
    (dict(case='verify', head_dim=256), 'verify kernel takes head dims (64, 128), not 256'),
    (dict(dtype=F32), 'not float32'),
    (dict(head_dim=96), 'not 96'),
    (dict(case='decode', head_dim=256), 'decode kernel takes head dims (64, 128), not 256'),
    (dict(entry=_entry(checked=())), 'on-device check'),
])
def test_dispatch_refuses_the_hopper_kernel_where_it_cannot_run(kw, words):
  args = dict(platform='gpu', case='causal', dtype=BF16, head_dim=128, entry=_entry())
  args.update(kw)
  entry = args.pop('entry')
  assert words in dispatch.refusal('mosaic', entry, **args)
  for case in ('causal', 'decode', 'verify'):
    assert dispatch.refusal('mosaic', _entry(), platform='gpu', case=case, dtype=BF16,
                            head_dim=128) is None


def _table(heading: str, header: list[str], *rows: dict) -> str:
  """A results-file section as `benchmarks.kernels` writes it (cells not given: 'n/a')."""
  line = lambda cells: '| ' + ' | '.join(str(c) for c in cells) + ' |'
  return '\n'.join([f'## {heading}', '', line(header), '|' + '---|' * len(header)]
                    + [line([r.get(h, 'n/a') for h in header]) for r in rows]) + '\n\n'


CHECK_HEADER = ['kernel', 'impl', 'shape', 'dtype', 'rel. error', 'tol', 'ok']


def _check_row(kernel: str, ok: bool) -> dict:
  return dict(kernel=kernel, impl='mosaic', shape='s', dtype='bfloat16', ok=ok)


def _results(hopper_ratio: float, hopper_ok: bool, hopper_both: float = 1.05) -> str:
  """A file as `benchmarks.kernels` writes it: the Triton flash table (ours slower than
  cuDNN), then the Hopper section (its own checks and table), with the real headers."""
  return (_table('Correctness on gpu', CHECK_HEADER, _check_row('flash fwd', True))
          + _table('Flash attention, causal, bf16', kernel_speed.FLASH_HEADER,
                   {'ours/cuDNN speed': 0.55, 'ours/cuDNN fwd+bwd': 0.5})
          + _table('Correctness of the Hopper kernels on gpu', CHECK_HEADER,
                   _check_row('hopper flash fwd', hopper_ok))
          + _table('Hopper flash attention, causal, bf16', kernel_speed.HOPPER_FLASH_HEADER,
                   {'Hopper/cuDNN speed': hopper_ratio, 'Hopper/cuDNN fwd+bwd': hopper_both}))


def test_refresh_proposes_the_hopper_kernel_only_when_it_wins_and_passed():
  causal = ('attention', 'gpu', 'causal')
  assert dispatch_refresh.proposals_from_results(_results(1.16, True))[causal][0] == 'mosaic'
  assert dispatch_refresh.proposals_from_results(_results(1.16, False))[causal][0] == 'cudnn'
  assert dispatch_refresh.proposals_from_results(_results(0.9, True))[causal][0] == 'cudnn'
  # Training runs the forward and the (Triton) backward: both must win.
  assert dispatch_refresh.proposals_from_results(
      _results(1.16, True, hopper_both=0.75))[causal][0] == 'cudnn'


def test_refresh_reads_a_file_of_the_hopper_section_alone():
  """`benchmarks.kernels --only=hopper --out=hopper` (the suite's `hopper` stage) writes
  the Hopper checks and tables without the Triton ones: the causal proposal still follows
  the Hopper table."""
  def results(ratio: float) -> str:
    return (_table('Correctness of the Hopper kernels on gpu', CHECK_HEADER,
                   _check_row('hopper flash fwd', True))
            + _table('Hopper flash attention, causal, bf16', kernel_speed.HOPPER_FLASH_HEADER,
                     {'Hopper/cuDNN speed': ratio, 'Hopper/cuDNN fwd+bwd': 1.1}))
  causal = ('attention', 'gpu', 'causal')
  assert dispatch_refresh.proposals_from_results(results(1.2))[causal][0] == 'mosaic'
  assert dispatch_refresh.proposals_from_results(results(0.9))[causal][0] == 'cudnn'


def test_refresh_proposes_ours_for_the_explicit_case_from_the_dense_mask_table():
  def results(fwd: float, both: float, ok: bool = True) -> str:
    return (_table('Correctness on gpu', CHECK_HEADER, _check_row('flash fwd', ok))
            + _table('Dense-mask flash attention (the explicit case), bf16',
                     kernel_speed.DENSE_HEADER,
                     {'cuDNN / ours': fwd, 'cuDNN / ours fwd+bwd': both}))
  explicit = ('attention', 'gpu', 'explicit')
  assert dispatch_refresh.proposals_from_results(results(1.2, 1.1))[explicit][0] == 'pallas'
  assert dispatch_refresh.proposals_from_results(results(1.2, 0.9))[explicit][0] == 'cudnn'
  assert dispatch_refresh.proposals_from_results(results(0.8, 1.1))[explicit][0] == 'cudnn'
  assert dispatch_refresh.proposals_from_results(results(1.2, 1.1, ok=False))[
      explicit][0] == 'cudnn'
  # The tree table alone (its dense column is the decode kernel) proposes nothing here.
  tree = _table('Tree verification attention, bf16', kernel_speed.TREE_HEADER,
                {'ours': 0.1, 'ours, dense mask': 0.1, 'cuDNN': 0.3, 'cuDNN / ours': 3.0})
  assert explicit not in dispatch_refresh.proposals_from_results(tree)


def test_refresh_proposes_the_hopper_kernel_for_verification_when_it_beats_cudnn():
  def results(cudnn_over_hopper: float, ok: bool) -> str:
    return (_table('Correctness of the Hopper kernels on gpu', CHECK_HEADER,
                   _check_row('hopper verify (cache, tree mask)', ok))
            + _table('Hopper tree verification, bf16', kernel_speed.HOPPER_TREE_HEADER,
                     {'cuDNN / Hopper': cudnn_over_hopper}, {'cuDNN / Hopper': 1.7}))
  verify = ('attention', 'gpu', 'verify')
  assert dispatch_refresh.proposals_from_results(results(1.6, True))[verify][0] == 'mosaic'
  assert dispatch_refresh.proposals_from_results(results(1.6, False))[verify][0] == 'cudnn'
  assert dispatch_refresh.proposals_from_results(results(0.8, True))[verify][0] == 'cudnn'
  assert verify not in dispatch_refresh.proposals_from_results(results(0.8, True)[:60])


def test_refresh_proposes_the_hopper_decode_kernel_when_its_cache_layout_rows_win():
  def results(hopper_speed: float, ok: bool) -> str:
    return (_table('Correctness on gpu', CHECK_HEADER, _check_row('decode', True))
            + _table('Decode attention, bf16', kernel_speed.DECODE_HEADER,
                     {'ours/XLA speed': 1.4})
            + _table('Correctness of the Hopper kernels on gpu', CHECK_HEADER,
                     _check_row('hopper decode (cache)', ok))
            + _table('Hopper decode attention, bf16', kernel_speed.HOPPER_DECODE_HEADER,
                     {'Hopper (cache layout)/XLA speed': hopper_speed}))
  decode = ('attention', 'gpu', 'decode')
  assert dispatch_refresh.proposals_from_results(results(3.0, True))[decode][0] == 'mosaic'
  assert dispatch_refresh.proposals_from_results(results(3.0, False))[decode][0] == 'pallas'
  # Beats XLA, but by less than ours does: ours stays.
  assert dispatch_refresh.proposals_from_results(results(1.2, True))[decode][0] == 'pallas'
  assert dispatch_refresh.proposals_from_results(results(0.9, True))[decode][0] == 'pallas'


def test_refresh_picks_the_fastest_verification_from_the_cache_layout():
  """With the model's three ways from its cache's layout timed (Hopper in place, cuDNN after
  a copy to [B, S, K, Dh], XLA in place), the verify case goes to the one fastest on every
  row (Hopper only when its check passed); mixed rows keep the kernel-to-kernel reading."""
  def results(hopper, copy, xla, ok=True, second=None):
    rows = [{'Hopper, cache layout': hopper, 'cuDNN': 0.3, 'cuDNN / Hopper': 0.3 / hopper,
             'cuDNN from the cache layout': copy, 'XLA (cache layout)': xla}]
    if second:
      rows.append(dict(rows[0], **second))
    return (_table('Correctness of the Hopper kernels on gpu', CHECK_HEADER,
                   _check_row('hopper verify (cache, tree mask)', ok))
            + _table('Hopper tree verification, bf16', kernel_speed.HOPPER_TREE_HEADER,
                     *rows))
  verify = ('attention', 'gpu', 'verify')
  pick = lambda *a, **k: dispatch_refresh.proposals_from_results(results(*a, **k))[verify][0]
  assert pick(0.2, 0.5, 0.6) == 'mosaic'
  assert pick(0.2, 0.5, 0.6, ok=False) == 'cudnn'   # unchecked: cuDNN beats XLA
  assert pick(0.2, 0.7, 0.6, ok=False) == 'xla'     # the copy costs more than XLA
  assert pick(0.4, 0.7, 0.35) == 'xla'
  # Hopper fastest on one row, XLA on the other: no winner from the cache layout, so the
  # kernel-to-kernel reading stands (cuDNN / Hopper 0.3 / 0.2 >= 1: Hopper).
  assert pick(0.2, 0.5, 0.6, second={'XLA (cache layout)': 0.1}) == 'mosaic'
