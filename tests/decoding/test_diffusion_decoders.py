"""Diffusion decoders: the exactness claims token for token in fp32 (threshold -> 1 and
FreeDave equal one-token-per-step decoding, WeDLM one-per-step and DiffuSpec equal AR, the
block-diffusion cache equals recomputation), batch invariance, and bad input."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import decoding
import testlib
from decoding import base, registry, runner
from decoding.diffusion import canvas
from models import ModelOutput
from testlib import small_config
from workdir import kind as workdir_kind

V, MASK, EOS, PAD = 64, 63, 62, 61
B, P, N = 3, 8, 12
PLEN = np.array([8, 5, 3], np.int32)
GREEDY = decoding.SamplingConfig()
SAMPLED = decoding.SamplingConfig(temperature=1.0)


@pytest.fixture(scope='module')
def setup():
  return testlib.peaked_diffusion_setup(B, P, V, 60)


_COMPILED = {}


def generate(setup, name, sampling=GREEDY, extras=(), prompt_len=PLEN, rows=None, **settings):
  """Runs decoder `name` (jitted once per settings; rows: a sub-batch)."""
  model, params, prompt, keys = setup
  dec = registry.build(name, settings, sampling)
  if (dec, extras) not in _COMPILED:
    models = base.Models(model, extras=tuple((k, model) for k in extras))
    _COMPILED[dec, extras] = jax.jit(lambda p, t, l, k: dec.generate(
        models, p, t, l, k, max_new_tokens=N, cache_size=64, eos_id=EOS, pad_id=PAD))
  all_params = {'target': params, **{k: params for k in extras}}
  prompt_len = jnp.asarray(prompt_len)
  if rows is not None:
    prompt, prompt_len, keys = prompt[rows], prompt_len[rows], keys[rows]
  return jax.device_get(_COMPILED[dec, extras](all_params, prompt, prompt_len, keys))


BIDIR = dict(mask_id=MASK, shift=0, block_causal=0, block_size=4)


@pytest.fixture(scope='module')
def static_runs(setup):
  """One-token-per-step decoding (llada, k=1, confidence) for the settings FreeDave uses."""
  out = {}
  for key, extra, sampling in [('shift', {'shift': 1}, GREEDY),
                               ('block', {'block_causal': 1}, GREEDY),
                               ('sampled', {}, SAMPLED)]:
    out[key] = generate(setup, 'llada', sampling, **{**BIDIR, **extra})
  return out


def test_threshold_one_equals_one_token_per_step(setup, static_runs):
  got = generate(setup, 'fast_dllm', SAMPLED, threshold=1.0, **BIDIR)
  np.testing.assert_array_equal(got.tokens_BxN, static_runs['sampled'].tokens_BxN)
  np.testing.assert_array_equal(got.target_forwards_B, static_runs['sampled'].target_forwards_B)


@pytest.mark.parametrize('key', ['shift', 'block', 'sampled'])
def test_freedave_equals_static_decoding(setup, static_runs, key):
  extra = {'shift': {'shift': 1}, 'block': {'block_causal': 1}}.get(key, {})
  sampling = SAMPLED if key == 'sampled' else GREEDY
  got = generate(setup, 'freedave', sampling, num_candidates=4, **{**BIDIR, **extra})
  ref = static_runs[key]
  np.testing.assert_array_equal(got.tokens_BxN, ref.tokens_BxN)
  np.testing.assert_array_equal(got.num_generated_B, ref.num_generated_B)
  # Fewer forwards than static decoding: more than one step accepted per verification.
  assert got.target_forwards_B.sum() < ref.target_forwards_B.sum()


def test_block_diffusion_cache_equals_recomputation(setup):
  settings = dict(BIDIR, block_causal=1, shift=1, threshold=0.5)
  plain = generate(setup, 'fast_dllm', **settings)
  cached = generate(setup, 'fast_dllm', cache='prefix', measure_drift=1, **settings)
  np.testing.assert_array_equal(cached.tokens_BxN, plain.tokens_BxN)
  assert cached.extra['drift_max_abs_logit'].max() < 1e-4
  assert cached.extra['drift_top1_disagree'].sum() == 0
  assert cached.extra['drift_positions'].min() > 0


def test_delayed_dual_cache_reports_its_drift(setup):
  got = generate(setup, 'fast_dllm', threshold=0.7, cache='dual', delay=1, measure_drift=1,
                 **BIDIR)
  assert (got.num_generated_B > 0).all()
  drift = got.extra['drift_max_abs_logit']
  assert np.isfinite(drift).all() and drift.max() > 0  # stale K/V change the logits
  assert (got.other_forwards_B == got.target_forwards_B).all()  # one exact check per step


def test_wedlm_one_per_step_equals_greedy_ar(setup):
  ar = generate(setup, 'ar', GREEDY)
  got = generate(setup, 'wedlm', GREEDY, mask_id=MASK, shift=1, block_causal=0, window=4,
                 entropy_threshold=-1.0, distance_penalty=1e3)
  np.testing.assert_array_equal(got.tokens_BxN, ar.tokens_BxN)
  np.testing.assert_array_equal(got.num_generated_B, ar.num_generated_B)


def test_wedlm_parallel_fills_commit_several_tokens_per_step(setup):
  got = generate(setup, 'wedlm', mask_id=MASK, shift=1, block_causal=0, window=6,
                 entropy_threshold=1e9, distance_penalty=0.0)
  assert (got.num_generated_B == N).all()
  assert got.step_tokens_hist_BxM[:, 2:].sum() > 0
  assert (got.target_forwards_B < N).all()


def test_diffuspec_equals_ar(setup):
  ar = generate(setup, 'ar', SAMPLED)
  got = generate(setup, 'diffuspec', SAMPLED, extras=('drafter',), mask_id=MASK, shift=1,
                 draft_len=4)
  np.testing.assert_array_equal(got.tokens_BxN, ar.tokens_BxN)
  assert (got.extra['accepted'] <= got.extra['drafted']).all()
  assert got.other_forwards_B.sum() > 0


def test_rows_give_the_same_output_alone_and_in_a_batch(setup):
  # The prefix cache refreshes per row at block starts: the hardest case for invariance.
  settings = dict(BIDIR, threshold=0.6, cache='prefix', measure_drift=1)
  batch = generate(setup, 'fast_dllm', **settings)
  assert batch.extra['drift_max_abs_logit'].max() > 0   # approximate, and measured
  for r in range(B):
    alone = generate(setup, 'fast_dllm', rows=np.array([r]), **settings)
    np.testing.assert_array_equal(alone.tokens_BxN[0], batch.tokens_BxN[r])
    assert alone.target_forwards_B[0] == batch.target_forwards_B[r]
    np.testing.assert_allclose(alone.extra['drift_max_abs_logit'][0],
                               batch.extra['drift_max_abs_logit'][r], rtol=1e-3, atol=1e-5)


def test_guided_diffusion_runs_and_counts_guide_forwards(setup):
  got = generate(setup, 'guided_diffusion', extras=('guide',), guide_threshold=0.5, **BIDIR)
  assert (got.num_generated_B == N).all()
  np.testing.assert_array_equal(got.other_forwards_B, got.target_forwards_B)


@dataclasses.dataclass(frozen=True)
class AlwaysEOS:
  """A stand-in model whose every prediction is <eos> (an all-EOS canvas)."""
  cfg: object

  def apply(self, variables, tokens_BxT, positions_BxT=None, cache=None, **kwargs):
    del variables, positions_BxT, kwargs
    logits = jnp.where(jnp.arange(V) == EOS, 30.0, 0.0)
    logits = jnp.broadcast_to(logits, tokens_BxT.shape + (V,)).astype(jnp.float32)
    return ModelOutput(logits_BxTxV=logits, cache=cache, hidden=None,
                       last_hidden_BxTxD=jnp.zeros(tokens_BxT.shape + (1,)))


@pytest.mark.parametrize('name,settings', [
    ('fast_dllm', dict(cache='dual', threshold=0.5)), ('freedave', {}),
    ('wedlm', dict(window=4)), ('diffuspec', dict(draft_len=3)),
])
def test_an_all_eos_model_stops_after_one_token(setup, name, settings):
  _, params, prompt, keys = setup
  fake = AlwaysEOS(small_config(vocab_size=V))
  dec = registry.build(name, {**BIDIR, **settings})
  extras = (('drafter', fake),) if name == 'diffuspec' else ()
  out = dec.generate(base.Models(fake, extras=extras), {'target': params, 'drafter': params},
                     prompt, jnp.asarray(PLEN), keys, max_new_tokens=N, cache_size=64,
                     eos_id=EOS, pad_id=PAD)
  np.testing.assert_array_equal(out.num_generated_B, 1)
  np.testing.assert_array_equal(out.tokens_BxN[:, 0], EOS)
  assert (out.tokens_BxN[:, 1:] == PAD).all()
  assert out.target_forwards_B.max() <= 3


def test_bad_input_gives_clear_errors(setup):
  model, params, _, _ = setup
  dec = registry.build('fast_dllm', BIDIR)
  models = base.Models(model)
  with pytest.raises(ValueError, match='empty'):
    runner.run_decoder(dec, models, {'target': params}, [[1, 2], []], max_new_tokens=4,
                       cache_size=32, eos_id=EOS, pad_id=PAD)
  with pytest.raises(ValueError, match='needs .* cache slots'):
    runner.run_decoder(dec, models, {'target': params}, [list(range(30))], max_new_tokens=8,
                       cache_size=32, eos_id=EOS, pad_id=PAD)
  unset = registry.build('llada', {'block_size': 4})
  with pytest.raises(ValueError, match='mask_id is unset'):
    runner.run_decoder(unset, models, {'target': params}, [[1, 2, 3]], max_new_tokens=4,
                       cache_size=32, eos_id=EOS, pad_id=PAD)
  with pytest.raises(ValueError, match="cache='dual' is for bidirectional"):
    bad = registry.build('fast_dllm', dict(BIDIR, block_causal=1, cache='dual'))
    runner.run_decoder(bad, models, {'target': params}, [[1, 2, 3]], max_new_tokens=4,
                       cache_size=32, eos_id=EOS, pad_id=PAD)
  with pytest.raises(ValueError, match='drafter'):
    registry.build('diffuspec', BIDIR).extra_models()


def test_for_model_reads_the_run_config():
  # A run config without a recorded kind (an older checkpoint) -> its kind -> the settings.
  def kinds(config):
    return {'target': workdir_kind.from_config(config, tokenizer_mask_id=259)}
  dec = registry.build('llada', {})
  got = dec.for_model(kinds({'objective': 'block_diffusion',
                             'diffusion': {'shift': True, 'block_size': 8}}))
  assert (got.mask_id, got.shift, got.block_causal, got.block_size) == (259, 1, 1, 8)
  got = dec.for_model(kinds({'objective': 'masked_diffusion', 'diffusion': {'shift': False}}))
  assert (got.mask_id, got.shift, got.block_causal, got.block_size) == (259, 0, 0, 32)
  assert canvas.DiffusionDecoder.lossless is False
  with pytest.raises(ValueError, match='needs a diffusion model'):
    dec.for_model(kinds({'objective': 'ar'}))
