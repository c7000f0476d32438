"""Coconut-family objectives: cache filling == recomputation (logits and gradients), the
curriculum's row layout, the decoder sees what training saw, and a SIM-CoT run end to end."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from testlib import small_config
from configs import latent_reasoning
from data import tokenizers
from decoding import Models, registry, run_decoder
from models import Transformer, init_params
from training import objectives, trainer
from workdir import loading
from training.objectives import coconut

TOK = tokenizers.make_tokenizer('byte')
PAUSE = TOK.special_id('<pause>')


@pytest.fixture(scope='module')
def lm():
  model = Transformer(small_config(vocab_size=272))
  params = jax.jit(lambda k: init_params(Transformer(small_config(vocab_size=272, init_std=0.1)),
                                         k))(jax.random.key(0))
  return model, params


L = 2  # thought slots (max_stage 2, c 1)
_cached = jax.jit(coconut.forward_cached, static_argnums=(0, 3, 4))
_recompute = jax.jit(coconut.forward_recompute, static_argnums=(0, 3, 4))


def _batch(method='coconut', stage=2, mix=0.5, n=4, seed=0):
  s = coconut.LatentSettings(task='prosqa', method=method, stage=stage, max_stage=L,
                             uniform_prob=mix)
  return s, coconut.make_batch_fn(TOK, s, with_steps=True)(np.random.default_rng(seed), n)


def _loss(fwd, model, s, pause):
  def loss(params, batch):
    return coconut.answer_metrics(fwd(model, params, batch, s.max_thoughts, pause)[0], batch)[0]
  return jax.jit(jax.value_and_grad(loss))


@pytest.mark.parametrize('method', ['coconut'])
def test_cached_latent_filling_equals_recomputation(lm, method):
  model, params = lm
  s, batch = _batch(method)
  assert len(set(batch['n_latent'].tolist())) > 1, 'rows should have different thought counts'
  pause = PAUSE if method == 'pause' else None
  lc, tc = _cached(model, params, batch, L, pause)
  lr, tr = _recompute(model, params, batch, L, pause)
  np.testing.assert_allclose(lc, lr, atol=2e-5, rtol=1e-5)
  active = np.arange(L)[None, :] < batch['n_latent'][:, None]
  np.testing.assert_allclose(np.asarray(tc)[active], np.asarray(tr)[active], atol=2e-5)
  if method == 'coconut':  # thoughts are hidden states, fed back: gradients flow through them
    (vc, gc), (vr, gr) = [_loss(f, model, s, None)(params, batch)
                          for f in (coconut.forward_cached, coconut.forward_recompute)]
    np.testing.assert_allclose(vc, vr, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(gc), jax.tree.leaves(gr)):
      np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)


def test_curriculum_row_layout_follows_coconut():
  plan = coconut.LatentSettings(method='coconut', max_stage=3, c=2).row_plan
  assert plan(4, 0) == (0, 0) and plan(4, 2) == (2, 4)
  assert plan(2, 3) == (2, 6)       # stage beyond the row's steps: Coconut keeps s * c thoughts
  assert plan(5, 4) == (5, 6)       # stage > max_stage: every step removed, padded to max
  assert coconut.LatentSettings(method='cot').row_plan(4, 3) == (0, 0)
  assert coconut.LatentSettings(method='nocot').row_plan(4, 3) == (4, 0)
  s, batch = _batch('coconut', stage=2, mix=0.0, n=6, seed=1)
  for r in range(6):
    n, plen = int(batch['n_latent'][r]), int(batch['prefix_len'][r])
    assert n == 2 and batch['prefix'][r, plen - 1] == TOK.special_id('<think>')
    suffix = batch['suffix'][r][batch['suffix_weights'][r] > 0].tolist()
    assert suffix[-1] == TOK.eos_id and TOK.special_id('</think>') in suffix
    steps = batch['steps'][r][batch['steps_weights'][r].sum(-1) > 0]
    assert len(steps) == 2  # the two replaced steps are supervised (SIM-CoT)
    text = TOK.decode(suffix)
    assert text.count('>') == text.count('.') and len(text) >= 1
  with pytest.raises(ValueError, match='latent.method'):
    coconut.LatentSettings(method='telepathy')
  with pytest.raises(ValueError, match='Unknown config arguments'):
    latent_reasoning.get_config('task=prosqa,stages=3')


def test_coconut_decoder_sees_what_training_saw(lm):
  """The decoder's greedy answer tokens are the argmax of the training forward on them."""
  model, params = lm
  s, batch = _batch('coconut', stage=9, mix=0.0)  # final stage: L thoughts, no steps
  dec = registry.build('coconut', {'latent_steps': L})
  prompts = [batch['prefix'][r, :batch['prefix_len'][r]].tolist() for r in range(4)]
  rows, _ = run_decoder(dec, Models(model), {'target': params}, prompts, max_new_tokens=12,
                        cache_size=96, eos_id=TOK.eos_id, pad_id=TOK.pad_id)
  suffix = np.full_like(batch['suffix'], TOK.eos_id)
  for r, row in enumerate(rows):
    assert row.tokens[:L + 1] == [TOK.special_id('<latent>')] * L + [TOK.special_id('</think>')]
    suffix[r, :len(row.tokens) - L] = row.tokens[L:]
  logits, _ = _cached(model, params, dict(batch, suffix=suffix), L, None)
  for r, row in enumerate(rows):
    n = len(row.tokens) - L
    assert np.argmax(logits[r, 1:n], -1).tolist() == row.tokens[L + 1:]


def test_sim_cot_objective_starts_from_a_checkpoint_and_supervises_steps(trained_workdir):
  """The sim_cot objective as train.py builds it: parameters from the previous run
  (init_from), its own data, an auxiliary decoder whose step loss trains the thoughts."""
  config = latent_reasoning.get_config(
      f'task=prosqa,method=sim_cot,stage=2,size=test,init={trained_workdir}')
  start = loading.load_model(trained_workdir)
  model = start.model
  obj = objectives.make_objective('sim_cot', model, config)
  init = obj.init_model_params()
  for a, b in zip(jax.tree.leaves(init), jax.tree.leaves(start.params)):
    np.testing.assert_array_equal(a, b)
  it = obj.make_train_iterator(trainer.data_config(config), TOK)
  batch = {k: jnp.asarray(v) for k, v in next(it).items()}
  assert batch['steps_weights'].sum() > 0 and (batch['n_latent'] == 2).all()
  params = {'model': init, **obj.extras(jax.random.key(1))}
  assert set(params) == {'model', 'aux_decoder'} and 'embed' not in params['aux_decoder']
  (loss, m), grads = jax.jit(jax.value_and_grad(obj.loss_fn, has_aux=True))(
      params, batch, jax.random.key(0))
  np.testing.assert_allclose(loss, m['answer_loss'] + m['step_loss'], rtol=1e-5)
  assert np.isfinite(loss) and m['step_loss'] > 0
  assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads['aux_decoder']))
  state = it.get_state()
  assert state['index'] == 1 and 'stage2' in state['name']
