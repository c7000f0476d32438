"""Classifier-guided CtrlDiff: γ = 0 is the unguided decoder token for token; a synthetic
classifier that prefers 'even' tokens raises their rate with γ until every row has them (and
first-order guidance towards the other class removes them); the guided distribution is the
product rule computed by hand; bad settings raise."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import decoding
import testlib
from decoding import base, registry
from decoding.diffusion import guidance
from models import attribute as attr_lib

V, MASK, EOS, PAD = 64, 63, 62, 61
B, P, N = 4, 4, 8
PLEN = np.array([4, 3, 4, 2], np.int32)
SAMPLED = decoding.SamplingConfig(temperature=1.0)
COMMON = dict(mask_id=MASK, shift=0, block_causal=1, sizes='4', force_size=4, block_size=4)


def oracle_classifier(vocab: int, good) -> dict:
  """A one-layer AttributeClassifier built by hand whose class-1 logit grows with the share of
  `good` tokens in the row: token v embeds as s_v (e0 - e1) (s = +1 good, -1 bad, 0 for ids
  >= 60: mask, eos, pad), position 0 attends uniformly to every valid token (zero queries and
  keys) and reads the mean along e0 - e1 (a constant e2 - e3 position term keeps the layer
  norms smooth)."""
  D = 8
  p = jax.tree.map(np.array, attr_lib.init_params(jax.random.key(0), vocab, 2, width=D,
                                                   layers=1, max_len=64))
  s = np.where(np.arange(vocab) >= 60, 0.0, np.where(good(np.arange(vocab)), 1.0, -1.0))
  u = np.zeros(D)
  u[0], u[1] = 1.0, -1.0
  w = np.zeros(D)
  w[2], w[3] = 1.0, -1.0
  p['embed'] = s[:, None] * u[None, :]
  p['pos_embed'] = np.broadcast_to(0.5 * w, (64, D)).copy()
  blk = p['block0']
  blk['qkv']['kernel'] = np.concatenate([np.zeros((D, 2 * D)), np.eye(D)], axis=1)
  blk['qkv']['bias'] = np.zeros(3 * D)
  blk['attn_out']['kernel'] = 4.0 * np.eye(D)
  blk['mlp_out']['kernel'] = np.zeros((2 * D, D))
  p['out']['kernel'] = np.stack([np.zeros(D), 0.5 * u], axis=1)  # unsaturated
  p['out']['bias'] = np.zeros(2)
  return jax.tree.map(jnp.asarray, p)


def is_good(v):
  return (v % 2 == 0) & (v < 60)


@pytest.fixture(scope='module')
def setup():
  model, params, prompt, keys = testlib.peaked_diffusion_setup(B, P, V, 60)
  return model, {'target': params, attr_lib.HEAD: oracle_classifier(V, is_good)}, prompt, keys


def generate(setup, sampling=SAMPLED, params=None, **settings):
  model, all_params, prompt, keys = setup
  dec = registry.build('ctrldiff', dict(COMMON, **settings), sampling)
  fn = jax.jit(lambda p, t, l, k: dec.generate(base.Models(model), p, t, l, k,
                                               max_new_tokens=N, cache_size=32, eos_id=EOS,
                                               pad_id=PAD))
  return jax.device_get(fn(params or all_params, prompt, jnp.asarray(PLEN), keys))


def good_share(res):
  toks = res.tokens_BxN
  real = (toks != PAD) & (toks < 60)
  return np.sum(is_good(toks) & real, axis=1) / np.maximum(np.sum(real, axis=1), 1)


@pytest.fixture(scope='module')
def unguided(setup):
  return generate(setup)


def test_scale_zero_is_the_unguided_decoder(setup, unguided):
  model, params, _, _ = setup
  got = generate(setup, params={'target': params['target']}, guidance_scale=0.0,
                 guidance='taylor', guidance_class=0, guidance_top_k=2)
  np.testing.assert_array_equal(got.tokens_BxN, unguided.tokens_BxN)
  np.testing.assert_array_equal(got.target_forwards_B, unguided.target_forwards_B)
  np.testing.assert_array_equal(got.other_forwards_B, 0)


def test_guidance_raises_the_attribute_rate(setup, unguided):
  base_share = good_share(unguided).mean()
  mid = good_share(generate(setup, guidance_scale=5.0, guidance_top_k=16)).mean()
  strong = generate(setup, guidance_scale=200.0, guidance_top_k=16)
  assert base_share < mid < 1.0, (base_share, mid)
  np.testing.assert_array_equal(good_share(strong), 1.0)  # every row, every token
  np.testing.assert_array_equal(strong.other_forwards_B, strong.target_forwards_B - 1)
  for r in (strong, unguided):  # the model's NLL of the committed tokens (unguided, T = 1)
    assert np.all(r.extra['committed'] >= r.num_generated_B)
    assert np.all(r.extra['model_nll_sum'] > 0)


def test_first_order_guidance_steers_too(setup, unguided):
  # Towards class 0 (the other class, also checking the class is honoured): no good tokens.
  away = generate(setup, guidance_scale=200.0, guidance='taylor', guidance_class=0)
  np.testing.assert_array_equal(good_share(away), 0.0)
  assert good_share(unguided).mean() > 0.25


def test_exact_guidance_is_the_product_rule():
  """p_guided(v) ∝ p(v) · (p(y | x[i <- v]) / p(y | x))^γ on the top-k candidates and p(v)
  elsewhere, computed one sequence at a time."""
  Vs, M, K, gamma, y = 7, 2, 3, 1.5, 1
  cls = attr_lib.init_params(jax.random.key(5), Vs, 3, width=16, layers=1, max_len=16)
  cls = jax.tree.map(lambda x: x * 3, cls)  # sharper than at init
  seq = jnp.array([[1, 2, 6, 6, 3, 6], [4, 6, 6, 0, 0, 0]])  # 6 = mask
  valid = jnp.array([[True] * 6, [True] * 3 + [False] * 3])
  idx = jnp.array([[2, 3], [1, 2]])
  logits = jax.random.normal(jax.random.key(6), (2, M, Vs))
  got = jax.jit(lambda lg: guidance.guided_logits(
      {attr_lib.HEAD: cls}, lg, seq, valid, idx, scale=gamma, target_class=y, top_k=K,
      mask_id=6))(logits)
  got = np.asarray(jax.nn.softmax(got, axis=-1))
  one = jax.jit(lambda s, v: attr_lib.log_probs(cls, s[None], v[None])[0, y])
  lp = lambda s, row: float(one(s, valid[row]))
  for row in range(2):
    base_lp = lp(seq[row], row)
    for m in range(M):
      model_p = np.asarray(jax.nn.softmax(logits[row, m].at[6].set(-jnp.inf)))
      top = np.argsort(-model_p)[:K]
      want = model_p.copy()
      for v in top:
        want[v] *= np.exp(gamma * (lp(seq[row].at[idx[row, m]].set(v), row) - base_lp))
      np.testing.assert_allclose(got[row, m], want / want.sum(), rtol=1e-5, atol=1e-7)
  same = guidance.guided_logits({}, logits, seq, valid, idx, scale=0.0, target_class=y)
  assert same is logits


@pytest.mark.parametrize('settings,match', [
    (dict(guidance_scale=-1.0), 'guidance_scale must be >= 0'),
    (dict(guidance_scale=1.0, guidance='soft'), 'guidance must be one of'),
    (dict(guidance_scale=1.0, guidance_top_k=0), 'guidance_top_k'),
    (dict(guidance_scale=1.0, guidance_class=2), 'not a class'),
])
def test_bad_guidance_settings_raise(setup, settings, match):
  model, params, prompt, keys = setup
  dec = registry.build('ctrldiff', dict(COMMON, **settings), SAMPLED)
  with pytest.raises(ValueError, match=match):
    dec.generate(base.Models(model), params, prompt, jnp.asarray(PLEN), keys,
                 max_new_tokens=N, cache_size=32, eos_id=EOS, pad_id=PAD)


def test_missing_classifier_raises(setup):
  model, params, prompt, keys = setup
  dec = registry.build('ctrldiff', dict(COMMON, guidance_scale=1.0), SAMPLED)
  with pytest.raises(ValueError, match="'attribute' tree"):
    dec.generate(base.Models(model), {'target': params['target']}, prompt, jnp.asarray(PLEN),
                 keys, max_new_tokens=N, cache_size=32, eos_id=EOS, pad_id=PAD)
  from models import kind as kind_lib  # pylint: disable=g-import-not-at-top
  kind = kind_lib.ModelKind(attention='block_causal', mask_id=MASK)
  with pytest.raises(ValueError, match='attribute'):
    dec.for_model({'target': kind})
