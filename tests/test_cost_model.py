"""cost_model.random_model's embed_scale: the random weights the GPU system benchmark uses in
bf16 (benchmarks/spec_system.py --embed_scale)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import cost_model


def _margins(preset, embed_scale):
  """(argmax == current token, (top-1 - top-2 logit) / std of the logits) per position."""
  model, params = cost_model.random_model(preset, 'bfloat16', embed_scale=embed_scale)
  tokens = jax.random.randint(jax.random.key(1), (2, 48), 3, model.cfg.vocab_size)
  logits = jax.jit(lambda p, t: model.apply({'params': p}, t).logits_BxTxV)(
      params, tokens).astype(jnp.float32)
  top = jnp.sort(logits, -1)
  margin = (top[..., -1] - top[..., -2]) / jnp.std(logits, -1)
  return np.asarray(jnp.argmax(logits, -1) == tokens), np.asarray(margin)


def test_a_large_embed_scale_gives_greedy_a_wide_margin_in_bf16():
  """At scale 1 the `mem` preset's bf16 logits have near-ties (the first H200 run's verify and
  AR forwards split on them); at 30 the tied head repeats the current token by a margin of
  many standard deviations, so no rounding difference between forwards can flip it. Measured
  on `mem` (bf16): min margin 0.009 at scale 1, 10.8 at 30; on `base` 0.0 and 20.8."""
  _, flat = _margins('mem', 1.0)
  repeats, wide = _margins('mem', 30.0)
  assert flat.min() < 0.5, flat.min()
  assert repeats.all()
  assert wide.min() > 5.0, wide.min()


def test_embed_scale_scales_only_the_embedding_and_is_checked():
  _, base = cost_model.random_model('test')
  _, scaled = cost_model.random_model('test', embed_scale=4.0)
  np.testing.assert_allclose(scaled['embed']['embedding'], 4 * base['embed']['embedding'],
                             rtol=1e-6)
  same = jax.tree.map(np.array_equal, {k: v for k, v in base.items() if k != 'embed'},
                      {k: v for k, v in scaled.items() if k != 'embed'})
  assert all(jax.tree.leaves(same))
  with pytest.raises(ValueError, match='embed_scale'):
    cost_model.random_model('test', embed_scale=0.0)


def test_with_fields_sets_model_config_fields_and_refuses_bad_ones():
  model, _ = cost_model.random_model('test')
  fused = cost_model.with_fields(model, 'fused_projections=true,min_matmul_rows=2')
  assert fused.cfg.fused_projections is True and fused.cfg.min_matmul_rows == 2
  assert fused.cfg.d_model == model.cfg.d_model and cost_model.with_fields(model, '') is model
  assert cost_model.parse_value('False') is False and cost_model.parse_value('-3') == -3
  with pytest.raises(ValueError, match='expected FIELD=VALUE'):
    cost_model.with_fields(model, 'fused_projections')
  with pytest.raises(ValueError, match='Unknown ModelConfig fields'):
    cost_model.with_fields(model, 'no_such_field=1')
