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
