"""Flash attention kernels (interpret mode on CPU) against the reference: outputs and grads."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import masks as model_masks
from pallas_kernels.flash_attention import BlockSizes, flash_attention
from pallas_kernels.flash_attention import mask as mask_lib

SMALL = BlockSizes(block_q=16, block_k=16, block_q_bwd=16, block_k_bwd=16)


@dataclasses.dataclass(frozen=True)
class Case:
  """One call: shapes, mask kind and dtype."""
  B: int = 2
  T: int = 40
  S: int = 40
  H: int = 4
  K: int = 2
  Dh: int = 16
  causal: bool = True
  block_causal: int | None = None
  window: int = 0
  segments: bool = False
  dense: bool = False
  pad_rows: bool = True  # row 1 ends in padding (negative positions): fully masked queries
  dtype: str = 'float32'

  def __str__(self):
    kind = ('bidir' if not self.causal else f'block{self.block_causal}' if self.block_causal
            else 'causal')
    extras = ''.join(f'-{n}' for n in ('segments', 'dense') if getattr(self, n))
    extras += f'-win{self.window}' if self.window else ''
    return (f'B{self.B}-T{self.T}-S{self.S}-H{self.H}-K{self.K}-D{self.Dh}-{kind}{extras}'
            f'-{self.dtype}')


def make_inputs(c: Case, seed: int = 0):
  ks = jax.random.split(jax.random.key(seed), 6)
  dt = jnp.dtype(c.dtype)
  q = jax.random.normal(ks[0], (c.B, c.T, c.H, c.Dh), dt)
  k = jax.random.normal(ks[1], (c.B, c.S, c.K, c.Dh), dt)
  v = jax.random.normal(ks[2], (c.B, c.S, c.K, c.Dh), dt)
  kv_pos = jnp.broadcast_to(jnp.arange(c.S), (c.B, c.S))
  q_pos = kv_pos[:, c.S - c.T:]
  if c.pad_rows:  # the tail of row 1 is padding, as the model marks it
    kv_pos = kv_pos.at[1, c.S - 7:].set(-1)
    q_pos = q_pos.at[1, c.T - 7:].set(-1)
  kw = dict(q_positions_BxT=q_pos, kv_positions_BxS=kv_pos, causal=c.causal,
            block_causal_size=c.block_causal, window=c.window)
  if c.segments:  # packed documents of uneven lengths
    seg = jnp.cumsum(jax.random.bernoulli(ks[3], 0.12, (c.B, c.S)), axis=1).astype(jnp.int32)
    kw.update(q_segment_ids_BxT=seg[:, c.S - c.T:], kv_segment_ids_BxS=seg)
  if c.dense:
    m = jax.random.bernoulli(ks[4], 0.6, (c.B, c.T, c.S))
    kw.update(mask_BxTxS=m.at[0, 3].set(False))  # one fully masked row
  return (q, k, v), kw


def check(c: Case, impl: str, grads: bool = True, block_sizes: BlockSizes = SMALL):
  """Kernel vs reference: output, and (one jit each) the gradients of a weighted sum."""
  (q, k, v), kw = make_inputs(c)
  tol = 2e-2 if c.dtype == 'bfloat16' else 2e-5
  w = jax.random.normal(jax.random.key(9), q.shape, jnp.float32)

  def run(q, k, v, impl):
    f = lambda q, k, v: flash_attention(q, k, v, block_sizes=block_sizes, impl=impl, **kw)
    if not grads:
      return f(q, k, v), None
    out, vjp = jax.vjp(f, q, k, v)
    return out, vjp((w * 1.0).astype(out.dtype))

  run = jax.jit(run, static_argnums=3)
  (out, g), (ref, g_ref) = run(q, k, v, impl), run(q, k, v, 'xla')
  assert out.shape == q.shape and out.dtype == q.dtype
  np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref, np.float32),
                             atol=tol, rtol=tol)
  if c.pad_rows and c.causal:  # padding queries see no key: zeros
    assert not np.asarray(out[1, c.T - 7:], np.float32).any()
  for name, a, b in zip('qkv', g or (), g_ref or ()):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    err = np.abs(a - b).max() / (np.abs(b).max() + 1e-6)
    assert err < (3e-2 if c.dtype == 'bfloat16' else 1e-5), (name, err)


GPU_CASES = [
    Case(),  # causal GQA 4:2, lengths not block multiples, padding rows
    Case(H=3, K=1, Dh=8, causal=False, segments=True),  # MQA, packed documents, Dh padded
    Case(T=24, S=64, H=8, K=2, block_causal=8, pad_rows=False),  # cached prefill, T != S
    Case(T=33, S=33, H=2, K=2, dense=True, window=5, dtype='bfloat16'),  # explicit mask
]


@pytest.mark.parametrize('c', GPU_CASES, ids=str)
def test_gpu_kernel_matches_reference(c):
  check(c, 'pallas_gpu')


def test_tpu_kernel_matches_reference():
  # 32-blocks: 2 x 2 tiles (TPU interpret mode is slow per grid step).
  check(Case(T=36, S=36, H=2, K=1, block_causal=4, window=13, segments=True, dense=True),
        'pallas_tpu', block_sizes=BlockSizes(32, 32, 32, 32))


def test_block_map_skip_is_conservative_and_full_is_exact():
  c = Case(B=3, T=64, S=64, segments=True, dense=True)
  for causal_block, window in ((0, 0), (8, 0), (1, 20)):
    (_, _, _), kw = make_inputs(dataclasses.replace(c, dense=causal_block == 0))
    fm = mask_lib.FlashMask(kw['q_positions_BxT'], kw['kv_positions_BxS'],
                            kw['q_segment_ids_BxT'], kw['kv_segment_ids_BxS'],
                            None if 'mask_BxTxS' not in kw else kw['mask_BxTxS'].astype(jnp.int8))
    bmap, vis = jax.jit(lambda fm: (mask_lib.block_map(fm, causal_block, window, 16, 16),
                                    mask_lib.dense_visible(fm, causal_block, window)))(fm)
    bmap, vis = np.asarray(bmap), np.asarray(vis).reshape(3, 4, 16, 4, 16)
    any_vis, all_vis = vis.any((2, 4)), vis.all((2, 4))
    assert not (any_vis & (bmap == mask_lib.SKIP)).any()
    np.testing.assert_array_equal(bmap == mask_lib.FULL, all_vis)
    assert (bmap == mask_lib.PARTIAL).any() and (bmap == mask_lib.SKIP).any()
    rng = np.asarray(jax.jit(mask_lib.ranges)(jnp.asarray(bmap)))
    for b in range(3):
      for i in range(4):
        lo, hi, flo, fhi = rng[b, i]
        live = np.flatnonzero(bmap[b, i] != mask_lib.SKIP)
        assert (lo, hi) == ((live[0], live[-1] + 1) if live.size else (0, 0))
        assert (bmap[b, i, flo:fhi] == mask_lib.FULL).all()


@pytest.mark.parametrize('spec', ['causal', 'bidirectional', model_masks.BlockCausal(4)],
                         ids=str)
def test_position_rules_equal_the_model_masks(spec):
  pos = jnp.array([[0, 1, 2, 3, 4, 5, 6, -1], [3, 4, 5, 6, 7, 8, 9, 10]])
  valid = pos >= 0
  want = model_masks.build_mask(pos, pos, valid, spec, window=3)
  block = 0 if spec == 'bidirectional' else 1 if spec == 'causal' else 4
  got = mask_lib.dense_visible(mask_lib.FlashMask(pos, pos), block, window=3)
  np.testing.assert_array_equal(got, want)
