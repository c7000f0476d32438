"""Properties of the forward contract: cache == full forward, causality, masks, slots."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from testlib import jit_apply, small_config, sub_jaxprs
from models import BlockCausal, Cache, Transformer, init_params, local_to_cache_mask, tree_mask

TOL = 2e-5  # fp32 logits: different but equivalent summation orders.


class _Model:
  """A Transformer whose `apply` is jitted (see conftest.jit_apply)."""

  def __init__(self, cfg):
    self.module, self.cfg = Transformer(cfg), cfg
    self._apply = jit_apply(self.module)

  def apply(self, variables, *args, **kwargs):
    return self._apply(variables['params'], *args, **kwargs)


def _setup(cfg, seed=0):
  model = _Model(cfg)
  return model, init_params(model.module, jax.random.key(seed))


def _tokens(B, T, V, seed=1):
  return jax.random.randint(jax.random.key(seed), (B, T), 0, V)


@pytest.mark.parametrize('overrides', [
    dict(), dict(qk_norm=True), dict(qkv_bias=True, tie_embeddings=False),
    dict(num_kv_heads=4), dict(num_kv_heads=1),
    dict(min_matmul_rows=8),  # steps of 2 and 6 rows padded to 8, the 10-row prefill not
    dict(min_matmul_rows=8, pad_rows='model')],  # the same rows as dummy tokens of the call
    ids=['base', 'qknorm', 'bias-untied', 'mha', 'mqa', 'padded-rows', 'padded-calls'])
def test_cache_decode_equals_full_forward(overrides):
  cfg = small_config(**overrides)
  model, params = _setup(cfg)
  toks = _tokens(2, 12, cfg.vocab_size)
  full = model.apply({'params': params}, toks).logits_BxTxV
  cache = Cache.init(cfg, 2, 20)
  out = model.apply({'params': params}, toks[:, :5], cache=cache)  # chunked prefill
  logits, cache = [out.logits_BxTxV], out.cache
  out = model.apply({'params': params}, toks[:, 5:8], jnp.arange(5, 8)[None].repeat(2, 0),
                    cache=cache)
  logits.append(out.logits_BxTxV)
  cache = out.cache
  for t in range(8, 12):  # token by token
    out = model.apply({'params': params}, toks[:, t:t + 1], jnp.full((2, 1), t), cache=cache)
    logits.append(out.logits_BxTxV)
    cache = out.cache
  np.testing.assert_allclose(jnp.concatenate(logits, 1), full, atol=TOL, rtol=0)
  np.testing.assert_array_equal(cache.lengths, [12, 12])


def _dependence(model, params, T, mask, dtype=jnp.float32):
  """dep[t, u] = whether logits at t depend on the input embedding at u (via the Jacobian)."""
  cfg = model.cfg
  emb = jax.random.normal(jax.random.key(3), (1, T, cfg.d_model), dtype)

  def f(e):
    return model.module.apply({'params': params}, None, inputs_embeds_BxTxD=e,
                              attn_mask=mask).logits_BxTxV.sum(-1)[0]

  jac = jax.jit(jax.jacrev(f))(emb)[:, 0]  # [T, T, D]
  return np.asarray(jnp.abs(jac).sum(-1) > 0)


def test_causality_through_gradients(cfg):
  model, params = _setup(cfg)
  dep = _dependence(model, params, 6, None)
  np.testing.assert_array_equal(dep, np.tril(np.ones((6, 6), bool)))


def test_bidirectional_sees_everything(cfg):
  model, params = _setup(cfg)
  assert _dependence(model, params, 6, 'bidirectional').all()


def test_block_causal_mask(cfg):
  model, params = _setup(cfg)
  dep = _dependence(model, params, 6, BlockCausal(2))
  blocks = np.arange(6) // 2
  np.testing.assert_array_equal(dep, blocks[None, :] <= blocks[:, None])


def test_explicit_mask_matches_named_modes(cfg):
  model, params = _setup(cfg)
  toks = _tokens(2, 7, cfg.vocab_size)
  causal = model.apply({'params': params}, toks).logits_BxTxV
  explicit = model.apply({'params': params}, toks,
                         attn_mask=jnp.tril(jnp.ones((7, 7), bool))).logits_BxTxV
  np.testing.assert_array_equal(causal, explicit)
  with pytest.raises(ValueError, match='expected'):
    model.apply({'params': params}, toks, attn_mask=jnp.ones((7, 6), bool))
  with pytest.raises(ValueError, match='Unknown attention mask mode'):
    model.apply({'params': params}, toks, attn_mask='sideways')


def test_tree_attention_equals_each_path_as_a_sequence(cfg):
  """A token tree verified in one forward gives each node the logits of its own path."""
  model, params = _setup(cfg)
  prefix = _tokens(1, 4, cfg.vocab_size)[0]
  #        node: 0  1  2  3  4  5
  parents = jnp.array([-1, 0, 0, 1, 1, 2])
  depth = np.array([0, 1, 1, 2, 2, 2])
  nodes = _tokens(1, 6, cfg.vocab_size, seed=5)[0]
  cache = Cache.init(cfg, 1, 16)
  cache = model.apply({'params': params}, prefix[None], cache=cache).cache
  slots = 4 + jnp.arange(6)[None]
  mask = local_to_cache_mask(tree_mask(parents)[None], slots, cache.lengths, 16)
  out = model.apply({'params': params}, nodes[None], jnp.asarray(4 + depth)[None], cache=cache,
                    write_slots_BxT=slots, attn_mask=mask).logits_BxTxV[0]
  for i in range(6):
    path, j = [], i
    while j >= 0:
      path.append(int(nodes[j]))
      j = int(parents[j])
    seq = jnp.concatenate([prefix, jnp.asarray(path[::-1])])
    ref = model.apply({'params': params}, seq[None]).logits_BxTxV[0, -1]
    np.testing.assert_allclose(out[i], ref, atol=TOL)


def test_permuted_write_slots_give_same_logits(cfg):
  model, params = _setup(cfg)
  toks = _tokens(1, 8, cfg.vocab_size)
  pos = jnp.arange(8)[None]
  ref = model.apply({'params': params}, toks, pos, cache=Cache.init(cfg, 1, 8)).logits_BxTxV
  perm = jnp.array([[5, 2, 7, 0, 3, 6, 1, 4]])
  out = model.apply({'params': params}, toks, pos, cache=Cache.init(cfg, 1, 8),
                    write_slots_BxT=perm)
  np.testing.assert_allclose(out.logits_BxTxV, ref, atol=TOL)
  np.testing.assert_array_equal(out.cache.positions[0, perm[0]], np.arange(8))
  # Continue decoding on top of the permuted cache: same as on the ordered one.
  nxt = _tokens(1, 1, cfg.vocab_size, seed=9)
  big = Cache.init(cfg, 1, 9)
  a = model.apply({'params': params}, toks, pos, cache=big)
  a = model.apply({'params': params}, nxt, jnp.array([[8]]), cache=a.cache).logits_BxTxV
  b = model.apply({'params': params}, toks, pos, cache=big, write_slots_BxT=perm)
  b = model.apply({'params': params}, nxt, jnp.array([[8]]), cache=b.cache).logits_BxTxV
  np.testing.assert_allclose(a, b, atol=TOL)


@pytest.mark.parametrize('mask', [None, 'bidirectional', BlockCausal(3)],
                         ids=['causal', 'bidirectional', 'block'])
def test_padding_never_leaks(cfg, mask):
  """Rows padded with negative positions give the logits of the unpadded rows."""
  model, params = _setup(cfg)
  toks = _tokens(2, 9, cfg.vocab_size)
  lengths = [9, 5]
  pos = jnp.where(jnp.arange(9)[None] < jnp.array(lengths)[:, None], jnp.arange(9)[None], -1)
  garbage = toks.at[1, 5:].set(cfg.vocab_size - 1)
  out = model.apply({'params': params}, garbage, pos, attn_mask=mask).logits_BxTxV
  for b, n in enumerate(lengths):
    ref = model.apply({'params': params}, toks[b:b + 1, :n], attn_mask=mask).logits_BxTxV[0]
    np.testing.assert_allclose(out[b, :n], ref, atol=TOL)


def test_truncate_rolls_back(cfg):
  model, params = _setup(cfg)
  toks = _tokens(2, 10, cfg.vocab_size)
  cache = model.apply({'params': params}, toks, cache=Cache.init(cfg, 2, 16)).cache
  cache = cache.truncate(jnp.array([6, 4]))
  nxt = _tokens(2, 1, cfg.vocab_size, seed=11)
  out = model.apply({'params': params}, nxt, jnp.array([[6], [4]]), cache=cache).logits_BxTxV
  for b, n in enumerate([6, 4]):
    seq = jnp.concatenate([toks[b, :n], nxt[b]])[None]
    ref = model.apply({'params': params}, seq).logits_BxTxV[0, -1]
    np.testing.assert_allclose(out[b, 0], ref, atol=TOL)


@pytest.mark.parametrize('T', [1, 5, 200])
def test_begin_write_marks_committed_and_written_slots(T):
  """Key validity = committed (s < length) or written by this call; each written slot holds
  its token's position; padding (negative position or slot) and slots past the end are not
  written. Short calls find their slots by comparison, long ones (past
  cache._COMPARE_MAX) by a scatter: both checked here."""
  rng = np.random.default_rng(T)
  B, S = 3, 256
  cache = Cache.init(small_config(), B, S).replace(
      lengths=jnp.asarray(rng.integers(0, 40, B), jnp.int32))
  slots = rng.integers(-2, S + 3, (B, T))
  pos = np.where(rng.random((B, T)) < 0.2, -1, rng.integers(0, 500, (B, T)))
  slots[:, :T // 2] = np.arange(T // 2)[None] * 3 % S  # distinct slots in every row
  cache = cache.replace(positions=jnp.asarray(rng.integers(-1, 99, (B, S)), jnp.int32))
  got_slots, key_pos, valid = cache.begin_write(jnp.asarray(pos), jnp.asarray(slots))
  for b in range(B):
    ok = (pos[b] >= 0) & (slots[b] >= 0) & (slots[b] < S)
    want = np.arange(S) < int(cache.lengths[b])
    want[slots[b][ok]] = True
    np.testing.assert_array_equal(valid[b], want)
    np.testing.assert_array_equal(np.asarray(got_slots[b])[~ok], S)
    want_pos = np.asarray(cache.positions[b]).copy()
    once = ok & (np.sum(slots[b][None, :] == slots[b][:, None], axis=1) == 1)
    want_pos[slots[b][once]] = pos[b][once]  # slots written twice: either token's position
    ones = np.zeros(S, bool)
    ones[slots[b][once]] = True
    twice = np.zeros(S, bool)
    twice[slots[b][ok & ~once]] = True
    np.testing.assert_array_equal(np.asarray(key_pos[b])[~twice], want_pos[~twice])
    assert ones.any()


def test_gather_moves_tree_path_into_contiguous_slots(cfg):
  model, params = _setup(cfg)
  prefix = _tokens(1, 3, cfg.vocab_size)
  nodes = _tokens(1, 4, cfg.vocab_size, seed=4)
  parents = jnp.array([-1, 0, 0, 2])  # accepted path: nodes 0 -> 2 -> 3
  depth = jnp.array([[0, 1, 1, 2]])
  cache = model.apply({'params': params}, prefix, cache=Cache.init(cfg, 1, 12)).cache
  slots = 3 + jnp.arange(4)[None]
  mask = local_to_cache_mask(tree_mask(parents)[None], slots, cache.lengths, 12)
  cache = model.apply({'params': params}, nodes, 3 + depth, cache=cache,
                      write_slots_BxT=slots, attn_mask=mask).cache
  cache = cache.gather(jnp.array([[3, 5, 6]]), jnp.array([[3, 4, 5]]), jnp.array([6]))
  nxt = _tokens(1, 1, cfg.vocab_size, seed=12)
  out = model.apply({'params': params}, nxt, jnp.array([[6]]), cache=cache).logits_BxTxV[0, 0]
  seq = jnp.concatenate([prefix[0], nodes[0, jnp.array([0, 2, 3])], nxt[0]])[None]
  ref = model.apply({'params': params}, seq).logits_BxTxV[0, -1]
  np.testing.assert_allclose(out, ref, atol=TOL)


def test_layer_range_and_hidden_states(cfg):
  cfg = small_config(num_layers=3)
  model, params = _setup(cfg)
  toks = _tokens(2, 6, cfg.vocab_size)
  full = model.apply({'params': params}, toks, return_hidden=True)
  assert len(full.hidden) == 4 and full.hidden[0].shape == (2, 6, cfg.d_model)
  low = model.apply({'params': params}, toks, layer_range=(0, 1), return_hidden=True)
  high = model.apply({'params': params}, None, inputs_embeds_BxTxD=low.hidden[-1],
                     layer_range=(1, 3))
  np.testing.assert_allclose(high.logits_BxTxV, full.logits_BxTxV, atol=TOL)
  np.testing.assert_allclose(low.hidden[-1], full.hidden[1], atol=TOL)
  with pytest.raises(ValueError, match='inputs_embeds'):
    model.apply({'params': params}, toks, layer_range=(1, 3))
  with pytest.raises(ValueError, match='layer_range'):
    model.apply({'params': params}, toks, layer_range=(2, 5))


def test_inputs_embeds_equal_token_embedding(cfg):
  model, params = _setup(cfg)
  toks = _tokens(2, 5, cfg.vocab_size)
  emb = params['embed']['embedding'][toks]
  a = model.apply({'params': params}, toks).logits_BxTxV
  b = model.apply({'params': params}, None, inputs_embeds_BxTxD=emb).logits_BxTxV
  np.testing.assert_array_equal(a, b)


def test_jit_equals_no_jit_and_batch_invariance(cfg):
  model, params = _setup(cfg)
  toks = _tokens(3, 7, cfg.vocab_size)
  eager = model.module.apply({'params': params}, toks).logits_BxTxV
  jitted = model.apply({'params': params}, toks).logits_BxTxV
  np.testing.assert_allclose(eager, jitted, atol=TOL)
  alone = model.apply({'params': params}, toks[1:2]).logits_BxTxV
  np.testing.assert_allclose(eager[1:2], alone, atol=TOL)


def test_bf16_compute_stays_close_to_fp32(cfg):
  model, params = _setup(cfg)
  toks = _tokens(2, 8, cfg.vocab_size)
  ref = model.apply({'params': params}, toks).logits_BxTxV
  bf16 = _Model(small_config(dtype='bfloat16')).apply({'params': params}, toks).logits_BxTxV
  assert bf16.dtype == jnp.float32
  assert float(jnp.max(jnp.abs(bf16 - ref))) < 0.05 * float(jnp.max(jnp.abs(ref))) + 0.05


def test_config_errors():
  with pytest.raises(ValueError, match='divisible by model.num_kv_heads'):
    small_config(num_heads=4, num_kv_heads=3)
  with pytest.raises(ValueError, match='positive integer'):
    small_config(d_model=0)
  with pytest.raises(ValueError, match='layer_types'):
    small_config(layer_types=('attention',))
  with pytest.raises(ValueError, match='min_matmul_rows'):
    small_config(min_matmul_rows=-1)
  with pytest.raises(ValueError, match='pad_rows'):
    small_config(pad_rows='layers')
  from models import ModelConfig
  with pytest.raises(ValueError, match='Unknown model config keys'):
    ModelConfig.from_dict(dict(small_config().to_dict(), wat=1))


def test_sharded_cache_decode_equals_unsharded(cfg):
  """The cache shards by its logical axes (batch over data, kv heads over tensor)."""
  from models import sharding, transformer  # pylint: disable=g-import-not-at-top
  model, params = _setup(cfg)
  mesh = sharding.make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2})
  toks = _tokens(4, 6, cfg.vocab_size)
  cache = Cache.init(cfg, 4, 8)
  shards = sharding.tree_shardings(cache.logical_axes(), cache, mesh, sharding.DEFAULT_RULES)
  assert shards.layers[0].k.spec == jax.sharding.PartitionSpec(('data', 'fsdp'), 'tensor',
                                                               None, None)
  p_shards = sharding.tree_shardings(transformer.logical_axes(model.module), params, mesh,
                                     sharding.DEFAULT_RULES)
  sharded = model.apply({'params': jax.device_put(params, p_shards)}, jax.device_put(toks),
                        cache=jax.device_put(cache, shards))
  ref = model.apply({'params': params}, toks, cache=cache)
  np.testing.assert_allclose(sharded.logits_BxTxV, ref.logits_BxTxV, atol=TOL)
  np.testing.assert_allclose(sharded.cache.layers[1].v, ref.cache.layers[1].v, atol=TOL)


@pytest.mark.parametrize('remat', ['block', 'dots'])
def test_remat_same_params_loss_and_grads_less_memory(remat):
  """Rematerialisation changes memory, never the function: same parameter tree, same loss
  and gradients (fp32), fewer temporary bytes in the compiled backward pass. A hybrid model
  covers both block kinds."""
  base = small_config(num_layers=2, layer_types=('attention', 'deltaproduct'))
  cfg = dataclasses.replace(base, remat=remat)
  plain, rematted = Transformer(base), Transformer(cfg)
  params = init_params(plain, jax.random.key(0))
  assert (jax.tree.structure(params)
          == jax.tree.structure(init_params(rematted, jax.random.key(0))))
  tokens = _tokens(2, 64, base.vocab_size)

  def compiled(model):  # one compile serves the values and the memory analysis
    def f(p):
      logits = model.apply({'params': p}, tokens).logits_BxTxV
      return -jnp.mean(jax.nn.log_softmax(logits)[:, :-1].max(-1))
    return jax.jit(jax.value_and_grad(f)).lower(params).compile()

  f0, f1 = compiled(plain), compiled(rematted)
  (l0, g0), (l1, g1) = f0(params), f1(params)
  np.testing.assert_allclose(l1, l0, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  temp = lambda f: f.memory_analysis().temp_size_in_bytes
  assert temp(f1) < temp(f0)


def test_remat_config_error():
  with pytest.raises(ValueError, match='model.remat'):
    dataclasses.replace(small_config(), remat='everything')


@pytest.mark.parametrize('tie', [True, False], ids=['tied', 'untied'])
def test_ids_past_valid_vocab_size_get_the_never_logit_everywhere(tie):
  """`valid_vocab_size`: ids the table holds but the vocabulary does not are masked in the
  head itself, so every call form (full, cached, early exit, soft inputs, draft heads) gives
  them NEVER_LOGIT, and the other logits are untouched. Their rows are made to dominate."""
  from models import heads, layers  # pylint: disable=g-import-not-at-top
  valid = 50
  base_cfg = small_config(tie_embeddings=tie)
  cfg = dataclasses.replace(base_cfg, valid_vocab_size=valid)
  params = init_params(Transformer(base_cfg), jax.random.key(0))
  if tie:
    params['embed']['embedding'] = params['embed']['embedding'].at[valid:].multiply(1e3)
  else:
    params['lm_head'] = params['lm_head'].at[:, valid:].multiply(1e3)
  masked, plain = _Model(cfg), _Model(base_cfg)
  toks = _tokens(2, 7, valid)
  outs = {
      'full': (masked.apply({'params': params}, toks).logits_BxTxV,
               plain.apply({'params': params}, toks).logits_BxTxV),
      'cache': (masked.apply({'params': params}, toks, cache=Cache.init(cfg, 2, 8)).logits_BxTxV,
                plain.apply({'params': params}, toks,
                            cache=Cache.init(base_cfg, 2, 8)).logits_BxTxV),
      'early_exit': (masked.apply({'params': params}, toks, layer_range=(0, 1)).logits_BxTxV,
                     plain.apply({'params': params}, toks, layer_range=(0, 1)).logits_BxTxV),
  }
  h = jax.random.normal(jax.random.key(5), (2, 3, cfg.d_model))
  emb = heads.output_embedding(params, cfg)
  head_logits = heads.head_logits
  outs['head'] = (head_logits(h, emb, cfg), head_logits(h, emb, base_cfg))
  for name, (got, ref) in outs.items():
    got, ref = np.asarray(got), np.asarray(ref)
    assert (got[..., valid:] == layers.NEVER_LOGIT).all(), name
    np.testing.assert_array_equal(got[..., :valid], ref[..., :valid], err_msg=name)
    assert (ref.argmax(-1) >= valid).any(), f'{name}: the masked rows would have won'
    assert (got.argmax(-1) < valid).all(), name
  with pytest.raises(ValueError, match='valid_vocab_size'):
    small_config(valid_vocab_size=65)


def test_min_matmul_rows_auto_pads_only_16_bit_gpu_calls(monkeypatch):
  """0 = auto: 2 rows for bf16/fp16 compute on a GPU (the H200's one-row product is slow in
  bf16, the faster one in fp32), 1 elsewhere; an explicit value wins."""
  from models import layers
  for backend, dtype, rows, want in [('gpu', 'bfloat16', 0, 2), ('gpu', 'float16', 0, 2),
                                     ('gpu', 'float32', 0, 1), ('cpu', 'bfloat16', 0, 1),
                                     ('tpu', 'bfloat16', 0, 1), ('gpu', 'float32', 8, 8),
                                     ('gpu', 'bfloat16', 1, 1)]:
    monkeypatch.setattr(jax, 'default_backend', lambda b=backend: b)
    assert layers.matmul_rows(small_config(dtype=dtype, min_matmul_rows=rows)) == want, (
        backend, dtype, rows)


def _count_primitive(jaxpr, name: str) -> int:
  """Equations of primitive `name` in a jaxpr and the jaxprs nested in its equations."""
  return sum((e.primitive.name == name)
             + sum(_count_primitive(sub, name) for sub in sub_jaxprs(e)) for e in jaxpr.eqns)


def test_pad_rows_model_pads_a_call_once_not_every_projection():
  """pad_rows='model': one barrier on the padded input and one on the outputs, where
  'projections' puts two around every attention and MLP projection; calls it cannot pad
  (an explicit mask here) fall back to the projections."""
  def barriers(pad_rows, mask=None):
    cfg = small_config(min_matmul_rows=2, pad_rows=pad_rows)
    model, params = _setup(cfg)
    cache = Cache.init(cfg, 1, 8)
    fn = lambda p, c: model.apply({'params': p}, jnp.ones((1, 1), jnp.int32),
                                  jnp.zeros((1, 1), jnp.int32), cache=c,
                                  attn_mask=mask).logits_BxTxV
    return _count_primitive(jax.make_jaxpr(fn)(params, cache).jaxpr, 'optimization_barrier')
  per_projection = barriers('projections')
  assert barriers('model') == 2 and per_projection >= 2 * 4 * small_config().num_layers
  assert barriers('model', mask=jnp.ones((1, 1, 8), bool)) == per_projection
