"""CtrlDiff decoding: with the block size forced to a constant b it is the fixed-size block
diffusion decoder (tokens and forwards, ragged batch); the predictor's choices are allowed
sizes; every block is aligned and its size is one of the set; bad settings raise."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import decoding
import testlib
from decoding import base, registry
from models import block_size as bs_lib

V, MASK, EOS, PAD = 64, 63, 62, 61
B, P, N = 3, 8, 12
PLEN = np.array([8, 5, 3], np.int32)
GREEDY = decoding.SamplingConfig()
SAMPLED = decoding.SamplingConfig(temperature=1.0)


@pytest.fixture(scope='module')
def setup():
  model, params, prompt, keys = testlib.peaked_diffusion_setup(B, P, V, 60)
  head = dict(bs_lib.init_params(jax.random.key(3), model.cfg.d_model, 3))
  # A large position embedding makes the choice vary from block to block (mixed partitions).
  head['pos_embed'] = head['pos_embed'] * 100
  return model, {'target': params, bs_lib.HEAD: head}, prompt, keys


def generate(setup, name, sampling=GREEDY, **settings):
  model, params, prompt, keys = setup
  dec = registry.build(name, settings, sampling)
  fn = jax.jit(lambda p, t, l, k: dec.generate(base.Models(model), p, t, l, k,
                                               max_new_tokens=N, cache_size=64, eos_id=EOS,
                                               pad_id=PAD))
  return jax.device_get(fn(params, prompt, jnp.asarray(PLEN), keys))


COMMON = dict(mask_id=MASK, shift=0, block_causal=1)


@pytest.mark.parametrize('b,k,shift,sampled', [(2, 0, 0, False), (4, 1, 1, False),
                                              (8, 3, 0, True)],
                         ids=['b2-all', 'b4-k1-shift', 'b8-k3-sampled'])
def test_forced_size_equals_fixed_block_decoder(setup, b, k, shift, sampled):
  sampling = SAMPLED if sampled else GREEDY
  fixed = generate(setup, 'llada', sampling, **dict(COMMON, shift=shift), block_size=b,
                   tokens_per_step=k or b, cache='prefix')
  got = generate(setup, 'ctrldiff', sampling, **dict(COMMON, shift=shift), sizes='2,4,8',
                 force_size=b, block_size=b, tokens_per_step=k)
  np.testing.assert_array_equal(got.tokens_BxN, fixed.tokens_BxN)
  np.testing.assert_array_equal(got.num_generated_B, fixed.num_generated_B)
  np.testing.assert_array_equal(got.target_forwards_B, fixed.target_forwards_B)
  np.testing.assert_array_equal(got.extra['block_size_sum'], b * got.extra['blocks'])


def test_predicted_sizes_are_allowed_and_rows_match_alone(setup):
  got = generate(setup, 'ctrldiff', **COMMON, sizes='2,4,8', block_size=4, threshold=0.5)
  assert np.all(got.num_generated_B == N)  # no EOS in this vocabulary slice: full canvases
  sizes = got.extra['block_size_sum'] / got.extra['blocks']
  assert np.all((sizes >= 2) & (sizes <= 8))
  # Forwards: prefill + one step per block + one boundary forward per block after the first.
  np.testing.assert_array_equal(got.target_forwards_B, 1 + 2 * got.extra['blocks'] - 1)
  # The chosen sizes differ between rows or blocks (the test exercises mixed partitions).
  assert len(set(np.round(sizes, 3))) > 1 or np.any(sizes != np.round(sizes))
  model, params, prompt, keys = setup
  dec = registry.build('ctrldiff', dict(COMMON, sizes='2,4,8', block_size=4), GREEDY)
  one = jax.jit(lambda t, l, k: dec.generate(base.Models(model), params, t, l, k,
                                             max_new_tokens=N, cache_size=64, eos_id=EOS,
                                             pad_id=PAD))
  for row in range(B):
    alone = jax.device_get(one(prompt[row:row + 1], jnp.asarray(PLEN[row:row + 1]),
                               keys[row:row + 1]))
    np.testing.assert_array_equal(alone.tokens_BxN[0], got.tokens_BxN[row])
    np.testing.assert_array_equal(alone.target_forwards_B[0], got.target_forwards_B[row])


def test_choose_takes_the_largest_confident_size():
  logits = jnp.array([[5.0, 5.0, -5.0], [-5.0, -5.0, -5.0], [5.0, -5.0, 5.0]])
  np.testing.assert_array_equal(bs_lib.choose(logits, (2, 4, 8), 0.5), [4, 2, 8])
  with pytest.raises(ValueError, match='divide'):
    bs_lib.parse_sizes('2,3')
  with pytest.raises(ValueError, match='positive'):
    bs_lib.parse_sizes('0,2')


@pytest.mark.parametrize('settings,match', [
    (dict(force_size=3), 'not one of sizes'),
    (dict(block_size=16), 'must be one of'),
    (dict(threshold=1.5), 'threshold'),
    (dict(tokens_per_step=-1), 'tokens_per_step'),
    (dict(sizes='4,6'), 'divide'),
])
def test_bad_settings_raise(setup, settings, match):
  with pytest.raises(ValueError, match=match):
    generate(setup, 'ctrldiff', **{**COMMON, 'sizes': '2,4,8', 'block_size': 4, **settings})


def test_missing_predictor_params_raise(setup):
  model, params, prompt, keys = setup
  dec = registry.build('ctrldiff', dict(COMMON, sizes='2,4,8', block_size=4), GREEDY)
  with pytest.raises(ValueError, match='ctrldiff'):
    dec.generate(base.Models(model), {'target': params['target']}, prompt, jnp.asarray(PLEN),
                 keys, max_new_tokens=N, cache_size=64, eos_id=EOS, pad_id=PAD)
