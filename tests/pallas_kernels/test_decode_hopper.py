"""The Hopper decode attention kernel (Mosaic GPU: a producer warpgroup TMA-feeding a ring
of K/V tiles, wgmma), run on CPU in jax's GPU interpret mode and lowered for CUDA."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from pallas_kernels.decode_attention import HopperDecodeConfig, decode_attention
from pallas_kernels.decode_attention import gpu, hopper
from pallas_kernels.decode_attention.reference import slot_bounds

BF16, F32 = jnp.bfloat16, jnp.float32


def _arrays(B, T, S, H, K, Dh, seed=0):
  ks = jax.random.split(jax.random.key(seed), 3)
  return tuple(jax.random.normal(kk, shape, F32).astype(BF16) for kk, shape in
               zip(ks, ((B, T, H, Dh), (B, S, K, Dh), (B, S, K, Dh))))


def _reference(q, k, v, lengths, mask=None):
  """[B, T, H, Dh] float64 from the definition: query heads over the slots below length
  (and visible in the mask)."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  G = q.shape[2] // k.shape[2]
  k, v = np.repeat(k, G, axis=2), np.repeat(v, G, axis=2)
  s = np.einsum('bthd,bshd->bhts', q, k) * q.shape[-1] ** -0.5
  vis = (np.arange(k.shape[1])[None, :] < np.asarray(lengths)[:, None])[:, None, None, :]
  if mask is not None:
    vis = vis & np.asarray(mask)[:, None]
  s = np.where(vis, s, -np.inf)
  with np.errstate(invalid='ignore'):  # a row of length 0: NaN here, compared apart
    p = np.exp(s - s.max(-1, keepdims=True))
    return np.einsum('bhts,bshd->bthd', p / p.sum(-1, keepdims=True), v)


def _cache(k, v):
  return jnp.swapaxes(k, 1, 2), jnp.transpose(v, (0, 2, 3, 1))


# (layout, T, H, K, S, Dh, lengths, block_k, stages, parts, masked): both layouts for the
# first and the masked case, one each for the rest (interpret mode costs seconds a case).
CASES = [
    *[(lay, 1, 8, 2, 256, 64, [256, 1, 100], 64, 2, 1, False)  # one part, ragged, GQA 4
      for lay in ('BSKD', 'cache')],
    ('BSKD', 2, 8, 2, 300, 64, [300, 150], 64, 3, 0, False),       # S padded, parts
    ('cache', 1, 2, 2, 384, 128, [384, 129, 0], 128, 2, 3, False),  # Dh 128, a part past a length
    *[(lay, 3, 8, 2, 200, 64, [200, 120], None, 2, 0, True)  # a random mask ANDed
      for lay in ('BSKD', 'cache')],
    ('cache', 20, 8, 2, 130, 64, [130, 77], None, 2, 2, True),     # 80 rows: R 128, tile 64
]


@pytest.mark.parametrize('layout,T,H,K,S,Dh,lengths,block_k,stages,parts,masked', CASES)
def test_decode_equals_the_definition(layout, T, H, K, S, Dh, lengths, block_k, stages, parts,
                                      masked):
  q, k, v = _arrays(len(lengths), T, S, H, K, Dh)
  lengths = jnp.asarray(lengths, jnp.int32)
  mask = (jax.random.bernoulli(jax.random.key(7), 0.6, (len(lengths), T, S)).at[:, :, 0]
          .set(True) if masked else None)
  kk, vv = _cache(k, v) if layout == 'cache' else (k, v)
  cfg = HopperDecodeConfig(block_k=block_k, stages=stages, num_parts=parts)
  out = decode_attention(q, kk, vv, lengths, mask_BxTxS=mask, impl='mosaic', kv_layout=layout,
                         hopper_config=cfg)
  want = _reference(q, k, v, lengths, mask)
  assert out.shape == q.shape and out.dtype == q.dtype
  got = np.asarray(out, np.float64)
  empty = np.asarray(lengths) == 0  # a row that sees nothing gets zeros
  np.testing.assert_array_equal(got[empty], 0.0)
  assert np.abs(got[~empty] - want[~empty]).max() < 1e-2 * max(1.0, np.abs(want).max())


def _tree_mask(B, T, S, prefix, seed=3):
  """[B, T, S]: query t of row b sees the slots below prefix[b] and, of the T slots after
  it, a random set including its own (a verification tree's shape, any visibility)."""
  among = (jax.random.bernoulli(jax.random.key(seed), 0.5, (B, T, T))
           | jnp.eye(T, dtype=bool))
  rel = jnp.arange(S)[None, None, :] - jnp.asarray(prefix)[:, None, None]
  tree = jnp.take_along_axis(among, jnp.clip(rel, 0, T - 1) * jnp.ones((B, T, 1), int),
                             axis=2)
  return (rel < 0) | ((rel < T) & tree)


# (layout, T, H, K, S, lengths, prefix, parts): T x G rows in several blocks
WIDE = [
    ('cache', 40, 8, 2, 300, [300, 230], [260, 190], 2),   # 160 rows: 2 blocks of 128
    ('BSKD', 96, 4, 1, 200, [170], [70], 0),               # 384 rows: 3 blocks, auto parts
]


@pytest.mark.parametrize('layout,T,H,K,S,lengths,prefix,parts', WIDE)
def test_wide_verification_equals_the_definition(layout, T, H, K, S, lengths, prefix, parts):
  """More than 128 query rows per kv head (a wide tree over a cache): row blocks of 128,
  the prefix's tiles computed without the mask, the tree's tiles with it."""
  B = len(lengths)
  q, k, v = _arrays(B, T, S, H, K, 64)
  lengths = jnp.asarray(lengths, jnp.int32)
  mask = _tree_mask(B, T, S, prefix)
  np.testing.assert_array_equal(np.stack(slot_bounds(mask)), [[0] * B, [0] * B, prefix])
  kk, vv = _cache(k, v) if layout == 'cache' else (k, v)
  out = decode_attention(q, kk, vv, lengths, mask_BxTxS=mask, impl='mosaic', kv_layout=layout,
                         hopper_config=HopperDecodeConfig(num_parts=parts))
  want = _reference(q, k, v, lengths, mask)
  assert np.abs(np.asarray(out, np.float64) - want).max() < 1e-2 * max(1.0, np.abs(want).max())


def test_slot_bounds_and_part_tiles():
  """slot_bounds: the first slot any query sees and the first run every query sees
  (brute force over random masks); part_tiles: the parts split the tiles from the start's to
  the length's into disjoint, contiguous, nearly equal runs, and each part's unmasked tiles
  are exactly its tiles wholly inside the run and below the length (brute force)."""
  rng = np.random.default_rng(0)
  for _ in range(20):
    mask = rng.random((3, 2, 10)) < rng.choice([0.3, 0.9, 1.0])
    mask[:, :, :int(rng.integers(0, 4))] = False
    start, lo, hi = (np.asarray(x) for x in slot_bounds(jnp.asarray(mask)))
    for b in range(3):
      seen, every = mask[b].any(0), mask[b].all(0)
      assert start[b] == (np.flatnonzero(seen)[0] if seen.any() else 10)
      assert lo[b] == (np.flatnonzero(every)[0] if every.any() else 10)
      assert every[lo[b]:hi[b]].all() and (hi[b] == 10 or not every[hi[b]])
  mask = jnp.ones((3, 2, 10), bool).at[1, 1, 4].set(False).at[2, 0, 0].set(False)
  np.testing.assert_array_equal(np.stack(slot_bounds(mask)),
                                [[0, 0, 0], [0, 0, 1], [10, 4, 10]])
  bk = 64
  for length in (0, 63, 64, 200, 512):
    for start, lo, hi in ((0, 0, 0), (0, 0, 100), (70, 70, 512), (130, 200, 300),
                          (600, 600, 600)):
      for parts in (1, 3, 8):
        got = [tuple(int(x) for x in gpu.part_tiles(
            jnp.int32(length), jnp.int32(start), jnp.int32(lo), jnp.int32(hi), jnp.int32(p),
            parts, bk)) for p in range(parts)]
        tiles = [t for first, last, _, _ in got for t in range(first, last)]
        want = list(range(start // bk, -(-length // bk)))
        assert tiles == want, (length, start, parts, got)
        sizes = [last - first for first, last, _, _ in got]
        assert max(sizes) <= -(-len(want) // parts), sizes  # the critical path
        for first, last, free_lo, free_hi in got:
          assert first <= free_lo <= free_hi <= last
          assert list(range(free_lo, free_hi)) == [
              t for t in range(first, last)
              if t * bk >= lo and (t + 1) * bk <= min(length, hi)], (length, lo, hi)


def test_tiles_below_the_full_bound_read_no_mask():
  """Told (falsely) that every query sees every slot, the kernel ignores the mask on the
  tiles wholly below the length and applies it on the last partial tile: so the mask tiles
  below the bound are never read."""
  q, k, v = _arrays(1, 2, 256, 4, 1, 64)
  packed = jnp.zeros((1, 1, 64, 64), BF16).at[:, :, :8].set(
      q[0].reshape(1, 1, 8, 64))
  mask = jax.random.bernoulli(jax.random.key(5), 0.5, (1, 2, 256)).at[:, :, 0].set(True)
  rows = jnp.zeros((1, 64, 256), jnp.int8).at[:, :8].set(
      jnp.repeat(mask, 4, axis=1).astype(jnp.int8))
  length = jnp.array([150])
  cfg = HopperDecodeConfig(block_k=64, num_parts=1, p_in_smem=True)
  bounds = (jnp.array([0]), jnp.array([0]), jnp.array([256]))
  o, m, l = hopper.partials(packed, k, v, length, rows, bounds, scale=0.125,
                            cache_layout=False, config=cfg, interpret=True)
  got = np.asarray(gpu.combine(o, m, l)[0, 0, :8]).reshape(2, 4, 64)
  seen = np.asarray(mask).copy()
  seen[:, :, :128] = True  # the two whole tiles below the length: unmasked
  want = _reference(q, k, v, length, jnp.asarray(seen))[0]
  assert np.abs(got - want).max() < 1e-2
  wrong = _reference(q, k, v, length, mask)[0]  # what honouring the mask there gives
  assert np.abs(got - wrong).max() > 0.05


def test_partials_of_a_part_past_the_length_are_empty():
  q, k, v = _arrays(1, 1, 256, 4, 1, 64)
  packed = jnp.zeros((1, 1, 64, 64), BF16).at[:, :, :4].set(q[:, 0].reshape(1, 1, 4, 64))
  o, m, l = hopper.partials(packed, k, v, jnp.array([70]), scale=0.125, cache_layout=False,
                            config=HopperDecodeConfig(block_k=64, num_parts=4, p_in_smem=True),
                            interpret=True)
  assert o.shape == (1, 1, 4, 64, 64)
  # 70 slots: parts 0 and 1 see 64 and 6 slots, parts 2 and 3 none.
  np.testing.assert_array_equal(np.asarray(l[0, 0, 2:]), 0.0)
  assert (np.asarray(l[0, 0, :2, :4]) > 0).all()
  out = gpu.combine(o, m, l)[0, 0, :4]
  want = _reference(q, k, v, jnp.array([70]))[0, 0]
  assert np.abs(np.asarray(out) - want).max() < 1e-2


def test_out_rows_writes_the_first_rows_of_the_partials():
  """out_rows=8 (a decode step's 4 heads of one kv head, rounded to 8): the partials are the
  first 8 rows of those of the whole block, nothing else written; a bad count is refused."""
  q, k, v = _arrays(1, 1, 192, 4, 1, 64, seed=4)
  packed = jnp.zeros((1, 1, 64, 64), BF16).at[:, :, :4].set(q[:, 0].reshape(1, 1, 4, 64))
  run = lambda **kw: hopper.partials(
      packed, k, v, jnp.array([150]), scale=0.125, cache_layout=False,
      config=HopperDecodeConfig(block_k=64, num_parts=2, p_in_smem=True), interpret=True, **kw)
  full, few = run(), run(out_rows=8)
  assert few[0].shape == (1, 1, 2, 8, 64) and few[1].shape == (1, 1, 2, 8)
  for a, b in zip(few, full):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b)[:, :, :, :8])
  with pytest.raises(ValueError, match='multiple of 8'):
    run(out_rows=12)


def test_gradient_is_the_references():
  q, k, v = _arrays(2, 1, 128, 4, 2, 64, seed=3)
  lengths = jnp.array([128, 50])
  f = lambda impl: lambda q, k, v: decode_attention(q, k, v, lengths, impl=impl).astype(
      F32).sum()
  got = jax.grad(f('mosaic'), (0, 1, 2))(q, k, v)
  want = jax.grad(f('xla'), (0, 1, 2))(q, k, v)
  for a, b in zip(got, want):
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                               atol=1e-6)


@pytest.mark.parametrize('Dh,cache,rows', [(64, False, 64), (128, False, 64),
                                           (128, True, 64), (128, True, 256)])
def test_lowers_for_cuda(Dh, cache, rows):
  """For the GPU (P from registers; with 64 rows writing 8 of them, a decode step's), and
  with 256 rows (a 64-node tree at G 4) and a mask: two row blocks of 128, shared memory
  within sm90's."""
  B, K, S = 8, 8, 4096
  sd = lambda *s: jax.ShapeDtypeStruct(s, BF16)
  kv = (sd(B, K, S, Dh), sd(B, K, Dh, S)) if cache else (sd(B, S, K, Dh), sd(B, S, K, Dh))
  n = jax.ShapeDtypeStruct((B,), jnp.int32)
  if rows > 128:
    f = lambda q, k, v, n, mask: hopper.partials(q, k, v, n, mask, (n // 4, n // 4, n),
                                                 scale=0.1,
                                                 cache_layout=cache)
    args = (sd(B, K, rows, Dh), *kv, n, jax.ShapeDtypeStruct((B, rows, S), jnp.int8))
  else:
    f = lambda q, k, v, n: hopper.partials(q, k, v, n, scale=0.1, cache_layout=cache,
                                           out_rows=8)
    args = (sd(B, K, rows, Dh), *kv, n)
  text = export.export(jax.jit(f), platforms=['cuda'])(*args).mlir_module()
  assert 'mosaic_gpu' in text


@pytest.mark.parametrize('kw,words', [
    (dict(dtype=F32), 'dtype float32'),
    (dict(Dh=256), 'head dim 256'),
    (dict(T=130), '520 query rows'),
    (dict(new=True), 'new tokens'),
])
def test_refuses_what_it_cannot_run(kw, words):
  T, Dh = kw.get('T', 1), kw.get('Dh', 64)
  q, k, v = _arrays(1, T, 128, 4, 1, Dh)
  if 'dtype' in kw:
    q, k, v = (x.astype(kw['dtype']) for x in (q, k, v))
  new = dict(k_new_BxNxKxDh=k[:, :T], v_new_BxNxKxDh=v[:, :T]) if kw.get('new') else {}
  with pytest.raises(ValueError, match=words):
    decode_attention(q, k, v, jnp.array([128]), impl='mosaic', **new)
  with pytest.raises(ValueError, match='shared memory'):
    hopper.partials(jnp.zeros((1, 1, 64, 128), BF16), jnp.zeros((1, 4096, 1, 128), BF16),
                    jnp.zeros((1, 4096, 1, 128), BF16), jnp.array([1]), scale=1.0,
                    cache_layout=False, config=HopperDecodeConfig(block_k=256, stages=4))


def _model_pair(num_heads: int):
  """(cfg, {'xla': model, 'mosaic': model}, params): one bf16 layer, 2 kv heads, Dh 64, the
  same weights under both attention implementations."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  from testlib import small_config  # pylint: disable=g-import-not-at-top
  from models import Transformer, init_params  # pylint: disable=g-import-not-at-top
  cfg = small_config(num_layers=1, d_model=64, num_heads=num_heads, num_kv_heads=2,
                     head_dim=64, dtype='bfloat16')
  models = {impl: Transformer(dataclasses.replace(cfg, attention_impl=impl))
            for impl in ('xla', 'mosaic')}
  return cfg, models, init_params(models['xla'], jax.random.key(0))


def test_the_model_decodes_with_the_hopper_kernel():
  """attention_impl='mosaic': the model's prefill (a padded row), a decode step and a
  tree-verification step (an explicit mask over the cache) run the Hopper decode kernel on
  the cache's layout with the model's mask, and give the logits of attention_impl='xla'."""
  from models import Cache, local_to_cache_mask, tree_mask  # pylint: disable=g-import-not-at-top
  cfg, models, params = _model_pair(num_heads=4)
  B, P, S = 2, 9, 32
  prompt = jax.random.randint(jax.random.key(2), (B, P), 0, cfg.vocab_size)
  prompt_pos = jnp.broadcast_to(jnp.arange(P), (B, P)).at[1, 6:].set(-1)
  parents = jnp.array([-1, 0, 0, 1, 2])
  tree_toks = jax.random.randint(jax.random.key(3), (B, 5), 0, cfg.vocab_size)

  def run(params):  # eager: see the note at the top of test_flash_hopper.py
    outs = {}
    for impl, model in models.items():
      apply = lambda *a, model=model, **k: model.apply({'params': params}, *a, **k)
      pre = apply(prompt, prompt_pos, cache=Cache.init(cfg, B, S))
      dec = apply(prompt[:, :1], pre.cache.lengths[:, None], cache=pre.cache)
      lengths = dec.cache.lengths
      slots = lengths[:, None] + jnp.arange(5)
      mask = local_to_cache_mask(jnp.broadcast_to(tree_mask(parents), (B, 5, 5)), slots,
                                 lengths, S)
      tree = apply(tree_toks, lengths[:, None] + jnp.array([0, 1, 1, 2, 2]), cache=dec.cache,
                   write_slots_BxT=slots, attn_mask=mask)
      outs[impl] = [pre.logits_BxTxV[0], pre.logits_BxTxV[1, :6], dec.logits_BxTxV,
                    tree.logits_BxTxV]
    return outs

  outs = run(params)
  for a, b in zip(outs['mosaic'], outs['xla']):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    assert np.abs(a - b).max() < 3e-2 * np.abs(b).max()


def test_the_model_verifies_a_wide_tree_with_the_hopper_kernel(monkeypatch):
  """attention_impl='mosaic' over a cache with 40 tree nodes at G 4 (160 rows per kv head:
  the verify case) runs the Hopper decode kernel (two row blocks) and gives the logits of
  attention_impl='xla'."""
  from models import Cache, local_to_cache_mask, tree_mask  # pylint: disable=g-import-not-at-top
  from pallas_kernels import attention as attention_ops  # pylint: disable=g-import-not-at-top
  cfg, models, params = _model_pair(num_heads=8)
  B, P, N, S = 2, 7, 40, 64
  assert attention_ops.call_case(N, S, 4) == 'verify'
  calls = []
  partials = hopper.partials
  monkeypatch.setattr(hopper, 'partials', lambda q, *a, **k: calls.append(q.shape) or
                      partials(q, *a, **k))
  prompt = jax.random.randint(jax.random.key(2), (B, P), 0, cfg.vocab_size)
  parents = jnp.asarray([-1] + [int(p) for p in np.random.default_rng(1).integers(
      0, np.arange(1, N))])
  depth = np.zeros(N, int)
  for i in range(1, N):
    depth[i] = depth[int(parents[i])] + 1
  toks = jax.random.randint(jax.random.key(3), (B, N), 0, cfg.vocab_size)
  outs = {}
  for impl, model in models.items():  # eager: see the note at the top of test_flash_hopper.py
    apply = lambda *a, model=model, **k: model.apply({'params': params}, *a, **k)
    pre = apply(prompt, jnp.broadcast_to(jnp.arange(P), (B, P)), cache=Cache.init(cfg, B, S))
    lengths = pre.cache.lengths
    slots = lengths[:, None] + jnp.arange(N)
    mask = local_to_cache_mask(jnp.broadcast_to(tree_mask(parents), (B, N, N)), slots,
                               lengths, S)
    out = apply(toks, lengths[:, None] + jnp.asarray(depth), cache=pre.cache,
                write_slots_BxT=slots, attn_mask=mask)
    outs[impl] = out.logits_BxTxV
  assert (2, 2, 256, 64) in calls  # B, K, two row blocks of 128 rows, Dh
  a, b = (np.asarray(outs[i], np.float32) for i in ('mosaic', 'xla'))
  assert np.abs(a - b).max() < 3e-2 * np.abs(b).max()


def test_verification_tiles_that_fit_shared_memory():
  """At 128 rows with a mask and Dh 128 (the verify sweep's shape) only 64-slot tiles in 2 or
  3 stages fit sm90's shared memory (docs/kernels.md says so)."""
  fits = lambda rows, mask: [
      (bk, st) for bk in (64, 128) for st in (2, 3, 4)
      if hopper.smem_bytes(HopperDecodeConfig(bk, st), 128, rows=rows, has_mask=mask)
      <= hopper.SMEM_BYTES]
  assert fits(128, True) == [(64, 2), (64, 3)]


@pytest.mark.parametrize('layout,T,parts', [('BSKD', 1, 3), ('cache', 3, 2)])
def test_sliding_window_equals_the_definition(layout, T, parts):
  """A sliding window over a ragged batch (starting mid-tile, on a tile edge, at slot 0):
  the parts split the window's tiles, the tiles before it are not loaded, the tiles wholly
  inside it run without the mask."""
  B, H, K, S, Dh, window = 3, 8, 2, 320, 64, 150
  q, k, v = _arrays(B, T, S, H, K, Dh, seed=6)
  lengths = jnp.asarray([320, 214, 90], jnp.int32)  # windows from 170, 64 (a tile edge), 0
  pos = lengths[:, None, None] - T + jnp.arange(T)[None, :, None]
  slot = jnp.arange(S)[None, None, :]
  mask = (slot <= pos) & (slot > pos - window)
  kk, vv = _cache(k, v) if layout == 'cache' else (k, v)
  out = decode_attention(q, kk, vv, lengths, mask_BxTxS=mask, impl='mosaic', kv_layout=layout,
                         hopper_config=HopperDecodeConfig(block_k=64, num_parts=parts))
  want = _reference(q, k, v, lengths, mask)
  assert np.abs(np.asarray(out, np.float64) - want).max() < 1e-2 * max(1.0, np.abs(want).max())


def test_tiles_below_the_start_are_not_loaded():
  """Told (falsely) that no query sees a slot below 100, the kernel starts at the tile
  holding it (64..127, read whole): slots 0..63 are not attended."""
  q, k, v = _arrays(1, 1, 256, 4, 1, 64, seed=7)
  packed = jnp.zeros((1, 1, 64, 64), BF16).at[:, :, :4].set(q[:, 0].reshape(1, 1, 4, 64))
  rows = jnp.ones((1, 64, 256), jnp.int8)
  length = jnp.array([200])
  bounds = (jnp.array([100]), jnp.array([100]), jnp.array([256]))
  o, m, l = hopper.partials(packed, k, v, length, rows, bounds, scale=0.125,
                            cache_layout=False,
                            config=HopperDecodeConfig(block_k=64, num_parts=2, p_in_smem=True),
                            interpret=True)
  got = np.asarray(gpu.combine(o, m, l)[0, 0, :4])
  hidden = jnp.ones((1, 1, 256), bool).at[:, :, :64].set(False)
  assert np.abs(got - _reference(q, k, v, length, hidden)[0, 0]).max() < 1e-2
  assert np.abs(got - _reference(q, k, v, length)[0, 0]).max() > 0.05
