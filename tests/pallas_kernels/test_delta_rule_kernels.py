"""Chunked delta-rule Pallas scans (interpret mode on CPU) against the reference chunked form:
outputs, final state, and the gradients of every input (initial state and gates included)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.delta_rule.chunk import delta_rule_pallas
from pallas_kernels.delta_rule.reference import delta_rule_chunked


def _inputs(B, T, H, Dk, Dv, gated, seed=0):
  ks = jax.random.split(jax.random.key(seed), 6)
  q = jax.random.normal(ks[0], (B, T, H, Dk))
  k = jax.random.normal(ks[1], (B, T, H, Dk))
  k = k / jnp.linalg.norm(k, axis=-1, keepdims=True)
  v = jax.random.normal(ks[2], (B, T, H, Dv))
  beta = 2 * jax.nn.sigmoid(jax.random.normal(ks[3], (B, T, H)))  # negative eigenvalues
  g = None
  if gated:  # DeltaProduct n_h = 2: the gate only on each token's first sub-step
    g = -jax.nn.softplus(jax.random.normal(ks[4], (B, T, H))).at[:, 1::2].set(0.0)
  s0 = jax.random.normal(ks[5], (B, H, Dk, Dv))
  return q, k, v, beta, g, s0


@pytest.mark.parametrize('impl,B,T,H,Dk,Dv,gated', [
    # T not a multiple of the chunk, Dv not of the block, Dk padded to 16 on GPU.
    ('pallas_gpu', 2, 40, 1, 8, 24, True),
    ('pallas_tpu', 1, 40, 1, 16, 16, False),
], ids=['gpu-B2-T40-H1-Dk8-Dv24-gated', 'tpu-B1-T40-H1-Dk16-Dv16'])
def test_matches_reference_with_gradients(impl, B, T, H, Dk, Dv, gated):
  q, k, v, beta, g, s0 = _inputs(B, T, H, Dk, Dv, gated)
  w = jnp.cos(jnp.arange(Dv))

  def run(fn):
    def loss(q, k, v, beta, g, s0):
      o, s = fn(q, k, v, beta, g, chunk_size=16, initial_state_BxHxDkxDv=s0)
      return (o * w).sum() + (s ** 2).sum(), (o, s)
    argnums = (0, 1, 2, 3, 5) + ((4,) if gated else ())
    return jax.jit(jax.grad(loss, argnums=argnums, has_aux=True))(q, k, v, beta, g, s0)

  grads, (o, s) = run(lambda *a, **kw: delta_rule_pallas(*a, impl=impl, block_v=16, **kw))
  grads_ref, (o_ref, s_ref) = run(delta_rule_chunked)
  np.testing.assert_allclose(o, o_ref, atol=2e-5, rtol=2e-5)
  np.testing.assert_allclose(s, s_ref, atol=2e-5, rtol=2e-5)
  for name, a, b in zip(('q', 'k', 'v', 'beta', 's0', 'g'), grads, grads_ref):
    err = float(jnp.abs(a - b).max() / (jnp.abs(b).max() + 1e-6))
    assert err < 1e-5, (name, err)
