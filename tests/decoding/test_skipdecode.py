"""SkipDecode: schedule zero is AR; a skipping decode equals one forward with per-position skips
(so the cache is complete where it is read); non-monotone schedules are refused."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from testlib import jit_apply, small_config
from decoding import Models, SamplingConfig, registry, run_decoder
from decoding import skipdecode
from models import Cache, Transformer, init_params

PAD = 0
L = 3
PROMPTS = [[1, 5, 9, 3], [2, 7], [4, 4, 8, 1, 6, 2, 9], [3]]


@pytest.fixture(scope='module')
def lm():
  cfg = small_config(vocab_size=48, num_layers=L, init_std=0.3)
  model = Transformer(cfg)
  return model, init_params(model, jax.random.key(7))


def _run(model, params, spec, prompts=PROMPTS, n=10, eos=-1):
  name, settings = registry.parse_spec(spec)
  dec = registry.build(name, settings)
  return run_decoder(dec, Models(model), {'target': params}, prompts, max_new_tokens=n,
                     cache_size=32, eos_id=eos, pad_id=PAD)


def _reference(model, params, prompt, skip_N, n, eos=-1):
  """Greedy from full no-cache forwards: the input at position q skips the layers of the
  generated token it produces (prompt tokens but the last: none)."""
  apply = jit_apply(model)
  seq, P = list(prompt), len(prompt)
  for i in range(n):
    T = 24
    tokens = np.zeros((1, T), np.int32)
    tokens[0, :len(seq)] = seq
    skip = np.zeros((1, T), np.int32)
    for q in range(P - 1, len(seq)):
      skip[0, q] = skip_N[q - P + 1]
    logits = apply(params, jnp.asarray(tokens), skip_layers_BxT=jnp.asarray(skip)).logits_BxTxV
    seq.append(int(jnp.argmax(logits[0, len(seq) - 1])))
    if seq[-1] == eos:
      break
  return seq[P:]


def test_schedule_zero_equals_ar_on_a_ragged_batch(lm):
  model, params = lm
  ar, _ = _run(model, params, 'ar')
  eos = ar[0].tokens[3]  # rows stop at different times
  ar, _ = _run(model, params, 'ar', eos=eos)
  assert len({len(r.tokens) for r in ar}) > 1
  for spec in ('skipdecode:max_skip=0', 'skipdecode:schedule=0',
               'skipdecode:max_skip=0:skip_from=top'):
    rows, _ = _run(model, params, spec, eos=eos)
    assert [r.tokens for r in rows] == [r.tokens for r in ar], spec
    for r in rows:
      assert r.extra['layer_forwards'] == L * r.target_forwards


def test_skipping_decode_equals_one_forward_with_per_position_skips(lm):
  model, params = lm
  n = 8
  dec = registry.build('skipdecode', {'schedule': '0/0/1/1/2'})
  skip_N = dec.skips(L, n)
  assert skip_N.tolist() == [0, 0, 1, 1, 2, 2, 2, 2]
  rows, stats = _run(model, params, 'skipdecode:schedule=0/0/1/1/2', n=n)
  ar, _ = _run(model, params, 'ar', n=n)
  for r, prompt in zip(rows, PROMPTS):
    assert r.tokens == _reference(model, params, prompt, skip_N, n)
    assert r.extra['layer_forwards'] == int(np.sum(L - skip_N))
  assert [r.tokens for r in rows] != [r.tokens for r in ar]  # skipping changes the output


def test_linear_schedule_and_top_exit(lm):
  model, params = lm
  dec = registry.build('skipdecode', {'min_skip': 1, 'max_skip': 2, 'warmup': 2, 'length': 6})
  assert dec.skips(L, 9).tolist() == [0, 1, 1, 1, 1, 1, 2, 2, 2]
  assert registry.build('skipdecode').skips(4, 5).tolist() == [0, 0, 1, 1, 2]  # half at the end
  # Early exit with a constant skip: token 0 from prefill (all layers), then the first L - 1
  # layers and the head, exactly a forward of the truncated model over the whole sequence.
  rows, _ = _run(model, params, 'skipdecode:schedule=0/1:skip_from=top', n=6)
  apply = jit_apply(model)
  for r, prompt in zip(rows, PROMPTS):
    seq = list(prompt) + r.tokens[:1]
    for _ in range(5):
      tokens = jnp.asarray([seq + [0] * (24 - len(seq))], jnp.int32)
      logits = apply(params, tokens, layer_range=(0, L - 1)).logits_BxTxV
      seq.append(int(jnp.argmax(logits[0, len(seq) - 1])))
    assert r.tokens == seq[len(prompt):]


def test_cache_entries_of_computed_layers_equal_a_full_forward(lm):
  model, params = lm
  tokens = jnp.asarray([[3, 9, 4, 1, 7, 7, 2, 5, 8]], jnp.int32)
  skip = np.asarray([[0, 0, 0, 0, 1, 1, 2, 2, 2]], np.int32)
  T = tokens.shape[1]
  apply = jit_apply(model)
  full = apply(params, tokens, cache=Cache.init(model.cfg, 1, 16),
               skip_layers_BxT=jnp.asarray(skip)).cache
  cache = apply(params, tokens[:, :4], cache=Cache.init(model.cfg, 1, 16)).cache
  step = jax.jit(skipdecode.forward_skipping, static_argnums=(0, 5))
  for t in range(4, T):
    _, cache = step(model, params, tokens[:, t:t + 1], jnp.asarray([[t]]), cache,
                    int(skip[0, t]))
  for layer in range(L):
    computed = skip[0] <= layer
    got, want = cache.layers[layer], full.layers[layer]
    np.testing.assert_allclose(got.k[0, :, :T][:, computed], want.k[0, :, :T][:, computed],
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got.v[0, :, :, :T][..., computed],
                               want.v[0, :, :, :T][..., computed], rtol=1e-5, atol=1e-5)
    assert not np.any(got.k[0, :, :T][:, ~computed])  # skipped entries are never written
  assert int(cache.lengths[0]) == T


def test_bad_schedules_give_clear_errors(lm):
  model, params = lm
  with pytest.raises(ValueError, match='must never decrease.*falls from 2 to 1 at generated '
                                       'token 3'):
    _run(model, params, 'skipdecode:schedule=0/1/2/1')
  with pytest.raises(ValueError, match=r'skips must be in \[0, 2\]'):
    _run(model, params, 'skipdecode:schedule=0/3')
  with pytest.raises(ValueError, match='must start at 0'):
    _run(model, params, 'skipdecode:schedule=1/1')
  with pytest.raises(ValueError, match='min_skip <= max_skip'):
    _run(model, params, 'skipdecode:min_skip=2:max_skip=1')
  with pytest.raises(ValueError, match="skip_from must be 'bottom' or 'top'"):
    _run(model, params, 'skipdecode:skip_from=middle')


def test_a_prompt_alone_equals_the_prompt_in_a_batch(lm):
  """The schedule depends on the generation step only, so a row's output does not depend on
  its batch (greedy and sampled; row keys are per prompt index)."""
  model, params = lm
  dec = registry.build('skipdecode', {'schedule': '0/1/1/2'},
                       SamplingConfig(temperature=1.0, top_k=20))
  kw = dict(max_new_tokens=8, cache_size=32, eos_id=-1, pad_id=PAD, seed=3)
  batch, _ = run_decoder(dec, Models(model), {'target': params}, PROMPTS, **kw)
  for i in range(len(PROMPTS)):
    alone, _ = run_decoder(dec, Models(model), {'target': params}, PROMPTS[:i + 1],
                           batch_size=1, **kw)
    assert alone[i].tokens == batch[i].tokens


def test_composes_with_h2o_eviction(lm):
  """skipdecode takes the H2O cache: schedule zero equals ar with the same policy, and a
  budget holding the sequence equals plain skipdecode."""
  model, params = lm
  ar, _ = _run(model, params, 'ar:h2o=6:recent=2')
  rows, _ = _run(model, params, 'skipdecode:max_skip=0:h2o=6:recent=2')
  assert [r.tokens for r in rows] == [r.tokens for r in ar]
  plain, _ = _run(model, params, 'skipdecode:schedule=0/1/2')
  rows, _ = _run(model, params, 'skipdecode:schedule=0/1/2:h2o=32:recent=3')
  assert [r.tokens for r in rows] == [r.tokens for r in plain]
  evicting, _ = _run(model, params, 'skipdecode:schedule=0/1/2:h2o=5:recent=2')
  assert all(len(r.tokens) == 10 for r in evicting)
