"""Diffusion objectives: the schedule's ELBO weight is 1/t, MDLM and LLaDA losses agree,
prompts are never noised, SUBS, the BD3-LM and WeDLM masks, the logit shift, and a short
training run that starts from an AR checkpoint."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import diffusion_lm, diffusion_tasks
from models import Transformer, init_params
from testlib import small_config
from training.objectives import block_diffusion, diffusion_lib as lib, masked_diffusion, wedlm

V, MASK = 64, 63


@pytest.fixture(scope='module')
def model_and_params():
  model = Transformer(small_config(vocab_size=V, num_layers=1))
  return model, {'model': init_params(model, jax.random.key(0))}


def batch(B=4, T=12, prompt=4, seed=0):
  tokens = jax.random.randint(jax.random.key(seed), (B, T + 1), 0, 60)
  weights = (jnp.arange(T)[None, :] >= prompt - 1).astype(jnp.float32) * jnp.ones((B, 1))
  return {'tokens': tokens, 'weights': weights}


def test_log_linear_elbo_weight_is_one_over_t():
  t = jnp.linspace(1e-3, 0.999, 101)
  for eps in (0.0, 1e-3, 0.1):
    s = lib.LogLinearSchedule(eps)
    np.testing.assert_allclose(s.elbo_weight(t), 1.0 / t, rtol=2e-4)
    np.testing.assert_allclose(s.move_chance(t), (1 - eps) * t, rtol=1e-5, atol=1e-7)


def test_antithetic_times_cover_the_interval():
  t = lib.antithetic_times(jax.random.key(3), (8,), 1e-3)
  gaps = np.diff(np.sort(np.asarray(t)))
  np.testing.assert_allclose(gaps, (1 - 1e-3) / 8, rtol=1e-4)
  assert (t >= 1e-3).all() and (t < 1).all()


def test_mdlm_and_llada_losses_agree(model_and_params):
  model, params = model_and_params
  b = batch()
  t = jnp.array([0.1, 0.4, 0.7, 0.95])
  forms = [lib.DiffusionSettings(mask_id=MASK, noise_eps=0.0, loss_form=f)
           for f in ('mdlm', 'llada')]
  mdlm, llada = jax.jit(lambda p, bb, r: [masked_diffusion.masked_diffusion_loss(
      model, s, p, bb, r, t_B=t) for s in forms])(params, b, jax.random.key(1))
  np.testing.assert_allclose(mdlm[0], llada[0], rtol=1e-5)
  np.testing.assert_allclose(mdlm[1]['nll_sum'], llada[1]['nll_sum'], rtol=1e-5)
  # Only maskable (answer) positions count; prompts are not targets.
  assert mdlm[1]['tokens_sum'] == b['weights'].sum()
  assert np.isfinite(mdlm[0]) and mdlm[1]['masked_fraction'] > 0
  # With eps > 0 LLaDA's 1/p_mask = 1/((1 - eps) t) is MDLM's 1/t over (1 - eps).
  s = lib.DiffusionSettings(mask_id=MASK, noise_eps=0.1, loss_form='llada')
  np.testing.assert_allclose(lib.token_weights(s, t) * 0.9, 1.0 / t, rtol=1e-5)


def test_noise_spares_prompts_and_masks_at_rate_t():
  b = batch(B=64, T=40, prompt=10)
  maskable = lib.maskable(b)
  assert not maskable[:, :10].any() and maskable[:, 10:].all()
  p = jnp.full(b['tokens'].shape, 0.3)
  z, masked = lib.noise(jax.random.key(0), b['tokens'], maskable, p, MASK)
  assert not masked[:, :10].any()
  np.testing.assert_array_equal(z == MASK, masked)
  rate = float(masked[:, 10:].mean())
  assert abs(rate - 0.3) < 0.03


def test_subs_never_predicts_the_mask():
  logp = lib.subs_log_probs(jnp.zeros((2, 3, V)).at[..., MASK].set(50.0), MASK)
  assert jnp.isneginf(logp[..., MASK]).all()
  np.testing.assert_allclose(jnp.exp(logp).sum(-1), 1.0, rtol=1e-6)


def test_shift_reads_one_position_to_the_left():
  logits = jnp.arange(5.0)[None, :, None] * jnp.ones((1, 5, 2))
  np.testing.assert_array_equal(lib.predictions_at(logits, True)[0, :, 0], [0, 1, 2, 3])
  np.testing.assert_array_equal(lib.predictions_at(logits, False)[0, :, 0], [1, 2, 3, 4])


def test_bd3_mask_blocks():
  m = np.asarray(block_diffusion.two_stream_mask(6, 2))
  L = 6
  nn, nc, cc, cn = m[:L, :L], m[:L, L:], m[L:, L:], m[L:, :L]
  blk = np.arange(L) // 2
  np.testing.assert_array_equal(nn, blk[:, None] == blk[None, :])
  np.testing.assert_array_equal(nc, blk[None, :] < blk[:, None])
  np.testing.assert_array_equal(cc, blk[None, :] <= blk[:, None])
  assert not cn.any()


def test_bd3_shift_reads_clean_copy_at_block_starts():
  T, n = 6, 3
  noised = jnp.arange(T, dtype=jnp.float32)[None, :, None]
  clean = 100 + noised
  got = block_diffusion.shifted_two_stream_logits(jnp.concatenate([noised, clean], 1), n)
  # Predictions for positions 1..5 read at 0..4: clean at the block start (position 3).
  np.testing.assert_array_equal(got[0, :, 0], [0, 1, 102, 3, 4])


def test_wedlm_reorder_and_mask():
  masked = jnp.array([[False, True, False, True, True, False]])
  rank = np.asarray(wedlm.reorder_ranks(masked, 3))
  # Block 0 (positions 0-2): observed 0, 2 then masked 1; block 1 (3-5): observed 5 first.
  np.testing.assert_array_equal(rank[0], [0, 2, 1, 4, 5, 3])
  m = np.asarray(wedlm.wedlm_mask(jnp.asarray(rank), 3))[0]
  T = 6
  clean_clean, noised_clean, noised_noised = m[:T, :T], m[T:, :T], m[T:, T:]
  np.testing.assert_array_equal(clean_clean, np.tril(np.ones((T, T), bool)))
  assert not m[:T, T:].any()
  # The masked token at position 1 sees the observed position 2 of its block.
  assert noised_noised[1, 2] and not noised_noised[2, 1]
  # Block 1 sees block 0's clean copy only.
  assert noised_clean[3, :3].all() and not noised_clean[3, 3:].any()


@pytest.mark.parametrize('objective', ['block_diffusion', 'wedlm'])
def test_two_stream_losses_are_finite_and_weight_masked_tokens(model_and_params, objective):
  model, params = model_and_params
  b = batch()
  s = lib.DiffusionSettings(mask_id=MASK, shift=True, block_size=4)
  fn = block_diffusion.block_diffusion_loss if objective == 'block_diffusion' else (
      wedlm.wedlm_loss)
  loss, m = jax.jit(lambda p, bb, r: fn(model, s, p, bb, r))(params, b, jax.random.key(0))
  assert np.isfinite(loss) and 0 < m['masked_fraction'] <= 1


def test_settings_resolve_the_mask_id_and_reject_unknown_keys():
  c = diffusion_lm.get_config('mdlm,test')
  assert lib.settings(c).mask_id == 259
  c = diffusion_lm.get_config('mdlm,test')
  c.unlock()
  c.tokenizer.kind = 'hf'
  with pytest.raises(ValueError, match='Set diffusion.mask_id'):
    lib.settings(c)
  with pytest.raises(ValueError, match='needs a `diffusion` config'):
    lib.settings(ml_collections.ConfigDict({'tokenizer': {'kind': 'byte'}}))
  with pytest.raises(ValueError, match='TASK,KIND'):
    diffusion_tasks.get_config('sudoku4')


@pytest.mark.slow
def test_dream_style_run_starts_from_the_ar_checkpoint(tmp_path, trained_workdir, data_dir):
  from training import trainer  # pylint: disable=g-import-not-at-top
  from workdir import loading  # pylint: disable=g-import-not-at-top
  c = diffusion_lm.get_config('dream,test')
  c.data.data_dir = data_dir
  c.data.batch_size = 8
  c.diffusion.init_from = trained_workdir
  c.train.update(steps=2, eval_every=2, checkpoint_every=2, learning_rate=0.0,
                 async_checkpointing=False, warmup_steps=1)
  out = trainer.train_and_evaluate(c, str(tmp_path / 'dream'))
  assert np.isfinite(out['eval']['loss'])
  ar = loading.load_model(trained_workdir).params
  dream = loading.load_model(str(tmp_path / 'dream')).params
  # Learning rate 0: the diffusion run's parameters are the AR checkpoint's.
  for a, d in zip(jax.tree.leaves(ar), jax.tree.leaves(dream)):
    np.testing.assert_allclose(a, d, rtol=1e-6)


def test_reinit_tokens_redraws_only_those_embedding_rows(model_and_params, monkeypatch):
  import types  # pylint: disable=g-import-not-at-top
  from workdir import loading  # pylint: disable=g-import-not-at-top
  model, params = model_and_params
  monkeypatch.setattr(loading, 'load_model',
                      lambda workdir: types.SimpleNamespace(params=params['model'], model=model))
  same = lib.init_from('ckpt', model)()
  for a, b in zip(jax.tree.leaves(params['model']), jax.tree.leaves(same)):
    np.testing.assert_array_equal(a, b)
  out = lib.init_from('ckpt', model, (5, 7))()
  e0 = np.asarray(params['model']['embed']['embedding'])
  e1 = np.asarray(out['embed']['embedding'])
  assert set(np.nonzero(np.any(e0 != e1, axis=1))[0]) == {5, 7}
  assert abs(float(np.std(e1[[5, 7]])) - model.cfg.init_std) < 0.5 * model.cfg.init_std
  rest = {k: v for k, v in out.items() if k != 'embed'}
  for a, b in zip(jax.tree.leaves({k: v for k, v in params['model'].items() if k != 'embed'}),
                  jax.tree.leaves(rest)):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match='outside the vocabulary'):
    lib.init_from('ckpt', model, (V,))()
  with pytest.raises(ValueError, match='set init_from too'):
    lib.DiffusionSettings(mask_id=MASK, reinit_tokens='5')
  with pytest.raises(ValueError, match='comma-separated token ids'):
    lib.DiffusionSettings(mask_id=MASK, init_from='ckpt', reinit_tokens='5,x')
  s = lib.DiffusionSettings(mask_id=MASK, init_from='ckpt', reinit_tokens='5, 7')
  assert s.reinit_ids == (5, 7)
