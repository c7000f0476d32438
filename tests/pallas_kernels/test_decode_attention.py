"""Decode / tree attention kernels (interpret mode on CPU) against the reference."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import masks as model_masks
from pallas_kernels.decode_attention import (BlockSizes, ancestor_mask, decode_attention,
                                             tree_attention)

SMALL = BlockSizes(block_k=16, num_parts=3)
PARENTS = jnp.array([[-1, 0, 0, 1, 1, 2, -1], [-1, 0, 1, 2, 3, 4, 5]])  # a tree; a chain


def inputs(B, T, H, K, S, Dh=16, N=7, seed=0, dtype=jnp.float32):
  ks = jax.random.split(jax.random.key(seed), 6)
  q = jax.random.normal(ks[0], (B, T, H, Dh), dtype)
  k, v = (jax.random.normal(kk, (B, S, K, Dh), dtype) for kk in ks[1:3])
  kn, vn = (jax.random.normal(kk, (B, N, K, Dh), dtype) for kk in ks[3:5])
  return q, k, v, kn, vn, ks[5]


def assert_close(a, b, tol=2e-6):
  np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                             atol=tol, rtol=tol)


@pytest.mark.parametrize('impl,B,T,H,K,S', [('pallas_gpu', 3, 1, 8, 2, 96),
                                             ('pallas_gpu', 3, 3, 4, 4, 80),
                                             ('pallas_tpu', 3, 1, 8, 2, 96)],
                         ids=['gpu-decode-G4-S96', 'gpu-T3-G1-S80', 'tpu-decode-G4-S96'])
def test_decode_matches_reference(impl, B, T, H, K, S):
  q, k, v, _, _, key = inputs(B, T, H, K, S)
  lengths = jnp.array([0, 37, S])  # empty row (zeros), ragged, full
  mask = jax.random.bernoulli(key, 0.7, (B, T, S)).at[2, 0].set(False)  # a masked-out query
  run = jax.jit(lambda q, k, v, mask, impl: decode_attention(
      q, k, v, lengths, mask_BxTxS=mask, block_sizes=SMALL, impl=impl), static_argnums=4)
  for m in ((None, mask) if T == 1 else (mask,)):
    out = run(q, k, v, m, impl)
    assert_close(out, run(q, k, v, m, 'xla'))
    assert not np.asarray(out[0]).any()
  assert not np.asarray(out[2, 0]).any()


def test_tpu_tree_attention_matches_reference():
  impl = 'pallas_tpu'
  B, N, H, K, S = 2, 7, 4, 2, 64
  q, k, v, kn, vn, _ = inputs(B, N, H, K, S, seed=1, dtype=jnp.bfloat16)
  lengths = jnp.array([20, 64])
  run = jax.jit(lambda q, impl: tree_attention(q, k, v, lengths, kn, vn, parents_BxN=PARENTS,
                                               block_sizes=SMALL, impl=impl), static_argnums=1)
  assert_close(run(q, impl), run(q, 'xla'), tol=2e-2)


def test_gpu_tree_attention_output_and_gradient():
  """The GPU kernel's output, and gradients through the reference backward."""
  B, N, H, K, S = 2, 7, 4, 2, 48
  q, k, v, kn, vn, _ = inputs(B, N, H, K, S, seed=2)
  lengths = jnp.array([5, 48])

  @functools.partial(jax.jit, static_argnums=0)
  def run(impl, q, k, kn):
    f = lambda q, k, kn: tree_attention(q, k, v, lengths, kn, vn, parents_BxN=PARENTS,
                                        block_sizes=SMALL, impl=impl)
    out, vjp = jax.vjp(f, q, k, kn)
    return out, vjp(out)

  (out, grads), (out_ref, grads_ref) = run('pallas_gpu', q, k, kn), run('xla', q, k, kn)
  assert_close(out, out_ref)
  for a, b in zip(grads, grads_ref):
    assert_close(a, b, tol=1e-5)


def test_tree_equals_attention_over_the_cache_with_the_tree_written_in():
  """The tree API's semantics (the kernels equal it above): the tree nodes' K/V apart from
  the cache == writing them after the prefix under the model's lifted mask
  (models.masks.local_to_cache_mask)."""
  B, N, H, K, S = 2, 7, 4, 2, 32
  q, k, v, kn, vn, _ = inputs(B, N, H, K, S, seed=3)
  lengths = jnp.array([9, 20])
  slots = lengths[:, None] + jnp.arange(N)
  b = jnp.arange(B)[:, None]
  k_all, v_all = k.at[b, slots].set(kn), v.at[b, slots].set(vn)
  local = jax.vmap(model_masks.tree_mask)(PARENTS)
  mask = model_masks.local_to_cache_mask(local, slots, lengths, S)
  want = decode_attention(q, k_all, v_all, lengths + N, mask_BxTxS=mask, impl='xla')
  got = tree_attention(q, k, v, lengths, kn, vn, parents_BxN=PARENTS, impl='xla')
  assert_close(got, want, tol=1e-5)


def test_ancestor_mask_equals_the_model_tree_mask():
  parents = jnp.array([[-1, 0, 0, 1, 1, 3, 2, 6, 7, -1, 9, 10, 0]])
  np.testing.assert_array_equal(ancestor_mask(parents)[0], model_masks.tree_mask(parents[0]))


def to_cache_layout(k_BxSxKxDh, v_BxSxKxDh):
  """models.cache's layout: k [B, K, S, Dh], v [B, K, Dh, S]."""
  return jnp.swapaxes(k_BxSxKxDh, 1, 2), jnp.transpose(v_BxSxKxDh, (0, 2, 3, 1))


@pytest.mark.parametrize('impl', ['xla', 'pallas_gpu', 'pallas_tpu', 'cudnn_as_xla'])
def test_cache_layout_read_in_place_matches_reference(impl, monkeypatch):
  """kv_layout='cache': the reference and the GPU-style kernel read k [B, K, S, Dh] and
  v [B, K, Dh, S] as stored (S not a multiple of the block: padded), the TPU kernel and
  cuDNN get copies; outputs, tree part and gradients equal the [B, S, K, Dh] reference."""
  if impl == 'cudnn_as_xla':
    from pallas_kernels.attention import vendor
    monkeypatch.setattr(vendor, '_dot_product_attention', lambda *a, implementation, **kw:
                        jax.nn.dot_product_attention(*a, implementation='xla', **kw))
    impl = 'cudnn'
  B, T, H, K, S = 3, 2, 4, 2, 72
  q, k, v, kn, vn, key = inputs(B, T, H, K, S, N=2)
  kc, vc = to_cache_layout(k, v)
  lengths = jnp.array([0, 37, S])
  mask = jax.random.bernoulli(key, 0.7, (B, T, S))
  new = dict(k_new_BxNxKxDh=kn, v_new_BxNxKxDh=vn)
  for extra in ({'mask_BxTxS': mask}, {'mask_BxTxS': mask, **new}):
    want = decode_attention(q, k, v, lengths, impl='xla', **extra)
    f = lambda q, kc, vc: decode_attention(q, kc, vc, lengths, block_sizes=SMALL, impl=impl,
                                           kv_layout='cache', **extra)
    assert_close(jax.jit(f)(q, kc, vc), want, tol=1e-5)
  loss = lambda q, k, v: jnp.sum(jnp.sin(decode_attention(
      q, k, v, lengths, mask_BxTxS=mask, block_sizes=SMALL, impl=impl, kv_layout='cache')))
  loss_ref = lambda q, k, v: jnp.sum(jnp.sin(
      decode_attention(q, k, v, lengths, mask_BxTxS=mask, impl='xla')))
  g = jax.grad(loss, argnums=(0, 1, 2))(q, kc, vc)
  g_ref = jax.grad(loss_ref, argnums=(0, 1, 2))(q, k, v)
  assert_close(g[0], g_ref[0], tol=1e-5)
  for a, b in zip(g[1:], to_cache_layout(*g_ref[1:])):
    assert_close(a, b, tol=1e-5)


def test_model_attention_decodes_from_the_cache_layout_without_copies():
  """attention.attention(impl='pallas') over the cache layout hands the decode kernel the
  cache buffers themselves: no transpose in the jaxpr."""
  from pallas_kernels import attention as attention_ops
  B, T, H, K, S = 2, 1, 4, 2, 64
  q, k, v, _, _, _ = inputs(B, T, H, K, S)
  kc, vc = to_cache_layout(k, v)
  mask = (jnp.arange(S)[None, None] < jnp.array([9, 64])[:, None, None])
  f = lambda q, kc, vc: attention_ops.attention(q, kc, vc, mask, impl='pallas',
                                                kv_layout='cache')
  assert_close(f(q, kc, vc), attention_ops.attention(q, kc, vc, mask, impl='xla',
                                                     kv_layout='cache'), tol=1e-5)
  def copies_to_bskd(f):
    lines = str(jax.make_jaxpr(f)(q, kc, vc)).splitlines()
    assert any('pallas_call' in l for l in lines)
    return [l for l in lines if 'transpose' in l and 'f32[2,64,2,16]' in l.split('=')[0]]
  assert not copies_to_bskd(f)
  # The check can fail: the copies the previous version made are seen.
  g = lambda q, kc, vc: f(q, jnp.swapaxes(jnp.swapaxes(kc, 1, 2), 1, 2), vc)
  assert copies_to_bskd(g)


@pytest.mark.parametrize('layout', ['BSKD', 'cache'])
def test_gpu_prefix_blocks_run_unmasked_and_equal_the_reference(layout):
  """A verification-shaped mask (a prefix every query sees, then a tree): the GPU kernel
  computes the key blocks below the prefix without the mask and the rest with it; prefixes
  ending mid-block, on a block edge and past the length."""
  from pallas_kernels.decode_attention.reference import slot_bounds  # pylint: disable=g-import-not-at-top
  B, T, H, K, S = 3, 5, 4, 2, 96
  q, k, v, _, _, key = inputs(B, T, H, K, S)
  prefix = jnp.array([37, 48, 90])
  lengths = jnp.array([60, 80, 96])
  rel = jnp.arange(S)[None, None, :] - prefix[:, None, None]
  among = jax.random.bernoulli(key, 0.5, (B, T, S)) | (rel == jnp.arange(T)[None, :, None])
  mask = (rel < 0) | ((rel < T) & among)
  np.testing.assert_array_equal(np.stack(slot_bounds(mask)), [[0] * 3, [0] * 3, [37, 48, 90]])
  if layout == 'cache':
    k, v = to_cache_layout(k, v)
  run = functools.partial(decode_attention, mask_BxTxS=mask, block_sizes=SMALL,
                          kv_layout=layout)
  assert_close(run(q, k, v, lengths, impl='pallas_gpu'), run(q, k, v, lengths, impl='xla'))


def test_gpu_blocks_below_the_full_bound_read_no_mask():
  """Told (falsely) that every query sees every slot, the GPU kernel ignores the mask on the
  key blocks wholly below the length and applies it past them."""
  from pallas_kernels.decode_attention import gpu  # pylint: disable=g-import-not-at-top
  B, T, H, K, S = 1, 2, 2, 1, 64
  q, k, v, _, _, key = inputs(B, T, H, K, S)
  mask = jax.random.bernoulli(key, 0.5, (B, T, S)).at[:, :, 0].set(True)
  rows = jnp.repeat(mask, 2, axis=1).astype(jnp.int8)  # R = T x G = 4 rows, t-major
  packed = q.reshape(B, T, K, H, 16).transpose(0, 2, 1, 3, 4).reshape(B, K, T * H, 16)
  length = jnp.array([40])
  st = gpu.Static(scale=0.25, block_k=16, num_parts=1, has_mask=True, has_new=False,
                  interpret=True)
  bounds = (jnp.array([0]), jnp.array([0]), jnp.array([S]))
  o, m, l = gpu.partials(packed, k, v, length, rows, None, None, None, st, bounds)
  got = gpu.combine(o, m, l)[0, 0].reshape(T, H, 16)
  seen = mask.at[:, :, :32].set(True)  # the two whole blocks below the length: unmasked
  ref = lambda vis: decode_attention(q, k, v, length, mask_BxTxS=vis, impl='xla',
                                     scale=0.25)[0]
  assert_close(got, ref(seen), tol=1e-5)
  assert np.abs(np.asarray(got) - np.asarray(ref(mask))).max() > 0.05


def window_mask(lengths, T, S, window):
  """[B, T, S]: query t of row b (at position lengths[b] - T + t) sees the `window` slots up
  to its own (a sliding-window model's decode and verification)."""
  pos = jnp.asarray(lengths)[:, None, None] - T + jnp.arange(T)[None, :, None]
  slot = jnp.arange(S)[None, None, :]
  return (slot <= pos) & (slot > pos - window)


@pytest.mark.parametrize('impl,layout,T', [('pallas_gpu', 'BSKD', 1),
                                           ('pallas_gpu', 'cache', 3),
                                           ('pallas_tpu', 'BSKD', 2)])
def test_sliding_window_decode_matches_reference(impl, layout, T):
  """A window starting mid-block, on a block edge, at slot 0 and one wider than the row:
  the kernels start at the window's first block and equal the reference."""
  B, H, K, S, window = 4, 4, 2, 96, 21
  q, k, v, _, _, _ = inputs(B, T, H, K, S, seed=2)
  lengths = jnp.array([96, 53, 12, 37])  # windows from 75, 32 (a block edge), 0, 16 on
  mask = window_mask(lengths, T, S, window)
  if layout == 'cache':
    k, v = to_cache_layout(k, v)
  run = functools.partial(decode_attention, mask_BxTxS=mask, block_sizes=SMALL,
                          kv_layout=layout)
  assert_close(run(q, k, v, lengths, impl=impl), run(q, k, v, lengths, impl='xla'))


@pytest.mark.parametrize('family', ['gpu', 'tpu'])
def test_blocks_below_the_start_are_not_read(family):
  """Told (falsely) that no query sees a slot below 40, the kernels skip the key blocks
  wholly below it (slots 0..31 at block 16) and read the block holding slot 40 whole: the
  output is the reference's with slots 0..31 hidden, not the reference's."""
  from pallas_kernels.decode_attention import gpu, tpu  # pylint: disable=g-import-not-at-top
  B, T, H, K, S = 1, 1, 2, 1, 64
  q, k, v, _, _, _ = inputs(B, T, H, K, S, seed=4)
  length = jnp.array([60])
  packed = q.reshape(B, K, T * H, 16)
  R = 16  # rows padded as the kernels want them
  packed = jnp.pad(packed, ((0, 0), (0, 0), (0, R - T * H), (0, 0)))
  rows = jnp.ones((B, R, S), jnp.int8)
  if family == 'gpu':
    st = gpu.Static(scale=0.25, block_k=16, num_parts=2, has_mask=True, has_new=False,
                    interpret=True)
    bounds = (jnp.array([40]), jnp.array([40]), jnp.array([S]))
    o, m, l = gpu.partials(packed, k, v, length, rows, None, None, None, st, bounds)
    got = gpu.combine(o, m, l)
  else:
    st = tpu.Static(scale=0.25, block_k=16, has_mask=True, has_new=False, interpret=True)
    o, m, l = tpu.partials(packed, k, v, length, rows.astype(jnp.int32), None, None, None, st,
                           jnp.array([40]))
    got = gpu.combine(o, m, l, np.e)
  got = got[0, 0, :T * H].reshape(T, H, 16)
  ref = lambda vis: decode_attention(q, k, v, length, mask_BxTxS=vis, impl='xla',
                                     scale=0.25)[0]
  hidden = jnp.ones((B, T, S), bool).at[:, :, :32].set(False)
  assert_close(got, ref(hidden), tol=1e-5)
  assert np.abs(np.asarray(got) - np.asarray(ref(jnp.ones((B, T, S), bool)))).max() > 0.05


def test_sliding_window_model_decodes_with_the_kernel(monkeypatch):
  """A sliding-window model (window 6) decoding past its window with attention_impl='pallas'
  (the GPU-style kernel, interpreted): the kernel is told each row's window start (so it
  skips the blocks before it) and the logits equal attention_impl='xla' step by step."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  from testlib import small_config  # pylint: disable=g-import-not-at-top
  from models import Cache, Transformer, init_params  # pylint: disable=g-import-not-at-top
  from pallas_kernels.decode_attention import gpu  # pylint: disable=g-import-not-at-top
  cfg = small_config(num_layers=1, sliding_window=6, attention_impl='xla')
  params = init_params(Transformer(cfg), jax.random.key(0))
  starts = []
  partials = gpu.partials
  monkeypatch.setattr(gpu, 'partials', lambda *a: starts.append(np.asarray(a[-1][0])) or
                      partials(*a))
  B, P, S = 2, 9, 48
  toks = jax.random.randint(jax.random.key(1), (B, P + 4), 0, cfg.vocab_size)
  logits = {}
  for impl in ('xla', 'pallas'):
    model = Transformer(dataclasses.replace(cfg, attention_impl=impl))
    apply = lambda *a, model=model, **k: model.apply({'params': params}, *a, **k)
    out = apply(toks[:, :P], cache=Cache.init(cfg, B, S))
    steps = [out.logits_BxTxV]
    for i in range(4):
      out = apply(toks[:, P + i:P + i + 1], out.cache.lengths[:, None], cache=out.cache)
      steps.append(out.logits_BxTxV)
    logits[impl] = steps
  for a, b in zip(logits['pallas'], logits['xla']):
    assert_close(a, b, tol=2e-5)
  assert starts and max(int(s.max()) for s in starts) >= P + 3 - 5  # the window's start


@pytest.mark.parametrize('impl', ['pallas_gpu', 'pallas_tpu'])
def test_a_row_whose_mask_hides_every_slot_gets_zeros(impl):
  """A row with a positive length whose mask hides every slot (its start is S: no block is
  read) gets zeros, the other rows the reference's output."""
  B, T, H, K, S = 3, 2, 4, 2, 64
  q, k, v, _, _, key = inputs(B, T, H, K, S, seed=5)
  lengths = jnp.array([64, 40, 50])
  mask = jax.random.bernoulli(key, 0.6, (B, T, S)).at[1].set(False)
  run = functools.partial(decode_attention, mask_BxTxS=mask, block_sizes=SMALL)
  out = run(q, k, v, lengths, impl=impl)
  assert not np.asarray(out[1]).any()
  assert_close(out, run(q, k, v, lengths, impl='xla'))
