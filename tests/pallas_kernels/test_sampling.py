"""Fused sampling kernels (interpret mode on CPU): the kept set equals the sort-based
reference exactly, tokens equal the race over it, `decoding.sampling` agrees, and the
sampled distribution is the filtered one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from decoding import sampling as dec_sampling
from pallas_kernels.sampling import filtered_log_probs, fused_sample, gumbel_noise, search

CONFIGS = [dict(temperature=0.7), dict(temperature=1.0, top_k=7),
           dict(temperature=0.8, top_p=0.9), dict(temperature=1.0, min_p=0.1),
           dict(temperature=1.3, top_k=40, top_p=0.8, min_p=0.02)]


def _logits(B=6, V=300, seed=0):
  x = np.asarray(jax.random.normal(jax.random.key(seed), (B, V))) * 3
  x[1] = np.round(x[1])  # many ties, also at the cut-offs
  x[2] = -5.0  # a flat row
  x[2, :3] = 4.0
  x[3] *= 1e-4  # near-flat: thresholds deep in the tail
  return jnp.asarray(x, jnp.float32)


def _kept(logits, tau, log_s, cfg):
  x = np.asarray(logits / cfg['temperature'])
  keep = x >= np.asarray(tau)[:, None]
  if cfg.get('min_p'):
    m = x.max(-1, keepdims=True)
    ls = np.asarray(log_s)[:, None]
    keep &= (x - m) - ls >= -ls + np.float32(np.log(cfg['min_p']))
  return keep, x


@pytest.mark.parametrize('impl,parts', [('pallas_gpu', 1), ('pallas_gpu', 4),
                                        ('pallas_gpu', 0), ('pallas_tpu', 1)])
def test_kept_set_and_token_match_the_reference(impl, parts):
  """parts > 1: each row split over that many programs (split.py), 0: auto; the same kept
  set and token as the sort-based reference and the race over it."""
  logits = _logits()
  cfgs = CONFIGS if (impl, parts) == ('pallas_gpu', 1) or parts == 4 else CONFIGS[-1:]
  block_v = 64 if parts != 1 else 128
  for cfg in cfgs:
    g = gumbel_noise(jax.random.key(1), logits.shape)
    tok, tau, log_s = jax.jit(lambda l, g: fused_sample(
        l, g, impl=impl, block_v=block_v, parts=parts, return_threshold=True, **cfg))(logits, g)
    keep, x = _kept(logits, tau, log_s, cfg)
    want = np.isfinite(np.asarray(filtered_log_probs(logits, **cfg)))
    np.testing.assert_array_equal(keep, want, err_msg=str(cfg))
    race = np.where(keep, x + np.asarray(g), -np.inf)
    np.testing.assert_array_equal(np.asarray(tok), race.argmax(-1), err_msg=str(cfg))


def test_tokens_equal_decoding_sampling_with_the_same_keys():
  logits = _logits(B=8, V=500, seed=3)
  keys = jax.random.split(jax.random.key(7), 8)
  for cfg in CONFIGS[3:]:
    want = dec_sampling.sample(keys, logits, dec_sampling.SamplingConfig(**cfg))
    for parts in (1, 8):
      got = fused_sample(logits, gumbel_noise(keys, logits.shape), impl='pallas_gpu',
                         block_v=64, parts=parts, **cfg)
      np.testing.assert_array_equal(got, want, err_msg=f'{cfg}, parts {parts}')
  greedy = fused_sample(logits, None, temperature=0.0, impl='pallas_gpu')
  np.testing.assert_array_equal(greedy, jnp.argmax(logits, -1))


def test_sampled_distribution_is_the_filtered_distribution():
  """4000 draws of one row (4000 rows, independent noise): chi-square against the exact
  filtered probabilities; a different filtering is rejected (the test can fail)."""
  V, N = 48, 4000
  cfg = dict(temperature=0.9, top_k=20, top_p=0.85, min_p=0.03)
  row = jax.random.normal(jax.random.key(5), (V,)) * 1.5
  logits = jnp.broadcast_to(row, (N, V))
  tok = jax.jit(lambda g: fused_sample(logits, g, impl='pallas_gpu', **cfg))(
      gumbel_noise(jax.random.key(11), (N, V)))
  counts = np.bincount(np.asarray(tok), minlength=V)
  p = np.exp(np.asarray(filtered_log_probs(row[None], **cfg), np.float64))[0]
  assert counts[p == 0].sum() == 0
  kept = p > 0
  assert stats.chisquare(counts[kept], N * p[kept] / p[kept].sum()).pvalue > 1e-3
  # Negative control: top-k alone (a larger kept set) is rejected.
  p_alt = np.exp(np.asarray(filtered_log_probs(row[None], 0.9, top_k=20), np.float64))[0]
  alt = p_alt > 0
  assert stats.chisquare(counts[alt], N * p_alt[alt] / p_alt[alt].sum()).pvalue < 1e-6


def test_search_finds_the_kth_value_over_the_whole_float_range():
  x = jnp.array([3e38, -3e38, 1e-40, -1e-40, 0.0, -0.0, 1.0, 1.0, -7.5, 2e-7], jnp.float32)
  key = search.to_key(x)
  np.testing.assert_array_equal(search.from_key(key), x)
  j = jnp.arange(1, search.NP + 1)
  for k in range(1, x.size + 1):
    lo, hi = key.min() - 1, key.max()
    for _ in range(search.MAX_PASSES):
      piv = search.pivots(lo, hi, j)
      assert (piv >= lo).all() and (piv < hi).all()
      lo, hi = search.narrow(lo, hi, piv, (key[:, None] > piv).sum(0) < k)
    assert lo + 1 == hi and search.from_key(hi) == jnp.sort(x)[::-1][k - 1], k


@pytest.mark.parametrize('num', [16, 64, 256])
def test_search_converges_within_max_passes_for_any_pivot_count(num):
  """search.max_passes(num) passes of `num` pivots narrow any key interval to one value:
  the k-th largest of values spread over the whole float range, and of values packed close
  together; a pass fewer leaves some interval open (the bound is tight enough to fail)."""
  spread = jnp.array([3e38, -3e38, 1e-40, -1e-40, 0.0, 1.0, 1.0, -7.5, 2e-7, 6e-39],
                     jnp.float32)
  packed = 1.0 + jnp.arange(10, dtype=jnp.float32) * 1.2e-7
  j = jnp.arange(1, num + 1)
  shortfall = False
  for x in (spread, packed):
    key = search.to_key(x)
    for k in range(1, x.size + 1):
      lo, hi = key.min() - 1, key.max()
      for i in range(search.max_passes(num)):
        piv = search.pivots(lo, hi, j, num)
        assert (piv >= lo).all() and (piv < hi).all()
        lo, hi = search.narrow(lo, hi, piv, (key[:, None] > piv).sum(0) < k)
        shortfall |= i == search.max_passes(num) - 2 and lo + 1 != hi
      assert lo + 1 == hi and search.from_key(hi) == jnp.sort(x)[::-1][k - 1], (k, num)
  lo, hi = jnp.int32(-2 ** 31), jnp.int32(2 ** 31 - 1)  # the widest interval
  key = jnp.int32(12345)
  for _ in range(search.max_passes(num)):
    piv = search.pivots(lo, hi, j, num)
    lo, hi = search.narrow(lo, hi, piv, ~(piv < key))
  assert (lo, hi) == (key - 1, key) and shortfall
