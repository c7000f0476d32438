"""Coconut-family objectives: cache filling == recomputation (logits and gradients), the
curriculum's row layout, the decoder sees what training saw, and a SIM-CoT run end to end."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from testlib import small_config
from configs import latent_reasoning
from data import tokenizers
from data.tasks import reasoning
from decoding import Models, registry, run_decoder
from models import Transformer, init_params
from training import loading, trainer
from training.objectives import coconut

TOK = tokenizers.make_tokenizer('byte')
PAUSE = TOK.special_id('<pause>')


@pytest.fixture(scope='module')
def lm():
  model = Transformer(small_config(vocab_size=272))
  params = jax.jit(lambda k: init_params(Transformer(small_config(vocab_size=272, init_std=0.1)),
                                         k))(jax.random.key(0))
  return model, params


def _batch(method='coconut', stage=2, mix=0.5, n=4, seed=0):
  s = coconut.LatentSettings(task='prosqa', method=method, stage=stage, max_stage=3,
                             uniform_prob=mix)
  return s, coconut.make_batch_fn(TOK, s, with_steps=True)(np.random.default_rng(seed), n)


def _loss(fwd, model, s, pause):
  def loss(params, batch):
    return coconut.answer_metrics(fwd(model, params, batch, s.max_thoughts, pause)[0], batch)[0]
  return jax.jit(jax.value_and_grad(loss))


@pytest.mark.parametrize('method', ['coconut', 'pause'])
def test_cached_latent_filling_equals_recomputation(lm, method):
  model, params = lm
  s, batch = _batch(method)
  assert len(set(batch['n_latent'].tolist())) > 1, 'rows should have different thought counts'
  pause = PAUSE if method == 'pause' else None
  lc, tc = jax.jit(lambda p, b: coconut.forward_cached(model, p, b, 3, pause))(params, batch)
  lr, tr = jax.jit(lambda p, b: coconut.forward_recompute(model, p, b, 3, pause))(params, batch)
  np.testing.assert_allclose(lc, lr, atol=2e-5, rtol=1e-5)
  active = np.arange(3)[None, :] < batch['n_latent'][:, None]
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
  exs = [reasoning.get('prosqa').example(np.random.default_rng([1]), 'train')]
  for r in range(6):
    n, plen = int(batch['n_latent'][r]), int(batch['prefix_len'][r])
    assert n == 2 and batch['prefix'][r, plen - 1] == TOK.special_id('<think>')
    suffix = batch['suffix'][r][batch['suffix_weights'][r] > 0].tolist()
    assert suffix[-1] == TOK.eos_id and TOK.special_id('</think>') in suffix
    steps = batch['steps'][r][batch['steps_weights'][r].sum(-1) > 0]
    assert len(steps) == 2  # the two replaced steps are supervised (SIM-CoT)
    text = TOK.decode(suffix)
    assert text.count('>') == text.count('.') and len(text) >= 1
  assert exs  # the generator itself is covered in tests/data/test_tasks_latent.py
  with pytest.raises(ValueError, match='latent.method'):
    coconut.LatentSettings(method='telepathy')
  with pytest.raises(ValueError, match='Unknown config arguments'):
    latent_reasoning.get_config('task=prosqa,stages=3')


def test_coconut_decoder_sees_what_training_saw(lm):
  """The decoder's greedy answer tokens are the argmax of the training forward on them."""
  model, params = lm
  s, batch = _batch('coconut', stage=9, mix=0.0)  # final stage: 3 thoughts, no steps
  dec = registry.build('coconut', {'latent_steps': 3})
  prompts = [batch['prefix'][r, :batch['prefix_len'][r]].tolist() for r in range(4)]
  rows, _ = run_decoder(dec, Models(model), {'target': params}, prompts, max_new_tokens=12,
                        cache_size=96, eos_id=TOK.eos_id, pad_id=TOK.pad_id)
  suffix = np.full_like(batch['suffix'], TOK.eos_id)
  for r, row in enumerate(rows):
    assert row.tokens[:4] == [TOK.special_id('<latent>')] * 3 + [TOK.special_id('</think>')]
    suffix[r, :len(row.tokens) - 3] = row.tokens[3:]
  logits, _ = jax.jit(lambda p, b: coconut.forward_cached(model, p, b, 3))(
      params, dict(batch, suffix=suffix))
  for r, row in enumerate(rows):
    n = len(row.tokens) - 3
    assert np.argmax(logits[r, 1:n], -1).tolist() == row.tokens[4:]


def test_sim_cot_stage_starts_from_a_checkpoint_and_trains(tmp_path, trained_workdir):
  config = latent_reasoning.get_config(
      f'task=prosqa,method=sim_cot,stage=2,size=test,steps=2,init={trained_workdir}')
  with config.unlocked():
    config.data.batch_size = 8
  workdir = str(tmp_path / 'sim_cot')
  out = trainer.train_and_evaluate(config, workdir)
  assert out['step'] == 2 and np.isfinite(out['train']['loss'])
  assert out['train']['step_loss'] > 0 and 'suffix_exact' in out['eval']
  start = jax.tree.leaves(loading.load_model(trained_workdir).params)
  got = loading.load_model(workdir)
  assert 'aux_decoder' in got.extras
  # Two small steps from the checkpoint: close to it (a fresh init would be far away).
  diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(start, jax.tree.leaves(got.params)))
  assert diff < 0.05
  saved = json.load(open(os.path.join(workdir, 'config.json')))
  assert saved['latent']['init_from'] == trained_workdir
