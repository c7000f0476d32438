"""impl='auto': the table's entries, the decisions it makes per platform / dtype / mask kind /
shape (the platform faked), its fallbacks, and that 'auto' on CPU equals the reference."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels import attention as attention_ops
from pallas_kernels import common, dispatch, dispatch_refresh, dispatch_table
from pallas_kernels.attention import vendor
from pallas_kernels.decode_attention import ancestor_mask, decode_attention, tree_attention
from pallas_kernels.decode_attention import choose_impl as decode_choose
from pallas_kernels.flash_attention import choose_impl as flash_choose
from pallas_kernels.flash_attention import flash_attention, mask_case

ROOT = pathlib.Path(__file__).resolve().parents[2]
BF16, F16, F32 = jnp.bfloat16, jnp.float16, jnp.float32


# --- the table ---

@pytest.mark.parametrize('op,platform,case', [
    (op, p, c) for op, cases in dispatch_table.CASES.items() for p in dispatch_table.PLATFORMS
    for c in cases])
def test_every_entry_names_a_real_impl_and_its_evidence(op, platform, case):
  e = dispatch_table.TABLE[(op, platform, case)]
  assert e.impl in dispatch_table.OP_IMPLS[op] and e.fallback in dispatch_table.OP_IMPLS[op]
  assert e.why
  if e.source == dispatch_table.UNMEASURED:
    assert not e.rows
  else:
    text = (ROOT / e.source).read_text()
    assert e.rows, 'a measured entry quotes the rows that back it'
    for row in e.rows:
      assert row in text, f'{row!r} is not in {e.source}'
  if e.impl in ('pallas', 'mosaic'):  # only a kernel that passed its on-device check
    assert e.checked and e.source != dispatch_table.UNMEASURED
  if platform == 'cpu':
    assert e.impl == 'xla'


def test_gpu_entries_agree_with_the_committed_measurement():
  proposals = dispatch_refresh.proposals_from_results(
      (ROOT / dispatch_table.KERNELS_MD).read_text())
  assert len(proposals) >= 6
  for key, (impl, why) in proposals.items():
    assert dispatch_table.TABLE[key].impl == impl, (key, why)


def test_proposals_flip_when_ours_wins_and_not_when_unchecked():
  text = (ROOT / dispatch_table.KERNELS_MD).read_text()
  faster = text.replace('| 0.2915 | 0.5175 |', '| 0.9915 | 1.76 |')
  proposals = dispatch_refresh.proposals_from_results(faster)
  assert proposals[('attention', 'gpu', 'tree')][0] == 'pallas'
  # Decode stays ours only while its check passes.
  broken = text.replace('| decode | pallas | B2 S4096 H16 K4 D128 | bfloat16 | 0.005128 | 0.03 | True |',
                        '| decode | pallas | B2 S4096 H16 K4 D128 | bfloat16 | 0.5 | 0.03 | False |')
  proposals = dispatch_refresh.proposals_from_results(broken)
  assert proposals[('attention', 'gpu', 'decode')][0] == 'xla'
  # Delta rule flips to ours once its float32 rows pass.
  fixed = text.replace('| 0.0001 | False |', '| 0.0001 | True |')
  proposals = dispatch_refresh.proposals_from_results(fixed)
  assert proposals[('delta_rule', 'gpu', 'chunked')][0] == 'pallas'


def test_table_markdown_lists_every_case():
  md = dispatch_table.table_markdown()
  assert md.count('\n') == 1 + sum(len(c) for c in dispatch_table.CASES.values())
  assert '| attention | causal | cudnn | splash | xla |' in md


# --- decisions ---

DECISIONS = [
    # op, case, platform, dtype, head_dim, T, S, extra, expected impl, words in the reason
    ('attention', 'causal', 'gpu', BF16, 128, 1024, 1024, {}, 'cudnn', 'cuDNN beat'),
    ('attention', 'causal', 'gpu', F16, 64, 1024, 1024, {}, 'cudnn', ''),
    ('attention', 'causal', 'gpu', F32, 128, 1024, 1024, {}, 'xla', 'not float32'),
    ('attention', 'causal', 'gpu', BF16, 512, 1024, 1024, {}, 'pallas', '<= 256'),
    ('attention', 'causal', 'gpu', BF16, 100, 1024, 1024, {}, 'pallas', 'multiple of 8'),
    ('attention', 'causal', 'tpu', BF16, 128, 1024, 1024, {}, 'splash', 'splash'),
    ('attention', 'causal', 'tpu', BF16, 128, 1000, 1000, {}, 'xla', 'multiples of 128'),
    ('attention', 'causal', 'cpu', BF16, 128, 1024, 1024, {}, 'xla', 'CPU'),
    ('attention', 'segments', 'gpu', BF16, 128, 1024, 1024, {}, 'pallas', 'segment ids'),
    ('attention', 'segments', 'gpu', F32, 128, 1024, 1024, {}, 'xla', 'on-device check'),
    ('attention', 'segments', 'tpu', F32, 128, 1024, 1024, {}, 'splash', ''),
    ('attention', 'positions', 'gpu', BF16, 128, 1000, 1024, {}, 'pallas', ''),
    ('attention', 'positions', 'tpu', BF16, 128, 1024, 1024, {}, 'xla', ''),
    ('attention', 'explicit', 'gpu', BF16, 128, 64, 2112, {'has_mask': True}, 'cudnn', '0.2915'),
    ('attention', 'explicit', 'gpu', BF16, 128, 63, 2112, {'has_mask': True}, 'pallas', 'even'),
    ('attention', 'explicit', 'gpu', F32, 128, 64, 2112, {'has_mask': True}, 'xla', ''),
    ('attention', 'explicit', 'tpu', BF16, 128, 1024, 1024, {'has_mask': True}, 'xla', ''),
    ('attention', 'decode', 'gpu', BF16, 128, 1, 4096, {}, 'pallas', '1.38x'),
    ('attention', 'decode', 'gpu', BF16, 128, 1, 4096, {'cache_layout': True}, 'xla', 'not yet checked'),
    ('attention', 'decode', 'gpu', F32, 128, 1, 4096, {}, 'xla', 'float32'),
    ('attention', 'decode', 'tpu', BF16, 128, 1, 4096, {}, 'xla', 'TPU'),
    ('attention', 'verify', 'gpu', BF16, 128, 64, 2112, {'has_mask': True}, 'cudnn', '0.2915'),
    ('attention', 'verify', 'gpu', BF16, 128, 63, 2112, {'has_mask': True}, 'pallas', 'even'),
    ('attention', 'verify', 'gpu', F32, 128, 64, 2112, {'has_mask': True}, 'xla', ''),
    ('attention', 'verify', 'tpu', BF16, 128, 64, 2112, {'has_mask': True}, 'xla', 'TPU'),
    ('attention', 'tree', 'gpu', BF16, 128, 64, 2048, {'has_mask': True}, 'cudnn', '0.5632'),
    ('attention', 'tree', 'gpu', F32, 128, 64, 2048, {'has_mask': True}, 'xla', ''),
    ('delta_rule', 'chunked', 'gpu', F32, None, None, None, {}, 'xla', 'failed'),
    ('sampling', 'top_p', 'gpu', F32, None, None, None, {}, 'xla', '0.10-0.94x'),
    ('sampling', 'top_k', 'gpu', F32, None, None, None, {}, 'xla', 'unmeasured'),
    ('spec_verify', 'chain', 'gpu', F32, None, None, None, {}, 'xla', 'never'),
    ('spec_verify', 'tree', 'gpu', F32, None, None, None, {}, 'xla', 'neither checked'),
    ('spec_verify', 'tree', 'tpu', F32, None, None, None, {}, 'xla', ''),
]


@pytest.mark.parametrize('op,case,platform,dtype,Dh,T,S,extra,want,words', DECISIONS,
                         ids=[f'{d[0]}-{d[1]}-{d[2]}-{jnp.dtype(d[3]).name}-Dh{d[4]}-T{d[5]}'
                              f'-S{d[6]}{"-" + "-".join(d[7]) if d[7] else ""}'
                              for d in DECISIONS])
def test_decision(op, case, platform, dtype, Dh, T, S, extra, want, words):
  c = dispatch.choose(op, case, platform=platform, dtype=dtype, head_dim=Dh, q_len=T, kv_len=S,
                      **extra)
  assert c.impl == want, c.reason
  assert words in c.reason
  if c.impl != c.entry.impl:  # a fallback says what was refused and why
    assert 'so ' + want in c.reason


def test_unknown_case_is_an_error():
  with pytest.raises(ValueError, match='Unknown dispatch case'):
    dispatch.choose('attention', 'sliding', platform='gpu')


@pytest.fixture
def fake_gpu(monkeypatch):
  monkeypatch.setattr(common, 'platform', lambda: 'gpu')


def _arrays(B=2, T=16, S=16, H=4, K=2, Dh=32, dtype=F32, seed=0):
  ks = jax.random.split(jax.random.key(seed), 3)
  return (jax.random.normal(ks[0], (B, T, H, Dh), dtype),
          jax.random.normal(ks[1], (B, S, K, Dh), dtype),
          jax.random.normal(ks[2], (B, S, K, Dh), dtype))


@pytest.mark.parametrize('kw,case', [
    ({}, 'causal'),
    ({'causal': False}, 'causal'),
    ({'window': 4}, 'causal'),
    ({'causal': False, 'window': 4}, 'positions'),
    ({'segments': True}, 'segments'),
    ({'default_positions': False}, 'positions'),
    ({'block_causal_size': 4}, 'positions'),
    ({'T': 8}, 'positions'),
    ({'dense': True, 'segments': True}, 'explicit'),
])
def test_flash_mask_case(kw, case):
  base = dict(default_positions=True, segments=False, dense=False, causal=True,
              block_causal_size=None, window=0)
  T = kw.pop('T', 16)
  assert mask_case(T, 16, **{**base, **kw}) == case


def test_entry_points_read_the_faked_platform(fake_gpu):
  """The op-level functions and the model's attention classify the call and consult the
  table on the (faked) platform."""
  q, k, _ = _arrays(T=64, S=64, dtype=BF16)
  flash = lambda **kw: flash_choose(q, k, default_positions=True, segments=False, dense=False,
                                    causal=True, block_causal_size=None, window=0, **kw).impl
  assert flash() == 'cudnn'
  assert flash(platform='tpu') == 'xla'  # T = 64 is not a multiple of splash's 128 blocks
  assert flash_choose(q.astype(F32), k.astype(F32), default_positions=True, segments=False,
                      dense=False, causal=True, block_causal_size=None, window=0).impl == 'xla'
  # The model's masked attention: few rows over a cache -> decode, else explicit.
  q1, kc, _ = _arrays(T=1, S=256, dtype=BF16)
  assert attention_ops.choose_impl(q1, kc).impl == 'pallas'
  k_cache = jnp.swapaxes(kc, 1, 2)  # [B, K, S, Dh]: the kernels would copy it
  assert attention_ops.choose_impl(q1, k_cache, kv_layout='cache').impl == 'xla'
  assert attention_ops.choose_impl(q, k).impl == 'cudnn'
  # Rows per kv head (T x G, G 4 here) over a cache decide the case; no cache: explicit.
  assert [attention_ops.call_case(T, S, 4) for T, S in ((1, 256), (32, 256), (64, 256),
                                                       (129, 1024), (64, 64))] == [
      'decode', 'decode', 'verify', 'explicit', 'explicit']
  q64, kv, _ = _arrays(T=64, S=2112, H=8, K=2, dtype=BF16)
  verify = attention_ops.choose_impl(q64, kv)
  assert verify.impl == 'cudnn' and '0.2915' in verify.reason
  assert attention_ops.choose_impl(q, k, platform='cpu').impl == 'xla'
  assert decode_choose(q1, kc).impl == 'pallas'
  q4 = q[:, :4]  # 4 tree nodes over 256 slots: T 4 and S 260 even, as cuDNN needs
  assert decode_choose(q4, kc, tree=True).impl == 'cudnn'
  assert decode_choose(q1, kc, tree=True).impl == 'pallas'  # T 1: odd
  assert decode_choose(q4.astype(F32), kc, tree=True).impl == 'xla'


# --- what runs ---

@pytest.fixture
def cudnn_as_xla(monkeypatch):
  """Runs the cuDNN wrapper's call through jax's XLA implementation (same arguments), and
  records the calls."""
  calls = []

  def dpa(*args, implementation, **kw):
    assert implementation == 'cudnn'
    calls.append(kw)
    return jax.nn.dot_product_attention(*args, implementation='xla', **kw)

  monkeypatch.setattr(vendor, '_dot_product_attention', dpa)
  return calls


def _ref(q, k, v, mask):
  return attention_ops.attention_reference(q, k, v, mask, q.shape[-1] ** -0.5)


def _close(a, b, tol=2e-5):
  np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), atol=tol,
                             rtol=tol)


@pytest.mark.parametrize('kw', [{}, {'causal': False}, {'window': 5}, {'segments': True},
                                {'block_causal_size': 4}])
def test_cudnn_path_arguments_give_the_reference(cudnn_as_xla, kw):
  q, k, v = _arrays()
  T = q.shape[1]
  seg = jnp.array([[0] * 7 + [1] * 9, [0] * 16])
  i = jnp.arange(T)
  mask = jnp.ones((T, T), bool)
  if kw.get('causal', True):
    b = kw.get('block_causal_size', 1)
    mask &= (i[None] // b) <= (i[:, None] // b)
  if kw.get('window'):
    mask &= i[None] > i[:, None] - kw['window']
  mask = jnp.broadcast_to(mask, (2, T, T))
  call = dict(kw)
  if call.pop('segments', False):
    call.update(q_segment_ids_BxT=seg, kv_segment_ids_BxS=seg)
    mask = mask & (seg[:, :, None] == seg[:, None, :])
  _close(flash_attention(q, k, v, impl='cudnn', **call), _ref(q, k, v, mask))
  is_mask_free = not (kw.get('segments') or kw.get('block_causal_size'))
  assert (cudnn_as_xla[-1]['mask'] is None) == is_mask_free


def test_cudnn_gives_zeros_where_nothing_is_visible(cudnn_as_xla):
  """The model's padding rows: cuDNN's mask is a bias (it would average the values)."""
  q, k, v = _arrays()
  mask = jnp.tril(jnp.ones((16, 16), bool))[None].repeat(2, 0).at[1, 10:].set(False)
  out = attention_ops.attention(q, k, v, mask, impl='cudnn')
  _close(out, _ref(q, k, v, mask))
  assert not np.asarray(out[1, 10:]).any()


def test_cudnn_tree_path_gives_the_reference(cudnn_as_xla):
  q, kc, vc = _arrays(T=4, S=24)
  _, kt, vt = _arrays(T=4, S=4, seed=1)
  parents = jnp.array([[-1, 0, 0, 1], [-1, 0, 1, 2]])
  lengths = jnp.array([20, 7])
  got = tree_attention(q, kc, vc, lengths, kt, vt, parents_BxN=parents, impl='cudnn')
  want = tree_attention(q, kc, vc, lengths, kt, vt, parents_BxN=parents, impl='xla')
  _close(got, want)
  assert cudnn_as_xla[-1]['mask'].shape == (2, 1, 4, 28)


def test_faked_gpu_routes_bf16_to_cudnn_and_fp32_to_xla(fake_gpu, cudnn_as_xla):
  q, k, v = _arrays()
  flash_attention(q.astype(BF16), k.astype(BF16), v.astype(BF16))
  assert len(cudnn_as_xla) == 1 and cudnn_as_xla[0]['is_causal']
  out = flash_attention(q, k, v)  # fp32: cuDNN refuses, our kernel is unchecked -> XLA
  assert len(cudnn_as_xla) == 1
  _close(out, _ref(q, k, v, jnp.tril(jnp.ones((16, 16), bool))[None]))


def test_splash_off_tpu_is_a_clear_error():
  q, k, v = _arrays(T=128, S=128)
  with pytest.raises(ValueError, match='TPU'):
    flash_attention(q, k, v, impl='splash')
  with pytest.raises(ValueError, match="impl='splash' takes"):
    flash_attention(q, k, v, impl='splash', block_causal_size=4)


@pytest.mark.parametrize('kw', [{}, {'window': 40}, {'segments': True}])
def test_splash_interpreted_gives_the_reference(kw):
  """jax's splash kernel (TPU) through our wrapper, in interpret mode: masks built statically,
  GQA, segment ids, scale."""
  q, k, v = _arrays(B=1, T=128, S=128, H=4, K=2, Dh=64)
  i = jnp.arange(128)
  mask = (i[None] <= i[:, None])[None]
  seg = None
  if kw.get('window'):
    mask &= (i[None] > i[:, None] - kw['window'])[None]
  if kw.get('segments'):
    seg = (i >= 50).astype(jnp.int32)[None]
    mask &= seg[:, :, None] == seg[:, None, :]
  out = vendor.splash_attention(q, k, v, window=kw.get('window', 0), scale=64 ** -0.5,
                                q_segment_ids_BxT=seg, kv_segment_ids_BxS=seg, interpret=True)
  _close(out, _ref(q, k, v, mask), tol=1e-5)


def test_auto_on_cpu_equals_the_reference():
  """On CPU every op's 'auto' is XLA: bit-for-bit the reference."""
  assert common.platform() == 'cpu'
  q, k, v = _arrays()
  same = lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  mask = jnp.tril(jnp.ones((16, 16), bool))[None]
  same(attention_ops.attention(q, k, v, mask), attention_ops.attention(q, k, v, mask, impl='xla'))
  kc, vc = jnp.swapaxes(k, 1, 2), jnp.transpose(v, (0, 2, 3, 1))
  q1 = q[:, :1]
  m1 = jnp.arange(16)[None, None] < jnp.array([9, 16])[:, None, None]
  same(attention_ops.attention(q1, kc, vc, m1, kv_layout='cache'),
       attention_ops.attention(q1, kc, vc, m1, kv_layout='cache', impl='xla'))
  _close(attention_ops.attention(q1, kc, vc, m1, kv_layout='cache'), _ref(q1, k, v, m1))
  same(flash_attention(q, k, v), flash_attention(q, k, v, impl='xla'))
  lengths = jnp.array([5, 16])
  same(decode_attention(q1, k, v, lengths), decode_attention(q1, k, v, lengths, impl='xla'))
  parents = jnp.array([[-1, 0], [-1, 0]])
  tree = lambda impl: tree_attention(q[:, :2], k, v, lengths, k[:, :2], v[:, :2],
                                     parents_BxN=parents, impl=impl)
  same(tree('auto'), tree('xla'))

  from pallas_kernels.delta_rule import delta_rule
  from pallas_kernels.sampling import fused_sample
  from pallas_kernels.spec_verify import chain_verify
  logits = jax.random.normal(jax.random.key(3), (2, 50))
  g = jax.random.gumbel(jax.random.key(4), (2, 50))
  for kw in ({'top_p': 0.9}, {'top_k': 5}):
    same(fused_sample(logits, g, temperature=0.7, **kw),
         fused_sample(logits, g, temperature=0.7, impl='xla', **kw))
  ks = jax.random.split(jax.random.key(5), 4)
  dq, dk = jax.random.normal(ks[0], (1, 8, 2, 4)), jax.random.normal(ks[1], (1, 8, 2, 4))
  dk = dk / jnp.linalg.norm(dk, axis=-1, keepdims=True)
  dv, beta = jax.random.normal(ks[2], (1, 8, 2, 4)), jax.nn.sigmoid(jax.random.normal(ks[3], (1, 8, 2)))
  for a, b in zip(delta_rule(dq, dk, dv, beta, chunk_size=4),
                  delta_rule(dq, dk, dv, beta, chunk_size=4, impl='xla')):
    same(a, b)
  logp = jax.nn.log_softmax(jax.random.normal(ks[0], (2, 4, 50)))
  drafts = jnp.argmax(logp[:, :3], -1)
  args = (logp, None, drafts, jnp.ones((2, 3), bool), jnp.full((2, 3), 0.5))
  for a, b in zip(chain_verify(*args, mode='deterministic'),
                  chain_verify(*args, mode='deterministic', impl='xla')):
    same(a, b)


def test_sampling_auto_with_threshold_runs_a_kernel():
  """Only the kernels compute the threshold: 'auto' asks for one (interpreted on CPU)."""
  from pallas_kernels.sampling import fused_sample
  logits = jax.random.normal(jax.random.key(3), (2, 64))
  g = jax.random.gumbel(jax.random.key(4), (2, 64))
  tok, tau, _ = fused_sample(logits, g, temperature=1.0, top_p=0.9, return_threshold=True)
  assert tau is not None
  np.testing.assert_array_equal(tok, fused_sample(logits, g, temperature=1.0, top_p=0.9,
                                                  impl='xla'))


def test_all_entries_and_decisions_cover_every_gpu_case():
  """Every GPU case appears in DECISIONS (a new case needs a decision test)."""
  tested = {(d[0], d[1]) for d in DECISIONS if d[2] == 'gpu'}
  assert tested == {(op, c) for op, cases in dispatch_table.CASES.items() for c in cases}


def test_docs_quote_the_table():
  """docs/kernels.md's table says what TABLE says (op, case, gpu, tpu, cpu per row)."""
  docs = (ROOT / 'docs' / 'kernels.md').read_text()
  for line in dispatch_table.table_markdown().splitlines()[2:]:
    assert line in docs, f'docs/kernels.md lacks {line!r}'


# --- the model's cache-free forwards: the causal case without the mask array ---

def _model(attention_impl, window=0):
  import dataclasses  # pylint: disable=g-import-not-at-top
  from testlib import small_config  # pylint: disable=g-import-not-at-top
  from models import Transformer, init_params  # pylint: disable=g-import-not-at-top
  cfg = small_config(num_layers=1, sliding_window=window, attention_impl='xla')
  params = init_params(Transformer(cfg), jax.random.key(0))
  return Transformer(dataclasses.replace(cfg, attention_impl=attention_impl)), params


def test_training_forward_on_a_faked_gpu_runs_cudnn_causal_without_the_mask(fake_gpu,
                                                                           cudnn_as_xla):
  """Default positions and no cache: the model's mask is causal by index, so on a GPU the
  training forward is the causal case (cuDNN with is_causal, no mask array), with the
  model's sliding window; given positions (which may pad) it stays the dense-mask case."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  from models import Cache  # pylint: disable=g-import-not-at-top
  model, params = _model('auto', window=5)
  model = model.clone(cfg=dataclasses.replace(model.cfg, dtype='bfloat16'))
  tokens = jax.random.randint(jax.random.key(1), (2, 12), 0, model.cfg.vocab_size)
  model.apply({'params': params}, tokens)
  assert len(cudnn_as_xla) == 1
  call = cudnn_as_xla[0]
  assert call['is_causal'] and call['mask'] is None and call['local_window_size'] == (4, 0)
  positions = jnp.broadcast_to(jnp.arange(12), (2, 12))
  model.apply({'params': params}, tokens, positions)  # positions given: a dense mask
  assert cudnn_as_xla[-1]['mask'] is not None and not cudnn_as_xla[-1]['is_causal']
  n = len(cudnn_as_xla)
  model.apply({'params': params}, tokens, cache=Cache.init(model.cfg, 2, 16))  # over a cache
  assert all(not c['is_causal'] for c in cudnn_as_xla[n:])
  # Bidirectional: with a window it is a one-sided rule (the dense mask); without, no mask.
  model.apply({'params': params}, tokens, attn_mask='bidirectional')
  assert cudnn_as_xla[-1]['mask'] is not None
  unwindowed = model.clone(cfg=dataclasses.replace(model.cfg, sliding_window=0))
  unwindowed.apply({'params': params}, tokens, attn_mask='bidirectional')
  last = cudnn_as_xla[-1]
  assert last['mask'] is None and not last['is_causal'] and last['local_window_size'] is None


@pytest.mark.parametrize('window,spec', [(0, None), (5, None), (0, 'bidirectional')])
def test_training_forward_through_the_causal_kernel_equals_xla(window, spec, monkeypatch):
  """attention_impl='pallas' (the Triton-style kernel, interpreted): the cache-free forward
  goes to flash_attention's causal case (no mask array; causal with the window passed on,
  or bidirectional) and gives the logits and gradients of attention_impl='xla'."""
  from pallas_kernels import flash_attention as flash  # pylint: disable=g-import-not-at-top
  calls = []
  real = flash.flash_attention
  monkeypatch.setattr(flash, 'flash_attention',
                      lambda *a, **k: calls.append(k) or real(*a, **k))
  tokens = jax.random.randint(jax.random.key(1), (2, 12), 0, 64)
  outs = {}
  for impl in ('xla', 'pallas'):
    model, params = _model(impl, window)
    loss = lambda p, model=model: model.apply({'params': p}, tokens,
                                              attn_mask=spec).logits_BxTxV.sum()
    outs[impl] = jax.value_and_grad(loss)(params)
  assert calls and all(c['causal'] == (spec is None) and c['window'] == window
                       and c['impl'] == 'pallas' and c.get('mask_BxTxS') is None
                       for c in calls)
  (la, ga), (lb, gb) = outs['pallas'], outs['xla']
  np.testing.assert_allclose(la, lb, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)


def test_auto_on_cpu_keeps_the_dense_mask_path_for_training(monkeypatch):
  """On CPU the causal case is XLA: the hint changes nothing there (the dense-mask reference
  runs, bit for bit what it ran before)."""
  from pallas_kernels import flash_attention as flash  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(flash, 'flash_attention', lambda *a, **k: pytest.fail('hint taken'))
  model, params = _model('auto')
  tokens = jax.random.randint(jax.random.key(1), (2, 12), 0, 64)
  got = model.apply({'params': params}, tokens).logits_BxTxV
  want = _model('xla')[0].apply({'params': params}, tokens).logits_BxTxV
  np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize('dtype,head_dim,want', [('bfloat16', 64, 'mosaic'),
                                                  ('float32', 64, 'pallas'),
                                                  ('bfloat16', 8, 'pallas')])
def test_mosaic_training_forward_takes_the_hopper_kernel_where_it_fits(dtype, head_dim, want,
                                                                       monkeypatch):
  """attention_impl='mosaic' is our Hopper kernels where one fits the call, else 'pallas':
  the training forward's causal call goes to the Hopper flash kernel in bf16 at Dh 64, to
  the Triton one in float32 or at a head dim it does not take (routing only: the kernel is
  replaced by a recorder)."""
  from pallas_kernels import flash_attention as flash  # pylint: disable=g-import-not-at-top
  from testlib import small_config  # pylint: disable=g-import-not-at-top
  from models import Transformer, init_params  # pylint: disable=g-import-not-at-top
  calls = []
  monkeypatch.setattr(flash, 'flash_attention',
                      lambda q, k, v, **kw: calls.append(kw['impl']) or jnp.zeros_like(q))
  cfg = small_config(num_layers=1, head_dim=head_dim, dtype=dtype, attention_impl='mosaic')
  params = init_params(Transformer(cfg), jax.random.key(0))
  calls.clear()
  Transformer(cfg).apply({'params': params}, jnp.zeros((2, 8), jnp.int32))
  assert calls == [want]


def test_index_mask_refuses_a_window_without_causality():
  q, k, v = _arrays()
  with pytest.raises(ValueError, match='window needs causal'):
    attention_ops.attention(q, k, v, jnp.ones((2, 16, 16), bool), index_mask=(False, 4))


def _verify_results(chain_ratio: float, tree_ratio: float, tree_ok: bool) -> str:
  """A results file with the fused-verification checks and timing table (as written by
  benchmarks.kernels: kernel_checks rows, kernel_speed.VERIFY_HEADER)."""
  check = ['| kernel | impl | shape | dtype | rel. error | tol | ok |', '|---|---|---|---|---|---|---|',
           '| tree | pallas | B2 S256 | float32 | 1e-07 | 0.0001 | False |',  # attention's
           '| chain verify (iid) | pallas | B64 | float32 | 1e-08 | 0.0001 | True |',
           '| chain verify (traversal) | pallas | B64 | float32 | 1e-08 | 0.0001 | True |',
           f'| verify tree (traversal) | pallas | B16 | float32 | 1e-08 | 0.0001 | {tree_ok} |']
  table = ['| case | mode | shape | fused | reference | reference / fused |', '|---|---|---|---|---|---|',
           f'| chain | iid | B1 | 10 | 30 | {chain_ratio} |', '| chain | traversal | B1 | 10 | 50 | 5 |',
           f'| tree | traversal | B1 | 10 | 30 | {tree_ratio} |']
  return '\n'.join(['## Correctness on gpu (FAILURES)', '', *check, '',
                    '## Fused verification vs the reference, float32 (us)', '', *table])


def test_verify_cases_go_to_the_kernel_only_where_it_won_and_passed():
  """Each case on its own rows and its own checks (the attention kernel's failing 'tree' row
  does not count against the verification tree)."""
  p = dispatch_refresh.proposals_from_results(_verify_results(3.0, 2.0, True))
  assert p[('spec_verify', 'gpu', 'chain')][0] == 'pallas'
  assert p[('spec_verify', 'gpu', 'tree')][0] == 'pallas'
  p = dispatch_refresh.proposals_from_results(_verify_results(0.9, 2.0, False))
  assert p[('spec_verify', 'gpu', 'chain')][0] == 'xla'  # one row lost
  assert p[('spec_verify', 'gpu', 'tree')][0] == 'xla'   # won, but its check failed
