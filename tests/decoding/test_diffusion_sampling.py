"""Diffusion token sampling keeps the temperature (entropy against a float64 reference), and
the commit rules pick what they claim."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from decoding import sampling as sampling_lib
from decoding.diffusion import canvas

MASK = 5


def float64_entropy(logits: np.ndarray, temperature: float) -> float:
  x = logits.astype(np.float64) / temperature
  x[MASK] = -np.inf
  p = np.exp(x - x.max())
  p /= p.sum()
  nz = p > 0
  return float(-(p[nz] * np.log(p[nz])).sum()), p


@pytest.mark.parametrize('temperature', [1.3])
def test_sampled_tokens_keep_the_entropy_of_the_distribution(temperature):
  # A peaked head and a long flat tail of 248 unlikely tokens: a sampler that truncates the
  # Gumbel/exponential tail (float32 uniforms rounding to 1) under-samples the tail and
  # lowers the entropy; ours must match the float64 entropy.
  V, n = 256, 40_000
  logits = np.full(V, -4.0, np.float32)
  logits[:8] = np.array([6.0, 5.5, 5.0, 4.0, 3.0, 2.0, 1.0, 0.5])
  cfg = sampling_lib.SamplingConfig(temperature=temperature)
  keys = jax.random.split(jax.random.key(0), n).reshape(10, n // 10, 1)
  row = jnp.broadcast_to(jnp.asarray(logits), (n // 10, 1, V))
  draw = jax.jit(lambda k: jax.lax.map(lambda kk: canvas.token_stats(row, kk, cfg, MASK).token,
                                       k))
  tokens = np.asarray(draw(keys)).reshape(-1)
  assert not (tokens == MASK).any()
  h_ref, p = float64_entropy(logits, temperature)
  counts = np.bincount(tokens, minlength=V)
  q = counts / n
  nz = q > 0
  h_emp = float(-(q[nz] * np.log(q[nz])).sum())
  # Plug-in entropy is biased low by about (support - 1) / (2 n) nats.
  bias = (np.count_nonzero(p) - 1) / (2 * n)
  assert abs(h_emp + bias - h_ref) < 0.03, (h_emp, h_ref)
  tail = p[8:].sum()
  assert abs(q[8:].sum() - tail) < 4 * np.sqrt(tail * (1 - tail) / n) + 1e-3


def test_confidence_entropy_and_margin_are_right():
  logits = jnp.log(jnp.array([[[0.5, 0.3, 0.2, 0.0, 0.0, 0.0]]]) + 1e-30)
  stats = canvas.token_stats(logits, jax.random.split(jax.random.key(0), 1).reshape(1, 1),
                             sampling_lib.SamplingConfig(), MASK)
  assert int(stats.token[0, 0]) == 0
  np.testing.assert_allclose(stats.conf[0, 0], 0.5, rtol=1e-5)
  np.testing.assert_allclose(stats.margin[0, 0], 0.2, rtol=1e-5)
  h = -(0.5 * np.log(0.5) + 0.3 * np.log(0.3) + 0.2 * np.log(0.2))
  np.testing.assert_allclose(stats.entropy[0, 0], h, rtol=1e-5)


def test_the_mask_token_is_never_chosen():
  logits = jnp.zeros((1, 1, 8)).at[..., MASK].set(100.0)
  stats = canvas.token_stats(logits, jax.random.split(jax.random.key(0), 1).reshape(1, 1),
                             sampling_lib.SamplingConfig(), MASK)
  assert int(stats.token[0, 0]) != MASK


def test_commit_rules():
  conf = jnp.array([[0.95, 0.2, 0.5, 0.5, 0.1, 0.97]])
  eligible = jnp.array([[True, True, True, True, True, False]])
  # top-k: ties go to the lowest index; ineligible never chosen.
  np.testing.assert_array_equal(canvas.top_k_mask(conf, eligible, 2),
                                [[True, False, True, False, False, False]])
  # threshold: everything above tau, at least the best (tau >= 1 -> exactly one).
  np.testing.assert_array_equal(canvas.threshold_mask(conf, eligible, 0.4),
                                [[True, False, True, True, False, False]])
  np.testing.assert_array_equal(canvas.threshold_mask(conf, eligible, 1.0),
                                [[True, False, False, False, False, False]])
  # LocalLeap: anchor at 0; neighbour 1 is below the relaxed threshold, 2 is too far.
  np.testing.assert_array_equal(canvas.localleap_mask(conf, eligible, 0.9, 0.15, 1),
                                [[True, True, False, False, False, False]])
  # Information budget: lowest entropies first while the sum fits.
  h = jnp.array([[0.1, 2.0, 0.3, 0.5, 0.05, 0.0]])
  np.testing.assert_array_equal(canvas.budget_mask(h, eligible, 0.5),
                                [[True, False, True, False, True, False]])
  np.testing.assert_array_equal(canvas.budget_mask(h, eligible, 0.0),
                                [[False, False, False, False, True, False]])
  np.testing.assert_array_equal(
      canvas.budget_mask(h, eligible, 0.0, at_least_one=False), [[False] * 6])


def test_decoder_commit_rules_compose_as_documented():
  from decoding import registry  # pylint: disable=g-import-not-at-top
  eligible = jnp.array([[True, True, True, True, False]])
  stats = canvas.TokenStats(token=jnp.zeros((1, 5), jnp.int32),
                            conf=jnp.array([[0.95, 0.5, 0.6, 0.3, 0.99]]),
                            entropy=jnp.array([[0.1, 0.8, 0.3, 1.5, 0.0]]),
                            margin=jnp.array([[0.9, 0.1, 0.4, 0.05, 0.98]]))
  ete = registry.build('ete', dict(threshold=0.9, budget=0.5))
  # Exploit position 0 (0.1 nats); explore: position 2 (0.3) fits the remaining 0.4 nats.
  np.testing.assert_array_equal(ete.commit_mask(stats, eligible, None),
                                [[True, False, True, False, False]])
  llada = registry.build('llada', dict(tokens_per_step=2, ordering='margin'))
  np.testing.assert_array_equal(llada.commit_mask(stats, eligible, None),
                                [[True, False, True, False, False]])
  llada = registry.build('llada', dict(tokens_per_step=1, ordering='entropy'))
  np.testing.assert_array_equal(llada.commit_mask(stats, eligible, None),
                                [[True, False, False, False, False]])
  leap = registry.build('localleap', dict(anchor_threshold=0.9, relaxed_threshold=0.55,
                                          radius=2))
  np.testing.assert_array_equal(leap.commit_mask(stats, eligible, None),
                                [[True, False, True, False, False]])
