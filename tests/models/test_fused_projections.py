"""The fused projection layout (`ModelConfig.fused_projections`, `fuse_projections`): one
q/k/v matrix and one gate/up matrix per layer give the same model: the same logits with and
without a cache, AR's tokens greedy and sampled (also sharded, also through a speculative
decoder), and the layout is what the modules read."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from testlib import small_config
from decoding import Models, SamplingConfig, registry, run_decoder
from decoding.runner import fused_layouts
from models import Cache, Transformer, init_params, sharding
from models.transformer import fuse_projections

PROMPTS = [[1, 5, 9, 3], [2, 7], [4, 4, 8, 1, 6, 2, 9]]


@pytest.mark.parametrize('kw', [dict(), dict(num_kv_heads=1),
                                dict(qkv_bias=True, qk_norm=True, num_kv_heads=4)])
def test_fused_weights_give_the_same_logits_with_and_without_a_cache(kw):
  cfg = small_config(vocab_size=64, init_std=0.3, **kw)
  model = Transformer(cfg)
  params = init_params(model, jax.random.key(0))
  fused = fuse_projections(params)
  attn, mlp = fused['layer_0']['attn'], fused['layer_0']['mlp']
  K, G = cfg.num_kv_heads, cfg.num_heads // cfg.num_kv_heads
  assert attn['qkv'].shape == (cfg.d_model, K, G + 2, cfg.head_dim) and 'q' not in attn
  assert mlp['gate_up'].shape == (cfg.d_model, 2, cfg.mlp_dim) and 'gate' not in mlp
  # kv head k: its query heads k G .. k G + G - 1, then its key, then its value
  w, qkv = params['layer_0']['attn'], np.asarray(attn['qkv'])
  for k in range(K):
    for g in range(G):
      np.testing.assert_array_equal(qkv[:, k, g], w['q'][:, k * G + g])
    np.testing.assert_array_equal(qkv[:, k, G], w['k'][:, k])
    np.testing.assert_array_equal(qkv[:, k, G + 1], w['v'][:, k])
  np.testing.assert_array_equal(mlp['gate_up'][:, 1], params['layer_0']['mlp']['up'])
  assert fuse_projections(fused)['layer_0']['attn'].keys() == attn.keys()  # idempotent
  tok = jax.random.randint(jax.random.key(1), (2, 9), 0, 64)
  pos = jnp.broadcast_to(jnp.arange(9), (2, 9))
  ref = model.apply({'params': params}, tok, pos).logits_BxTxV
  np.testing.assert_allclose(model.apply({'params': fused}, tok, pos).logits_BxTxV, ref,
                             atol=3e-5, rtol=3e-5)
  cache = Cache.init(cfg, 2, 16)
  out = model.apply({'params': fused}, tok[:, :6], pos[:, :6], cache=cache)
  step = model.apply({'params': fused}, tok[:, 6:], pos[:, 6:], cache=out.cache)
  np.testing.assert_allclose(step.logits_BxTxV, ref[:, 6:], atol=3e-5, rtol=3e-5)
  # a wrong layout is not silently read as right: query and key heads swapped
  bad = dict(fused, layer_0=dict(fused['layer_0'], attn=dict(
      attn, qkv=attn['qkv'][:, :, ::-1])))
  assert not np.allclose(model.apply({'params': bad}, tok, pos).logits_BxTxV, ref, atol=1e-3)


def test_decoders_with_the_fused_layout_give_ar_tokens_also_sharded():
  cfg = small_config(vocab_size=48, init_std=0.3)
  params = init_params(Transformer(cfg), jax.random.key(7))
  plain = Models(Transformer(cfg))
  fused = Models(Transformer(dataclasses.replace(cfg, fused_projections=True)))
  assert 'qkv' in fused_layouts(fused, {'target': params})['target']['layer_1']['attn']
  assert 'q' in fused_layouts(plain, {'target': params})['target']['layer_1']['attn']
  run = lambda name, models, sampling=SamplingConfig(), mesh=None: [r.tokens for r in run_decoder(
      registry.build(name, sampling=sampling), models, {'target': params}, PROMPTS,
      max_new_tokens=12, cache_size=64, eos_id=-1, pad_id=0, mesh=mesh)[0]]
  ref = run('ar', plain)
  assert run('ar', fused) == ref and run('prompt_lookup', fused) == ref
  mesh = sharding.make_mesh({'data': 2, 'fsdp': 1, 'tensor': 4})
  assert run('ar', fused, mesh=mesh) == ref
  sampled = SamplingConfig(temperature=1.0)
  assert run('ar', fused, sampled) == run('ar', plain, sampled)


def test_an_eagle_draft_layer_reads_the_fused_layout_too():
  """`fuse_projections` works on any tree with 'attn' / 'mlp' modules (an EAGLE-3 draft
  layer here), and `fused_layouts` fuses an extra whose config asks for it."""
  from models import eagle
  cfg = small_config(vocab_size=64, init_std=0.3)
  params = eagle.init_params(cfg, eagle.EAGLE3, (0, 1, 1), jax.random.key(2))
  fused = fuse_projections(params)
  assert 'qkv' in fused['attn'] and 'gate_up' in fused['mlp'] and 'q' not in fused['attn']
  assert fused['fc'] is params['fc']
  module = eagle.EagleDraft(cfg, eagle.EAGLE3, 3)
  x = jax.random.normal(jax.random.key(3), (2, 5, cfg.d_model))
  tok = jax.random.randint(jax.random.key(4), (2, 5), 0, 64)
  pos = jnp.broadcast_to(jnp.arange(5), (2, 5))
  emb = jax.random.normal(jax.random.key(5), (64, cfg.d_model))
  g, logits, _ = module.apply({'params': params}, x, tok, pos, emb, emb)
  g2, logits2, _ = module.apply({'params': fused}, x, tok, pos, emb, emb)
  np.testing.assert_allclose(g2, g, atol=3e-5, rtol=3e-5)
  np.testing.assert_allclose(logits2, logits, atol=3e-5, rtol=3e-5)
  fused_module = eagle.EagleDraft(dataclasses.replace(cfg, fused_projections=True),
                                  eagle.EAGLE3, 3)
  models = Models(Transformer(cfg), extras=(('eagle', fused_module),))
  out = fused_layouts(models, {'target': {}, 'eagle': params})
  assert 'qkv' in out['eagle']['attn'] and out['target'] == {}
