"""PIPO decoding: never accepting is the PIPO model's own AR decoding (and, untrained and
reading single tokens, `ar` itself); every threshold matches a full-forward reference over the
same chunks; always accepting takes pairs; the chunk cache matches a full forward; misuse
fails clearly."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from testlib import small_config
from decoding import Models, registry, run_decoder
from models import Cache, Transformer, init_params
from models import pipo as pipo_lib
from models.kind import ModelKind

PAD = 0
PROMPTS = [[1, 5, 9, 3], [2, 7], [4, 4, 8, 1, 6, 2, 9, 11, 3], [3]]
N = 10


@pytest.fixture(scope='module')
def lm():
  cfg = small_config(vocab_size=48, num_layers=2, init_std=0.3)
  model = Transformer(cfg)
  params = init_params(model, jax.random.key(7))
  pp = pipo_lib.init_params(cfg, jax.random.key(8))
  k = jax.random.split(jax.random.key(9), 4)
  D = cfg.d_model
  trained = {**pp, 'compress': {**pp['compress'],
                                'w_second': 0.5 * jax.random.normal(k[0], (D, D)),
                                'hole': jax.random.normal(k[1], (D,))},
             'conf': {'w': jax.random.normal(k[2], (2 * D,)),
                      'u': jnp.zeros((2,)), 'b': jnp.zeros(())}}
  return model, params, pp, trained


def _run(model, params, pp, spec, eos=-1, prompts=PROMPTS):
  name, settings = registry.parse_spec(spec)
  return run_decoder(registry.build(name, settings), Models(model),
                     {'target': params, **({'pipo': pp} if pp is not None else {})}, prompts,
                     max_new_tokens=N, cache_size=40, eos_id=eos, pad_id=PAD)


@functools.partial(jax.jit, static_argnums=0)
def _full(model, params, pp, first, second, has, pos, last):
  """Greedy (t1, t2, confidence) after chunk `last` of one row, by a full forward (no cache)."""
  o = pipo_lib.forward(model, params, pp, first, second, has, pos)
  h = o.last_hidden_BxTxD[:, last]
  t1 = jnp.argmax(o.logits_BxTxV[:, last], -1)
  logits2, conf = pipo_lib.extra_token(model.cfg, params, pp, h[:, None], t1[:, None])
  return t1[0], jnp.argmax(logits2[0, 0]), jax.nn.sigmoid(conf[0, 0])


def _reference(model, params, pp, prompt, threshold, eos, pair_prompt=True):
  """One row decoded by recomputing every chunk from scratch each step."""
  step = 2 if pair_prompt else 1
  chunks = [tuple(prompt[i:i + step]) for i in range(0, len(prompt), step)]
  out = []
  C = 40
  while len(out) < N:
    arr = lambda f: jnp.asarray([[f(c) for c in chunks] + [0] * (C - len(chunks))])
    pos = jnp.asarray([list(range(len(chunks))) + [-1] * (C - len(chunks))])
    t1, t2, conf = _full(model, params, pp, arr(lambda c: c[0]),
                         arr(lambda c: c[1] if len(c) > 1 else 0),
                         arr(lambda c: len(c) > 1).astype(bool), pos, len(chunks) - 1)
    t1, t2 = int(t1), int(t2)
    out.append(t1)
    if t1 == eos:
      break
    if float(conf) >= threshold and len(out) < N:
      out.append(t2)
      chunks.append((t1, t2))
      if t2 == eos:
        break
    else:
      chunks.append((t1,))
  return out


def test_untrained_pipo_reading_single_tokens_never_accepting_is_ar(lm):
  """A single-token chunk is the base's embedding at initialisation: with the prompt one
  token per position and no pair accepted, pipo is `ar` token for token (ragged prompts,
  rows ending at different steps)."""
  model, params, pp, _ = lm
  free = [r.tokens for r in _run(model, params, None, 'ar')[0]]
  eos = free[0][3]
  ar_rows, _ = _run(model, params, None, 'ar', eos)
  rows, stats = _run(model, params, pp, 'pipo:threshold=inf:pair_prompt=False', eos)
  assert [r.tokens for r in rows] == [r.tokens for r in ar_rows]
  assert len({len(r.tokens) for r in rows}) > 1
  assert stats.step_tokens_hist[2] == 0 and not stats.lossless


@pytest.mark.parametrize('threshold', [math.inf, 0.5, -math.inf])
def test_pipo_equals_a_full_forward_reference_over_its_chunks(lm, threshold):
  """Cached decoding with pairs in the prompt and any acceptance pattern equals recomputing
  the whole chunk sequence each step; +inf never takes a pair, -inf always does."""
  model, params, _, pp = lm
  ref = [_reference(model, params, pp, p, threshold, eos=-1) for p in PROMPTS]
  eos = ref[2][4]
  ref = [_reference(model, params, pp, p, threshold, eos=eos) for p in PROMPTS]
  rows, stats = _run(model, params, pp, f'pipo:threshold={threshold}', eos)
  assert [r.tokens for r in rows] == ref
  hist = stats.step_tokens_hist
  assert sum(m * c for m, c in enumerate(hist)) == stats.generated
  assert stats.target_forwards == sum(hist)  # prefill's proposal is a step too
  if threshold == math.inf:
    assert hist[2] == 0
  elif threshold == -math.inf:  # a single token only where a row ends (EOS or budget)
    assert hist[1] <= len(PROMPTS) and hist[2] > 0
  else:
    assert hist[1] > len(PROMPTS) and hist[2] > 0


def test_cached_chunk_steps_equal_one_full_forward(lm):
  """Prefill over prompt pairs, then one chunk per call through the cache, gives the logits
  and hidden states of one forward over all chunks."""
  model, params, _, pp = lm
  first = jnp.asarray([[3, 9, 4, 1, 7, 2]])
  second = jnp.asarray([[5, 0, 6, 2, 0, 8]])
  has = jnp.asarray([[True, False, True, True, False, True]])
  pos = jnp.arange(6)[None]
  full = pipo_lib.forward(model, params, pp, first, second, has, pos)
  out = pipo_lib.forward(model, params, pp, first[:, :2], second[:, :2], has[:, :2], pos[:, :2],
                         cache=Cache.init(model.cfg, 1, 8))
  logits, hidden, cache = [out.logits_BxTxV], [out.last_hidden_BxTxD], out.cache
  for t in range(2, 6):
    o = pipo_lib.forward(model, params, pp, first[:, t:t + 1], second[:, t:t + 1],
                         has[:, t:t + 1], pos[:, t:t + 1], cache=cache)
    logits.append(o.logits_BxTxV)
    hidden.append(o.last_hidden_BxTxD)
    cache = o.cache
  np.testing.assert_allclose(jnp.concatenate(logits, 1), full.logits_BxTxV, atol=1e-4)
  np.testing.assert_allclose(jnp.concatenate(hidden, 1), full.last_hidden_BxTxD, atol=1e-4)


def test_prompt_chunks_pair_tokens_and_mark_padding():
  prompt = jnp.asarray([[1, 2, 3, 4, 5], [6, 7, 0, 0, 0], [8, 0, 0, 0, 0]])
  first, second, has, pos, n = pipo_lib.prompt_chunks(prompt, jnp.asarray([5, 2, 1]), True)
  assert first.tolist() == [[1, 3, 5], [6, 0, 0], [8, 0, 0]]
  assert (second * has).tolist() == [[2, 4, 0], [7, 0, 0], [0, 0, 0]]
  assert has.tolist() == [[True, True, False], [True, False, False], [False, False, False]]
  assert pos.tolist() == [[0, 1, 2], [0, -1, -1], [0, -1, -1]] and n.tolist() == [3, 1, 1]


def test_misuse_fails_clearly(lm):
  model, params, _, _ = lm
  with pytest.raises(ValueError, match="Decoder 'pipo' needs PIPO's compressor"):
    _run(model, params, None, 'pipo')
  with pytest.raises(ValueError, match='threshold must be a number'):
    registry.build('pipo', {'threshold': float('nan')})
  with pytest.raises(ValueError, match='needs pipo heads in the target run'):
    registry.build('pipo').for_model({'target': ModelKind()})
  assert registry.build('pipo').for_model({'target': ModelKind(heads=('pipo',))})
  # Lossy, and its steps may cost less than an AR step (half the positions).
  assert not registry.build('pipo').is_lossless() and registry.build('pipo').cheaper_steps()
