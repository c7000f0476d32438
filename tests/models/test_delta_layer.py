"""DeltaProduct layers in the model: the three implementations agree through the cache,
padding is skipped, rollback is exact (chains and trees), hybrids decode with the AR decoder.

Tolerance: fp32 logits agree to 2e-5 (chunked vs scan vs one-token step: equivalent sums in
different orders).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from testlib import jit_apply, small_config
from decoding import Models, SamplingConfig, registry, run_decoder
from models import Cache, Transformer, init_params, local_to_cache_mask, tree_mask
from models import logical_axes, sharding

TOL = 2e-5
CHUNK = 16  # small, so a 13-token forward runs the chunked form (26 sub-steps at n_h = 2)
HYBRID = dict(layer_types=('deltaproduct', 'attention'), delta_num_householder=2,
              delta_chunk_size=CHUNK)


def numpy_params(model, seed=0, std=0.1):
  """Random parameters of the right shapes without compiling Flax's initialisers (their
  threefry code takes ~10 s of CPU per model to compile; equivalence tests need any values).
  Norm scales near 1, A_log in log [1, 16], the rest N(0, std)."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(lambda: init_params(model, jax.random.key(0)))

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if name.endswith("['scale']"):
      x = 1.0 + 0.1 * rng.standard_normal(leaf.shape)
    elif name.endswith("['A_log']"):
      x = np.log(rng.uniform(1.0, 16.0, leaf.shape))
    else:
      x = std * rng.standard_normal(leaf.shape)
    return jnp.asarray(x, leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


class _Model:
  def __init__(self, cfg, seed=0, std=0.1):
    self.cfg, self.module = cfg, Transformer(cfg)
    self.params = numpy_params(self.module, seed, std)
    self._apply = jit_apply(self.module)

  def __call__(self, *args, **kwargs):
    return self._apply(self.params, *args, **kwargs)


@pytest.fixture(scope='module')
def hybrid():
  return _Model(small_config(**HYBRID))


def _tokens(B, T, V=64, seed=1):
  return np.random.default_rng(seed).integers(0, V, (B, T)).astype(np.int32)


def _pos(start, T, B=2):
  return np.broadcast_to(np.arange(start, start + T, dtype=np.int32), (B, T))


REF_LEN = 16


def _ref_logits(m, seq):
  """Logits of one sequence by a no-cache forward, right-padded to REF_LEN (one compile)."""
  n = len(seq)
  toks = np.zeros((1, REF_LEN), np.int32)
  toks[0, :n] = seq
  pos = np.where(np.arange(REF_LEN) < n, np.arange(REF_LEN), -1)[None].astype(np.int32)
  return m(toks, pos).logits_BxTxV[0, :n]


def _ref_cache(m, seq, size=16):
  """The cache after feeding one sequence (right-padded to REF_LEN, one compile)."""
  n = len(seq)
  toks = np.zeros((1, REF_LEN), np.int32)
  toks[0, :n] = seq
  pos = np.where(np.arange(REF_LEN) < n, np.arange(REF_LEN), -1)[None].astype(np.int32)
  return m(toks, pos, cache=Cache.init(m.cfg, 1, size)).cache


@pytest.mark.parametrize('overrides', [
    dict(layer_types=('deltaproduct',), delta_num_householder=1, delta_chunk_size=CHUNK),
    dict(HYBRID, delta_use_gate=False, delta_allow_neg_eigval=False),
    dict(layer_types=('deltaproduct',), delta_num_householder=3, delta_chunk_size=CHUNK,
         delta_use_output_gate=False, delta_conv_size=2)],
    ids=['nh1-gate', 'nh2-hybrid-nogate', 'nh3-conv2'])
def test_chunked_scan_and_step_agree_through_the_cache(overrides):
  """One call over 13 tokens (chunked: 13 * n_h > 16 sub-steps) == prefill of 5 (naive
  scan) + 4 (scan) + 4 single tokens (one-token step): logits and final caches."""
  m = _Model(small_config(num_layers=len(overrides['layer_types']), **overrides))
  toks = _tokens(2, 13)
  one_call = m(toks, cache=Cache.init(m.cfg, 2, 16))
  full = one_call.logits_BxTxV
  out = m(toks[:, :5], cache=Cache.init(m.cfg, 2, 16))
  logits, cache = [out.logits_BxTxV], out.cache
  out = m(toks[:, 5:9], _pos(5, 4), cache=cache)
  logits.append(out.logits_BxTxV)
  cache = out.cache
  for t in range(9, 13):
    out = m(toks[:, t:t + 1], _pos(t, 1), cache=cache)
    logits.append(out.logits_BxTxV)
    cache = out.cache
  np.testing.assert_allclose(np.concatenate(logits, 1), full, atol=TOL, rtol=0)
  np.testing.assert_array_equal(cache.lengths, [13, 13])
  for a, b in zip(jax.tree.leaves(cache.layers), jax.tree.leaves(one_call.cache.layers)):
    np.testing.assert_allclose(a, b, atol=TOL)


def test_padding_is_skipped_anywhere_in_a_call(hybrid):
  """Row 1 has padding in the middle and at the end of the call: its logits and its cache
  equal those of feeding only its valid tokens (padding changes neither the state nor the conv
  buffers)."""
  toks = _tokens(2, 9)
  valid = np.ones((2, 9), bool)
  valid[1, [2, 3, 7, 8]] = False
  pos = np.where(valid, np.cumsum(valid, 1) - 1, -1).astype(np.int32)
  garbage = np.where(valid, toks, 63).astype(np.int32)
  out = hybrid(garbage, pos, cache=Cache.init(hybrid.cfg, 2, 12))
  nxt = _tokens(2, 1, seed=4)
  step = hybrid(nxt, pos.max(1, keepdims=True) + 1, cache=out.cache).logits_BxTxV
  for b in range(2):
    kept = toks[b, valid[b]]
    ref = _ref_logits(hybrid, np.concatenate([kept, nxt[b]]))
    np.testing.assert_allclose(out.logits_BxTxV[b, valid[b]], ref[:-1], atol=TOL)
    np.testing.assert_allclose(step[b, 0], ref[-1], atol=TOL)
  np.testing.assert_array_equal(out.cache.lengths, [9, 5])


def test_rewind_after_verification_equals_feeding_only_kept_tokens(hybrid):
  """Verify 5 tokens with step states, keep 0..5 of them per row, continue: identical to a
  cache that only ever saw the kept tokens (logits, recurrent state, conv buffers, lengths)."""
  toks = _tokens(2, 12)
  cache = hybrid(toks[:, :6], cache=Cache.init(hybrid.cfg, 2, 16)).cache
  ver = hybrid(toks[:, 6:11], _pos(6, 5), cache=cache, return_step_states=True)
  assert ver.step_states.layers[1] is None  # attention layer
  assert ver.step_states.layers[0].state.shape[:2] == (2, 6)
  nxt = _tokens(2, 1, seed=9)
  for keep in ([0, 3], [5, 1]):
    keep = np.asarray(keep, np.int32)
    rewound = ver.cache.rewind(keep, ver.step_states)
    np.testing.assert_array_equal(rewound.lengths, 6 + keep)
    out = hybrid(nxt, (6 + keep)[:, None], cache=rewound)
    for b in range(2):
      seq = toks[b, :6 + keep[b]]
      direct = _ref_cache(hybrid, seq)
      for a, d in zip(jax.tree.leaves(rewound.layers[0]), jax.tree.leaves(direct.layers[0])):
        np.testing.assert_allclose(a[b], d[0], atol=TOL)
      ref = _ref_logits(hybrid, np.concatenate([seq, nxt[b]]))[-1]
      np.testing.assert_allclose(out.logits_BxTxV[b, 0], ref, atol=TOL)


def test_token_tree_with_parents_then_select_accepted_path(hybrid):
  """Each tree node gets the logits of its own path; after accepting a path, gather (attention)
  + select_step (recurrent) continue exactly as if the path had been fed as a sequence."""
  prefix = _tokens(1, 4)
  parents = np.array([-1, 0, 0, 1, 1, 2], np.int32)
  depth = np.array([[0, 1, 1, 2, 2, 2]], np.int32)
  nodes = _tokens(1, 6, seed=5)
  cache = hybrid(prefix, _pos(0, 4, 1), cache=Cache.init(hybrid.cfg, 1, 16)).cache
  slots = 4 + np.arange(6, dtype=np.int32)[None]
  mask = local_to_cache_mask(tree_mask(jnp.asarray(parents))[None], slots, cache.lengths, 16)
  out = hybrid(nodes, 4 + depth, cache=cache, write_slots_BxT=slots, attn_mask=mask,
               parents_BxT=parents[None], return_step_states=True)
  for i in range(6):
    path, j = [], i
    while j >= 0:
      path.append(nodes[0, j])
      j = parents[j]
    ref = _ref_logits(hybrid, np.concatenate([prefix[0], path[::-1]]))[-1]
    np.testing.assert_allclose(out.logits_BxTxV[0, i], ref, atol=TOL)
  accepted = out.cache.gather(np.array([[4, 6, 9]]), np.array([[4, 5, 6]]), np.array([7]))
  accepted = accepted.select_step(np.array([5]), out.step_states)  # path 0 -> 2 -> 5
  nxt = np.array([[3]], np.int32)
  got = hybrid(nxt, np.array([[7]], np.int32), cache=accepted).logits_BxTxV[0, 0]
  ref = _ref_logits(hybrid, np.concatenate([prefix[0], nodes[0, [0, 2, 5]], nxt[0]]))[-1]
  np.testing.assert_allclose(got, ref, atol=TOL)


PROMPTS = [[1, 5, 9, 3, 1, 5, 9], [2, 7], [4, 4, 8, 1, 6, 2, 9, 4, 4]]


def _naive_greedy(m, prompt, n, eos):
  """Argmax of full no-cache forwards, one token at a time."""
  seq = list(prompt)
  for _ in range(n):
    seq.append(int(np.argmax(_ref_logits(m, seq)[-1])))
    if seq[-1] == eos:
      break
  return seq[len(prompt):]


@pytest.fixture(scope='module')
def hybrid_lm():
  """A hybrid with spread logits (greedy outputs vary), an EOS that ends rows at different
  steps, and the naive greedy outputs."""
  m = _Model(small_config(vocab_size=48, **HYBRID), seed=7, std=0.3)
  eos = _naive_greedy(m, PROMPTS[0], 8, -1)[3]
  expected = [_naive_greedy(m, p, 8, eos) for p in PROMPTS]
  assert len({len(e) for e in expected}) > 1, 'rows should finish at different times'
  return m, eos, expected


def _decode(m, name, settings, eos):
  rows, _ = run_decoder(registry.build(name, settings, SamplingConfig()), Models(m.module),
                        {'target': m.params}, PROMPTS, max_new_tokens=8, cache_size=32,
                        eos_id=eos, pad_id=0)
  return [r.tokens for r in rows]


def test_ar_decoder_runs_unchanged_on_a_hybrid(hybrid_lm):
  """decoding/ar.py on a hybrid (recurrent + attention) model equals a naive argmax loop over
  full forwards, with prompts of different lengths (right padding) and EOS at different steps."""
  m, eos, expected = hybrid_lm
  assert _decode(m, 'ar', {}, eos) == expected


@pytest.mark.parametrize('name,settings', [('prompt_lookup', {}),
                                           ('token_recycling', dict(tree_nodes=12, gamma=3))],
                         ids=['chain', 'tree'])
def test_speculative_greedy_on_a_hybrid_equals_ar(hybrid_lm, name, settings):
  """Lossless speculative decoders (a chain: rewind to the accepted prefix; a token tree:
  parents + select_step along the accepted path) on a hybrid target give AR's tokens."""
  m, eos, expected = hybrid_lm
  assert _decode(m, name, settings, eos) == expected


def test_clear_errors(hybrid):
  toks = _tokens(2, 4)
  cache = Cache.init(hybrid.cfg, 2, 8)
  with pytest.raises(ValueError, match='cannot roll back recurrent'):
    cache.truncate(np.array([1, 1]))
  with pytest.raises(ValueError, match='recurrent'):
    hybrid(toks, attn_mask='bidirectional')
  with pytest.raises(ValueError, match='needs a cache'):
    hybrid(toks, return_step_states=True)
  with pytest.raises(ValueError, match='delta_expand_v'):
    small_config(**HYBRID, delta_expand_v=0.3)
  with pytest.raises(ValueError, match='delta_num_householder'):
    small_config(**dict(HYBRID, delta_num_householder=0))
  with pytest.raises(ValueError, match='Unknown layer types'):
    small_config(layer_types=('attention', 'mamba'))


def test_param_count_cache_layout_and_sharding():
  cfg = small_config(layer_types=('deltaproduct', 'attention', 'deltaproduct'), num_layers=3,
                     delta_num_householder=3, delta_expand_v=2.0, delta_num_heads=2)
  model = Transformer(cfg)
  shapes = jax.eval_shape(lambda: init_params(model, jax.random.key(0)))
  assert sum(x.size for x in jax.tree.leaves(shapes)) == cfg.num_params()
  cache = Cache.init(cfg, 4, 8)
  delta = cache.layers[0]
  assert delta.state.shape == (4, 2, 8, 16) and delta.state.dtype == jnp.float32
  assert delta.conv_k.shape == (4, 3, 3, 2, 8) and delta.conv_v.shape == (4, 3, 3, 2, 16)
  assert cache.layers[1].k.shape == (4, cfg.num_kv_heads, 8, cfg.head_dim)
  assert cache.layers[1].v.shape == (4, cfg.num_kv_heads, cfg.head_dim, 8)
  assert cache.gather(np.zeros((4, 1), np.int32), np.zeros((4, 1), np.int32)).layers[0] is delta
  mesh = sharding.make_mesh({'data': 2, 'tensor': 2, 'fsdp': 2})
  sharded = jax.device_put(cache, sharding.tree_shardings(cache.logical_axes(), cache, mesh))
  assert sharded.layers[0].state.sharding.spec[0] == ('data', 'fsdp')
  axes = logical_axes(model)
  assert tuple(axes['layer_0']['delta']['k']) == ('embed', None, 'heads', 'head_dim')
