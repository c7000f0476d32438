"""The delta-rule op: chunked == naive scan == one-token step, outputs, final states and
gradients, plus the numerical edge (beta near 2 with strong gates) and the `impl=` switch.

Tolerances (float32): outputs and states agree to 2e-5 absolute (different but equivalent
summation orders, one triangular solve per chunk); gradients to 1e-4 relative to the largest
gradient entry.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.delta_rule import (delta_product_step, delta_rule, delta_rule_chunked,
                                       delta_rule_recurrent)

TOL = 2e-5
GRAD_RTOL = 1e-4


def _inputs(B, T, H, Dk, Dv, *, gate=True, beta_max=2.0, g_scale=1.0, seed=0):
  """Random inputs (numpy: no per-op compilation), unit-norm keys, beta in (0, beta_max)."""
  rng = np.random.default_rng(seed)
  normal = lambda *shape: rng.standard_normal(shape).astype(np.float32)
  sigmoid = lambda x: 1 / (1 + np.exp(-x))
  q, k, v = normal(B, T, H, Dk), normal(B, T, H, Dk), normal(B, T, H, Dv)
  k /= np.linalg.norm(k, axis=-1, keepdims=True)
  beta = (beta_max * sigmoid(normal(B, T, H))).astype(np.float32)
  g = (-g_scale * np.log1p(np.exp(normal(B, T, H)))).astype(np.float32) if gate else None
  s0 = 0.5 * normal(B, H, Dk, Dv)
  return q, k, v, beta, g, s0


@functools.partial(jax.jit, static_argnames=('chunk_size',))
def _chunked(q, k, v, beta, g, s0, chunk_size):
  return delta_rule(q, k, v, beta, g, chunk_size=chunk_size, initial_state_BxHxDkxDv=s0)


@jax.jit
def _naive(q, k, v, beta, g, s0):
  return delta_rule_recurrent(q, k, v, beta, g, initial_state_BxHxDkxDv=s0)


def _weighted_loss(fn):
  def loss(q, k, v, beta, g, s0):
    o, s = fn(q, k, v, beta, g, s0)
    w_o = jnp.cos(jnp.arange(o.size, dtype=jnp.float32)).reshape(o.shape)
    w_s = jnp.sin(jnp.arange(s.size, dtype=jnp.float32)).reshape(s.shape)
    return jnp.sum(o * w_o) + jnp.sum(s * w_s)
  return jax.jit(jax.grad(loss, argnums=tuple(range(6))))


SHIP_CHUNK = 64  # models.ModelConfig.delta_chunk_size default
_grad_naive = _weighted_loss(
    lambda *a: delta_rule_recurrent(*a[:5], initial_state_BxHxDkxDv=a[5]))
_grad_chunked = _weighted_loss(
    lambda *a: delta_rule_chunked(*a[:5], chunk_size=SHIP_CHUNK, initial_state_BxHxDkxDv=a[5]))
LONG = (2, 150, 2, 8, 6)  # B, T, H, Dk, Dv: T is not a multiple of the chunk size


@pytest.mark.parametrize('shape,chunk,gate', [((2, 37, 3, 8, 12), 16, True),
                                              ((2, 37, 3, 8, 12), 16, False),
                                              ((1, 5, 2, 4, 4), SHIP_CHUNK, True),
                                              (LONG, SHIP_CHUNK, True)],
                         ids=['T37-C16-gate', 'T37-C16-nogate', 'T5-C64', 'T150-C64'])
def test_chunked_equals_naive(shape, chunk, gate):
  args = _inputs(*shape, gate=gate)
  o1, s1 = _naive(*args)
  o2, s2 = _chunked(*args, chunk_size=chunk)
  np.testing.assert_allclose(o2, o1, atol=TOL, rtol=0)
  np.testing.assert_allclose(s2, s1, atol=TOL, rtol=0)


def test_naive_scan_is_the_written_recurrence():
  """The scan against a literal numpy transcription of the recurrence (one head, one row)."""
  q, k, v, beta, g, s0 = (np.asarray(x, np.float64) for x in _inputs(1, 6, 1, 4, 3))
  S = s0[0, 0].copy()
  outs = []
  for t in range(6):
    S = np.exp(g[0, t, 0]) * S
    S = S + beta[0, t, 0] * np.outer(k[0, t, 0], v[0, t, 0] - S.T @ k[0, t, 0])
    outs.append(S.T @ q[0, t, 0] / 2.0)  # scale = Dk ** -0.5 = 1/2
  f32 = lambda x: np.asarray(x, np.float32)
  o, s, states = jax.jit(functools.partial(delta_rule_recurrent, return_all_states=True))(
      *map(f32, (q, k, v, beta, g)), initial_state_BxHxDkxDv=f32(s0))
  np.testing.assert_allclose(o[0, :, 0], np.stack(outs), atol=1e-5)
  np.testing.assert_allclose(s[0, 0], S, atol=1e-5)
  np.testing.assert_allclose(states[0, -1], s[0], atol=0)


@pytest.mark.parametrize('J', [1, 2, 3])
def test_product_step_equals_interleaved_scan(J):
  """One DeltaProduct token = J interleaved steps, gate on the first, query on the last."""
  B, H, Dk, Dv = 2, 3, 8, 5
  q, k, v, beta, g, s0 = _inputs(B, J, H, Dk, Dv)
  q_last = q[:, -1]
  g_first = g[:, 0]
  o, s = jax.jit(delta_product_step)(q_last, k, v, beta, g_first, s0)
  q_f, g_f = np.zeros_like(q), np.zeros_like(g)
  q_f[:, -1], g_f[:, 0] = q_last, g_first
  o_ref, s_ref = _naive(q_f, k, v, beta, g_f, s0)
  np.testing.assert_allclose(o, o_ref[:, -1], atol=TOL)
  np.testing.assert_allclose(s, s_ref, atol=TOL)


def test_chunked_gradients_equal_naive():
  """Gradients w.r.t. q, k, v, beta, g and the initial state, at the chunk size we ship."""
  args = _inputs(*LONG)
  g_naive, g_chunk = _grad_naive(*args), _grad_chunked(*args)
  for name, a, b in zip(('q', 'k', 'v', 'beta', 'g', 's0'), g_chunk, g_naive):
    scale = float(np.abs(b).max())
    assert scale > 0, name
    np.testing.assert_allclose(a, b, atol=GRAD_RTOL * scale, rtol=0, err_msg=name)


def test_no_nan_with_beta_near_two_and_strong_gates():
  """beta -> 2 (reflections), gates so strong that e^gamma underflows to 0 within a chunk,
  and identical keys (the worst case for the triangular solve): finite values and gradients,
  still equal to the naive scan."""
  q, k, v, beta, g, s0 = _inputs(*LONG, g_scale=40.0)
  beta = np.full_like(beta, 1.9999)
  k[:, 10:40] = k[:, 10:11]  # the same key 30 times in a row
  o1, s1 = _naive(q, k, v, beta, g, s0)
  o2, s2 = _chunked(q, k, v, beta, g, s0, chunk_size=SHIP_CHUNK)
  assert np.isfinite(np.asarray(o2)).all() and np.isfinite(np.asarray(s2)).all()
  np.testing.assert_allclose(o2, o1, atol=1e-4)
  np.testing.assert_allclose(s2, s1, atol=1e-4)
  for a, b in zip(_grad_chunked(q, k, v, beta, g, s0), _grad_naive(q, k, v, beta, g, s0)):
    assert np.isfinite(np.asarray(a)).all()
    np.testing.assert_allclose(a, b, atol=1e-3 * float(np.abs(b).max()) + 1e-6)


def test_padding_steps_are_the_identity():
  q, k, v, beta, g, s0 = _inputs(1, 20, 2, 4, 4)
  pad = np.arange(20) % 3 == 1
  beta = np.where(pad[None, :, None], 0.0, beta).astype(np.float32)
  g = np.where(pad[None, :, None], 0.0, g).astype(np.float32)
  _, s_all = _chunked(q, k, v, beta, g, s0, chunk_size=16)
  keep = ~pad
  _, s_kept = _naive(q[:, keep], k[:, keep], v[:, keep], beta[:, keep], g[:, keep], s0)
  np.testing.assert_allclose(s_all, s_kept, atol=TOL)


def test_impl_switch_and_shape_errors(monkeypatch):
  q, k, v, beta, g, s0 = _inputs(1, 4, 1, 4, 4)
  # impl='pallas' routes to the Pallas scans (interpreted on CPU) with the same results.
  from pallas_kernels.delta_rule import gpu  # pylint: disable=g-import-not-at-top
  calls = []
  scan = gpu.forward_scan
  monkeypatch.setattr(gpu, 'forward_scan', lambda *a, **kw: calls.append(1) or scan(*a, **kw))
  o_ref, s_ref = delta_rule(q, k, v, beta, g, chunk_size=16, impl='xla')
  o_pal, s_pal = delta_rule(q, k, v, beta, g, chunk_size=16, impl='pallas')
  assert calls, "impl='pallas' did not reach the Pallas scan"
  np.testing.assert_allclose(o_pal, o_ref, atol=TOL)
  np.testing.assert_allclose(s_pal, s_ref, atol=TOL)
  with pytest.raises(ValueError, match='Unknown delta_rule impl'):
    delta_rule(q, k, v, beta, g, impl='cuda')
  with pytest.raises(ValueError, match='beta must be'):
    delta_rule(q, k, v, beta[..., None], g)
  with pytest.raises(ValueError, match='initial_state'):
    delta_rule(q, k, v, beta, g, initial_state_BxHxDkxDv=s0[..., :2])
  with pytest.raises(ValueError, match='chunk_size'):
    delta_rule(q, k, v, beta, g, chunk_size=0)
