"""The model with attention_impl='pallas' (kernels in interpret mode) gives the logits,
caches and gradients of attention_impl='xla'."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from testlib import small_config
from models import Cache, Transformer, init_params, local_to_cache_mask, tree_mask

TOL = 2e-5


def _models():
  cfg = small_config(num_layers=1)
  models = {impl: Transformer(dataclasses.replace(cfg, attention_impl=impl))
            for impl in ('xla', 'pallas')}
  return cfg, models, init_params(models['xla'], jax.random.key(0))


def _close(a, b, tol=TOL):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=tol, rtol=tol)


def test_training_forward_and_gradients_match():
  """No cache (the flash kernel with the model's dense mask; the mask kinds themselves are
  covered by the kernel tests): logits with padding rows, and parameter gradients through
  the custom VJP."""
  cfg, models, params = _models()
  B, T = 2, 24
  toks = jax.random.randint(jax.random.key(1), (B, T), 0, cfg.vocab_size)
  pos = jnp.broadcast_to(jnp.arange(T), (B, T)).at[1, 19:].set(-1)

  @jax.jit
  def run(params):
    outs = {}
    for impl, model in models.items():
      loss = lambda p: jnp.mean(model.apply({'params': p}, toks, pos).logits_BxTxV ** 2)
      logits = model.apply({'params': params}, toks, pos).logits_BxTxV
      outs[impl] = ([logits], jax.grad(loss)(params))
    return outs

  outs = run(params)
  for a, b in zip(outs['pallas'][0], outs['xla'][0]):
    _close(a, b)
  jax.tree.map(lambda a, b: _close(a, b, 1e-6 + 1e-4 * float(jnp.abs(b).max())),
               outs['pallas'][1], outs['xla'][1])


def test_cached_prefill_decode_and_tree_step_match():
  """With a cache (the decode kernel, over the slots below the last visible one): prefill
  with a padded row, one decode step, then a tree-verification step with an explicit mask."""
  cfg, models, params = _models()
  B, P, S = 2, 9, 32
  prompt = jax.random.randint(jax.random.key(2), (B, P), 0, cfg.vocab_size)
  prompt_pos = jnp.broadcast_to(jnp.arange(P), (B, P)).at[1, 6:].set(-1)  # row 1: 6 tokens
  parents = jnp.array([-1, 0, 0, 1, 2])
  tree_toks = jax.random.randint(jax.random.key(3), (B, 5), 0, cfg.vocab_size)

  @jax.jit
  def run(params):
    outs = {}
    for impl, model in models.items():
      apply = lambda *a, **k: model.apply({'params': params}, *a, **k)
      pre = apply(prompt, prompt_pos, cache=Cache.init(cfg, B, S))
      step_pos = pre.cache.lengths[:, None]
      dec = apply(prompt[:, :1], step_pos, cache=pre.cache)
      lengths = dec.cache.lengths
      depth = jnp.array([0, 1, 1, 2, 2])
      slots = lengths[:, None] + jnp.arange(5)
      mask = local_to_cache_mask(jnp.broadcast_to(tree_mask(parents), (B, 5, 5)), slots,
                                 lengths, S)
      tree = apply(tree_toks, lengths[:, None] + depth, cache=dec.cache, write_slots_BxT=slots,
                   attn_mask=mask)
      outs[impl] = [pre.logits_BxTxV, dec.logits_BxTxV, tree.logits_BxTxV,
                    tree.cache.layers[-1].k]
    return outs

  outs = run(params)
  for a, b in zip(outs['pallas'], outs['xla']):
    _close(a, b)


def test_cache_layout_equals_projected_layout():
  """kv_layout='cache' (keys [B, K, S, Dh], values [B, K, Dh, S]) gives the outputs and
  gradients of 'BSKD', for one and several queries, with a row whose query sees nothing."""
  from pallas_kernels.attention import attention  # pylint: disable=g-import-not-at-top
  B, S, H, K, Dh = 2, 37, 4, 2, 8
  for T in (1, 2, 9):
    keys = jax.random.split(jax.random.key(T), 4)
    q = jax.random.normal(keys[0], (B, T, H, Dh))
    k = jax.random.normal(keys[1], (B, S, K, Dh))
    v = jax.random.normal(keys[2], (B, S, K, Dh))
    mask = jax.random.bernoulli(keys[3], 0.6, (B, T, S)).at[1, 0].set(False)

    def both(q, k, v):
      projected = attention(q, k, v, mask, impl='xla', kv_layout='BSKD')
      cache = attention(q, jnp.swapaxes(k, 1, 2), jnp.transpose(v, (0, 2, 3, 1)), mask,
                        impl='xla', kv_layout='cache')
      return projected, cache

    projected, cache = both(q, k, v)
    _close(cache, projected, 1e-5)
    assert not np.any(np.asarray(cache[1, 0]))
    grads = [jax.grad(lambda *a, i=i: jnp.sum(both(*a)[i] ** 2), argnums=(0, 1, 2))(q, k, v)
             for i in (0, 1)]
    jax.tree.map(lambda a, b: _close(a, b, 1e-4), grads[1], grads[0])
