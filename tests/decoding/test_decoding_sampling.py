"""SamplingConfig: the filters against an independent float64 reference, and the sampler's
output distribution (10^5 draws, fixed seed, chi-square and total-variation bounds)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from decoding import sampling as S

V = 16


def reference_probs(logits: np.ndarray, cfg: S.SamplingConfig) -> np.ndarray:
  """float64 numpy reference of temperature -> top-k -> top-p -> min-p."""
  x = logits.astype(np.float64)
  if cfg.temperature == 0:
    out = np.zeros_like(x)
    out[np.argmax(x)] = 1
    return out
  x = x / cfg.temperature
  keep = np.ones_like(x, bool)
  if cfg.top_k:
    keep &= x >= np.sort(x)[::-1][cfg.top_k - 1]
  p = np.where(keep, np.exp(x - x[keep].max()), 0)
  p /= p.sum()
  if cfg.top_p < 1:
    order = np.argsort(-p, kind='stable')
    before = np.cumsum(p[order]) - p[order]
    kept = order[before < cfg.top_p]
    keep &= p >= p[kept].min()
    p = np.where(keep, p, 0)
    p /= p.sum()
  if cfg.min_p > 0:
    keep &= p >= cfg.min_p * p.max()
    p = np.where(keep, p, 0)
    p /= p.sum()
  return p


CONFIGS = [S.SamplingConfig(temperature=1.0), S.SamplingConfig(temperature=0.7),
           S.SamplingConfig(temperature=0.7, top_k=5),
           S.SamplingConfig(temperature=1.0, top_p=0.8),
           S.SamplingConfig(temperature=0.7, top_k=8, top_p=0.9),
           S.SamplingConfig(temperature=1.3, min_p=0.05)]
IDS = ['t1', 't0.7', 't0.7-k5', 'p0.8', 't0.7-k8-p0.9', 't1.3-minp']


@pytest.fixture(scope='module')
def logits():
  return np.asarray(jax.random.normal(jax.random.key(0), (V,)) * 2.0, np.float32)


@pytest.mark.parametrize('cfg', CONFIGS + [S.SamplingConfig()], ids=IDS + ['greedy'])
def test_filters_match_float64_reference(logits, cfg):
  got = np.exp(np.asarray(S.log_probs(jnp.asarray(logits), cfg), np.float64))
  np.testing.assert_allclose(got, reference_probs(logits, cfg), atol=1e-6)


@pytest.mark.parametrize('cfg', CONFIGS, ids=IDS)
def test_sampler_follows_the_distribution(logits, cfg):
  n = 100_000
  keys = jax.random.split(jax.random.key(1), n)
  draws = jax.jit(jax.vmap(lambda k: S.sample(k, jnp.asarray(logits), cfg)))(keys)
  counts = np.bincount(np.asarray(draws), minlength=V)
  p = reference_probs(logits, cfg)
  assert counts[p == 0].sum() == 0, 'sampled a filtered-out token'
  tv = 0.5 * np.abs(counts / n - p).sum()
  assert tv < 0.01, tv  # sampling noise at n = 1e5 is ~0.003-0.005 for V = 16
  support = p > 0
  expected = p[support] * n
  if support.sum() > 1:
    chi2 = stats.chisquare(counts[support], expected)
    assert chi2.pvalue > 0.01, chi2


def test_kth_largest_equals_a_sort_with_ties_and_minus_inf():
  """The k-th value of a descending sort for every k, on rows full of equal values and of
  -inf (whole rows of -inf too)."""
  x = np.asarray(jax.random.randint(jax.random.key(1), (64, 3, 12), 0, 4), np.float32)
  x[x == 0] = -np.inf
  x[5] = -np.inf
  kth = jax.jit(S.kth_largest, static_argnums=1)
  for k in range(1, 13):
    got = kth(jnp.asarray(x), k)
    np.testing.assert_array_equal(got, -np.sort(-x, axis=-1)[..., k - 1:k], err_msg=f'k={k}')


def test_per_row_keys_make_rows_independent_of_the_batch(logits):
  cfg = S.SamplingConfig(temperature=1.0)
  row_keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(0), i))(jnp.arange(4))
  batch = jnp.asarray(np.tile(logits, (4, 1)))
  pos = jnp.full((4,), 7)
  together = S.sample_from_log_probs(S.token_keys(row_keys, pos), S.log_probs(batch, cfg))
  alone = S.sample_from_log_probs(S.token_keys(row_keys[2:3], pos[:1]),
                                  S.log_probs(batch[:1], cfg))
  assert int(together[2]) == int(alone[0])


def test_sample_entropy_matches_float64_reference():
  """No temperature-lowering truncation: the empirical entropy of a flat-ish distribution
  over V = 256 matches the exact float64 entropy within sampling noise."""
  logits = np.asarray(jax.random.normal(jax.random.key(3), (256,)) * 0.5, np.float32)
  p = reference_probs(logits, S.SamplingConfig(temperature=1.0))
  n = 200_000
  draws = jax.jit(jax.vmap(lambda k: S.sample(k, jnp.asarray(logits),
                                              S.SamplingConfig(temperature=1.0))))(
      jax.random.split(jax.random.key(4), n))
  q = np.bincount(np.asarray(draws), minlength=256) / n
  h_ref = -(p * np.log(p)).sum()
  # Plug-in estimate of the cross-entropy E_q[-log p] is unbiased for H(p) when q = p.
  h_emp = -(q * np.log(p)).sum()
  assert abs(h_emp - h_ref) < 0.01, (h_emp, h_ref)


@pytest.mark.parametrize('kwargs,match', [
    (dict(temperature=float('nan')), 'temperature must be a finite number'),
    (dict(temperature=float('inf')), 'temperature must be a finite number'),
    (dict(temperature=float('-inf')), 'temperature must be a finite number'),
    (dict(temperature=-0.5), r'temperature must be 0 \(greedy\) or in'),
    (dict(temperature=1e-9), r'temperature must be 0 \(greedy\) or in'),
    (dict(temperature=1e9), r'temperature must be 0 \(greedy\) or in'),
    (dict(top_k=-1), 'top_k must be >= 0'),
    (dict(top_k=2.5), 'top_k must be an integer'),
    (dict(top_p=float('nan')), 'top_p must be a finite number'),
    (dict(top_p=0.0), r'top_p must be in \(0, 1\]'),
    (dict(top_p=1.5), r'top_p must be in \(0, 1\]'),
    (dict(min_p=float('nan')), 'min_p must be a finite number'),
    (dict(min_p=float('inf')), 'min_p must be a finite number'),
    (dict(min_p=1.0), r'min_p must be in \[0, 1\)'),
    (dict(min_p=-0.1), r'min_p must be in \[0, 1\)'),
], ids=lambda x: str(x) if not isinstance(x, dict) else ','.join(f'{k}={v}' for k, v in x.items()))
def test_non_finite_or_out_of_range_values_are_refused(kwargs, match):
  with pytest.raises(ValueError, match=match):
    S.SamplingConfig(**kwargs)


def test_valid_values_are_kept_as_plain_numbers():
  cfg = S.SamplingConfig(temperature=np.float32(0.5), top_k=np.int64(3), top_p=1, min_p=0)
  assert cfg == S.SamplingConfig(temperature=0.5, top_k=3)
  assert type(cfg.temperature) is float and type(cfg.top_k) is int


def test_uniforms_stay_inside_the_open_interval_and_filtered_tokens_never_win():
  """Every uint32 maps into (0, 1), the extremes included: with u = 1 the race's noise is
  +inf and a token filtered out by top-k (log p = -inf) would win (seen once in 60,000
  three-token rows)."""
  bits = jnp.asarray([0, 1, 2 ** 31, 2 ** 32 - 512, 2 ** 32 - 1], jnp.uint32)
  u = np.asarray(S.uniform_from_bits(bits))
  assert (u > 0).all() and (u < 1).all(), u
  assert len(set(u.tolist())) == 3  # the top 23 bits decide: 0 and 1 share them, as do the last two
  logp = jnp.asarray([[0.0, -jnp.inf, -jnp.inf]] * len(bits))
  race = logp - jnp.log(-jnp.log(S.uniform_from_bits(jnp.stack([bits] * 3, axis=1))))
  assert (np.asarray(jnp.argmax(race, axis=-1)) == 0).all()
  keys = jax.random.split(jax.random.key(0), 4096)
  logits = jnp.asarray([[3.0, 2.0, 1.0] + [-1.0] * 61])
  cfg = S.SamplingConfig(temperature=1.0, top_k=2)
  draws = jax.vmap(lambda k: S.sample(k, logits, cfg))(keys)
  assert set(np.unique(np.asarray(draws)).tolist()) == {0, 1}
